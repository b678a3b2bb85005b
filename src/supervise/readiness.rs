//! Where the server listens and when it is ready: in env mode, the port it bound; in fd mode,
//! the guard on the socket it was handed; `READY=1` notices and `--ready http:` probes. Each
//! finding moves the route (its address and state) and is said.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::demand::{self, Probe};
use super::output::Output;
use super::registration::Registration;
use crate::model::instance::State;
use crate::model::mode::{self, Mode};
use crate::model::project::Ready;
use crate::sys::netstat::{self, Guard, Listener, PortWatch, Verdict};
use crate::sys::notify::Notice;
use crate::sys::socket::BoundSocket;
use crate::sys::ticker::Ticker;

/// Env mode: how often the expected port is glanced at in the first `GLANCE_FAST_FOR` of a
/// start, so that requests waiting for the server go through within a fraction of a
/// millisecond of its listening. A glance is one or two lookups of the port in the kernel's
/// listening table (`netstat::PortWatch`, 3 µs of CPU) on the supervisor's own loop, woken by
/// a `timerfd` (`Ticker`), so no thread has to hand the finding over. With the wake-up, about
/// 34-44 µs of CPU a glance on a busy 2-CPU VM: 13-18 % of one CPU for that first second,
/// then 3.5-4.5 % (the thread it replaced, one glance a millisecond, took 7 %). The full look (which process
/// listens, on which port) keeps its slower pace, and runs at once when a glance finds the
/// port taken.
const GLANCE_EVERY: Duration = Duration::from_micros(250);
const GLANCE_FAST_FOR: Duration = Duration::from_secs(1);
/// After that, a server slow to start is glanced at this often.
const GLANCE_LATER: Duration = Duration::from_millis(1);
/// Glancing stops after this; the looks go on.
const GLANCE_FOR: Duration = Duration::from_secs(10);
/// Env mode: a listener elsewhere than the address the server was given counts once a second
/// look, this much later, finds the very socket still listening. Servers check a port before
/// they bind it: Vite listens on `0.0.0.0` and `[::]` for a moment, closes both, then binds
/// `127.0.0.1`; a route to such a check's socket leads nowhere.
const CONFIRM_AFTER: Duration = Duration::from_millis(1);
/// Env mode: the listener routed to is watched this long. If it goes away while the server
/// lives (a check that outlived the confirming look, a server that binds again), the looks
/// start over and the route follows.
const SETTLE_FOR: Duration = Duration::from_secs(10);

/// What the instance expects of every server it starts (a reload onto fresh sockets moves
/// `port` and `handed`).
#[derive(Clone)]
pub(super) struct Expect {
    pub(super) mode: Mode,
    pub(super) ready: Option<Ready>,
    /// The port the server was given: where an env-mode server should listen.
    pub(super) port: u16,
    /// The main socket handed over, where the route points unless the server listens elsewhere.
    pub(super) handed: SocketAddr,
    /// How to fix a server that ignores the socket it was handed.
    pub(super) fix: String,
    /// The server is given `NOTIFY_SOCKET` and is expected to send `READY=1`.
    pub(super) notifies: bool,
}

impl Expect {
    pub(super) fn new(
        mode: Mode,
        ready: Option<Ready>,
        port: u16,
        handed: SocketAddr,
        source: mode::Source<'_>,
    ) -> Expect {
        let fix = format!(
            "to serve on the handed socket, give it fd 3 (an {{fd}} placeholder); or let it bind \
             PORT itself ({})",
            source.switch(Mode::Env)
        );
        Expect {
            mode,
            ready,
            port,
            handed,
            fix,
            notifies: false,
        }
    }
}

/// Watching one server come up: looking for its listener, guarding the handed socket,
/// probing it over HTTP.
pub(super) struct Readiness {
    expected: u16,
    handed: SocketAddr,
    /// No `--ready` was given, so a server that accepts is ready.
    says_ready: bool,
    fix: String,
    /// Env mode: the port the server listens on is not found yet.
    looking: bool,
    /// Env mode: a listener seen once, routed to if the next look finds it again.
    sighted: Option<Listener>,
    /// Env mode: the listener routed to, watched until the instant (see `SETTLE_FOR`).
    settling: Option<(Listener, Instant)>,
    /// Env mode: where the server listened before that socket closed while settling.
    left: Option<SocketAddr>,
    /// Pause before the next look (or guard check), doubling up to half a second.
    look_pause: Duration,
    /// Env mode: watching the expected port until it is listened on (see `GLANCE_EVERY`).
    glance: Option<Glance>,
    /// Fd mode: does the server serve on the socket it was handed? Absent while a check runs
    /// and once that is settled.
    guard: Option<Guard>,
    checking: Option<JoinHandle<(Guard, Verdict)>>,
    /// `--ready http:PATH`, until it answers 2xx or 3xx.
    probing: Option<demand::Prober>,
    last_answer: Option<http::StatusCode>,
}

/// What readiness watching waits for.
pub(super) enum Finding {
    /// Time to look for the listener again (and to run the guard's next check).
    LookDue,
    /// Something listens on the expected port now (true: look at once), or the glance ended
    /// without seeing it (its 10 s are over; the looks go on).
    Glanced(bool),
    /// The guard's check ended (`None`: it failed, and the guard with it).
    Checked(Option<(Guard, Verdict)>),
    Probed(Probe),
}

impl Readiness {
    /// Start watching a server just started; `held` are wharf's copies of its sockets (fd mode).
    pub(super) async fn begin(
        expect: &Expect,
        held: Option<&[BoundSocket]>,
        route: &mut Registration,
    ) -> Readiness {
        let guard = match (held, expect.mode) {
            (Some(sockets), Mode::Fd) => Guard::new(sockets),
            _ => None,
        };
        route.instance.exposed = None;
        let probing = match &expect.ready {
            Some(Ready::Http(path)) => Some(demand::Prober::new(path.clone())),
            _ => None,
        };
        if expect.mode == Mode::Fd && expect.ready == Some(Ready::Connect) {
            // The socket accepts from the start: that is all `connect` asks.
            route.set_state(State::Ready).await;
        }
        Readiness {
            expected: expect.port,
            handed: expect.handed,
            says_ready: expect.ready.is_none(),
            fix: expect.fix.clone(),
            looking: expect.mode == Mode::Env,
            sighted: None,
            settling: None,
            left: None,
            look_pause: Duration::from_millis(20),
            glance: (expect.mode == Mode::Env)
                .then(|| Glance::new(expect.port))
                .flatten(),
            guard,
            checking: None,
            probing,
            last_answer: None,
        }
    }

    /// The next finding; pending while there is nothing left to watch. `main` is where the
    /// route points now (what a probe asks).
    pub(super) async fn next(&mut self, main: SocketAddr) -> Finding {
        tokio::select! {
            _ = tokio::time::sleep(self.look_pause), if self.looking || self.settling.is_some() || self.guard.is_some() => Finding::LookDue,
            // Each ends its branch for good (a finished receiver or task must not be polled
            // again), whatever it ended with.
            seen = async { Some(self.glance.as_mut()?.seen().await) }, if self.glance.is_some() => {
                Finding::Glanced(seen == Some(true))
            }
            checked = async { self.checking.as_mut()?.await.ok() }, if self.checking.is_some() => {
                Finding::Checked(checked)
            }
            Some(probe) = async { Some(self.probing.as_mut()?.next(main).await) }, if self.probing.is_some() => {
                Finding::Probed(probe)
            }
            else => std::future::pending().await,
        }
    }

    /// Act on a finding about the server `child`.
    pub(super) async fn on(
        &mut self,
        finding: Finding,
        child: i32,
        route: &mut Registration,
        out: &Output,
    ) {
        match finding {
            Finding::LookDue => self.look(child, route, out).await,
            Finding::Glanced(seen) => {
                self.glance = None;
                if seen {
                    self.look(child, route, out).await;
                }
            }
            Finding::Checked(checked) => {
                self.checking = None;
                let Some((g, verdict)) = checked else { return };
                if verdict == Verdict::Watching {
                    self.guard = Some(g);
                }
                self.on_verdict(verdict, route, out).await;
            }
            Finding::Probed(probe) => self.on_probe(probe, route, out).await,
        }
    }

    /// Look for the port an env-mode server listens on (or check that the one routed to still
    /// listens), and start the guard's next check.
    async fn look(&mut self, child: i32, route: &mut Registration, out: &Output) {
        let expected = self.expected;
        if let Some((l, until)) = self.settling {
            if Instant::now() >= until {
                self.settling = None;
            } else if netstat::still_listening(&l) == Some(false) {
                self.settling = None;
                self.looking = true;
                self.left = Some(l.bound);
            }
        }
        let mut confirming = false;
        if self.looking {
            match pick_listener(&netstat::listening(child, expected), expected) {
                // The very address the server was given counts at once: the checks seen so
                // far listen on every interface, and the watch below catches the rest.
                Some(l) if self.sighted == Some(l) || l.bound == self.handed => {
                    self.looking = false;
                    self.glance = None;
                    self.sighted = None;
                    self.settling = Some((l, Instant::now() + SETTLE_FOR));
                    // A reloader (Django's runserver) closes its socket and opens another on
                    // the same address: the route stays, and "now" would say it moved.
                    let moved = match self.left.take() {
                        None => String::new(),
                        Some(was) if was == l.bound => " again (on a new socket)".to_string(),
                        Some(was) => format!(" now (it closed the socket on {was})"),
                    };
                    let own = l.connect.port() != expected;
                    let line = if own {
                        format!(
                            "listens on {}{moved}, not on port {expected} as asked; routing there",
                            l.bound
                        )
                    } else {
                        format!("listening on {}{moved}", l.bound)
                    };
                    follow(route, out, l, self.probing.is_some(), own, line).await;
                }
                sighted => {
                    confirming = sighted.is_some();
                    self.sighted = sighted;
                }
            }
        }
        if let Some(mut g) = self.guard.take() {
            // Reading /proc can take a while on a busy machine: off the supervisor's loop,
            // which must stay quick to pass signals on and notice an exit.
            self.checking = Some(tokio::task::spawn_blocking(move || {
                let verdict = g.check(child);
                (g, verdict)
            }));
        }
        self.look_pause = if confirming {
            CONFIRM_AFTER
        } else {
            (self.look_pause * 2).min(Duration::from_millis(500))
        };
    }

    async fn on_probe(&mut self, probe: Probe, route: &mut Registration, out: &Output) {
        let path = self
            .probing
            .as_ref()
            .map(|p| p.path().to_string())
            .unwrap_or_default();
        match probe {
            Probe::Ready(status) => {
                out.say(format!("ready (GET {path} answered {status})"));
                self.probing = None;
                route.set_state(State::Ready).await;
            }
            Probe::Answered(status) if self.last_answer != Some(status) => {
                out.say(format!(
                    "GET {path} answered {status}; not ready until it answers 2xx or 3xx"
                ));
                self.last_answer = Some(status);
            }
            _ => {}
        }
    }

    /// Act on what the fd-mode guard found out about the server and the handed socket.
    async fn on_verdict(&self, verdict: Verdict, route: &mut Registration, out: &Output) {
        let handed = self.handed;
        let fix = &self.fix;
        let probing = self.probing.is_some();
        match verdict {
            Verdict::Watching => {}
            Verdict::Serving => {
                let state = match route.instance.state {
                    State::Starting if self.says_ready => {
                        out.say("ready (accepted a connection on its socket)".to_string());
                        State::Ready
                    }
                    state => state,
                };
                if route.main_addr() != handed || state != route.instance.state {
                    route.instance.own_port = false;
                    route.set_main_addr(handed);
                    route.set_state(state).await;
                }
            }
            Verdict::Elsewhere { listener, closed } => {
                let what = if closed {
                    "closed the socket it was handed"
                } else {
                    "does not accept on the socket it was handed"
                };
                let line = format!(
                    "the server {what} ({handed}) and listens on {} instead; routing there ({fix})",
                    listener.bound
                );
                follow(route, out, listener, probing, true, line).await;
            }
            Verdict::Nowhere { unreachable } => {
                let listens = match unreachable.as_slice() {
                    [] => "no TCP port".to_string(),
                    addrs => addrs
                        .iter()
                        .map(|a| format!("{a}, which loopback cannot reach"))
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                out.say(format!(
                    "the server closed the socket it was handed ({handed}) and listens on {listens}: \
                     nothing can reach it through wharf; {fix}"
                ));
                route.set_state(State::Failed).await;
            }
        }
    }
}

/// Env mode: the expected port, glanced at every `GLANCE_EVERY`, then every `GLANCE_LATER`,
/// for `GLANCE_FOR`.
struct Glance {
    ticks: Ticker,
    port: PortWatch,
    /// Seen free: only a start counts (until the child has exec'd it still holds wharf's
    /// socket on the port).
    free: bool,
    /// When the glances slow down (`None` once they have), and when they stop.
    fast_until: Option<Instant>,
    until: Instant,
}

impl Glance {
    /// `None` where the platform cannot tell cheaply.
    fn new(port: u16) -> Option<Glance> {
        let now = Instant::now();
        Some(Glance {
            port: PortWatch::new(port)?,
            ticks: Ticker::new(GLANCE_EVERY)?,
            free: false,
            fast_until: Some(now + GLANCE_FAST_FOR),
            until: now + GLANCE_FOR,
        })
    }

    /// True once something listens on the port after it was seen free; false once
    /// `GLANCE_FOR` has passed (or the timer failed). Cancel-safe.
    async fn seen(&mut self) -> bool {
        loop {
            let now = Instant::now();
            if now >= self.until {
                return false;
            }
            if self.fast_until.is_some_and(|t| now >= t) {
                self.fast_until = None;
                if self.ticks.every(GLANCE_LATER).is_err() {
                    return false;
                }
            }
            if self.ticks.tick().await.is_err() {
                return false;
            }
            if self.started(self.port.listened()) {
                return true;
            }
        }
    }

    /// Take one glance's answer (`None`: the kernel would not say): true if it is a start.
    fn started(&mut self, listened: Option<bool>) -> bool {
        match listened {
            Some(true) => self.free,
            Some(false) => {
                self.free = true;
                false
            }
            None => false,
        }
    }
}

/// `READY=1` and the other notices the server sent to `NOTIFY_SOCKET`.
pub(super) async fn on_notices(notices: Vec<Notice>, route: &mut Registration, out: &Output) {
    for notice in notices {
        match notice {
            Notice::Ready => {
                out.say("ready (READY=1)".to_string());
                route.set_state(State::Ready).await;
            }
            Notice::Status(s) => out.say(format!("status: {s}")),
            Notice::Stopping => out.say("stopping (STOPPING=1)".to_string()),
            Notice::Reloading => out.say("reloading (RELOADING=1)".to_string()),
        }
    }
}

/// The expected port if the server listens there, else the lowest port it listens on.
fn pick_listener(found: &[Listener], expected: u16) -> Option<Listener> {
    found
        .iter()
        .find(|l| l.connect.port() == expected)
        .or(found.first())
        .copied()
}

/// Route to `listener` from now on, then say `line`, and say loudly if the whole network
/// reaches it. Routed first, said second: whoever waits for the line finds the route in place.
/// `probing`: an `--ready http:` probe decides readiness, so listening is not enough; `own`:
/// the server chose that port itself, instead of the one wharf gave it.
async fn follow(
    route: &mut Registration,
    out: &Output,
    listener: Listener,
    probing: bool,
    own: bool,
    line: String,
) {
    route.instance.exposed = listener.is_exposed().then_some(listener.bound);
    route.instance.own_port = own;
    route.set_main_addr(listener.connect);
    let state = if probing {
        State::Starting
    } else {
        State::Ready
    };
    route.set_state(state).await;
    out.say(line);
    if listener.is_exposed() {
        out.say(format!(
            "warning: {}",
            netstat::exposed_warning(listener.bound)
        ));
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[tokio::test]
    async fn a_glance_counts_a_listener_that_starts_not_one_that_was_there() {
        let before = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = before.local_addr().unwrap().port();
        let mut glance = Glance::new(port).expect("sock_diag and timerfd on Linux");
        // wharf's own socket, still there at the first glances: not the server's start.
        assert!(!glance.started(glance.port.listened()));
        drop(before);
        assert!(!glance.started(glance.port.listened()), "free");
        let server = TcpListener::bind(("127.0.0.1", port)).unwrap();
        assert!(glance.started(glance.port.listened()), "the server's");
        drop(server);
    }

    #[tokio::test]
    async fn a_glance_wakes_its_waiter_when_the_port_is_listened_on() {
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let mut glance = Glance::new(port).expect("sock_diag and timerfd on Linux");
        assert!(!glance.started(glance.port.listened()), "free");
        let _server = TcpListener::bind(("[::]", port))
            .or_else(|_| TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(10), glance.seen()).await;
        assert_eq!(seen.ok(), Some(true));
    }
}
