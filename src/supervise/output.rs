//! What wharf says about an instance: one prefixed line each, on stderr so that the server's
//! own output stays its own, and in the instance's log with `--log`; with `--json`, also
//! events for programs, one JSON object a line on stdout.

use std::time::Duration;

use crate::model::name::Name;
use crate::state::logs::Log;

/// wharf's messages go to stderr, prefixed, so the server's own output stays its own.
#[derive(Clone)]
pub(crate) struct Output {
    name: Name,
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
            quiet,
            log,
            json,
        }
    }

    /// With `--json`, one event on stdout: `{"event": KIND, "name": NAME, …fields}`.
    pub(crate) fn event(&self, kind: &str, fields: serde_json::Value) {
        if !self.json {
            return;
        }
        let mut event = serde_json::json!({"event": kind, "name": self.name});
        if let (Some(all), serde_json::Value::Object(more)) = (event.as_object_mut(), fields) {
            all.extend(more);
        }
        // Nobody reading any more must not take the supervisor (and its server) down.
        let _ = crate::sys::stdio::out(&format!("{event}\n"));
    }

    pub(crate) fn say(&self, line: String) {
        self.emit(&format!("wharf: {}: {line}\n", self.name), !self.quiet);
    }

    /// A line about the instance before it has one: how its name was chosen.
    pub(crate) fn note(&self, line: &str) {
        self.emit(&format!("wharf: {line}\n"), !self.quiet);
    }

    /// The one line a script looks for: always printed, even with --quiet (and the `url`
    /// event).
    pub(crate) fn url(&self, url: &str) {
        self.emit(&format!("wharf: {} is at {url}\n", self.name), true);
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
