//! The proxy's end of the control socket: what it knows of its routes and how it answers each
//! request; a registered route lives as long as the connection that registered it.

use std::collections::BTreeMap;
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

use crate::control::protocol::*;
use crate::model::config::Https;
use crate::model::instance::*;
use crate::model::name::Name;
use crate::proxy::routes::{AliasMap, Owner, Route, RouteError, Routes, alias_instance};

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
}

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
                    .filter(|r| r.owner == Owner::Alias)
                    .filter_map(|r| {
                        let addr = r.instance.sockets.get(crate::model::ports::MAIN_SOCKET)?;
                        Some((r.instance.name.clone(), *addr))
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
    pub(crate) fn listed(&self) -> Vec<Listed> {
        let table = self.routes.snapshot();
        let front = self.fronts.front();
        let mut out: Vec<Listed> = table.values().map(|r| listed(r, front)).collect();
        out.sort_by(|a, b| a.instance.name.cmp(&b.instance.name));
        out
    }

    /// Answer one request line from `owner`.
    pub(crate) fn handle(&self, owner: Owner, line: &str) -> Response {
        match serde_json::from_str(line) {
            Ok(request) => self.answer(owner, request),
            Err(e) => Err(Refusal::BadRequest(e)),
        }
        .unwrap_or_else(Refusal::into_response)
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
                self.routes.register(owner, *instance)?;
                Ok(Response::ok())
            }
            Request::List => Ok(Response {
                instances: Some(self.listed()),
                ..Response::ok()
            }),
            Request::Stop { name } => {
                if self
                    .routes
                    .get(&name)
                    .is_some_and(|r| r.owner == Owner::Alias)
                {
                    return self.alias(name, None);
                }
                match self.routes.remove(&name) {
                    None => Err(Refusal::NotRouted(name)),
                    Some(route) => Ok(Response {
                        pid: Some(route.instance.pid),
                        ..Response::ok()
                    }),
                }
            }
            Request::Alias { name, addr } => self.alias(name, addr),
            // The relay is being built (issue 18): until then a reload is refused plainly.
            Request::Reload { .. } | Request::Reloaded { .. } => Err(Refusal::BadRequest(
                serde::de::Error::custom("this proxy cannot reload instances yet"),
            )),
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
                Some(r) if r.owner == Owner::Alias => {
                    self.routes.remove(&name);
                }
                Some(r) if !saved => {
                    return Err(Refusal::NotAnAlias {
                        name,
                        pid: r.instance.pid,
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
        if let Some(route) = self.routes.get(&name).filter(|r| r.owner != Owner::Alias) {
            return Err(Refusal::Running {
                name,
                pid: route.instance.pid,
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

fn listed(route: &Route, front: Front) -> Listed {
    let mut instance = route.instance.clone();
    // Already part of `requests`.
    instance.requests_before = None;
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
                let _ = send(&mut writer, &Refusal::Unreadable(e).into_response()).await;
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
