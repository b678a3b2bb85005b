//! `wharf proxy`: the front proxy in the foreground. Gathers its listeners (inherited or
//! bound), serves HTTP and the control socket, talks to the service manager (READY, STATUS,
//! STOPPING, watchdog), and shuts down in order on SIGTERM/SIGINT.
//!
//! A request's way through the proxy, file by file:
//! - `listeners` gives the sockets; `accept` takes connections under the descriptor `budget`
//!   with the `deadline`s of each I/O phase, and hands HTTP/2 to `http2`. Every limit and
//!   deadline is a field of `limits::Limits`, which the proxy takes at start.
//! - `lane` (the express lane) carries plain HTTP/1.1 requests on bytes; everything else
//!   takes hyper's path, `forward`. Both route by `routes`, follow one rulebook, `rules`,
//!   and reach instances over `upstream` connections.
//! - Upgraded connections become a `tunnel`; answers wharf gives itself are `pages`; why a
//!   request failed is an `errors::ProxyError`; bodies on both sides are `body::ProxyBody`.
//! - `control` is the proxy's end of the control socket: it changes `routes`.
//! - `hosts` keeps wharf's block in the hosts file in step with `routes` (`[hosts] sync`).

pub(crate) mod accept;
pub(crate) mod balance;
pub(crate) mod body;
pub(crate) mod budget;
pub(crate) mod control;
pub(crate) mod deadline;
pub(crate) mod errors;
pub(crate) mod forward;
pub(crate) mod hosts;
pub(crate) mod http2;
pub(crate) mod lane;
pub(crate) mod limits;
pub(crate) mod listeners;
pub(crate) mod pages;
pub(crate) mod park;
pub(crate) mod routes;
pub(crate) mod rules;
pub(crate) mod tls;
pub(crate) mod tunnel;
pub(crate) mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::control::ControlPlane;
use crate::proxy::forward::Forwarder;
use crate::proxy::limits::Limits;
use crate::proxy::listeners::Inherited;
use crate::proxy::routes::Routes;

/// What the proxy needs from the outside world.
pub(crate) struct ProxyArgs {
    /// Sockets from a service manager, read in `main` before any thread existed.
    pub(crate) inherited: Option<Inherited>,
    /// Where to listen when nothing was inherited (empty: the default).
    pub(crate) listen: Vec<SocketAddr>,
    pub(crate) runtime_dir: PathBuf,
    pub(crate) state_dir: PathBuf,
    /// Every limit and deadline the proxy keeps.
    pub(crate) limits: Limits,
    /// Whether plain HTTP/1.1 requests take the express lane (else all go to hyper).
    pub(crate) express: bool,
    /// `[proxy] https`.
    pub(crate) https: crate::model::config::Https,
    /// `[proxy] redirect`: plain-HTTP requests for instances get a 308 to HTTPS.
    pub(crate) redirect: bool,
    /// The hosts file to keep wharf's block in step in (`[hosts] sync = true`), if any.
    pub(crate) hosts_file: Option<PathBuf>,
}

pub(crate) async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let Inherited {
        http: inherited_http,
        https: inherited_https,
        control: inherited_control,
        ignored,
    } = args.inherited.unwrap_or_default();
    for name in ignored {
        eprintln!("wharf proxy: ignoring the inherited socket named {name:?} (not served yet)");
    }
    let https = args.https != crate::model::config::Https::Off;
    if !https && !inherited_https.is_empty() {
        eprintln!("wharf proxy: ignoring the inherited https sockets ([proxy] https = false)");
    }
    let control_path = crate::control::protocol::socket_path(&args.runtime_dir);
    if inherited_control.is_none()
        && let Some(running) = crate::control::launch::connect(&args.runtime_dir).await
    {
        bail!(already_running(&running.hello, &control_path));
    }
    let inherited_any = !inherited_http.is_empty() || !inherited_https.is_empty();
    let http = if inherited_any {
        inherited_http
    } else {
        listeners::bind_http(&args.listen)?
    };
    // Port 443 beside port 80 when wharf chose the ports itself and may bind it.
    let https_listeners = match (https, inherited_any) {
        (false, _) => Vec::new(),
        (true, true) => inherited_https,
        (true, false) if args.listen.is_empty() => listeners::bind_https_beside(&http),
        (true, false) => Vec::new(),
    };
    let (control_listener, own_control_file) = match inherited_control {
        Some(l) => (l, false),
        None => (listeners::bind_control(&control_path)?, true),
    };

    let https_addrs: Vec<SocketAddr> = https_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let mut addrs: Vec<SocketAddr> = http.iter().filter_map(|l| l.local_addr().ok()).collect();
    let http_port = addrs
        .first()
        .or(https_addrs.first())
        .map(|a| a.port())
        .context("no HTTP listener")?;
    let routes = Arc::new(Routes::default());
    // Every listener serves HTTPS too; URLs use an https listener's port if there is one.
    let https_port = https.then(|| https_addrs.first().map_or(http_port, |a| a.port()));
    addrs.extend(&https_addrs);
    let fronts = crate::proxy::control::Fronts {
        http_port,
        https_port,
        https: args.https,
        state: args.state_dir.clone(),
    };
    let front = fronts.front();
    let plane = Arc::new(ControlPlane::new(
        routes.clone(),
        addrs.clone(),
        fronts,
        args.state_dir.join("aliases.json"),
    ));
    match plane.load_aliases() {
        Ok((_, Some(note))) => eprintln!("wharf proxy: {note}"),
        Ok((_, None)) => {}
        Err(e) => eprintln!("wharf proxy: {e}"),
    }
    let list_plane = plane.clone();
    let forwarder = Arc::new(
        Forwarder::new(
            routes.clone(),
            Box::new(move || list_plane.listed()),
            args.limits,
            crate::proxy::budget::Budget::from_rlimit(),
        )
        .with_dashboard(front)
        .with_express(args.express)
        .with_tls(https.then(|| crate::proxy::tls::Tls::new(args.state_dir.clone())))
        .with_redirect(args.redirect.then_some(https_port).flatten()),
    );

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let http_listeners = http
        .into_iter()
        .chain(https_listeners)
        .map(tokio::net::TcpListener::from_std)
        .collect::<Result<Vec<_>, _>>()
        .context("registering the HTTP listeners")?;
    let control_listener = tokio::net::UnixListener::from_std(control_listener)
        .context("registering the control socket")?;
    tasks.spawn(housekeeping(forwarder.clone(), shutdown.clone()));
    let http_task = tokio::spawn(accept::serve(http_listeners, forwarder, shutdown.clone()));
    // Said before the control socket answers: whoever the proxy answers can read it in the log.
    let shown: Vec<String> = addrs
        .iter()
        .map(|a| match https_addrs.contains(a) {
            true => format!("https://{a}"),
            false => format!("http://{a}"),
        })
        .collect();
    eprintln!(
        "wharf proxy: pid {} serving {} (control {}); dashboard {}",
        std::process::id(),
        shown.join(", "),
        control_path.display(),
        front.dashboard(),
    );
    // Subscribed before anything can register, reported after READY: a STATUS= never comes
    // first, and no registration goes uncounted.
    let changes = routes.subscribe();
    tasks.spawn(crate::proxy::control::serve(
        control_listener,
        plane.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));
    if let Some(interval) = sd_notify::watchdog_enabled() {
        tasks.spawn(watchdog(interval / 2, shutdown.clone()));
    }

    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("0 instances")]);
    tasks.spawn(report_status(routes.clone(), changes, shutdown.clone()));
    if let Some(path) = args.hosts_file {
        eprintln!(
            "wharf proxy: keeping wharf's block in {} in step ([hosts] sync = true)",
            path.display()
        );
        tasks.spawn(hosts::keep(routes.clone(), path, shutdown.clone()));
    }

    wait_for_stop_signal().await?;
    eprintln!("wharf proxy: stopping");
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    shutdown.cancel();
    tasks.close();
    let _ = http_task.await;
    tasks.wait().await;
    if own_control_file {
        let _ = std::fs::remove_file(&control_path);
    }
    Ok(())
}

/// Why this proxy will not start: which proxy already answers on the control socket, where,
/// and the ways out.
fn already_running(
    hello: &crate::control::protocol::Response,
    control_path: &std::path::Path,
) -> String {
    let pid = hello
        .pid
        .map_or("unknown pid".to_string(), |p| format!("pid {p}"));
    let at: Vec<String> = hello.listen.iter().map(|a| format!("http://{a}")).collect();
    let at = match (at.is_empty(), hello.http_port) {
        (false, _) => at.join(" and "),
        (true, Some(port)) => format!("port {port}"),
        (true, None) => "an unknown port".to_string(),
    };
    let dashboard = hello
        .http_port
        .map(|_| format!(", dashboard {}", hello.front().dashboard()))
        .unwrap_or_default();
    format!(
        "a front proxy already runs ({pid}, serving {at}{dashboard}; control {}); use it, \
         stop it first with `wharf stop --proxy`, or give this one its own $WHARF_RUNTIME_DIR",
        control_path.display()
    )
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Keep the service manager's STATUS= line current: how many instances are routed.
async fn report_status(
    routes: Arc<Routes>,
    mut changes: tokio::sync::watch::Receiver<Arc<crate::proxy::routes::Table>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let n = routes.snapshot().len();
        let status = format!("{n} instance{}", if n == 1 { "" } else { "s" });
        let _ = sd_notify::notify(&[NotifyState::Status(&status)]);
    }
}

/// Now and then: close idle upstream connections their servers closed (each holds an fd), and
/// hand free memory back to the system, since after a burst of connections the allocator keeps
/// their buffers and an idle proxy should be small again (glibc only).
async fn housekeeping(forwarder: Arc<Forwarder>, shutdown: CancellationToken) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut trim = tokio::time::interval(TRIM_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sweep.tick() => forwarder.sweep_idle(),
            _ = trim.tick() => imp::trim(),
        }
    }
}

/// Idle upstream connections live at most `Limits::upstream_idle` plus this.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    pub(crate) fn trim() {
        // SAFETY: malloc_trim only returns unused heap pages to the system.
        unsafe { libc::malloc_trim(0) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(crate) fn trim() {}
}

async fn watchdog(every: std::time::Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => { let _ = sd_notify::notify(&[NotifyState::Watchdog]); }
        }
    }
}
