//! Reloading: `wharf reload` (relayed by the proxy as a `reload` event on the registration
//! connection) starts a new version of the server beside the running one, switches to it once
//! it is ready, then stops the old one gracefully, so that no request is refused. Two ways:
//!
//! - **On the same socket** (fd mode, and the server notifies: `--ready notify`, or the
//!   running version sent `READY=1`; no `--ready http:` probe; Linux, where a notice names its
//!   sender): the new version is handed the very socket the old one accepts on, which wharf
//!   holds. Its own `READY=1` (sent from its process tree) says it is ready; then the old one
//!   gets SIGTERM, stops accepting and finishes what it took, while the connections still
//!   queued go to the new one. The route never changes.
//! - **On fresh sockets** (env mode, or a server that does not notify, as most do not though
//!   they are offered `NOTIFY_SOCKET`: a probe on a shared socket cannot tell which version
//!   answered): the new version gets new ports, bound and leased as at a first start, and its
//!   readiness is watched there as at a first start. Once it is ready the route moves to it
//!   (the proxy sends new requests there); wharf waits, at most `DRAIN_LIMIT`, until the old
//!   socket's accept queue is empty, then stops the old one, and its ports go.
//!
//! The reload is reported done once the old version is gone: from then on only the new one
//! answers. A new version that exits, cannot be reached, or is not ready within the ready
//! deadline is stopped; the old one keeps serving, and the report says why with the new
//! version's last output lines (its output reaches the terminal or log through a pipe, to keep
//! them). A stop request or an exit of the old server during a reload abandons the new
//! version the same way (the restart policy then decides about the old one as usual).

use std::collections::BTreeMap;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context as _;

use crate::sys::child::Child;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::demand::IdleClock;
use super::health::Checks;
use super::lifecycle::Supervisor;
use super::output::{Output, Tail, ran_for};
use super::readiness::{self, Expect, Finding, Readiness};
use super::registration::Registration;
use super::running::Running;
use super::start::Server;
use super::stop;
use crate::model::instance::State;
use crate::model::mode::Mode;
use crate::model::project::Ready;
use crate::sys::netstat;
use crate::sys::notify::Notice;
use crate::sys::process;
use crate::sys::socket::BoundSocket;

/// How long a new version has to become ready unless `$WHARF_RELOAD_TIMEOUT` says otherwise.
pub(crate) const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an old version's socket may keep connections waiting before it is stopped anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
const DRAIN_LOOK: Duration = Duration::from_millis(10);
/// A connection the proxy began before the route moved reaches the old socket's queue within
/// this (loopback), so the queue is first looked at after it.
const DRAIN_SETTLE: Duration = Duration::from_millis(100);
/// How long a failed new version's output is waited for (what it started may hold the pipes).
const TAIL_WAIT: Duration = Duration::from_millis(500);
/// What a stopped version left running gets this long after SIGTERM before SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(1);

/// A new version starting beside the running one.
pub(super) struct Candidate {
    /// The reload event this answers.
    id: u64,
    child: Child,
    pub(super) pid: i32,
    /// Its state and address, worked out off the real route until the switch.
    shadow: Registration,
    /// On fresh sockets: watching it come up there, as at a first start.
    ready: Option<Readiness>,
    fresh: Option<Fresh>,
    deadline: tokio::time::Instant,
    tail: Tail,
    copiers: Vec<JoinHandle<()>>,
}

/// What the server becomes when a new version on fresh sockets takes over.
struct Fresh {
    server: Server,
    expect: Expect,
    /// Fd mode: wharf's copies of the new sockets (env mode: none, the server binds the ports).
    held: Option<Vec<BoundSocket>>,
    leased: BTreeMap<String, u16>,
}

/// What can happen to a new version while it starts.
pub(super) enum Found {
    /// It was just started (`--ready connect` may have made it ready already).
    Begun,
    Exited(std::io::Result<ExitStatus>),
    /// `READY=1` and the rest, from its own process tree.
    Notices(Vec<Notice>),
    Readiness(Finding),
    TimedOut,
}

impl Candidate {
    /// Wait for the next thing that happens to it; nothing is acted on here.
    pub(super) async fn next(&mut self) -> Found {
        let Candidate {
            child,
            shadow,
            ready,
            deadline,
            ..
        } = self;
        let main = shadow.main_addr();
        tokio::select! {
            status = child.wait() => Found::Exited(status),
            () = tokio::time::sleep_until(*deadline) => Found::TimedOut,
            Some(finding) = async { Some(ready.as_mut()?.next(main).await) } => {
                Found::Readiness(finding)
            }
        }
    }
}

/// Start a new version of `server`, its output copied through `tail`: the child, its pid
/// (counted among this process's children, `children`, until it is reaped) and the copiers.
fn spawn(server: &Server, tail: &Tail) -> anyhow::Result<(Child, i32, Vec<JoinHandle<()>>)> {
    let ((child, copiers), pid) = super::children::spawn(|| {
        let (child, copiers) = server.spawn_tailed(tail)?;
        let pid = child
            .id()
            .context("the new version exited before it could be followed")?;
        Ok(((child, copiers), pid as i32))
    })?;
    Ok((child, pid, copiers))
}

/// What follows something found about a new version.
enum Then {
    Wait,
    Switch,
    Abandon(String),
}

impl Supervisor {
    /// Whether a new version can share the running one's socket: see the top of this file.
    fn shares_socket(&self) -> bool {
        let notifies = self.expect.ready == Some(Ready::Notify) || self.sent_ready;
        self.expect.mode == Mode::Fd
            && self.expect.notifies
            && notifies
            && !matches!(self.expect.ready, Some(Ready::Http(_)))
            && cfg!(target_os = "linux")
    }

    /// Start the new version for the reload numbered `id`; why not, if it cannot start.
    pub(super) async fn begin_reload(&mut self, id: u64) -> Result<Candidate, String> {
        if self.route.instance.own_port {
            return Err(format!(
                "the server listens on {}, a port of its own choosing, so a new version \
                 cannot listen beside it: restart it instead (`wharf stop {}`, then start it \
                 again), or have it listen where wharf says (`$PORT`, or fd 3)",
                self.route.main_addr(),
                self.route.instance.name
            ));
        }
        let tail = Tail::default();
        let mut shadow = self.route.detached();
        shadow.instance.state = State::Starting;
        let deadline = tokio::time::Instant::now() + self.ready_timeout;
        let starting = |e: anyhow::Error| format!("the new version could not start: {e:#}");
        if self.shares_socket() {
            let (child, pid, copiers) = spawn(&self.server, &tail).map_err(starting)?;
            self.out.say(format!(
                "reload: started the new version (pid {pid}) on the same socket; the old one \
                 serves until it sends READY=1"
            ));
            return Ok(Candidate {
                id,
                child,
                pid,
                shadow,
                ready: None,
                fresh: None,
                deadline,
                tail,
                copiers,
            });
        }
        let allocated =
            (self.rebind)().map_err(|e| format!("no fresh socket for the new version: {e:#}"))?;
        allocated.lease.merge();
        let sockets = allocated.sockets;
        let server = self.server.on_sockets(&sockets);
        let (child, pid, copiers) = match spawn(&server, &tail) {
            Ok(spawned) => spawned,
            Err(e) => {
                self.lease.record(&self.leased);
                return Err(starting(e));
            }
        };
        let mut expect = self.expect.clone();
        expect.port = sockets[0].port;
        expect.handed = sockets[0].addr();
        shadow.instance.sockets = sockets.iter().map(|b| (b.name.clone(), b.addr())).collect();
        let leased = sockets.iter().map(|b| (b.name.clone(), b.port)).collect();
        // Env mode: held until the server started, so that nobody else could take the ports.
        let held = (expect.mode == Mode::Fd).then_some(sockets);
        let ready = Readiness::begin(&expect, held.as_deref(), &mut shadow).await;
        self.out.say(format!(
            "reload: started the new version (pid {pid}) on {}; the old one serves until it is ready",
            expect.handed
        ));
        Ok(Candidate {
            id,
            child,
            pid,
            shadow,
            ready: Some(ready),
            fresh: Some(Fresh {
                server,
                expect,
                held,
                leased,
            }),
            deadline,
            tail,
            copiers,
        })
    }

    /// Act on what happened to the new version: wait on, switch to it, or give it up.
    pub(super) async fn on_candidate(&mut self, found: Found, server: &mut Running) {
        let Some(new) = server.candidate.as_mut() else {
            return;
        };
        let then = match found {
            Found::Exited(status) => Then::Abandon(match status {
                Ok(status) => format!(
                    "the new version {} before it was ready",
                    stop::describe(status, None)
                ),
                Err(e) => format!("waiting for the new version failed: {e}"),
            }),
            Found::TimedOut => Then::Abandon(format!(
                "the new version was not ready within {}{}",
                ran_for(self.ready_timeout),
                if new.fresh.is_none() {
                    " (no READY=1)"
                } else {
                    ""
                }
            )),
            Found::Begun => Then::Wait,
            Found::Notices(notices) => {
                readiness::on_notices(notices, &mut new.shadow, &self.out).await;
                Then::Wait
            }
            Found::Readiness(finding) => {
                if let Some(ready) = new.ready.as_mut() {
                    ready.on(finding, new.pid, &mut new.shadow, &self.out).await;
                }
                Then::Wait
            }
        };
        let then = match (then, new.shadow.instance.state) {
            (Then::Wait, State::Ready) => Then::Switch,
            (Then::Wait, State::Failed) => {
                Then::Abandon("nothing can reach the new version (see above)".to_string())
            }
            (then, _) => then,
        };
        match then {
            Then::Wait => {}
            Then::Switch => self.switch(server).await,
            Then::Abandon(why) => self.abandon(server, why).await,
        }
    }

    /// The new version is ready: it becomes the server, the route follows it if it moved, and
    /// the old one is stopped once its socket has no connection waiting.
    async fn switch(&mut self, server: &mut Running) {
        let Some(new) = server.candidate.take() else {
            return;
        };
        let old_child = std::mem::replace(&mut server.child, new.child);
        let old_pid = std::mem::replace(&mut server.pid, new.pid);
        server.idle = IdleClock::new(self.idle_limit);
        // Health is counted afresh for the version that takes over.
        server.health = self.health.as_ref().map(Checks::new);
        let mut drain = Vec::new();
        if let Some(fresh) = new.fresh {
            drain = std::mem::take(&mut self.ports);
            self.ports = fresh.leased.values().copied().collect();
            self.server = fresh.server;
            self.prepared = None;
            self.expect = fresh.expect;
            self.held = fresh.held;
            self.leased = fresh.leased;
            if let Some(ready) = new.ready {
                server.ready = ready;
            }
            self.route.instance.sockets = new.shadow.instance.sockets.clone();
            self.route.instance.exposed = new.shadow.instance.exposed;
        }
        self.route.instance.child_pid = Some(new.pid);
        // Registered again: from the answer on, the proxy sends new requests to the new version.
        self.route.set_state(State::Ready).await;
        self.out.say(format!(
            "reload: the new version (pid {}) serves at {}; stopping the old one (pid {old_pid})",
            new.pid,
            self.route.main_addr()
        ));
        self.out.event(
            "reloaded",
            serde_json::json!({ "pid": new.pid, "old_pid": old_pid }),
        );
        // Reported once the old one is gone: from then on only the new version answers.
        let gone = self.retire(old_child, old_pid, drain, "the old version");
        server.switched = Some((new.id, gone));
    }

    /// The old version is gone after a switch: the reload is done.
    pub(super) async fn old_gone(&mut self, server: &mut Running) {
        if let Some((id, _)) = server.switched.take() {
            self.route.reloaded(id, None).await;
        }
    }

    /// Give the new version up: stop it, keep the old one, and report why with its last output.
    pub(super) async fn abandon(&mut self, server: &mut Running, why: String) {
        let Some(new) = server.candidate.take() else {
            return;
        };
        self.retire(new.child, new.pid, Vec::new(), "the new version");
        let copied = futures_util::future::join_all(new.copiers);
        let _ = tokio::time::timeout(TAIL_WAIT, copied).await;
        if new.fresh.is_some() {
            self.lease.record(&self.leased);
        }
        self.out.say(format!(
            "reload failed: {why}; the old version keeps serving"
        ));
        let lines = new.tail.lines();
        let mut error = format!("{why}; the old version (pid {}) keeps serving", server.pid);
        match lines.is_empty() {
            true => error.push_str("; the new version wrote nothing"),
            false => {
                error.push_str("\nthe new version's last output:\n");
                error.push_str(&lines.join("\n"));
            }
        }
        self.route.reloaded(new.id, Some(error)).await;
    }

    /// Stop a version in the background: once `drain` (its old ports) have no connection
    /// waiting, SIGTERM, the grace, SIGKILL, and what it left running. The supervisor waits for
    /// these before it exits; the receiver hears when it is over.
    fn retire(
        &mut self,
        child: Child,
        pid: i32,
        drain: Vec<u16>,
        what: &'static str,
    ) -> oneshot::Receiver<()> {
        let (out, group, grace) = (self.out.clone(), self.server.own_group, self.stopper.grace);
        let drain = Drain {
            ports: drain,
            hurry: self.hurry.clone(),
        };
        let (done, gone) = oneshot::channel();
        self.others.retain(|(_, task)| !task.is_finished());
        let task = tokio::spawn(async move {
            retire(child, pid, group, grace, drain, out, what).await;
            let _ = done.send(());
        });
        self.others.push((pid, task));
        gone
    }
}

/// The ports whose accept queues must empty before a version is stopped, unless wharf is
/// stopping (`hurry`).
struct Drain {
    ports: Vec<u16>,
    hurry: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drain {
    fn waiting(&self) -> bool {
        !self.hurry.load(std::sync::atomic::Ordering::Relaxed)
            && self
                .ports
                .iter()
                .any(|p| netstat::accept_queue(*p).is_some_and(|n| n > 0))
    }
}

async fn retire(
    mut child: Child,
    pid: i32,
    group: bool,
    grace: Duration,
    drain: Drain,
    out: Output,
    what: &str,
) {
    if !drain.ports.is_empty() {
        tokio::time::sleep(DRAIN_SETTLE).await;
    }
    let until = tokio::time::Instant::now() + DRAIN_LIMIT;
    while drain.waiting() {
        if tokio::time::Instant::now() >= until {
            out.say(format!(
                "{what} still has connections waiting after {}; stopping it anyway",
                ran_for(DRAIN_LIMIT)
            ));
            break;
        }
        tokio::time::sleep(DRAIN_LOOK).await;
    }
    let family = process::family_of(pid);
    let target = if group { -pid } else { pid };
    let _ = kill(Pid::from_raw(target), Signal::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            out.say(format!(
                "{what} (pid {pid}) did not stop within {} of SIGTERM; killing it (SIGKILL)",
                ran_for(grace)
            ));
            process::kill_all(&process::union(family.clone(), process::family_of(pid)));
            child.wait().await
        }
    };
    // Reaped: no longer one of this process's children.
    super::children::remove(pid);
    let left: Vec<_> = process::union(family, process::family_of(pid))
        .into_iter()
        .filter(|p| p.pid != pid && p.is_alive())
        .collect();
    if !left.is_empty() {
        let deadline = std::time::Instant::now() + LEFTOVER_GRACE;
        let _ = tokio::task::spawn_blocking(move || process::end_all(&left, deadline)).await;
    }
    if let Ok(status) = status {
        out.say(format!(
            "{what} (pid {pid}) {}",
            stop::describe(status, None)
        ));
    }
}
