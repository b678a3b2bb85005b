//! A `wharf run` instance's registration with the front proxy: the route lives as long as the
//! control connection; if the proxy goes away, the route is registered again with its
//! successor. Without any proxy the instance is served directly and every call is a no-op.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use super::output::Output;
use crate::control::client::Heard;
use crate::control::launch;
use crate::control::protocol::Closed;
use crate::model::instance::{Front, Instance, State};
use crate::model::mode::Mode;
use crate::model::name::Name;
use crate::model::ports::MAIN_SOCKET;
use crate::sys::socket::BoundSocket;

/// The instance's registration with the front proxy. The route lives as long as the control
/// connection; if the proxy goes away, the route is re-registered with its successor (started
/// here if it crashed, waited for if it was stopped on purpose). Without any proxy the instance
/// is served directly on its own port.
pub(crate) struct Registration {
    pub(crate) instance: Instance,
    out: Output,
    runtime: PathBuf,
    self_exe: PathBuf,
    client: Option<crate::control::client::Client>,
    /// How URLs reach the proxy, once one answered.
    front: Option<Front>,
    /// Why the last connection ended, and when to try again.
    closed: Closed,
    retry_at: Option<tokio::time::Instant>,
    retry_pause: Duration,
}

pub(crate) enum RouteEvent {
    Closed(Closed),
    RetryDue,
    /// The proxy relays `wharf reload`: start a new version, then answer with `reloaded`.
    Reload(u64),
}

/// Retry pace while the proxy is away: fast enough to be back within a second or two.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_millis(500);

impl Registration {
    pub(crate) fn new(
        out: &Output,
        runtime: &Path,
        self_exe: &Path,
        name: &Name,
        mode: Mode,
        bound: &[BoundSocket],
    ) -> Registration {
        Registration {
            out: out.clone(),
            runtime: runtime.to_path_buf(),
            self_exe: self_exe.to_path_buf(),
            client: None,
            front: None,
            instance: Instance {
                name: name.clone(),
                pid: std::process::id() as i32,
                member: None,
                sticky: false,
                restarts: false,
                child_pid: None,
                mode,
                state: State::Starting,
                sockets: bound.iter().map(|b| (b.name.clone(), b.addr())).collect(),
                last_exit: None,
                exposed: None,
                own_port: false,
                declared: None,
                started_at: Some(crate::state::registry::unix_now()),
                requests_before: None,
                about: Default::default(),
            },
            closed: Closed::Lost,
            retry_at: None,
            retry_pause: RETRY_FIRST,
        }
    }

    /// Find (or start) the proxy and register. A proxy that refuses the name is an error; a
    /// proxy that cannot be started leaves the instance served directly.
    pub(crate) async fn connect(&mut self) -> anyhow::Result<()> {
        let out = self.out.clone();
        match launch::connect_or_start(&self.runtime, &self.self_exe).await {
            Ok(connected) => {
                if connected.started {
                    connected
                        .hello
                        .pid
                        .into_iter()
                        .for_each(super::children::add);
                    out.say(format!(
                        "started the front proxy (log: {})",
                        self.runtime.join("proxy.log").display()
                    ));
                }
                self.front = Some(connected.hello.front());
                self.client = Some(connected.client);
                let register = crate::control::protocol::Request::Register {
                    instance: Box::new(self.instance.clone()),
                };
                if let Some(client) = self.client.as_mut() {
                    let answer = client
                        .call(&register)
                        .await
                        .context("the front proxy refused this instance")?;
                    self.numbered(&answer);
                }
            }
            Err(e) => out.say(format!(
                "{e:#}; serving directly on the instance's own port"
            )),
        }
        Ok(())
    }

    /// `http(s)://NAME.localhost[:PORT]`: through the proxy if there is one, else direct.
    pub(crate) fn url(&self, direct_port: u16) -> String {
        self.front
            .unwrap_or(Front::http(direct_port))
            .url(&self.instance.name)
    }

    pub(crate) async fn started(&mut self, child: i32) {
        self.instance.child_pid = Some(child);
        self.set_state(State::Starting).await;
    }

    pub(crate) async fn set_state(&mut self, state: State) {
        if state == State::Ready && self.instance.state != State::Ready {
            self.out.event("ready", serde_json::json!({}));
        }
        self.instance.state = state;
        self.send().await;
    }

    pub(crate) fn set_main_addr(&mut self, addr: SocketAddr) {
        self.instance.sockets.insert(MAIN_SOCKET.to_string(), addr);
    }

    pub(crate) fn main_addr(&self) -> SocketAddr {
        self.instance.sockets[MAIN_SOCKET]
    }

    async fn send(&mut self) {
        let request = crate::control::protocol::Request::Register {
            instance: Box::new(self.instance.clone()),
        };
        let Some(client) = self.client.as_mut() else {
            return;
        };
        match client.call(&request).await {
            Ok(answer) => self.numbered(&answer),
            Err(_) => {
                let closed = client.how_closed();
                self.on_lost(closed);
            }
        }
    }

    /// A `--join`ed member (`member: Some(0)`) keeps the number the proxy gave it, so that
    /// every later registration (a state change, a new proxy) is the same member.
    fn numbered(&mut self, answer: &crate::control::protocol::Response) {
        if let (Some(0), Some(k)) = (self.instance.member, answer.member.filter(|k| *k > 0)) {
            self.instance.member = Some(k);
            self.out.set_member(k);
            self.out
                .say(format!("joined {} as member {k}", self.instance.name));
            self.out.event("member", serde_json::json!({ "member": k }));
        }
    }

    /// The next thing to act on: the connection closing, or a retry falling due. Pending
    /// forever when there is neither (no proxy, none expected).
    pub(crate) async fn next_event(&mut self) -> RouteEvent {
        match (self.client.as_mut(), self.retry_at) {
            (Some(client), _) => match client.next_event().await {
                Heard::Closed(closed) => RouteEvent::Closed(closed),
                Heard::Reload(id) => RouteEvent::Reload(id),
            },
            (None, Some(at)) => {
                tokio::time::sleep_until(at).await;
                RouteEvent::RetryDue
            }
            (None, None) => std::future::pending().await,
        }
    }

    /// Act on an event about the route. A reload is the supervisor's to carry out (each phase
    /// of its life answers it its own way); one that reaches here is refused.
    pub(crate) async fn on_event(&mut self, event: RouteEvent) {
        match event {
            RouteEvent::Closed(closed) => self.on_lost(closed),
            RouteEvent::RetryDue => self.reconnect().await,
            RouteEvent::Reload(id) => {
                let why = "this instance cannot reload now";
                self.reloaded(id, Some(why.to_string())).await
            }
        }
    }

    /// Report on the reload numbered `id`: done (`None`) or why not.
    pub(crate) async fn reloaded(&mut self, id: u64, error: Option<String>) {
        if let Some(client) = self.client.as_mut()
            && client.report_reloaded(id, error).await.is_err()
        {
            let closed = client.how_closed();
            self.on_lost(closed);
        }
    }

    /// A registration that reaches no proxy, with this one's instance: where a new version's
    /// readiness is worked out before the route moves to it.
    pub(crate) fn detached(&self) -> Registration {
        Registration {
            instance: self.instance.clone(),
            out: self.out.clone(),
            runtime: self.runtime.clone(),
            self_exe: self.self_exe.clone(),
            client: None,
            front: self.front,
            closed: Closed::Lost,
            retry_at: None,
            retry_pause: RETRY_FIRST,
        }
    }

    fn on_lost(&mut self, closed: Closed) {
        let out = &self.out;
        // What this proxy counted goes to the next one.
        if let Some(n) = self
            .client
            .as_ref()
            .and_then(|c| c.requests(&self.instance.name))
        {
            self.instance.requests_before = Some(n);
        }
        self.client = None;
        self.closed = closed;
        match closed {
            Closed::Stopping => {
                out.say("the front proxy stopped; waiting for it to come back".to_string())
            }
            Closed::Lost => out.say("lost the front proxy; restarting it".to_string()),
        }
        self.retry_pause = RETRY_FIRST;
        self.schedule_retry();
    }

    fn schedule_retry(&mut self) {
        self.retry_at = Some(tokio::time::Instant::now() + self.retry_pause);
        self.retry_pause = (self.retry_pause * 2).min(RETRY_MAX);
    }

    /// One reconnect attempt: start a proxy only if the last one did not stop on purpose.
    async fn reconnect(&mut self) {
        let connected = match self.closed {
            Closed::Lost => launch::connect_or_start(&self.runtime, &self.self_exe)
                .await
                .ok(),
            Closed::Stopping => launch::connect(&self.runtime).await,
        };
        let Some(connected) = connected else {
            self.schedule_retry();
            return;
        };
        if connected.started {
            connected
                .hello
                .pid
                .into_iter()
                .for_each(super::children::add);
        }
        self.client = Some(connected.client);
        self.retry_at = None;
        self.send().await;
        if self.client.is_some() {
            self.out
                .say("registered again with the front proxy".to_string());
        }
    }

    /// Deregister: closing the connection removes the route.
    pub(crate) async fn remove(&mut self) {
        self.client = None;
        self.retry_at = None;
    }
}
