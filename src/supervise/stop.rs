//! Stopping the server: passing signals on, the grace before SIGKILL, ending what the server
//! left running, and how its exit reads.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::exfiltrator::WithRawSiginfo;
use signal_hook_tokio::SignalsInfo;

use super::output::{Output, ran_for};
use crate::sys::process::{self, ProcessId};

/// Stop requests before wharf stops asking and kills the server.
const KILL_ON_REQUEST: u32 = 3;
/// What is left of a server after it exited gets at least this long to go after SIGTERM.
const MIN_LEFTOVER_GRACE: Duration = Duration::from_secs(1);

/// The signals wharf catches: the stop signals, and those it passes on to the server.
pub(super) type Signals = SignalsInfo<WithRawSiginfo>;

pub(super) fn catch_signals() -> anyhow::Result<Signals> {
    SignalsInfo::<WithRawSiginfo>::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2])
        .context("installing signal handlers")
}

/// Resolves at the first SIGINT/SIGTERM/SIGQUIT (others are ignored while no server runs).
pub(super) async fn stop_signal(signals: &mut Signals) {
    while let Some(info) = signals.next().await {
        if is_stop(info.si_signo) {
            return;
        }
    }
    std::future::pending().await
}

/// A stop signal (SIGINT/SIGTERM/SIGQUIT) already caught and not yet read, if any; others
/// waiting are read and dropped (no server runs to pass them to).
pub(super) fn pending_stop(signals: &mut Signals) -> Option<i32> {
    while let Some(Some(info)) = futures_util::FutureExt::now_or_never(signals.next()) {
        if is_stop(info.si_signo) {
            return Some(info.si_signo);
        }
    }
    None
}

/// Passes signals on to the server and carries out stops: the one in progress, and how many
/// times wharf was asked.
pub(super) struct Stopper {
    out: Output,
    /// The server leads its own process group: signals go to the whole group.
    group: bool,
    /// How long a stopping server has before it is killed.
    pub(super) grace: Duration,
    /// The stop in progress, if any.
    stopping: Option<Stop>,
    /// Stop signals received (for the instance's whole life).
    requests: u32,
}

/// Why wharf is stopping the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StopWhy {
    /// A stop signal (`wharf stop`, Ctrl-C): this one.
    Asked(Signal),
    /// On demand, idle for the whole timeout (SIGTERM).
    Idle,
}

/// A stop in progress.
pub(super) struct Stop {
    pub(super) why: StopWhy,
    /// When the server and everything it started get SIGKILL if still there.
    kill_at: tokio::time::Instant,
    /// Everything the server had started when the stop began (and when it was killed): what
    /// is left of it after the server exits is stopped too.
    family: Vec<ProcessId>,
    /// The grace ran out and SIGKILL was sent.
    killed: bool,
}

impl Stopper {
    pub(super) fn new(out: &Output, group: bool, grace: Duration) -> Stopper {
        Stopper {
            out: out.clone(),
            group,
            grace,
            stopping: None,
            requests: 0,
        }
    }

    /// Whether wharf was asked to stop (it then stops for good once the server is gone).
    pub(super) fn asked(&self) -> bool {
        self.requests > 0
    }

    /// Whether a stop is in progress.
    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// The server exited: the stop that was in progress, if any, is over.
    pub(super) fn take_stop(&mut self) -> Option<Stop> {
        self.stopping.take()
    }

    /// Pass a signal on. SIGINT/SIGQUIT typed at the terminal already reached the server when
    /// it shares wharf's process group, so they are only noted; repeated stop requests end in
    /// SIGKILL.
    pub(super) fn on_signal(&mut self, info: &libc::siginfo_t, child: i32) {
        let signal = Signal::try_from(info.si_signo).expect("only real signals are registered");
        let reached_server = !self.group
            && matches!(signal, Signal::SIGINT | Signal::SIGQUIT)
            && typed_at_terminal(info);
        let mut send = (!reached_server).then_some(signal);
        if is_stop(info.si_signo) {
            self.requests += 1;
            self.begin_stop(StopWhy::Asked(signal), child);
            if self.requests >= KILL_ON_REQUEST {
                self.out.say(format!(
                    "asked to stop {} times; killing the server",
                    self.requests
                ));
                send = Some(Signal::SIGKILL);
            }
        }
        if let Some(signal) = send {
            self.signal(child, signal);
        }
    }

    /// On demand, idle for the whole timeout: ask the server to stop (SIGTERM).
    pub(super) fn stop_idle(&mut self, child: i32) {
        self.begin_stop(StopWhy::Idle, child);
        self.signal(child, Signal::SIGTERM);
    }

    /// Note that a stop began (the first one counts; a stop request outranks an idle stop)
    /// and what the server has started by now.
    fn begin_stop(&mut self, why: StopWhy, child: i32) {
        match &mut self.stopping {
            Some(stop) => {
                if stop.why == StopWhy::Idle {
                    stop.why = why;
                }
            }
            None => {
                self.stopping = Some(Stop {
                    why,
                    kill_at: tokio::time::Instant::now() + self.grace,
                    family: process::family_of(child),
                    killed: false,
                });
            }
        }
    }

    /// A stop is on and its SIGKILL not sent yet.
    pub(super) fn kill_pending(&self) -> bool {
        self.stopping.as_ref().is_some_and(|s| !s.killed)
    }

    /// Resolves when the stop in progress runs out of grace (pending without one).
    pub(super) async fn kill_due(&self) {
        match self.stopping.as_ref() {
            Some(stop) => tokio::time::sleep_until(stop.kill_at).await,
            None => std::future::pending().await,
        }
    }

    /// The grace ran out: SIGKILL the server and everything it started.
    pub(super) fn kill(&mut self, child: i32) {
        let Some(stop) = self.stopping.as_mut() else {
            return;
        };
        self.out.say(format!(
            "the server did not stop within {} of {}; killing it and everything it started (SIGKILL)",
            ran_for(self.grace),
            stop.signal().as_str()
        ));
        stop.family = process::union(std::mem::take(&mut stop.family), process::family_of(child));
        process::kill_all(&stop.family);
        stop.killed = true;
    }

    /// Signal the server (and, when it leads its own group, everything it started).
    fn signal(&self, child: i32, signal: Signal) {
        let target = if self.group { -child } else { child };
        let _ = kill(Pid::from_raw(target), signal);
    }
}

impl Stop {
    /// The signal that asked the server to stop.
    fn signal(&self) -> Signal {
        match self.why {
            StopWhy::Asked(signal) => signal,
            StopWhy::Idle => Signal::SIGTERM,
        }
    }
}

/// Whether a signal came from the terminal (typed ^C or ^\), which sends it to its whole
/// foreground process group. Linux says so in `si_code`.
#[cfg(target_os = "linux")]
fn typed_at_terminal(info: &libc::siginfo_t) -> bool {
    info.si_code == libc::SI_KERNEL
}

/// Whether a signal came from the terminal. macOS leaves `si_code` 0 for every signal (and
/// `si_pid` names whoever wrote to the terminal), so this asks whether wharf's group is the
/// terminal's foreground group, the one a typed ^C reaches.
#[cfg(not(target_os = "linux"))]
fn typed_at_terminal(_: &libc::siginfo_t) -> bool {
    nix::unistd::tcgetpgrp(std::io::stdin()).is_ok_and(|fg| fg == nix::unistd::getpgrp())
}

pub(super) fn is_stop(signal: i32) -> bool {
    matches!(signal, SIGINT | SIGTERM | SIGQUIT)
}

/// After the server exited: whatever it started that still runs (in its process tree when a
/// stop began, in the process group it led, or among `orphans`: what detached from it and came
/// to us as the subreaper) is stopped too, SIGTERM then SIGKILL after the rest of the grace,
/// so nothing keeps the socket or outlives the instance.
pub(super) async fn end_leftovers(
    out: &Output,
    server: i32,
    stop: Option<&Stop>,
    grace: Duration,
    orphans: Vec<process::ProcessId>,
) {
    let known = stop.map(|s| s.family.clone()).unwrap_or_default();
    let known = process::union(known, orphans);
    let left: Vec<_> = process::union(known, process::family_of(server))
        .into_iter()
        .filter(|p| p.pid != server && p.is_alive())
        .collect();
    if left.is_empty() {
        return;
    }
    let deadline = match stop {
        Some(s) if !s.killed => s
            .kill_at
            .into_std()
            .max(Instant::now() + MIN_LEFTOVER_GRACE),
        _ => Instant::now() + grace,
    };
    out.say(format!(
        "{} process(es) the server started still run; stopping them",
        left.len()
    ));
    let ended = tokio::task::spawn_blocking(move || process::end_all(&left, deadline)).await;
    match ended {
        Ok((0, true)) => {}
        Ok((killed, true)) => out.say(format!(
            "killed {killed} of them (SIGKILL): they ignored SIGTERM"
        )),
        _ => out.say("some survived SIGKILL; are they stuck in the kernel?".to_string()),
    }
}

/// Shell convention: the exit code, or 128 + the signal that killed it.
pub(super) fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// How the server's exit reads: a stop wharf made is said as such (`stopped on request`),
/// with the raw status only when it is not what that stop leads to.
pub(super) fn describe(status: ExitStatus, stop: Option<&Stop>) -> String {
    let plain = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?");
            format!("was killed by {name}")
        }
        _ => "ended".to_string(),
    };
    let Some(stop) = stop else {
        return plain;
    };
    let sent = stop.signal() as i32;
    if stop.killed && status.signal() == Some(libc::SIGKILL) {
        return format!(
            "was killed (SIGKILL) after ignoring {}",
            stop.signal().as_str()
        );
    }
    let said = match stop.why {
        StopWhy::Asked(_) => "stopped on request",
        StopWhy::Idle => "stopped when idle",
    };
    // What a server does on the signal: die by it, exit cleanly, or exit 128+signal (shells).
    let expected =
        status.success() || status.signal() == Some(sent) || status.code() == Some(128 + sent);
    if expected {
        said.to_string()
    } else {
        format!("{said} ({plain})")
    }
}

#[cfg(test)]
impl Stop {
    pub(super) fn for_test(why: StopWhy) -> Stop {
        Stop {
            why,
            kill_at: tokio::time::Instant::now(),
            family: Vec::new(),
            killed: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(raw: i32) -> ExitStatus {
        ExitStatus::from_raw(raw)
    }

    #[test]
    fn a_stop_wharf_made_is_not_described_as_a_kill() {
        let stop = |why, killed| Stop {
            why,
            kill_at: tokio::time::Instant::now(),
            family: Vec::new(),
            killed,
        };
        let term = stop(StopWhy::Asked(Signal::SIGTERM), false);
        assert_eq!(
            describe(status(libc::SIGTERM), None),
            "was killed by SIGTERM"
        );
        assert_eq!(
            describe(status(libc::SIGTERM), Some(&term)),
            "stopped on request"
        );
        assert_eq!(
            describe(status(143 << 8), Some(&term)),
            "stopped on request"
        );
        assert_eq!(
            describe(status(3 << 8), Some(&term)),
            "stopped on request (exited with code 3)"
        );
        let idle = stop(StopWhy::Idle, false);
        assert_eq!(describe(status(0), Some(&idle)), "stopped when idle");
        let killed = stop(StopWhy::Idle, true);
        assert_eq!(
            describe(status(libc::SIGKILL), Some(&killed)),
            "was killed (SIGKILL) after ignoring SIGTERM"
        );
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(status(3 << 8)), 3);
        assert_eq!(exit_code(status(libc::SIGTERM)), 128 + libc::SIGTERM);
    }
}
