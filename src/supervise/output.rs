//! What wharf says about an instance: one prefixed line each, on stderr so that the server's
//! own output stays its own, and in the instance's log with `--log`; with `--json`, also
//! events for programs, one JSON object a line on stdout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::model::name::Name;
use crate::state::logs::Log;

/// wharf's messages go to stderr, prefixed, so the server's own output stays its own.
#[derive(Clone)]
pub(crate) struct Output {
    name: Name,
    /// Which member of a replicated name the lines are about (`api#2`): 0 for none, shared by
    /// the clones so that a `--join`ed member's number, learnt from the proxy, shows in all.
    member: Arc<AtomicU32>,
    /// A member whose number is not known yet (`--join` before the proxy answered).
    joining: bool,
    quiet: bool,
    /// With `--log`, everything goes there too (the terminal may be gone).
    log: Option<Log>,
    /// `--json`: events on stdout.
    json: bool,
}

impl Output {
    pub(crate) fn new(name: Name, quiet: bool, log: Option<Log>, json: bool) -> Output {
        Output {
            name,
            member: Arc::new(AtomicU32::new(0)),
            joining: false,
            quiet,
            log,
            json,
        }
    }

    /// The same output for one member of a replicated name: its lines say `NAME#K`, its
    /// events carry `member`. `Some(0)`: a member whose number comes later (`set_member`).
    pub(crate) fn for_member(&self, member: Option<u32>) -> Output {
        Output {
            member: Arc::new(AtomicU32::new(member.unwrap_or(0))),
            joining: member == Some(0),
            ..self.clone()
        }
    }

    /// The member number the proxy gave a `--join`ed member.
    pub(crate) fn set_member(&self, member: u32) {
        self.member.store(member, Ordering::Relaxed);
    }

    /// `api`, or `api#2` for member 2 (`api#?` while a joining member's number is unknown).
    fn who(&self) -> String {
        match (self.member.load(Ordering::Relaxed), self.joining) {
            (0, false) => self.name.to_string(),
            (0, true) => format!("{}#?", self.name),
            (k, _) => format!("{}#{k}", self.name),
        }
    }

    /// With `--json`, one event on stdout: `{"event": KIND, "name": NAME, …fields}`.
    pub(crate) fn event(&self, kind: &str, fields: serde_json::Value) {
        if !self.json {
            return;
        }
        let mut event = serde_json::json!({"event": kind, "name": self.name});
        let member = self.member.load(Ordering::Relaxed);
        if let (Some(all), true) = (event.as_object_mut(), member > 0 || self.joining) {
            all.insert("member".into(), member.into());
        }
        if let (Some(all), serde_json::Value::Object(more)) = (event.as_object_mut(), fields) {
            all.extend(more);
        }
        // Nobody reading any more must not take the supervisor (and its server) down.
        let _ = crate::sys::stdio::out(&format!("{event}\n"));
    }

    pub(crate) fn say(&self, line: String) {
        self.emit(&format!("wharf: {}: {line}\n", self.who()), !self.quiet);
    }

    /// A line about the instance before it has one: how its name was chosen.
    pub(crate) fn note(&self, line: &str) {
        self.emit(&format!("wharf: {line}\n"), !self.quiet);
    }

    /// The one line a script looks for: always printed, even with --quiet (and the `url`
    /// event).
    pub(crate) fn url(&self, url: &str) {
        self.emit(&format!("wharf: {} is at {url}\n", self.who()), true);
        self.event("url", serde_json::json!({ "url": url }));
    }

    fn emit(&self, line: &str, to_terminal: bool) {
        if let Some(log) = &self.log {
            log.write(line.as_bytes());
        }
        // Under `wharf up` the terminal is the log itself: one copy is enough.
        if to_terminal && !self.log.as_ref().is_some_and(Log::is_stderr) {
            // A closed terminal or pipe must not take the supervisor (and its server) down.
            crate::sys::stdio::err(line);
        }
    }
}

/// A run time as people read it: `0.4s`, `12.0s`, then `3m 20s`.
pub(crate) fn ran_for(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        crate::model::text::human_duration(d.as_secs())
    }
}

/// How many of a new version's last output lines a failed reload shows.
const TAIL_LINES: usize = 20;

/// The last lines a server wrote (stdout and stderr together), for saying why it failed.
#[derive(Clone, Default)]
pub(crate) struct Tail(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>);

impl Tail {
    fn push(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line).trim_end().to_string();
        if let Ok(mut lines) = self.0.lock() {
            if lines.len() == TAIL_LINES {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }

    /// The lines kept, oldest first.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Copy `stream` to `to` as it comes, keeping its last lines here.
    pub(crate) async fn copy(
        self,
        mut stream: impl tokio::io::AsyncRead + Unpin,
        mut to: impl FnMut(&[u8]),
    ) {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 16 * 1024];
        let mut partial = Vec::new();
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            to(&buf[..n]);
            partial.extend_from_slice(&buf[..n]);
            while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                self.push(&partial[..end]);
                partial.drain(..=end);
            }
            if partial.len() > buf.len() {
                // A very long line: keep its start.
                self.push(&partial);
                partial.clear();
            }
        }
        if !partial.is_empty() {
            self.push(&partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_told_apart_and_a_join_learns_its_number() {
        let out = Output::new("api".parse().unwrap(), true, None, false);
        assert_eq!(out.who(), "api");
        assert_eq!(out.for_member(None).who(), "api");
        assert_eq!(out.for_member(Some(2)).who(), "api#2");
        let joining = out.for_member(Some(0));
        let clone = joining.clone();
        assert_eq!(clone.who(), "api#?");
        joining.set_member(4);
        assert_eq!(clone.who(), "api#4", "every clone learns it");
        assert_eq!(out.who(), "api", "not the one it came from");
    }

    #[tokio::test]
    async fn a_tail_keeps_the_last_lines_and_passes_everything_on() {
        let tail = Tail::default();
        let text: String = (1..=25).map(|i| format!("line {i}\n")).collect::<String>() + "end";
        let mut copied = Vec::new();
        tail.clone()
            .copy(text.as_bytes(), |b| copied.extend_from_slice(b))
            .await;
        assert_eq!(copied, text.as_bytes());
        let lines = tail.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 7");
        assert_eq!(lines.last().map(String::as_str), Some("end"));
    }
}
