//! An instance's life as a small state machine. It is [`Phase::Idle`] (on demand: wharf holds
//! the socket, no server runs), [`Phase::Running`] (a server runs: see `running`),
//! [`Phase::Restarting`] (a pause before the next start), [`Phase::Failed`] (gave up, listed
//! as failed until asked to stop), [`Phase::Detached`] (its first process exited cleanly but
//! left processes running: the server went to the background, and they are followed until
//! they end or a stop ends them) or [`Phase::Done`]. After each exit of the server,
//! [`decide`] names what follows.

use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;

use super::children;
use super::demand;
use super::output::{Output, ran_for};
use super::readiness::Expect;
use super::registration::{Registration, RouteEvent};
use super::restart::{GIVE_UP_AFTER, Next, Restarts};
use super::start::{Prepared, Server};
use super::stop::{self, Signals, Stop, StopWhy, Stopper};
use crate::model::instance::State;
use crate::sys::notify::NotifySocket;
use crate::sys::process::{self, ProcessId};
use crate::sys::socket::BoundSocket;

/// How often a server gone to the background is looked for.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// One instance's supervisor (one member's, with replicas): what it holds for its whole life.
pub(super) struct Supervisor {
    pub(super) out: Output,
    pub(super) route: Registration,
    pub(super) signals: Signals,
    pub(super) notify: NotifySocket,
    pub(super) server: Server,
    /// The next start of `server`, built while waiting for it (`Server::prepare`); dropped
    /// whenever `server` changes.
    pub(super) prepared: Option<Prepared>,
    /// Why the next start comes, said once it has forked: a line written before would be
    /// on the start's path.
    pub(super) starting_because: Option<String>,
    pub(super) expect: Expect,
    /// Our copy of the sockets: kept for the instance's life in fd mode (restarts reuse them),
    /// dropped at the first start in env mode.
    pub(super) held: Option<Vec<BoundSocket>>,
    pub(super) stopper: Stopper,
    pub(super) restarts: Restarts,
    /// Start the server on the first connection, stop it when idle for `idle_limit`.
    pub(super) on_demand: bool,
    pub(super) idle_limit: Duration,
    /// The instance's ports: connections to them keep an on-demand server busy.
    pub(super) ports: Vec<u16>,
    /// The instance comes from a wharf.toml: after giving up it stays listed as failed.
    pub(super) declared: bool,
    /// Health checks while the server is ready.
    pub(super) health: Option<crate::model::project::Health>,
    /// How long a reload's new version has to become ready.
    pub(super) ready_timeout: Duration,
    /// Bind fresh sockets for a reload's new version (recording them in the lease).
    pub(super) rebind: Box<dyn Fn() -> anyhow::Result<super::ports::Allocated>>,
    /// The lease on the instance's ports, and the ports it names now.
    pub(super) lease: super::ports::LeaseGuard,
    pub(super) leased: std::collections::BTreeMap<String, u16>,
    /// Versions being stopped in the background after a reload (pid, task): waited for
    /// before wharf exits (each stays in `children` until its task has reaped it).
    pub(super) others: Vec<(i32, tokio::task::JoinHandle<()>)>,
    /// A server of this instance sent `READY=1`: its next version will too (`reload`).
    pub(super) sent_ready: bool,
    /// Set when wharf is asked to stop: versions being stopped after a reload stop waiting
    /// for their socket to drain (the route is gone already).
    pub(super) hurry: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How the server ended.
pub(super) struct Exit {
    pub(super) status: ExitStatus,
    /// How long it ran.
    pub(super) ran: Duration,
    pub(super) pid: i32,
}

/// Where an instance is in its life.
enum Phase {
    /// On demand, no server: wait for a connection on the held socket.
    Idle,
    /// Start the server and supervise it until it exits.
    Running,
    /// Wait `delay`, then start again (on demand: wait for a connection first).
    Restarting { delay: Duration, code: i32 },
    /// Gave up: listed as failed until a stop signal.
    Failed { code: i32 },
    /// The server went to the background: these processes are it now.
    Detached { procs: Vec<ProcessId> },
    /// Over: wharf exits with `code`.
    Done { code: i32 },
}

/// What follows an exit of the server.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// It was stopped for being idle: start it again on the next connection.
    Idle,
    Stop,
    GiveUp,
    RestartAfter(Duration),
}

/// What follows an exit: a stop for idleness waits for the next connection, a stop wharf was
/// asked for ends the instance, and otherwise the restart policy says.
fn decide(
    stop: Option<&Stop>,
    asked: bool,
    restarts: &mut Restarts,
    status: ExitStatus,
    ran: Duration,
) -> Outcome {
    if asked {
        return Outcome::Stop;
    }
    if stop.is_some_and(|s| s.why == StopWhy::Idle) {
        return Outcome::Idle;
    }
    match restarts.after_exit(status, ran) {
        Next::Stop => Outcome::Stop,
        Next::GiveUp => Outcome::GiveUp,
        Next::RestartAfter(delay) => Outcome::RestartAfter(delay),
    }
}

impl Supervisor {
    /// Live the instance's life; returns wharf's exit code (the server's last one, or 0 when
    /// stopped while idle).
    pub(super) async fn run(mut self) -> anyhow::Result<i32> {
        let mut phase = if self.on_demand {
            Phase::Idle
        } else {
            Phase::Running
        };
        let code = loop {
            phase = match phase {
                Phase::Idle => self.idle().await?,
                Phase::Running => {
                    let exit = self.run_server().await?;
                    self.after(exit).await
                }
                Phase::Restarting { delay, code } => {
                    if !self.pause(Some(delay)).await {
                        Phase::Done { code }
                    } else if self.on_demand {
                        Phase::Idle
                    } else {
                        Phase::Running
                    }
                }
                Phase::Failed { code } => {
                    self.pause(None).await;
                    Phase::Done { code }
                }
                Phase::Detached { procs } => self.follow(procs).await,
                Phase::Done { code } => break code,
            };
        };
        self.route.remove().await;
        for (_, task) in self.others.drain(..) {
            let _ = task.await;
        }
        Ok(code)
    }

    /// On demand: wait for a connection to start the server for (or a stop signal).
    async fn idle(&mut self) -> anyhow::Result<Phase> {
        if self.route.instance.state != State::Idle {
            self.route.set_state(State::Idle).await;
        }
        if self.prepared.is_none() {
            // An error here is met again, and said, when the start is due.
            self.prepared = self.server.prepare().ok();
        }
        let sockets = self.held.as_ref().expect("on-demand keeps its sockets");
        // While idle the route must outlive a proxy restart like a running one.
        loop {
            tokio::select! {
                waiting = demand::connection_waiting(sockets) => {
                    waiting.context("watching the instance's sockets")?;
                    self.starting_because =
                        Some("a connection is waiting; starting the server".to_string());
                    return Ok(Phase::Running);
                }
                () = stop::stop_signal(&mut self.signals) => return Ok(Phase::Done { code: 0 }),
                event = self.route.next_event() => match event {
                    RouteEvent::Reload(id) => {
                        self.out.say(
                            "reload: idle, so the next connection starts the new version".to_string(),
                        );
                        self.route.reloaded(id, None).await;
                    }
                    event => self.route.on_event(event).await,
                },
            }
        }
    }

    /// The server exited: end what it left running, record and say how it ended, and decide.
    async fn after(&mut self, exit: Exit) -> Phase {
        let Exit { status, ran, pid } = exit;
        let code = stop::exit_code(status);
        let stop = self.stopper.take_stop();
        // Looked for once: the same look tells whether the server went to the background and
        // what it left behind.
        let orphans = children::orphans();
        if stop.is_none() && status.success() && !self.on_demand {
            let procs = self.left_behind(pid, orphans.clone());
            if let Some(first) = procs.first() {
                self.out.say(format!(
                    "the server went to the background (pid {}, {} process(es)); following it",
                    first.pid,
                    procs.len()
                ));
                self.route.instance.child_pid = Some(first.pid);
                self.route.set_state(self.route.instance.state).await;
                self.out
                    .event("detached", serde_json::json!({ "pid": first.pid }));
                return Phase::Detached { procs };
            }
        }
        stop::end_leftovers(&self.out, pid, stop.as_ref(), self.stopper.grace, orphans).await;
        let how = stop::describe(status, stop.as_ref());
        self.route.instance.last_exit = Some(how.clone());
        self.route.instance.child_pid = None;
        let out = &self.out;
        let after = decide(
            stop.as_ref(),
            self.stopper.asked(),
            &mut self.restarts,
            status,
            ran,
        );
        out.event(
            "exited",
            serde_json::json!({
                "code": status.code(),
                "signal": std::os::unix::process::ExitStatusExt::signal(&status),
                "status": how,
                "ran_secs": ran.as_secs_f64(),
                "then": match after {
                    Outcome::Idle => "idle",
                    Outcome::Stop => "stop",
                    Outcome::GiveUp => "give-up",
                    Outcome::RestartAfter(_) => "restart",
                },
            }),
        );
        match after {
            Outcome::Idle => {
                // Listed first (idle, and how it ended), said second: whoever waits for the
                // line finds the route so.
                self.route.set_state(State::Idle).await;
                out.say(format!(
                    "server {how} (ran {}); starting again on the next connection",
                    ran_for(ran)
                ));
                Phase::Idle
            }
            Outcome::Stop => {
                self.route.remove().await;
                out.say(format!(
                    "server {how} (ran {}); route removed",
                    ran_for(ran)
                ));
                Phase::Done { code }
            }
            Outcome::GiveUp => {
                out.say(format!(
                    "giving up after {GIVE_UP_AFTER} fast failures in a row (the last: {how})"
                ));
                if self.declared || self.on_demand {
                    // Declared instances stay listed as failed; the proxy answers for them
                    // without contacting anything, so the socket can go.
                    self.route.set_state(State::Failed).await;
                    drop(self.held.take());
                    Phase::Failed { code }
                } else {
                    self.route.remove().await;
                    drop(self.held.take());
                    out.say("route removed".to_string());
                    Phase::Done { code }
                }
            }
            Outcome::RestartAfter(delay) if delay.is_zero() && !self.on_demand => {
                self.starting_because = Some(format!(
                    "server {how} (ran {}); restarting on the same socket",
                    ran_for(ran)
                ));
                // At once: the proxy hears of it with the new server's start (`started`), so
                // no round trip to it (nor a timer's tick) comes before the fork. Meanwhile
                // fd mode's held socket queues connections, and in env mode a refused one
                // waits for that registration.
                self.route.instance.state = State::Restarting;
                Phase::Running
            }
            Outcome::RestartAfter(delay) => {
                out.say(format!(
                    "server {how} (ran {}); {}{} on the same socket",
                    ran_for(ran),
                    if self.on_demand {
                        "starting again on demand"
                    } else {
                        "restarting"
                    },
                    if delay.is_zero() {
                        String::new()
                    } else {
                        format!(" in {:.1}s", delay.as_secs_f64())
                    }
                ));
                self.route.set_state(State::Restarting).await;
                Phase::Restarting { delay, code }
            }
        }
    }

    /// What a server that exited left running: its process group and tree, and (Linux, as the
    /// subreaper) `orphans`, those that came to us, the proxies we started excepted.
    fn left_behind(&self, server: i32, orphans: Vec<ProcessId>) -> Vec<ProcessId> {
        let mine = process::family_of(server)
            .into_iter()
            .filter(|p| p.pid != server)
            .collect();
        process::union(mine, orphans)
    }

    /// The server went to the background: follow `procs` (and what they start) until they are
    /// gone, or end them on a stop signal as a server is ended.
    async fn follow(&mut self, mut procs: Vec<ProcessId>) -> Phase {
        loop {
            tokio::select! {
                Some(info) = self.signals.next() => {
                    if stop::is_stop(info.si_signo) {
                        return self.end_background(procs).await;
                    }
                    // SIGHUP, SIGUSR1, SIGUSR2: to the background processes, as to a server.
                    if let Ok(signal) = nix::sys::signal::Signal::try_from(info.si_signo) {
                        procs.iter().for_each(|p| {
                            p.signal(signal);
                        });
                    }
                }
                () = tokio::time::sleep(FOLLOW_EVERY) => {
                    procs = process::union(procs, children::orphans());
                    procs.retain(ProcessId::is_alive);
                    let shown = self.route.instance.child_pid;
                    if let Some(first) = procs.first().filter(|f| shown != Some(f.pid)) {
                        // The one shown went (the middle of a double fork): show who is left.
                        self.route.instance.child_pid = Some(first.pid);
                        self.route.set_state(self.route.instance.state).await;
                    }
                    if procs.is_empty() {
                        self.out.event("exited", serde_json::json!({"code": 0, "signal": null,
                            "status": "its background processes ended", "then": "stop"}));
                        self.route.remove().await;
                        self.out.say(
                            "the server's background processes ended; route removed".to_string(),
                        );
                        return Phase::Done { code: 0 };
                    }
                }
                event = self.route.next_event() => match event {
                    RouteEvent::Reload(id) => {
                        let why = "the server went to the background; wharf cannot start a \
                                   new version beside it (run it in the foreground to reload)";
                        self.route.reloaded(id, Some(why.to_string())).await;
                    }
                    event => self.route.on_event(event).await,
                },
            }
        }
    }

    /// A stop signal while the server is in the background: end its processes as a server is
    /// ended (SIGTERM, the grace, SIGKILL), reaping those that are ours.
    async fn end_background(&mut self, procs: Vec<ProcessId>) -> Phase {
        let (out, grace) = (self.out.clone(), self.stopper.grace);
        out.say(format!(
            "stopping the server's {} background process(es)",
            procs.len()
        ));
        let deadline = std::time::Instant::now() + grace;
        let all = process::union(procs, children::orphans());
        let ended = tokio::task::spawn_blocking(move || {
            let ended = process::end_all(&all, deadline);
            // Reaps what ended.
            children::orphans();
            ended
        })
        .await;
        match ended {
            Ok((0, true)) => {}
            Ok((killed, true)) => out.say(format!(
                "killed {killed} of them (SIGKILL): they ignored SIGTERM"
            )),
            _ => out.say("some survived SIGKILL; are they stuck in the kernel?".to_string()),
        }
        out.event(
            "exited",
            serde_json::json!({"code": 0, "signal": null, "status": "stopped on request",
                "then": "stop"}),
        );
        self.route.remove().await;
        out.say("server stopped on request; route removed".to_string());
        Phase::Done { code: 0 }
    }

    /// Waits `delay` (`None`: until a stop signal) while keeping the route registered through
    /// proxy restarts. False if a stop signal came first.
    async fn pause(&mut self, delay: Option<Duration>) -> bool {
        let until = async {
            match delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
        };
        let mut until = std::pin::pin!(until);
        loop {
            tokio::select! {
                () = until.as_mut() => return true,
                () = stop::stop_signal(&mut self.signals) => return false,
                event = self.route.next_event() => match event {
                    // Restarting: the next start is the new version anyway.
                    RouteEvent::Reload(id) if delay.is_some() => {
                        self.out.say("reload: restarting already, as the new version".to_string());
                        self.route.reloaded(id, None).await;
                    }
                    RouteEvent::Reload(id) => {
                        let why = format!(
                            "the server gave up after failing repeatedly; nothing runs to \
                             reload (`wharf stop {}`, then start it again)",
                            self.route.instance.name
                        );
                        self.route.reloaded(id, Some(why)).await;
                    }
                    event => self.route.on_event(event).await,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::project::Restart;
    use nix::sys::signal::Signal;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_stop_decides_before_the_restart_policy() {
        let status = ExitStatus::from_raw(0);
        let quick = Duration::from_millis(10);
        let idle = Stop::for_test(StopWhy::Idle);
        let asked = Stop::for_test(StopWhy::Asked(Signal::SIGTERM));
        let mut restarts = Restarts::new(Restart::Always, true);
        assert_eq!(
            decide(Some(&idle), false, &mut restarts, status, quick),
            Outcome::Idle
        );
        // A stop request while an idle stop was on: the instance ends.
        assert_eq!(
            decide(Some(&idle), true, &mut restarts, status, quick),
            Outcome::Stop
        );
        assert_eq!(
            decide(Some(&asked), true, &mut restarts, status, quick),
            Outcome::Stop
        );
        assert_eq!(
            decide(None, false, &mut restarts, status, quick),
            Outcome::RestartAfter(Duration::ZERO)
        );
    }
}
