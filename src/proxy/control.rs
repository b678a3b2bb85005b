//! The proxy's end of the control socket: what it knows of its routes and how it answers each
//! request; a registered route lives as long as the connection that registered it. Each
//! connection also has an outbox: events the proxy sends on its own (request counts, reloads)
//! and answers that come later (a `reload`, relayed to each member's registration connection
//! in turn, is answered once they have reported).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use tokio::net::UnixListener;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

use crate::control::protocol::*;
use crate::model::config::Https;
use crate::model::instance::*;
use crate::model::name::Name;
use crate::proxy::routes::{AliasMap, Members, Owner, Route, RouteError, Routes, alias_instance};

/// The proxy's side of the control socket: what it knows and how it answers.
pub(crate) struct ControlPlane {
    pub(crate) routes: Arc<Routes>,
    /// Where the proxy serves HTTP and HTTPS, and which URLs say.
    pub(crate) fronts: Fronts,
    /// Where its HTTP listeners are, for `hello`.
    pub(crate) listen: Vec<SocketAddr>,
    /// Where aliases are kept between proxy runs.
    pub(crate) aliases_path: PathBuf,
    /// Notes from loading the aliases (a corrupt file moved aside) not yet told to a user:
    /// the next `alias` answer carries them.
    untold: std::sync::Mutex<Vec<String>>,
    next_connection: AtomicU64,
    /// Each open connection's outbox, by connection number.
    outboxes: std::sync::Mutex<HashMap<u64, mpsc::UnboundedSender<Response>>>,
    /// Reloads waiting for a member's report, by reload number: the member's connection, and
    /// who waits for its `error` (`None`: it went well).
    reports: std::sync::Mutex<HashMap<u64, Waiting>>,
    next_reload: AtomicU64,
}

/// A reload waiting for a member's report: the member's connection, and who waits.
type Waiting = (u64, oneshot::Sender<Option<String>>);

/// How long the proxy waits for one member's reload report. The supervisor bounds its own
/// reload (start, readiness, drain); this only keeps a wedged one from holding `wharf reload`
/// forever.
const RELOAD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(600);

/// The alias file (`aliases.json` in the state directory) cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AliasFileError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("{path} is corrupt ({corrupt}) and cannot be moved aside: {error}")]
    Stuck {
        path: PathBuf,
        corrupt: serde_json::Error,
        error: io::Error,
    },
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
}

/// Why the proxy refuses a control request: the `error` of its answer.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("bad request: {0}")]
    BadRequest(serde_json::Error),
    #[error("unreadable request: {0}")]
    Unreadable(tokio_util::codec::LinesCodecError),
    #[error("the control socket serves its own user only")]
    OtherUser,
    #[error("{0} is not a loopback address; wharf routes to this machine only")]
    NotLoopback(SocketAddr),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("no instance named '{0}' is routed")]
    NotRouted(Name),
    #[error(
        "'{name}' is a running instance (wharf pid {pid}), not an alias; stop it with `wharf stop {name}`"
    )]
    NotAnAlias { name: Name, pid: i32 },
    #[error("there is no alias named '{0}'; `wharf ls` lists them")]
    NoAlias(Name),
    #[error("'{name}' is a running instance (wharf pid {pid}); stop it first")]
    Running { name: Name, pid: i32 },
    #[error("'{0}' is an alias: wharf does not run it, so it cannot reload it")]
    ReloadAlias(Name),
    #[error("'{name}' has no member {member}; `wharf ls` lists its members")]
    NoMember { name: Name, member: u32 },
    #[error("no reload numbered {0} waits for this connection's report")]
    NoReload(u64),
    #[error("reloading {what}: {error}")]
    ReloadFailed { what: String, error: String },
    #[error(transparent)]
    AliasFile(#[from] AliasFileError),
}

impl Refusal {
    fn into_response(self) -> Response {
        Response::error(self.to_string())
    }
}

/// Longest request line accepted on the control socket.
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// How often a registration connection hears its routes' request counts (when they changed):
/// what a proxy crash can lose.
const COUNTS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the proxy serves, and so how URLs reach it (`Response::front`).
pub(crate) struct Fronts {
    /// The first HTTP listener's port.
    pub(crate) http_port: u16,
    /// Where HTTPS is served, if it is.
    pub(crate) https_port: Option<u16>,
    pub(crate) https: Https,
    /// The state directory, where `wharf trust` notes that the CA is trusted.
    pub(crate) state: PathBuf,
}

impl Fronts {
    /// Whether URLs say `https://`: always when `[proxy] https = true`; when unset, once the
    /// CA is trusted (asked each time: `wharf trust` may run while the proxy does).
    pub(crate) fn https_urls(&self) -> bool {
        self.https_port.is_some()
            && match self.https {
                Https::On => true,
                Https::Auto => crate::ca::is_trusted(&self.state),
                Https::Off => false,
            }
    }

    pub(crate) fn front(&self) -> Front {
        match self.https_port {
            Some(port) if self.https_urls() => Front { https: true, port },
            _ => Front::http(self.http_port),
        }
    }
}

impl ControlPlane {
    /// `listen` is every HTTP listener's address.
    pub(crate) fn new(
        routes: Arc<Routes>,
        listen: Vec<SocketAddr>,
        fronts: Fronts,
        aliases_path: PathBuf,
    ) -> ControlPlane {
        ControlPlane {
            routes,
            fronts,
            listen,
            aliases_path,
            untold: std::sync::Mutex::default(),
            next_connection: AtomicU64::new(1),
            outboxes: std::sync::Mutex::default(),
            reports: std::sync::Mutex::default(),
            next_reload: AtomicU64::new(1),
        }
    }

    /// Route the stored aliases; returns how many, and a note if the file was corrupt and
    /// moved aside. `Err` when it cannot be read at all.
    pub(crate) fn load_aliases(&self) -> Result<(usize, Option<String>), AliasFileError> {
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
    fn read_aliases(&self) -> Result<(AliasMap, Option<String>), AliasFileError> {
        let path = &self.aliases_path;
        let bytes = match crate::state::dirs::read_private(path) {
            Ok(None) => return Ok((AliasMap::new(), None)),
            Ok(Some(bytes)) => bytes,
            Err(error) => {
                return Err(AliasFileError::Read {
                    path: path.clone(),
                    error,
                });
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(aliases) => Ok((aliases, None)),
            Err(e) => {
                let routed: AliasMap = self
                    .routes
                    .snapshot()
                    .values()
                    .filter(|m| m.alias())
                    .filter_map(|m| {
                        let addr = m
                            .first()
                            .instance
                            .sockets
                            .get(crate::model::ports::MAIN_SOCKET)?;
                        Some((m.name().clone(), *addr))
                    })
                    .collect();
                let aside = match crate::state::dirs::move_aside(path) {
                    Ok(aside) => aside,
                    Err(error) => {
                        return Err(AliasFileError::Stuck {
                            path: path.clone(),
                            corrupt: e,
                            error,
                        });
                    }
                };
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
    fn write_aliases(
        &self,
        edit: impl FnOnce(&mut AliasMap),
    ) -> Result<Vec<String>, AliasFileError> {
        let (mut aliases, note) = self.read_aliases()?;
        edit(&mut aliases);
        let bytes = serde_json::to_vec_pretty(&aliases).expect("aliases serialise");
        crate::state::dirs::write_atomic(&self.aliases_path, &bytes).map_err(|error| {
            AliasFileError::Write {
                path: self.aliases_path.clone(),
                error,
            }
        })?;
        let mut notes = std::mem::take(&mut *self.untold.lock().expect("not poisoned"));
        notes.extend(note);
        Ok(notes)
    }

    /// Request counts of the routes (members) `owner` registered.
    fn counts(&self, owner: Owner) -> BTreeMap<Name, u64> {
        self.routes
            .snapshot()
            .values()
            .filter_map(|m| m.by_owner(owner))
            .map(|r| (r.instance.name.clone(), r.requests.load(Ordering::Relaxed)))
            .collect()
    }

    /// Every route, as `list` and the dashboard show them: by name, a replicated name's
    /// members by number.
    pub(crate) fn listed(&self) -> Vec<Listed> {
        let table = self.routes.snapshot();
        let front = self.fronts.front();
        let mut out: Vec<Listed> = table
            .values()
            .flat_map(|m| m.all.iter().map(|r| listed(m, r, front)))
            .collect();
        out.sort_by(|a, b| {
            (&a.instance.name, a.instance.member).cmp(&(&b.instance.name, b.instance.member))
        });
        out
    }

    /// Answer one request line from `owner`: at once, or (a reload) once its relay is done.
    pub(crate) fn handle(&self, owner: Owner, line: &str) -> Handled {
        match serde_json::from_str(line) {
            Ok(Request::Reload { name, member }) => Handled::Reload { name, member },
            Ok(request) => Handled::Now(
                self.answer(owner, request)
                    .unwrap_or_else(Refusal::into_response),
            ),
            Err(e) => Handled::Now(Refusal::BadRequest(e).into_response()),
        }
    }

    /// `reload NAME [member]`: each member in turn (by number; only `member` if given) hears
    /// a `reload` event on its registration connection, and the next one's turn comes when
    /// it has reported back (`reloaded`). The answer: how many were reloaded, or the first
    /// failure's error (a member's says why, with its new version's last output).
    pub(crate) async fn reload(self: Arc<Self>, name: Name, member: Option<u32>) -> Response {
        self.relay(name, member)
            .await
            .unwrap_or_else(Refusal::into_response)
    }

    async fn relay(&self, name: Name, member: Option<u32>) -> Result<Response, Refusal> {
        let members = self
            .routes
            .get(&name)
            .ok_or_else(|| Refusal::NotRouted(name.clone()))?;
        if members.alias() {
            return Err(Refusal::ReloadAlias(name));
        }
        let targets: Vec<(u32, Owner, i32)> = members
            .all
            .iter()
            .filter(|r| member.is_none_or(|k| r.number == k))
            .map(|r| (r.number, r.owner, r.instance.pid))
            .collect();
        if let (Some(member), true) = (member, targets.is_empty()) {
            return Err(Refusal::NoMember { name, member });
        }
        let mut reloaded = 0;
        for (number, owner, pid) in targets {
            let what = match members.replicated() {
                true => format!("member {number} of {name} (wharf pid {pid})"),
                false => format!("{name} (wharf pid {pid})"),
            };
            let failed = |error: String| Refusal::ReloadFailed {
                what: what.clone(),
                error,
            };
            let Owner::Connection(connection) = owner else {
                continue;
            };
            let reload = self.next_reload.fetch_add(1, Ordering::Relaxed);
            let (tell, report) = oneshot::channel();
            self.reports
                .lock()
                .expect("not poisoned")
                .insert(reload, (connection, tell));
            let event = Response {
                event: Some("reload".into()),
                reload: Some(reload),
                ..Response::ok()
            };
            let outbox = self
                .outboxes
                .lock()
                .expect("not poisoned")
                .get(&connection)
                .cloned();
            let sent = outbox.is_some_and(|o| o.send(event).is_ok());
            let report = match sent {
                true => tokio::time::timeout(RELOAD_PATIENCE, report)
                    .await
                    .map(Result::ok),
                false => Ok(None),
            };
            self.reports.lock().expect("not poisoned").remove(&reload);
            match report {
                Ok(Some(None)) => reloaded += 1,
                Ok(Some(Some(error))) => return Err(failed(error)),
                Ok(None) => {
                    return Err(failed(
                        "its wharf run closed its connection before saying how the reload went; \
                         `wharf ls` shows what runs now"
                            .to_string(),
                    ));
                }
                Err(_) => {
                    return Err(failed(format!(
                        "no report within {} minutes; see its output",
                        RELOAD_PATIENCE.as_secs() / 60
                    )));
                }
            }
        }
        Ok(Response {
            reload: Some(reloaded),
            ..Response::ok()
        })
    }

    /// A member's report on reload `reload`, from its registration connection.
    fn reloaded(
        &self,
        owner: Owner,
        reload: u64,
        error: Option<String>,
    ) -> Result<Response, Refusal> {
        let mut reports = self.reports.lock().expect("not poisoned");
        match reports.get(&reload) {
            Some((connection, _)) if owner == Owner::Connection(*connection) => {
                if let Some((_, tell)) = reports.remove(&reload) {
                    let _ = tell.send(error);
                }
                Ok(Response::ok())
            }
            _ => Err(Refusal::NoReload(reload)),
        }
    }

    fn answer(&self, owner: Owner, request: Request) -> Result<Response, Refusal> {
        match request {
            Request::Hello => Ok(Response {
                http_port: Some(self.fronts.http_port),
                https_port: self.fronts.https_port,
                https: self.fronts.https_urls(),
                pid: Some(std::process::id() as i32),
                listen: self.listen.clone(),
                ..Response::ok()
            }),
            Request::Register { instance } => {
                if let Some(addr) = instance.sockets.values().find(|a| !a.ip().is_loopback()) {
                    return Err(Refusal::NotLoopback(*addr));
                }
                let member = self.routes.register(owner, *instance)?;
                Ok(Response {
                    member,
                    ..Response::ok()
                })
            }
            Request::List => Ok(Response {
                instances: Some(self.listed()),
                ..Response::ok()
            }),
            // Every member goes; the answer names the first member's wharf run (`wharf
            // stop` stops each supervisor it lists).
            Request::Stop { name } => {
                if self.routes.get(&name).is_some_and(|m| m.alias()) {
                    return self.alias(name, None);
                }
                match self.routes.remove(&name) {
                    None => Err(Refusal::NotRouted(name)),
                    Some(members) => Ok(Response {
                        pid: Some(members.first().instance.pid),
                        ..Response::ok()
                    }),
                }
            }
            Request::Alias { name, addr } => self.alias(name, addr),
            Request::Reloaded { reload, error } => self.reloaded(owner, reload, error),
            // Answered by `handle` (asynchronously): never here.
            Request::Reload { name, .. } => Err(Refusal::NotRouted(name)),
        }
    }

    /// Add, replace (`Some`) or remove (`None`) an alias. The file is written before the route
    /// changes, so a failure leaves both as they were.
    fn alias(&self, name: Name, addr: Option<SocketAddr>) -> Result<Response, Refusal> {
        let Some(addr) = addr else {
            let routed = self.routes.get(&name);
            let mut saved = false;
            let notes = self.write_aliases(|a| saved = a.remove(&name).is_some())?;
            match routed {
                Some(m) if m.alias() => {
                    self.routes.remove(&name);
                }
                Some(m) if !saved => {
                    return Err(Refusal::NotAnAlias {
                        name,
                        pid: m.first().instance.pid,
                    });
                }
                None if !saved => return Err(Refusal::NoAlias(name)),
                _ => {}
            }
            return Ok(Response {
                notes,
                ..Response::ok()
            });
        };
        if !addr.ip().is_loopback() {
            return Err(Refusal::NotLoopback(addr));
        }
        if let Some(members) = self.routes.get(&name).filter(|m| !m.alias()) {
            return Err(Refusal::Running {
                name,
                pid: members.first().instance.pid,
            });
        }
        let notes = self.write_aliases(|a| {
            a.insert(name.clone(), addr);
        })?;
        self.routes.remove(&name);
        if let Err(e) = self
            .routes
            .register(Owner::Alias, alias_instance(name.clone(), addr))
        {
            // Not routed, so not kept either.
            let _ = self.write_aliases(|a| {
                a.remove(&name);
            });
            return Err(e.into());
        }
        Ok(Response {
            notes,
            ..Response::ok()
        })
    }
}

/// How a request line is answered (`ControlPlane::handle`).
pub(crate) enum Handled {
    Now(Response),
    /// By `ControlPlane::reload`, which takes as long as the members' reloads.
    Reload {
        name: Name,
        member: Option<u32>,
    },
}

fn listed(members: &Members, route: &Route, front: Front) -> Listed {
    let mut instance = route.instance.clone();
    // Already part of `requests`.
    instance.requests_before = None;
    if members.replicated() {
        instance.member = Some(route.number);
    }
    if instance.state == State::Starting && route.answered.load(Ordering::Relaxed) {
        // No READY=1, but it answered a request: that is ready enough.
        instance.state = State::Ready;
    }
    Listed {
        instance,
        url: front.url(&route.instance.name),
        alias: route.owner == Owner::Alias,
        uptime_secs: route.since.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        requests: route.requests.load(Ordering::Relaxed),
    }
}

/// Serve the control socket until `shutdown`; then tell every connection the proxy is
/// stopping on purpose and close it.
pub(crate) async fn serve(
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
        let _ = send(&mut writer, &Refusal::OtherUser.into_response()).await;
        return;
    }
    let number = plane.next_connection.fetch_add(1, Ordering::Relaxed);
    let owner = Owner::Connection(number);
    let (outbox, mut outgoing) = mpsc::unbounded_channel();
    plane
        .outboxes
        .lock()
        .expect("not poisoned")
        .insert(number, outbox.clone());
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
            Some(out) = outgoing.recv() => {
                if send(&mut writer, &out).await.is_err() {
                    break;
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
            Some(Ok(line)) => match plane.handle(owner, &line) {
                Handled::Now(response) => response,
                Handled::Reload { name, member } => {
                    // Answered through the outbox when done; this connection reads on.
                    let (plane, outbox) = (plane.clone(), outbox.clone());
                    tokio::spawn(async move {
                        let _ = outbox.send(plane.reload(name, member).await);
                    });
                    continue;
                }
            },
            Some(Err(e)) => {
                let _ = send(&mut writer, &Refusal::Unreadable(e).into_response()).await;
                break;
            }
        };
        if send(&mut writer, &response).await.is_err() {
            break;
        }
    }
    plane.outboxes.lock().expect("not poisoned").remove(&number);
    // Reloads waiting for this connection's report hear that it is gone.
    plane
        .reports
        .lock()
        .expect("not poisoned")
        .retain(|_, (connection, _)| *connection != number);
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
    use crate::control::client::{Client, Heard};
    use std::collections::BTreeMap;

    /// A control plane serving a socket in a temporary directory.
    async fn plane() -> (tempfile::TempDir, PathBuf, CancellationToken) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let fronts = Fronts {
            http_port: 80,
            https_port: None,
            https: Https::Off,
            state: dir.path().to_path_buf(),
        };
        let plane = Arc::new(ControlPlane::new(
            Arc::new(Routes::default()),
            Vec::new(),
            fronts,
            dir.path().join("aliases.json"),
        ));
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, plane, shutdown.clone(), TaskTracker::new()));
        (dir, path, shutdown)
    }

    /// A member of `api` registered on its own connection, asking for any number.
    async fn member(path: &std::path::Path, port: u16) -> (Client, u32) {
        let mut client = Client::connect(path).await.unwrap().unwrap();
        let sockets =
            BTreeMap::from([("http".to_string(), SocketAddr::from(([127, 0, 0, 1], port)))]);
        let mut instance = Instance::bare(
            "api".parse().unwrap(),
            std::process::id() as i32,
            State::Ready,
            sockets,
        );
        instance.member = Some(0);
        let answer = client
            .call(&Request::Register {
                instance: Box::new(instance),
            })
            .await
            .unwrap();
        (client, answer.member.unwrap())
    }

    /// Act on reload events as a supervisor would: note each, report `error` (None: it went
    /// well), or close the connection at the first if `error` is "close".
    fn supervise(
        mut client: Client,
        number: u32,
        error: Option<&'static str>,
        heard: Arc<std::sync::Mutex<Vec<u32>>>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Heard::Reload(reload) = client.next_event().await {
                heard.lock().unwrap().push(number);
                if error == Some("close") {
                    return;
                }
                client
                    .report_reloaded(reload, error.map(String::from))
                    .await
                    .unwrap();
            }
        })
    }

    async fn reload(path: &std::path::Path, member: Option<u32>) -> Result<Response, String> {
        let mut client = Client::connect(path).await.unwrap().unwrap();
        let request = Request::Reload {
            name: "api".parse().unwrap(),
            member,
        };
        let answer =
            tokio::time::timeout(std::time::Duration::from_secs(10), client.call(&request));
        answer.await.unwrap().map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn reload_goes_to_each_member_in_turn_and_stops_at_the_first_failure() {
        let (_dir, path, shutdown) = plane().await;
        let heard = Arc::default();
        let (one, n1) = member(&path, 4001).await;
        let (two, n2) = member(&path, 4002).await;
        let (three, n3) = member(&path, 4003).await;
        assert_eq!((n1, n2, n3), (1, 2, 3));
        supervise(one, 1, None, Arc::clone(&heard));
        supervise(
            two,
            2,
            Some("not ready within 5s: boom"),
            Arc::clone(&heard),
        );
        supervise(three, 3, None, Arc::clone(&heard));

        let answer = reload(&path, Some(3)).await.unwrap();
        assert_eq!(answer.reload, Some(1));
        assert_eq!(*heard.lock().unwrap(), [3]);

        let error = reload(&path, None).await.unwrap_err();
        assert!(error.contains("member 2 of api"), "{error}");
        assert!(error.contains("boom"), "{error}");
        assert_eq!(*heard.lock().unwrap(), [3, 1, 2], "rolling, stopped at 2");

        let error = reload(&path, Some(7)).await.unwrap_err();
        assert!(error.contains("no member 7"), "{error}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_member_that_goes_away_mid_reload_fails_it_and_leaves_rotation() {
        let (_dir, path, shutdown) = plane().await;
        let heard = Arc::default();
        let (one, _) = member(&path, 4001).await;
        let (two, _) = member(&path, 4002).await;
        supervise(one, 1, Some("close"), Arc::clone(&heard));
        supervise(two, 2, None, Arc::clone(&heard));
        let error = reload(&path, None).await.unwrap_err();
        assert!(error.contains("closed its connection"), "{error}");
        // Its member is gone; the other remains, and reloads alone.
        let mut c = Client::connect(&path).await.unwrap().unwrap();
        let listed = c.call(&Request::List).await.unwrap().instances.unwrap();
        let members: Vec<Option<u32>> = listed.iter().map(|l| l.instance.member).collect();
        assert_eq!(members, [Some(2)]);
        assert_eq!(reload(&path, None).await.unwrap().reload, Some(1));
        // A report nobody waits for is refused.
        let error = c.report_reloaded(99, None).await.unwrap_err().to_string();
        assert!(error.contains("no reload numbered 99"), "{error}");
        shutdown.cancel();
    }
}
