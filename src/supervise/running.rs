//! While a server runs: the events the supervisor waits for, one `select!` that only waits,
//! and one function that acts on each event.

use std::process::ExitStatus;
use std::time::Instant;

use anyhow::Context as _;
use futures_util::StreamExt;
use tokio::process::Child;

use super::demand::{self, IdleClock, Probe};
use super::health::Checks;
use super::lifecycle::{Exit, Supervisor};
use super::readiness::{self, Finding, Readiness};
use super::registration::RouteEvent;
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
    /// The front proxy went away, or it is time to register with it again.
    Route(RouteEvent),
}

/// One server, started.
struct Running {
    child: Child,
    pid: i32,
    ready: Readiness,
    idle: IdleClock,
    health: Option<Checks>,
}

impl Supervisor {
    /// Start the server and supervise it until it exits.
    pub(super) async fn run_server(&mut self) -> anyhow::Result<Exit> {
        let started = Instant::now();
        let (child, pid) = super::children::spawn(|| {
            let child = self.server.spawn()?;
            let pid = child
                .id()
                .context("the server exited before it could be followed")?;
            Ok((child, pid as i32))
        })?;
        if self.expect.mode == Mode::Env {
            // Held until this moment so that nobody else could take the port.
            self.held = None;
        }
        self.route.started(pid).await;
        let ready = Readiness::begin(&self.expect, self.held.as_deref(), &mut self.route).await;
        let mut server = Running {
            child,
            pid,
            ready,
            idle: IdleClock::new(self.idle_limit),
            health: self.health.as_ref().map(Checks::new),
        };
        let status = self.until_exit(&mut server).await;
        // Reaped (or never to be waited for again): the pid is no longer one of ours.
        super::children::remove(pid);
        let status = status?;
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
        let pid = server.pid;
        let idle_watch = self.on_demand && !self.stopper.is_stopping();
        let checking = server.health.is_some()
            && Checks::due_in(self.route.instance.state)
            && !self.stopper.is_stopping();
        let main = self.route.main_addr();
        tokio::select! {
            status = server.child.wait() => Event::Exited(status),
            Some(info) = self.signals.next() => Event::Signal(info),
            notices = self.notify.recv(|p| p.is_none_or(|p| crate::sys::process::in_tree(p, pid))) => {
                Event::Notices(notices)
            }
            finding = server.ready.next(main) => Event::Readiness(finding),
            Some(probe) = async { Some(server.health.as_mut()?.next(main).await) }, if checking => {
                Event::Health(probe)
            }
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
            Event::Exited(status) => return status.context("waiting for the server").map(Some),
            Event::Signal(info) => {
                if super::stop::is_stop(info.si_signo) && !self.stopper.asked() {
                    // Out of rotation first: the proxy sends no new request while the server
                    // finishes those it has.
                    self.route.remove().await;
                }
                self.stopper.on_signal(&info, pid)
            }
            Event::Notices(notices) => {
                readiness::on_notices(notices.unwrap_or_default(), &mut self.route, &self.out).await
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
            Event::Route(event) => self.route.on_event(event).await,
        }
        Ok(None)
    }
}
