//! While a server runs: the events the supervisor waits for, one `select!` that only waits,
//! and one function that acts on each event.

use std::process::ExitStatus;
use std::time::Instant;

use crate::sys::child::Child;
use anyhow::Context as _;
use futures_util::StreamExt;

use super::demand::{self, IdleClock, Probe};
use super::health::Checks;
use super::lifecycle::{Exit, Supervisor};
use super::readiness::{self, Finding, Readiness};
use super::registration::RouteEvent;
use super::reload::{Candidate, Found};
use crate::model::mode::Mode;
use crate::sys::netstat;
use crate::sys::notify::Notice;

/// What can happen while the server runs.
enum Event {
    /// The server exited (or waiting for it failed).
    Exited(std::io::Result<ExitStatus>),
    /// wharf got a signal: pass it on, or stop.
    Signal(libc::siginfo_t),
    /// The server (or a process it started) wrote to `NOTIFY_SOCKET`.
    Notices(std::io::Result<Vec<Notice>>),
    /// Something about where the server listens or whether it is ready.
    Readiness(Finding),
    /// A health check's result.
    Health(Probe),
    /// On demand: time to count open connections.
    IdleTick,
    /// A stop ran out of grace.
    KillDue,
    /// The front proxy went away, it is time to register with it again, or a reload is asked.
    Route(RouteEvent),
    /// Something happened to the new version a reload started.
    Candidate(Found),
    /// The version a reload replaced is gone.
    OldGone,
}

/// One server, started.
pub(super) struct Running {
    pub(super) child: Child,
    pub(super) pid: i32,
    pub(super) ready: Readiness,
    pub(super) idle: IdleClock,
    pub(super) health: Option<Checks>,
    /// A new version starting beside this one (`reload`), until it takes over or is given up.
    pub(super) candidate: Option<Candidate>,
    /// A reload switched to this server and stops the old one: its number, and word of the
    /// old one being gone (then the reload is reported done).
    pub(super) switched: Option<(u64, tokio::sync::oneshot::Receiver<()>)>,
}

impl Supervisor {
    /// Start the server and supervise it until it exits.
    pub(super) async fn run_server(&mut self) -> anyhow::Result<Exit> {
        let started = Instant::now();
        let prepared = self.prepared.take();
        let spawned = super::children::spawn(|| {
            let child = self.server.spawn(prepared)?;
            let pid = child
                .id()
                .context("the server exited before it could be followed")?;
            Ok((child, pid as i32))
        });
        if let Some(why) = self.starting_because.take() {
            self.out.say(why);
        }
        let (child, pid) = spawned?;
        if self.expect.mode == Mode::Env {
            // Held until this moment so that nobody else could take the port.
            self.held = None;
        }
        self.route.started(pid).await;
        let ready = Readiness::begin(&self.expect, self.held.as_deref(), &mut self.route).await;
        // The next start (a restart, on demand the next connection), built while this one
        // runs; an error is met again, and said, when that start is due.
        self.prepared = self.server.prepare().ok();
        let mut server = Running {
            child,
            pid,
            ready,
            idle: IdleClock::new(self.idle_limit),
            health: self.health.as_ref().map(Checks::new),
            candidate: None,
            switched: None,
        };
        let status = self.until_exit(&mut server).await;
        // Reaped (or never to be waited for again): the pid is no longer one of ours. After a
        // reload it is the new version's; the old one's went when it was reaped.
        super::children::remove(server.pid);
        let status = status?;
        // It served, though it went since; a stop closed the route (and so the report) first.
        self.old_gone(&mut server).await;
        Ok(Exit {
            status,
            ran: started.elapsed(),
            pid,
        })
    }

    /// Act on each event until the server exits.
    async fn until_exit(&mut self, server: &mut Running) -> anyhow::Result<ExitStatus> {
        loop {
            let event = self.next_event(server).await;
            if let Some(status) = self.on_event(event, server).await? {
                return Ok(status);
            }
        }
    }

    /// Wait for the next event; nothing is acted on here.
    async fn next_event(&mut self, server: &mut Running) -> Event {
        let Running {
            child,
            pid,
            ready,
            health,
            candidate,
            switched,
            ..
        } = server;
        let switching = switched.is_some();
        let pid = *pid;
        let new_pid = candidate.as_ref().map(|c| c.pid);
        let idle_watch = self.on_demand && !self.stopper.is_stopping() && new_pid.is_none();
        let checking = health.is_some()
            && Checks::due_in(self.route.instance.state)
            && !self.stopper.is_stopping();
        let main = self.route.main_addr();
        // Which tree a notice came from: the new version's goes to the reload.
        let from_new = std::cell::Cell::new(false);
        let accept = |p: Option<i32>| match (p, new_pid) {
            (Some(p), Some(new)) if crate::sys::process::in_tree(p, new) => {
                from_new.set(true);
                true
            }
            (p, _) => p.is_none_or(|p| crate::sys::process::in_tree(p, pid)),
        };
        tokio::select! {
            status = child.wait() => Event::Exited(status),
            Some(info) = self.signals.next() => Event::Signal(info),
            notices = self.notify.recv(accept) => match from_new.get() {
                true => Event::Candidate(Found::Notices(notices.unwrap_or_default())),
                false => Event::Notices(notices),
            },
            finding = ready.next(main) => Event::Readiness(finding),
            Some(probe) = async { Some(health.as_mut()?.next(main).await) }, if checking => {
                Event::Health(probe)
            }
            Some(found) = async { Some(candidate.as_mut()?.next().await) }, if new_pid.is_some() => {
                Event::Candidate(found)
            }
            () = async {
                if let Some((_, gone)) = switched.as_mut() {
                    let _ = gone.await;
                }
            }, if switching => Event::OldGone,
            _ = tokio::time::sleep(demand::IDLE_TICK), if idle_watch => Event::IdleTick,
            () = self.stopper.kill_due(), if self.stopper.kill_pending() => Event::KillDue,
            event = self.route.next_event() => Event::Route(event),
        }
    }

    /// Act on one event; the exit status once the server has exited.
    async fn on_event(
        &mut self,
        event: Event,
        server: &mut Running,
    ) -> anyhow::Result<Option<ExitStatus>> {
        let pid = server.pid;
        match event {
            Event::Exited(status) => {
                let status = status.context("waiting for the server")?;
                let why = format!(
                    "the running server {} while the new version started",
                    super::stop::describe(status, None)
                );
                self.abandon(server, why).await;
                return Ok(Some(status));
            }
            Event::Signal(info) => {
                if super::stop::is_stop(info.si_signo) {
                    self.hurry.store(true, std::sync::atomic::Ordering::Relaxed);
                    if !self.stopper.asked() {
                        // Out of rotation first: the proxy sends no new request while the
                        // server finishes those it has.
                        self.route.remove().await;
                    }
                    self.abandon(server, "wharf was asked to stop".to_string())
                        .await;
                }
                self.stopper.on_signal(&info, pid)
            }
            Event::Notices(notices) => {
                let notices = notices.unwrap_or_default();
                self.sent_ready |= notices.contains(&Notice::Ready);
                readiness::on_notices(notices, &mut self.route, &self.out).await
            }
            Event::Readiness(finding) => {
                server
                    .ready
                    .on(finding, pid, &mut self.route, &self.out)
                    .await
            }
            Event::Health(probe) => {
                if let Some(checks) = server.health.as_mut() {
                    checks.on(probe, &mut self.route, &self.out).await;
                }
            }
            Event::IdleTick => {
                if server.idle.tick(netstat::established(&self.ports)) {
                    self.out.say(format!(
                        "idle for {}s; stopping the server (its socket stays)",
                        self.idle_limit.as_secs()
                    ));
                    self.stopper.stop_idle(pid);
                }
            }
            Event::KillDue => self.stopper.kill(pid),
            Event::Route(RouteEvent::Reload(id)) => {
                let busy = if server.candidate.is_some() || server.switched.is_some() {
                    Some("a reload is under way already")
                } else if self.stopper.is_stopping() {
                    Some("the server is stopping")
                } else {
                    None
                };
                let started = match busy {
                    Some(why) => Err(why.to_string()),
                    None => self.begin_reload(id).await,
                };
                match started {
                    Ok(new) => {
                        server.candidate = Some(new);
                        self.on_candidate(Found::Begun, server).await;
                    }
                    Err(why) => {
                        self.out.say(format!("reload refused: {why}"));
                        self.route.reloaded(id, Some(why)).await;
                    }
                }
            }
            Event::Route(event) => self.route.on_event(event).await,
            Event::Candidate(found) => self.on_candidate(found, server).await,
            Event::OldGone => self.old_gone(server).await,
        }
        Ok(None)
    }
}
