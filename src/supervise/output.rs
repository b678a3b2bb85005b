//! What wharf says about an instance: one prefixed line each, on stderr so that the server's
//! own output stays its own, and in the instance's log with `--log`.

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
}

impl Output {
    pub(crate) fn new(name: Name, quiet: bool, log: Option<Log>) -> Output {
        Output { name, quiet, log }
    }

    pub(crate) fn say(&self, line: String) {
        self.emit(&format!("wharf: {}: {line}\n", self.name), !self.quiet);
    }

    /// A line about the instance before it has one: how its name was chosen.
    pub(crate) fn note(&self, line: &str) {
        self.emit(&format!("wharf: {line}\n"), !self.quiet);
    }

    /// The one line a script looks for: always printed, even with --quiet.
    pub(crate) fn url(&self, url: &str) {
        self.emit(&format!("wharf: {} is at {url}\n", self.name), true);
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
