//! The small client commands: `ls`, `stop`, `alias`, `env`, `url`, `wait`. Each asks the front
//! proxy when one runs and falls back to the on-disk registry when none does (`wait` excepted:
//! only the proxy knows whether an instance is ready).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::control::client::ClientError;
use crate::control::launch;
use crate::control::protocol::{Listed, Request};
use crate::model::instance::{Instance, State};
use crate::model::name::Name;
use crate::model::text::human_duration;
use crate::state::context::Context;
use crate::state::registry::Store;
use crate::sys::process::{ProcessId, Stopped};

/// How long `stop --proxy` waits after SIGTERM before SIGKILL.
const PROXY_GRACE: Duration = Duration::from_secs(10);

/// The on-disk registry, locked; a corrupt one is rebuilt from what the proxy routes, and
/// what was done about it is said.
pub(crate) fn registry(ctx: &Context) -> anyhow::Result<crate::state::registry::Locked> {
    let reg = Store::new(ctx.dirs.state()?)
        .recovering_from(crate::control::client::running_instances(
            ctx.dirs.runtime()?,
        ))
        .lock()?;
    reg.warnings
        .iter()
        .for_each(|w| crate::errln!("wharf: {w}"));
    Ok(reg)
}

/// What is running: from the proxy if it answers (`true`), else from the registry's leases
/// with direct URLs (`false`).
pub(crate) async fn instances(ctx: &Context) -> anyhow::Result<(Vec<Listed>, bool)> {
    let runtime = ctx.dirs.runtime()?;
    if let Some(mut c) = launch::connect(runtime).await {
        match c.client.call(&Request::List).await {
            Ok(list) => return Ok((list.instances.unwrap_or_default(), true)),
            // It went away between hello and list (a proxy stopping): answer as without one.
            Err(ClientError::Io(_) | ClientError::Closed) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let reg = registry(ctx)?;
    let now = crate::state::registry::unix_now();
    let listed = reg
        .all_leases()
        .map(|(name, lease)| {
            let sockets: BTreeMap<String, SocketAddr> = lease
                .ports
                .iter()
                .map(|(s, p)| (s.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, *p))))
                .collect();
            let port = lease
                .ports
                .get(crate::model::ports::MAIN_SOCKET)
                .copied()
                .unwrap_or(0);
            let mut instance =
                Instance::bare(name.clone(), lease.holder.pid, State::Running, sockets);
            instance.member = lease.member;
            Listed {
                url: crate::model::instance::Front::http(port).url(name),
                instance,
                alias: false,
                uptime_secs: now.saturating_sub(lease.since),
                requests: 0,
            }
        })
        .collect();
    Ok((listed, false))
}

pub(crate) async fn ls(ctx: &Context, json: bool) -> anyhow::Result<i32> {
    let (list, via_proxy) = instances(ctx).await?;
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(0);
    }
    if !via_proxy {
        crate::errln!("wharf: no front proxy is running; URLs below go to each instance directly");
    }
    if list.is_empty() {
        crate::errln!("wharf: no instances; start one with `wharf run --name NAME -- CMD`");
        return Ok(0);
    }
    let rows: Vec<[String; 10]> = list
        .iter()
        .map(|l| {
            let i = &l.instance;
            let port = i
                .sockets
                .get(crate::model::ports::MAIN_SOCKET)
                .map(|a| a.port().to_string())
                .unwrap_or_default();
            // PID is JSON's `pid` (the `wharf run` to stop), SERVER PID its `server_pid`.
            let (pid, server_pid) = match (l.alias, i.child_pid) {
                (true, _) => ("-".to_string(), "-".to_string()),
                (false, server) => (
                    i.pid.to_string(),
                    server.map_or_else(|| "-".to_string(), |p| p.to_string()),
                ),
            };
            let (mode, state) = match (l.alias, via_proxy) {
                (true, _) => ("-".to_string(), "alias".to_string()),
                (false, true) => (i.mode.to_string(), i.state.to_string()),
                (false, false) => ("-".to_string(), i.state.to_string()),
            };
            let requests = if via_proxy {
                l.requests.to_string()
            } else {
                "-".to_string()
            };
            // A replicated name's members: NAME#K.
            let name = match i.member {
                Some(k) => format!("{}#{k}", i.name),
                None => i.name.to_string(),
            };
            [
                name,
                l.url.clone(),
                port,
                pid,
                server_pid,
                mode,
                state,
                human_duration(l.uptime_secs),
                requests,
                i.last_exit.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "URL",
        "PORT",
        "PID",
        "SERVER PID",
        "MODE",
        "STATE",
        "UPTIME",
        "REQUESTS",
        "LAST EXIT",
    ]
    .map(String::from);
    let table: Vec<[String; 10]> = std::iter::once(header).chain(rows).collect();
    for line in crate::sys::stdio::columns(&table) {
        crate::outln!("{line}")?;
    }
    for l in &list {
        if let Some(addr) = l.instance.exposed {
            crate::errln!(
                "wharf: warning: {}: {}",
                l.instance.name,
                crate::sys::netstat::exposed_warning(addr)
            );
        }
    }
    Ok(0)
}

/// `wharf stop NAME…` / `--all`: each route goes at once, then each instance is stopped
/// (all at the same time), its server given `grace` before it and everything it started is
/// killed. Names that are not running are reported; the others are stopped anyway.
pub(crate) async fn stop(
    ctx: &Context,
    names: Vec<Name>,
    all: bool,
    proxy: bool,
    grace: Duration,
) -> anyhow::Result<i32> {
    if proxy {
        return stop_proxy(ctx).await;
    }
    let running = running(ctx).await?;
    let mut failed = 0;
    let targets: Vec<Name> = if all {
        running.supervisors.keys().cloned().collect()
    } else {
        let mut targets = Vec::new();
        for name in names {
            match running.stoppable(&name) {
                Err(why) => {
                    crate::errln!("wharf: {why}");
                    failed += 1;
                }
                Ok(()) if !targets.contains(&name) => targets.push(name),
                Ok(()) => {}
            }
        }
        targets
    };
    for (ok, line) in stop_running(ctx, &running, targets, grace).await? {
        crate::errln!("wharf: {line}");
        failed += usize::from(!ok);
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// The instances that run, as `stop` needs them.
pub(crate) struct Running {
    /// What the proxy (else the registry) lists.
    pub(crate) listed: Vec<Listed>,
    /// name → (supervisor, server): the registry knows every supervisor, the proxy the servers.
    pub(crate) supervisors: BTreeMap<Name, (i32, Option<i32>)>,
}

impl Running {
    /// Whether `name` is an instance that can be stopped; else why not, and what to do.
    pub(crate) fn stoppable(&self, name: &Name) -> Result<(), String> {
        if self
            .listed
            .iter()
            .any(|l| l.alias && &l.instance.name == name)
        {
            Err(format!(
                "'{name}' is an alias, not a process; remove it with `wharf alias --rm {name}`"
            ))
        } else if !self.supervisors.contains_key(name) {
            Err(format!(
                "no instance named '{name}' is running; `wharf ls` lists them"
            ))
        } else {
            Ok(())
        }
    }
}

/// What runs: the proxy's list and the registry's leases together.
pub(crate) async fn running(ctx: &Context) -> anyhow::Result<Running> {
    let (listed, _) = instances(ctx).await?;
    let mut supervisors: BTreeMap<Name, (i32, Option<i32>)> = {
        let reg = registry(ctx)?;
        // A name's first supervisor; the others (`--join`) are found with its members.
        reg.leases
            .iter()
            .filter_map(|(n, l)| Some((n.clone(), (l.first()?.holder.pid, None))))
            .collect()
    };
    for l in listed.iter().filter(|l| !l.alias) {
        let entry = supervisors
            .entry(l.instance.name.clone())
            .or_insert((l.instance.pid, None));
        if entry.0 == l.instance.pid {
            entry.1 = l.instance.child_pid;
        }
    }
    Ok(Running {
        listed,
        supervisors,
    })
}

/// Stop `targets` (instances of `running`): the routes go first, then every instance at the
/// same time (`process::stop_instance`). One line per instance saying how it went, and
/// whether it is gone.
pub(crate) async fn stop_running(
    ctx: &Context,
    running: &Running,
    targets: Vec<Name>,
    grace: Duration,
) -> anyhow::Result<Vec<(bool, String)>> {
    let mut targets: Vec<(Name, (i32, Option<i32>))> = targets
        .into_iter()
        .filter_map(|n| running.supervisors.get(&n).map(|p| (n, *p)))
        .collect();
    // Members a name's other `wharf run`s serve (`--join`) stop with it.
    let joined: Vec<(Name, (i32, Option<i32>))> = running
        .listed
        .iter()
        .filter(|l| !l.alias && l.instance.member.is_some())
        .filter(|l| {
            targets
                .iter()
                .any(|(n, (pid, _))| *n == l.instance.name && *pid != l.instance.pid)
        })
        .map(|l| {
            (
                l.instance.name.clone(),
                (l.instance.pid, l.instance.child_pid),
            )
        })
        .collect();
    for member in joined {
        if !targets.iter().any(|(_, (pid, _))| *pid == member.1.0) {
            targets.push(member);
        }
    }
    let runtime = ctx.dirs.runtime()?.to_path_buf();
    let mut proxy = launch::connect(&runtime).await;
    // The routes go first, so nobody is sent to a server that is shutting down.
    if let Some(c) = proxy.as_mut() {
        for (name, _) in &targets {
            let _ = c.client.call(&Request::Stop { name: name.clone() }).await;
        }
    }
    let stops: Vec<_> = targets
        .into_iter()
        .map(|(name, (pid, server))| {
            let stopping = tokio::task::spawn_blocking(move || match ProcessId::of(pid) {
                None => Stopped::Cleanly,
                Some(id) => crate::sys::process::stop_instance(id, server, grace),
            });
            (name, pid, stopping)
        })
        .collect();
    let mut lines = Vec::new();
    for (name, pid, stopping) in stops {
        lines.push(match stopping.await? {
            Stopped::Cleanly => (true, format!("stopped {name} (pid {pid})")),
            Stopped::Forced { killed } => (true, format!(
                "stopped {name} (pid {pid}); {killed} process(es) did not stop within {}s and were killed",
                grace.as_secs()
            )),
            Stopped::Stuck => (false, format!(
                "{name} (pid {pid}) survived SIGKILL; is it stuck in the kernel?"
            )),
        });
    }
    Ok(lines)
}

/// `wharf url NAME`: the URL of a running instance (through the proxy, else its own port).
/// None is made up: an instance that does not run is exit 1 and a message.
pub(crate) async fn url(ctx: &Context, name: &Name) -> anyhow::Result<i32> {
    let (list, _) = instances(ctx).await?;
    match list.iter().find(|l| &l.instance.name == name) {
        Some(l) => {
            crate::outln!("{}", l.url)?;
            Ok(0)
        }
        None => {
            crate::errln!("wharf: no instance named '{name}' is running; `wharf ls` lists them");
            Ok(1)
        }
    }
}

/// How often `wharf wait` asks the proxy again.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// Where an awaited instance is, by what the proxy lists.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Awaited {
    /// Ready (or on demand with its socket held: the next request starts it): its URL.
    Ready(String),
    /// Gave up restarting, or went away after it had been seen: why.
    Failed(String),
    /// Starting, restarting, or not (yet) registered.
    Pending,
}

/// What the proxy's listing says of `name`; `seen`: it was listed before.
fn awaited(name: &Name, listed: Option<&Listed>, seen: bool) -> Awaited {
    match listed {
        Some(l) => match l.instance.state {
            State::Ready | State::Idle => Awaited::Ready(l.url.clone()),
            State::Failed => Awaited::Failed(format!(
                "'{name}' failed and gave up restarting{}",
                l.instance
                    .last_exit
                    .as_ref()
                    .map(|e| format!(" (its server {e})"))
                    .unwrap_or_default()
            )),
            State::Starting | State::Restarting | State::Running | State::Unhealthy => {
                Awaited::Pending
            }
        },
        None if seen => Awaited::Failed(format!(
            "'{name}' stopped before it was ready; its output says why"
        )),
        None => Awaited::Pending,
    }
}

/// `wharf wait NAME`: until the proxy lists NAME as ready (`until_ready`), then its URL; exit 1
/// with the reason if it fails, goes away, or `timeout` passes first.
pub(crate) async fn wait(ctx: &Context, name: &Name, timeout: Duration) -> anyhow::Result<i32> {
    match until_ready(ctx, name, timeout).await? {
        Ok(url) => {
            crate::outln!("{url}")?;
            Ok(0)
        }
        Err(why) => {
            crate::errln!("wharf: {why}");
            Ok(1)
        }
    }
}

/// Until the proxy lists `name` as ready (the readiness its `wharf run` reports: `READY=1`, a
/// connection accepted or an answer, a listening server): its URL; else why not, when it
/// fails, goes away, or `timeout` passes first. A name not yet running is waited for too: it
/// may be starting.
pub(crate) async fn until_ready(
    ctx: &Context,
    name: &Name,
    timeout: Duration,
) -> anyhow::Result<Result<String, String>> {
    let runtime = ctx.dirs.runtime()?.to_path_buf();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = false;
    let mut proxy = None;
    let why = loop {
        if proxy.is_none() {
            proxy = launch::connect(&runtime).await;
        }
        let listed = match proxy.as_mut() {
            Some(c) => match c.client.call(&Request::List).await {
                Ok(list) => list.instances.unwrap_or_default(),
                Err(ClientError::Io(_) | ClientError::Closed) => {
                    proxy = None;
                    Vec::new()
                }
                Err(e) => return Err(e.into()),
            },
            None => Vec::new(),
        };
        let this = listed.iter().find(|l| &l.instance.name == name);
        match awaited(name, this, seen) {
            Awaited::Ready(url) => return Ok(Ok(url)),
            Awaited::Failed(why) => break why,
            Awaited::Pending => {}
        }
        seen |= this.is_some();
        if tokio::time::Instant::now() + WAIT_POLL > deadline {
            break match (this, proxy.is_some()) {
                (Some(l), _) => format!(
                    "'{name}' is still {} after {}s",
                    l.instance.state,
                    timeout.as_secs()
                ),
                (None, true) => format!(
                    "no instance named '{name}' ran within {}s; `wharf ls` lists them",
                    timeout.as_secs()
                ),
                (None, false) => format!(
                    "no front proxy ran within {}s, and only it knows when '{name}' is ready",
                    timeout.as_secs()
                ),
            };
        }
        tokio::time::sleep(WAIT_POLL).await;
    };
    Ok(Err(why))
}

async fn stop_proxy(ctx: &Context) -> anyhow::Result<i32> {
    let Some(c) = launch::connect(ctx.dirs.runtime()?).await else {
        crate::errln!("wharf: no front proxy is running");
        return Ok(0);
    };
    let pid = c.hello.pid.context("the proxy did not say its pid")?;
    drop(c);
    let id = ProcessId::of(pid);
    let stopped = match id {
        None => true,
        Some(id) => tokio::task::spawn_blocking(move || id.terminate(PROXY_GRACE)).await?,
    };
    if !stopped {
        bail!("the proxy (pid {pid}) did not stop");
    }
    crate::errln!("wharf: stopped the front proxy (pid {pid})");
    Ok(0)
}

pub(crate) async fn alias(ctx: &Context, name: Name, addr: Option<String>) -> anyhow::Result<i32> {
    let addr = addr.map(|a| parse_alias_addr(&a)).transpose()?;
    let runtime = ctx.dirs.runtime()?;
    ctx.dirs.state()?;
    let mut c = launch::connect_or_start(runtime, &ctx.self_exe).await?;
    let answer = c
        .client
        .call(&Request::Alias {
            name: name.clone(),
            addr,
        })
        .await?;
    for note in &answer.notes {
        crate::errln!("wharf: {note}");
    }
    match addr {
        Some(addr) => {
            let front = c.hello.front();
            crate::errln!("wharf: {name} → {addr}");
            if !answers(addr) {
                crate::errln!(
                    "wharf: warning: nothing accepts connections on {addr} yet; \
                     requests to {name}.localhost fail until a server listens there"
                );
            }
            crate::errln!("wharf: {name} is at {}", front.url(&name));
        }
        None => crate::errln!("wharf: removed the alias {name}"),
    }
    Ok(0)
}

/// False only when the platform can tell that nothing listens on `addr`'s port. Looked up,
/// not connected to: a probe connection would show in the server's log and its counts.
fn answers(addr: SocketAddr) -> bool {
    crate::sys::netstat::is_listened_on(addr.port()).unwrap_or(true)
}

/// `8080`, `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080`: loopback only.
pub(crate) fn parse_alias_addr(s: &str) -> anyhow::Result<SocketAddr> {
    let s = s.trim().trim_start_matches("http://").trim_end_matches('/');
    let addr = if let Ok(port) = s.parse::<u16>() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    } else if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .with_context(|| format!("{port:?} is not a port"))?;
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    } else {
        s.parse().with_context(|| {
            format!("{s:?} is not an address; write 8080, 127.0.0.1:8080 or [::1]:8080")
        })?
    };
    if !addr.ip().is_loopback() {
        bail!("{addr} is not on this machine; wharf routes to loopback addresses only");
    }
    if addr.port() == 0 {
        bail!("port 0 is not a server's port");
    }
    Ok(addr)
}

pub(crate) async fn env(
    ctx: &Context,
    name: Option<Name>,
    format: crate::cli::args::EnvFormat,
    ca: bool,
) -> anyhow::Result<i32> {
    use crate::cli::args::EnvFormat;
    let (list, _) = instances(ctx).await?;
    let selected: Vec<&Listed> = list
        .iter()
        .filter(|l| name.as_ref().is_none_or(|n| *n == l.instance.name))
        .collect();
    if let (Some(name), true) = (&name, selected.is_empty()) {
        bail!("no instance named '{name}' is running; `wharf ls` lists them");
    }
    let mut vars: BTreeMap<String, String> = selected
        .iter()
        .map(|l| (l.instance.name.env_var("URL"), l.url.clone()))
        .collect();
    if ca {
        let state = ctx.dirs.state()?;
        let authority = crate::ca::Authority::open_or_create(state)?;
        let user = |var: &str| std::env::var_os(var).map(std::path::PathBuf::from);
        for (var, path) in crate::ca::bundle::environment(state, &authority, user)? {
            vars.insert(var.to_string(), path.display().to_string());
        }
    }
    let text = match format {
        EnvFormat::Shell => vars
            .iter()
            .map(|(k, v)| {
                let v = crate::model::text::shell_words(std::slice::from_ref(v));
                format!("export {k}={v}\n")
            })
            .collect(),
        EnvFormat::Dotenv => vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect(),
        EnvFormat::Json => format!("{}\n", serde_json::to_string_pretty(&vars)?),
    };
    crate::sys::stdio::out(&text)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_addresses_are_loopback_only() {
        assert_eq!(
            parse_alias_addr("8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            parse_alias_addr("localhost:81").unwrap(),
            "127.0.0.1:81".parse().unwrap()
        );
        assert_eq!(
            parse_alias_addr("http://[::1]:82/").unwrap(),
            "[::1]:82".parse().unwrap()
        );
        assert!(parse_alias_addr("10.0.0.1:80").is_err());
        assert!(parse_alias_addr("example.com:80").is_err());
        assert!(parse_alias_addr("0").is_err());
    }

    #[test]
    fn waiting_reads_the_listed_state() {
        let name: Name = "shop".parse().unwrap();
        let listed = |state, last_exit: Option<&str>| {
            let mut instance = Instance::bare(name.clone(), 1, state, BTreeMap::new());
            instance.last_exit = last_exit.map(String::from);
            Listed {
                instance,
                url: "http://shop.localhost".into(),
                alias: false,
                uptime_secs: 0,
                requests: 0,
            }
        };
        let ready = Awaited::Ready("http://shop.localhost".into());
        for (state, want) in [
            (State::Ready, ready.clone()),
            (State::Idle, ready),
            (State::Starting, Awaited::Pending),
            (State::Restarting, Awaited::Pending),
        ] {
            assert_eq!(awaited(&name, Some(&listed(state, None)), true), want);
        }
        assert_eq!(
            awaited(
                &name,
                Some(&listed(State::Failed, Some("exited with code 3"))),
                true
            ),
            Awaited::Failed(
                "'shop' failed and gave up restarting (its server exited with code 3)".into()
            )
        );
        assert_eq!(awaited(&name, None, false), Awaited::Pending);
        assert!(matches!(awaited(&name, None, true), Awaited::Failed(_)));
    }
}
