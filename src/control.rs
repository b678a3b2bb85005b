//! The control protocol between `wharf` commands and the front proxy: JSON, one object per
//! line, over a Unix stream socket in the private runtime directory (same user only). This
//! file owns the messages, the client, and the proxy's side.
//!
//! Requests (`op`): `hello`, `register`, `list`, `stop`, `alias`. Every request gets one
//! response line: `{"ok":true,…}` or `{"ok":false,"error":"…"}`. A `register`ed route lives as
//! long as the connection that registered it; on shutdown the proxy sends
//! `{"ok":true,"event":"stopping"}` before closing. While routes live, the proxy sends their
//! request counts (`{"ok":true,"event":"requests","requests":{"api":12}}`) when they change,
//! so an instance can carry them to the next proxy if this one dies.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use tokio::net::UnixListener;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::model::mode::Mode;
use crate::model::name::Name;
use crate::routes::{AliasMap, Owner, Route, Routes, alias_instance};

pub const SOCKET_FILE: &str = "control.sock";

pub fn socket_path(runtime: &Path) -> PathBuf {
    runtime.join(SOCKET_FILE)
}

/// Where an instance is in its life, as the proxy shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Started, not yet known to serve (fd mode before `READY=1`, env mode before it listens).
    Starting,
    Ready,
    /// Between an exit and the next start (`--restart`).
    Restarting,
    /// On demand: the socket is held, no server runs; the next connection starts one.
    Idle,
    /// Gave up after repeated failures; the proxy answers for it (`wharf logs NAME`).
    Failed,
    /// Listed from the registry while no proxy runs: its `wharf run` lives, nothing more is
    /// known. Never registered.
    Running,
}

impl std::fmt::Display for State {
    /// The name `ls`, its JSON and the dashboard all use.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Restarting => "restarting",
            State::Idle => "idle",
            State::Failed => "failed",
            State::Running => "running",
        })
    }
}

/// One instance as registered: where each of its sockets is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub name: Name,
    /// The `wharf run` process that holds the registration (`PID` in `ls`).
    pub pid: i32,
    /// The server's pid, when one runs (`SERVER PID` in `ls`).
    #[serde(default, rename = "server_pid", alias = "child_pid")]
    pub child_pid: Option<i32>,
    pub mode: Mode,
    pub state: State,
    /// socket name (`http`, or a `--socket` name) → address the proxy forwards to.
    pub sockets: BTreeMap<String, SocketAddr>,
    /// Set when its server listens on every interface (`0.0.0.0`, `[::]`): that address, so
    /// that `ls` and the dashboard warn that the network reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed: Option<SocketAddr>,
    /// The last exit of its server, described (`exited with code 3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// For instances declared in a wharf.toml: which file, and a digest of the declaration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared: Option<Declaration>,
    /// When the instance started (Unix seconds): its uptime outlives a proxy restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// Requests earlier proxies forwarded to it, carried to the next one when it registers
    /// again; folded into `requests` when listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_before: Option<u64>,
    /// What it runs and where, for people looking at it (`ls --json`, the dashboard).
    #[serde(default, flatten)]
    pub about: About,
}

/// Where an instance's server comes from and where its output goes, as `wharf run` knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct About {
    /// The command as run (placeholders filled in, flags wharf added included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Its working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// The file its output goes to (`--log`); `None`: the terminal of `wharf run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
}

/// How much of a command the registration carries: enough to recognise it, and far below
/// the control socket's line limit however long the real one is.
const SHOWN_COMMAND: usize = 4096;

impl About {
    /// `command` is cut after `SHOWN_COMMAND` bytes, its last argument then `…`.
    pub fn new(command: &[String], dir: Option<PathBuf>, log: Option<PathBuf>) -> About {
        let mut shown = Vec::new();
        let mut len = 0;
        for arg in command {
            len += arg.len() + 1;
            if len > SHOWN_COMMAND {
                shown.push("…".to_string());
                break;
            }
            shown.push(arg.clone());
        }
        About {
            command: shown,
            dir,
            log,
        }
    }
}

/// Where a declared instance comes from, so `wharf up` can tell what changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declaration {
    pub file: PathBuf,
    pub fingerprint: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Who are you: the proxy's HTTP port and pid.
    Hello,
    /// Add or replace an instance; it lives as long as this connection.
    Register { instance: Box<Instance> },
    /// Every route.
    List,
    /// Remove a route at once; answers with the pid of the `wharf run` that held it.
    Stop { name: Name },
    /// Route `name` to a server wharf did not start (`addr: null` removes the alias).
    Alias {
        name: Name,
        addr: Option<SocketAddr>,
    },
}

/// One route as `list` and the dashboard show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    #[serde(flatten)]
    pub instance: Instance,
    pub url: String,
    pub alias: bool,
    pub uptime_secs: u64,
    pub requests: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `hello`: the proxy's HTTP port (for URLs) and pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// `hello`: every address the proxy's HTTP listeners are on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<SocketAddr>,
    /// `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<Listed>>,
    /// Things the user should know that did not stop the request (a corrupt file moved aside).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Unprompted news on a registration connection: `"stopping"` when the proxy shuts down,
    /// `"requests"` with the counts of the routes it registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// `requests` event: requests forwarded so far, per name this connection registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<BTreeMap<Name, u64>>,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            ok: true,
            ..Default::default()
        }
    }

    pub fn error(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }
}

/// Why a registration connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The proxy said it is shutting down on purpose: do not start another.
    Stopping,
    /// The connection just broke (the proxy crashed or was killed).
    Lost,
}

/// A connection to the proxy's control socket.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The proxy said it is stopping on purpose (an `event` line, possibly mid-call).
    stopping: bool,
    /// The latest request counts the proxy sent for what this connection registered.
    requests: BTreeMap<Name, u64>,
}

impl Client {
    /// Connect to the proxy; `Ok(None)` when no proxy listens there.
    pub async fn connect(path: &Path) -> io::Result<Option<Client>> {
        match UnixStream::connect(path).await {
            Ok(stream) => {
                let (r, w) = stream.into_split();
                Ok(Some(Client {
                    reader: BufReader::new(r),
                    writer: w,
                    stopping: false,
                    requests: BTreeMap::new(),
                }))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Send one request and read its response; a response with `ok: false` becomes an error.
    pub async fn call(&mut self, request: &Request) -> io::Result<Response> {
        let mut line = serde_json::to_vec(request).expect("requests serialise");
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        let response = loop {
            let response = self.read_response().await?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the proxy closed the connection",
                )
            })?;
            if response.event.is_none() {
                break response;
            }
        };
        if !response.ok {
            let msg = response
                .error
                .unwrap_or_else(|| "the proxy refused".to_string());
            return Err(io::Error::other(msg));
        }
        Ok(response)
    }

    /// The next line as a response (`None` at the end); events are noted on the way.
    async fn read_response(&mut self) -> io::Result<Option<Response>> {
        let mut answer = String::new();
        if self.reader.read_line(&mut answer).await? == 0 {
            return Ok(None);
        }
        let response: Response = serde_json::from_str(&answer).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad answer from the proxy: {e}"),
            )
        })?;
        match response.event.as_deref() {
            Some("stopping") => self.stopping = true,
            Some("requests") => self.requests = response.requests.clone().unwrap_or_default(),
            _ => {}
        }
        Ok(Some(response))
    }

    /// Requests the proxy last said it forwarded to `name` (registered on this connection).
    pub fn requests(&self, name: &Name) -> Option<u64> {
        self.requests.get(name).copied()
    }

    /// How this connection ended (or would, if it is broken now): on purpose or not.
    pub fn how_closed(&self) -> Closed {
        if self.stopping {
            Closed::Stopping
        } else {
            Closed::Lost
        }
    }

    /// Resolves when the proxy closes the connection, saying whether it meant to.
    pub async fn closed(&mut self) -> Closed {
        while let Ok(Some(_)) = self.read_response().await {}
        self.how_closed()
    }
}

/// Every route the proxy at `path` knows, asked without an async runtime (for code holding a
/// file lock), each step bounded by `limit`; `None` when no proxy answers in time.
pub fn list_blocking(path: &Path, limit: std::time::Duration) -> Option<Vec<Listed>> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    stream.set_write_timeout(Some(limit)).ok()?;
    let mut line = serde_json::to_vec(&Request::List).expect("requests serialise");
    line.push(b'\n');
    stream.write_all(&line).ok()?;
    let mut reader = std::io::BufReader::new(stream);
    loop {
        let mut answer = String::new();
        if reader.read_line(&mut answer).ok()? == 0 {
            return None;
        }
        let response: Response = serde_json::from_str(&answer).ok()?;
        if response.event.is_none() {
            return response.instances.filter(|_| response.ok);
        }
    }
}

/// The proxy's side of the control socket: what it knows and how it answers.
pub struct ControlPlane {
    pub routes: Arc<Routes>,
    /// The port URLs use (the first HTTP listener's).
    pub http_port: u16,
    /// Where its HTTP listeners are, for `hello`.
    pub listen: Vec<SocketAddr>,
    /// Where aliases are kept between proxy runs.
    pub aliases_path: PathBuf,
    /// Notes from loading the aliases (a corrupt file moved aside) not yet told to a user:
    /// the next `alias` answer carries them.
    untold: std::sync::Mutex<Vec<String>>,
    next_connection: AtomicU64,
}

/// Longest request line accepted on the control socket.
const MAX_LINE: usize = 64 * 1024;
/// How often a registration connection hears its routes' request counts (when they changed):
/// what a proxy crash can lose.
const COUNTS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl ControlPlane {
    /// `listen` is every HTTP listener's address; URLs use the first one's port.
    pub fn new(
        routes: Arc<Routes>,
        listen: Vec<SocketAddr>,
        aliases_path: PathBuf,
    ) -> ControlPlane {
        ControlPlane {
            routes,
            http_port: listen.first().map_or(80, SocketAddr::port),
            listen,
            aliases_path,
            untold: std::sync::Mutex::default(),
            next_connection: AtomicU64::new(1),
        }
    }

    /// Route the stored aliases; returns how many, and a note if the file was corrupt and
    /// moved aside. `Err` when it cannot be read at all.
    pub fn load_aliases(&self) -> Result<(usize, Option<String>), String> {
        let (aliases, note) = self.read_aliases()?;
        if let Some(note) = &note {
            self.untold.lock().expect("not poisoned").push(note.clone());
        }
        for (name, addr) in &aliases {
            let _ = self
                .routes
                .register(Owner::Alias, alias_instance(name.clone(), *addr));
        }
        Ok((aliases.len(), note))
    }

    /// The alias file's contents. One that does not parse is moved aside (like the port
    /// registry) and replaced by the aliases this proxy routes; the note says so.
    fn read_aliases(&self) -> Result<(AliasMap, Option<String>), String> {
        let path = &self.aliases_path;
        let bytes = match crate::state::dirs::read_private(path) {
            Ok(None) => return Ok((AliasMap::new(), None)),
            Ok(Some(bytes)) => bytes,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        match serde_json::from_slice(&bytes) {
            Ok(aliases) => Ok((aliases, None)),
            Err(e) => {
                let routed: AliasMap = self
                    .routes
                    .snapshot()
                    .values()
                    .filter(|r| r.owner == Owner::Alias)
                    .filter_map(|r| {
                        let addr = r.instance.sockets.get(crate::alloc::MAIN_SOCKET)?;
                        Some((r.instance.name.clone(), *addr))
                    })
                    .collect();
                let aside = crate::state::dirs::move_aside(path).map_err(|m| {
                    format!(
                        "{} is corrupt ({e}) and cannot be moved aside: {m}",
                        path.display()
                    )
                })?;
                let kept = match routed.len() {
                    0 => "aliases only in it are gone until added again".to_string(),
                    _ => {
                        let names: Vec<&str> = routed.keys().map(Name::as_str).collect();
                        format!("kept what the proxy routes: {}", names.join(", "))
                    }
                };
                Ok((
                    routed,
                    Some(format!(
                        "{} was unreadable ({e}); moved it to {} and started a new one: {kept}",
                        path.display(),
                        aside.display()
                    )),
                ))
            }
        }
    }

    /// Apply `edit` to the alias file and save it; returns the notes the user has not heard.
    fn write_aliases(&self, edit: impl FnOnce(&mut AliasMap)) -> Result<Vec<String>, String> {
        let (mut aliases, note) = self.read_aliases()?;
        edit(&mut aliases);
        let bytes = serde_json::to_vec_pretty(&aliases).expect("aliases serialise");
        crate::state::dirs::write_atomic(&self.aliases_path, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", self.aliases_path.display()))?;
        let mut notes = std::mem::take(&mut *self.untold.lock().expect("not poisoned"));
        notes.extend(note);
        Ok(notes)
    }

    /// Request counts of the routes `owner` registered.
    fn counts(&self, owner: Owner) -> BTreeMap<Name, u64> {
        self.routes
            .snapshot()
            .values()
            .filter(|r| r.owner == owner)
            .map(|r| (r.instance.name.clone(), r.requests.load(Ordering::Relaxed)))
            .collect()
    }

    /// Every route, as `list` and the dashboard show them, by name.
    pub fn listed(&self) -> Vec<Listed> {
        let table = self.routes.snapshot();
        let mut out: Vec<Listed> = table.values().map(|r| listed(r, self.http_port)).collect();
        out.sort_by(|a, b| a.instance.name.cmp(&b.instance.name));
        out
    }

    /// Answer one request line from `owner`.
    pub fn handle(&self, owner: Owner, line: &str) -> Response {
        let request: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => return Response::error(format!("bad request: {e}")),
        };
        match request {
            Request::Hello => Response {
                http_port: Some(self.http_port),
                pid: Some(std::process::id() as i32),
                listen: self.listen.clone(),
                ..Response::ok()
            },
            Request::Register { instance } => {
                if let Some(addr) = instance.sockets.values().find(|a| !a.ip().is_loopback()) {
                    return Response::error(format!(
                        "{addr} is not a loopback address; wharf routes to this machine only"
                    ));
                }
                match self.routes.register(owner, *instance) {
                    Ok(()) => Response::ok(),
                    Err(e) => Response::error(e.to_string()),
                }
            }
            Request::List => Response {
                instances: Some(self.listed()),
                ..Response::ok()
            },
            Request::Stop { name } => {
                if self
                    .routes
                    .get(&name)
                    .is_some_and(|r| r.owner == Owner::Alias)
                {
                    return self.alias(name, None);
                }
                match self.routes.remove(&name) {
                    None => Response::error(format!("no instance named '{name}' is routed")),
                    Some(route) => Response {
                        pid: Some(route.instance.pid),
                        ..Response::ok()
                    },
                }
            }
            Request::Alias { name, addr } => self.alias(name, addr),
        }
    }

    /// Add, replace (`Some`) or remove (`None`) an alias. The file is written before the route
    /// changes, so a failure leaves both as they were.
    fn alias(&self, name: Name, addr: Option<SocketAddr>) -> Response {
        let Some(addr) = addr else {
            let routed = self.routes.get(&name);
            let mut saved = false;
            let written = self.write_aliases(|a| saved = a.remove(&name).is_some());
            let notes = match written {
                Ok(notes) => notes,
                Err(e) => return Response::error(e),
            };
            match routed {
                Some(r) if r.owner == Owner::Alias => {
                    self.routes.remove(&name);
                }
                Some(r) if !saved => {
                    return Response::error(format!(
                        "'{name}' is a running instance (wharf pid {}), not an alias; \
                         stop it with `wharf stop {name}`",
                        r.instance.pid
                    ));
                }
                None if !saved => {
                    return Response::error(format!(
                        "there is no alias named '{name}'; `wharf ls` lists them"
                    ));
                }
                _ => {}
            }
            return Response {
                notes,
                ..Response::ok()
            };
        };
        if !addr.ip().is_loopback() {
            return Response::error(format!(
                "{addr} is not a loopback address; wharf routes to this machine only"
            ));
        }
        if let Some(route) = self.routes.get(&name).filter(|r| r.owner != Owner::Alias) {
            return Response::error(format!(
                "'{name}' is a running instance (wharf pid {}); stop it first",
                route.instance.pid
            ));
        }
        let notes = match self.write_aliases(|a| {
            a.insert(name.clone(), addr);
        }) {
            Ok(notes) => notes,
            Err(e) => return Response::error(e),
        };
        self.routes.remove(&name);
        if let Err(e) = self
            .routes
            .register(Owner::Alias, alias_instance(name.clone(), addr))
        {
            // Not routed, so not kept either.
            let _ = self.write_aliases(|a| {
                a.remove(&name);
            });
            return Response::error(e.to_string());
        }
        Response {
            notes,
            ..Response::ok()
        }
    }
}

fn listed(route: &Route, http_port: u16) -> Listed {
    let mut instance = route.instance.clone();
    // Already part of `requests`.
    instance.requests_before = None;
    if instance.state == State::Starting && route.answered.load(Ordering::Relaxed) {
        // No READY=1, but it answered a request: that is ready enough.
        instance.state = State::Ready;
    }
    Listed {
        instance,
        url: url(&route.instance.name, http_port),
        alias: route.owner == Owner::Alias,
        uptime_secs: route.since.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        requests: route.requests.load(Ordering::Relaxed),
    }
}

/// `http://NAME.localhost[:PORT]`, without the port when it is 80.
pub fn url(name: &Name, port: u16) -> String {
    origin(&format!("{name}.localhost"), port)
}

/// `http://localhost[:PORT]/`, the dashboard on the proxy's port.
pub fn dashboard_url(port: u16) -> String {
    origin("localhost", port) + "/"
}

fn origin(host: &str, port: u16) -> String {
    match port {
        80 => format!("http://{host}"),
        port => format!("http://{host}:{port}"),
    }
}

/// Serve the control socket until `shutdown`; then tell every connection the proxy is
/// stopping on purpose and close it.
pub async fn serve(
    listener: UnixListener,
    plane: Arc<ControlPlane>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tasks.spawn(connection(stream, plane.clone(), shutdown.clone()));
            }
            Err(e) => {
                eprintln!("wharf proxy: control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, plane: Arc<ControlPlane>, shutdown: CancellationToken) {
    let (reader, mut writer) = stream.into_split();
    let same_user = reader
        .as_ref()
        .peer_cred()
        .is_ok_and(|cred| cred.uid() == nix::unistd::getuid().as_raw());
    if !same_user {
        let _ = send(
            &mut writer,
            &Response::error("the control socket serves its own user only"),
        )
        .await;
        return;
    }
    let owner = Owner::Connection(plane.next_connection.fetch_add(1, Ordering::Relaxed));
    let mut lines = FramedRead::new(reader, LinesCodec::new_with_max_length(MAX_LINE));
    let mut tick = tokio::time::interval(COUNTS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut counts_sent = BTreeMap::new();
    loop {
        let line = tokio::select! {
            _ = tick.tick() => {
                let counts = plane.counts(owner);
                if counts != counts_sent {
                    let news = Response {
                        event: Some("requests".into()),
                        requests: Some(counts.clone()),
                        ..Response::ok()
                    };
                    if send(&mut writer, &news).await.is_err() {
                        break;
                    }
                    counts_sent = counts;
                }
                continue;
            }
            _ = shutdown.cancelled() => {
                let bye = Response { event: Some("stopping".into()), ..Response::ok() };
                let _ = send(&mut writer, &bye).await;
                // Read what the client already sent: closing over unread data would reset
                // the connection and lose the news just sent.
                let _ = writer.shutdown().await;
                let drain = async { while let Some(Ok(_)) = lines.next().await {} };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
                break;
            }
            line = lines.next() => line,
        };
        let response = match line {
            None => break,
            Some(Ok(line)) => plane.handle(owner, &line),
            Some(Err(e)) => {
                let _ = send(
                    &mut writer,
                    &Response::error(format!("unreadable request: {e}")),
                )
                .await;
                break;
            }
        };
        if send(&mut writer, &response).await.is_err() {
            break;
        }
    }
    plane.routes.remove_owner(owner);
}

async fn send(writer: &mut OwnedWriteHalf, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).expect("responses serialise");
    line.push(b'\n');
    writer.write_all(&line).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line_with_an_op() {
        let instance = Instance {
            name: "api".parse().unwrap(),
            pid: 10,
            child_pid: Some(11),
            mode: Mode::Fd,
            state: State::Starting,
            sockets: BTreeMap::from([("http".to_string(), "127.0.0.1:4001".parse().unwrap())]),
            last_exit: None,
            exposed: None,
            declared: None,
            started_at: None,
            requests_before: None,
            about: About::default(),
        };
        let line = serde_json::to_string(&Request::Register {
            instance: Box::new(instance),
        })
        .unwrap();
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with(r#"{"op":"register","instance":{"name":"api""#),
            "{line}"
        );
        let back: Request = serde_json::from_str(&line).unwrap();
        assert!(matches!(back, Request::Register { .. }));
        let bad: Result<Request, _> =
            serde_json::from_str(r#"{"op":"register","instance":{"name":"Bad!"}}"#);
        assert!(bad.is_err());
    }

    #[test]
    fn a_huge_command_still_fits_a_registration_line() {
        let argv: Vec<String> = (0..20_000).map(|i| format!("arg{i}")).collect();
        let about = About::new(&argv, None, None);
        assert_eq!(about.command[..2], ["arg0", "arg1"]);
        assert_eq!(about.command.last().unwrap(), "…");
        assert!(serde_json::to_string(&about).unwrap().len() < MAX_LINE / 4);
        let short = About::new(&argv[..3], None, None);
        assert_eq!(short.command, argv[..3]);
    }
}
