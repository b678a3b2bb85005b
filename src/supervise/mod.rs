//! `wharf run`: bind an instance's sockets, start its server with them, supervise it (signals,
//! readiness, health, restarts on the same socket) and keep its route registered while it lives.
//!
//! With `--replicas N` one `wharf run` supervises N members of the name at once, each a full
//! instance of its own: its own sockets (so `{port}`, `PORT` and fd 3 differ per member), its
//! own notify socket, registration (`member: Some(k)`), readiness, health and restarts; its
//! lines say `NAME#K`. Every member gets a socket of its own rather than one socket accepted by
//! all: the proxy then sees each member apart, so readiness, health, ejection and request
//! counts are per member, a member that dies refuses nothing the others were given, and it
//! works for every server (sharing a socket needs servers that accept on it cooperatively,
//! and leaves the kernel, not the proxy, choosing the member). `--join` adds one member to a
//! name that runs, from another `wharf run`.
//!
//! [`run`] is the whole flow; each step has its file:
//! - `start`: choosing fd or env mode, the server's environment and sockets, spawning it.
//! - `ports`: binding the sockets race-free and leasing their ports.
//! - `registration`: the route at the front proxy, registered again if the proxy restarts.
//! - `lifecycle`: the instance's life as a state machine (idle, running, restarting, failed).
//! - `running`: while a server runs, the events waited for and what each does.
//! - `readiness`: where the server listens and when it is ready.
//! - `stop`: passing signals on, stopping and killing the server, how its exit reads.
//! - `reload`: a new version started beside the running one, switched to once ready.
//! - `restart`: the restart policy and its backoff.
//! - `demand`: on demand, the connection that starts a server and the idle clock that stops it.
//! - `output`: wharf's lines about the instance, on the terminal and in its log.
//! - `health`: checks of a ready server, taking it out of rotation and back.
//! - `children`: which children are servers or proxies of ours, whichever member started them.

mod children;
pub(crate) mod demand;
mod health;
mod lifecycle;
pub(crate) mod output;
pub(crate) mod ports;
mod readiness;
pub(crate) mod registration;
mod reload;
pub(crate) use reload::DEFAULT_RELOAD_TIMEOUT;
mod restart;
mod running;
mod start;
mod stop;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::model::instance::{About, Declaration};
use crate::model::mode::{self, Mode};
use crate::model::name::Name;
use crate::model::ports::{MAIN_SOCKET, PortRanges};
use crate::model::project::{Health, Ready, Restart};
use crate::state::context::Context;
use crate::state::logs::Log;
use crate::state::registry::{Lease, Run, Store};
use crate::sys::notify::NotifySocket;
use lifecycle::Supervisor;
use output::Output;
use readiness::Expect;
use registration::Registration;

/// What `wharf run` was asked to do.
#[derive(Debug)]
pub(crate) struct RunArgs {
    pub(crate) name: Name,
    /// How the name and command were chosen when not given, said first.
    pub(crate) notes: Vec<String>,
    pub(crate) mode: Option<Mode>,
    pub(crate) port: Option<u16>,
    /// `None`: any free port.
    pub(crate) range: Option<PortRanges>,
    /// Ports never handed out (`[defaults] exclude`).
    pub(crate) exclude: PortRanges,
    pub(crate) sockets: Vec<Name>,
    pub(crate) restart: Restart,
    /// Start the server on the first connection; stop it after `idle_timeout` without any.
    pub(crate) on_demand: bool,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) ready: Option<Ready>,
    /// Send wharf's and the server's output to this bounded file instead of the terminal.
    pub(crate) log: Option<PathBuf>,
    /// Set by `wharf up`: the wharf.toml entry this instance comes from.
    pub(crate) declared: Option<Declaration>,
    /// Extra environment for the server (wharf.toml's `env`).
    pub(crate) env: Vec<(String, String)>,
    /// `[proxy] https`: unless off, the server is given wharf's CA to trust.
    pub(crate) https: crate::model::config::Https,
    /// The CA variables (`ca::bundle::VARS`) wharf's own environment sets, with their values:
    /// the user's roots, which the server's files keep and add wharf's CA to.
    pub(crate) ca_vars: Vec<(String, PathBuf)>,
    pub(crate) force: bool,
    /// The name already running this command from this directory: say its URL, exit 0.
    pub(crate) reuse: bool,
    pub(crate) no_pid: bool,
    /// `PORT` in wharf's own environment, if set: a preference like `--port` when valid.
    pub(crate) inherited_port: Option<String>,
    pub(crate) quiet: bool,
    /// Events on stdout, one JSON object a line (the server's stdout goes to stderr).
    pub(crate) json: bool,
    /// After a stop signal, how long the server has before it (and everything it started) is
    /// killed.
    pub(crate) stop_grace: Duration,
    /// How long a reload's new version has to become ready before it is given up.
    pub(crate) reload_timeout: Duration,
    /// Say every port tried and why it was not taken, not just the summary.
    pub(crate) verbose: bool,
    /// Members to run (`--replicas`, `replicas`): 1 is a plain instance, without member
    /// numbers.
    pub(crate) replicas: u32,
    /// `--join`: one more member for a name that runs (its number comes from the proxy).
    pub(crate) join: bool,
    /// Ask the proxy to keep each client on one member (`sticky`).
    pub(crate) sticky: bool,
    /// Health checks while the server is ready (`--health`, `health`).
    pub(crate) health: Option<Health>,
    pub(crate) command: Vec<String>,
}

/// Run the instance (every member of it, with `--replicas`) until its servers exit for good;
/// returns the exit code for wharf (the server's, or 128+signal; with several members the
/// first member's that is not 0).
pub(crate) async fn run(ctx: &Context, args: RunArgs) -> anyhow::Result<i32> {
    let log = match &args.log {
        Some(path) => Some(Log::open(path).with_context(|| format!("opening {}", path.display()))?),
        None => None,
    };
    let out = Output::new(args.name.clone(), args.quiet, log.clone(), args.json);
    args.notes.iter().for_each(|n| out.note(n));
    let socket_names = socket_names(&args.sockets)?;
    let source = match &args.declared {
        Some(d) => mode::Source::File(&d.file),
        None => mode::Source::CommandLine,
    };
    let plan = start::plan(ctx, &args, source, &out)?;
    out.event(
        "mode",
        serde_json::json!({"mode": plan.mode.to_string(), "reason": plan.reason}),
    );

    let dirs = Dirs {
        state: ctx.dirs.state()?.to_path_buf(),
        runtime: ctx.dirs.runtime()?.to_path_buf(),
    };
    let run = Run {
        command: args.command.clone(),
        dir: ctx.cwd.clone(),
    };
    // Every member's sockets before any server starts: a name taken or a range full stops
    // the whole run, not some of its members.
    let mut allocated = Vec::new();
    for member in members(&args) {
        let out = out.for_member(member);
        match allocate(&args, &run, member, &socket_names, &dirs, &out)? {
            Ok(a) => allocated.push((member, out, a)),
            Err(running) => return reuse(ctx, &args.name, &running, &dirs.runtime, &out).await,
        }
    }
    if args.replicas > 1 {
        out.say(format!(
            "{} members, each with a socket of its own",
            args.replicas
        ));
    }
    // Every member catches the signals itself, each getting every one, so a Ctrl-C or SIGTERM
    // stops them all: all caught before the first member registers, so that one coming while
    // the others register reaches them too.
    let signals = allocated
        .iter()
        .map(|_| stop::catch_signals())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut supervisors = Vec::new();
    for ((member, out, a), signals) in allocated.into_iter().zip(signals) {
        let member = Member {
            member,
            out,
            bound: a.sockets,
            lease: a.lease,
            rebind: rebinder(&args, &run, member, socket_names.clone(), &dirs.state),
            signals,
        };
        supervisors.push(supervisor(ctx, &args, &plan, source, &dirs, member, &log).await?);
    }
    // Asked to stop while registering: no server is started (the routes go with `supervisors`).
    if let Some(signal) = supervisors
        .iter_mut()
        .find_map(|s| stop::pending_stop(&mut s.signals))
    {
        out.say("asked to stop before the server started; route removed".to_string());
        return Ok(128 + signal);
    }
    // A server that detaches itself stays ours to follow and stop (`lifecycle`).
    crate::sys::process::become_subreaper();
    // Each member's lease goes when it ends (with its supervisor): its ports are free again
    // though others run on.
    let mut ends = futures_util::future::join_all(supervisors.into_iter().map(|s| {
        let out = s.out.clone();
        async move { (out, s.run().await) }
    }))
    .await;
    start::logs_copied().await;
    if ends.len() == 1
        && let Some((_, end)) = ends.pop()
    {
        return end;
    }
    let mut code = 0;
    for (out, end) in ends {
        match end {
            Ok(c) if code == 0 => code = c,
            Ok(_) => {}
            Err(e) => {
                out.say(format!("error: {e:#}"));
                code = if code == 0 { 1 } else { code };
            }
        }
    }
    Ok(code)
}

/// wharf's directories for instance state and runtime files.
struct Dirs {
    state: PathBuf,
    runtime: PathBuf,
}

/// The member numbers to run: none for a plain instance, 1..=N with replicas, `Some(0)` (the
/// proxy's choice) for a `--join`.
fn members(args: &RunArgs) -> Vec<Option<u32>> {
    match (args.join, args.replicas) {
        (true, _) => vec![Some(0)],
        (false, 0 | 1) => vec![None],
        (false, n) => (1..=n).map(Some).collect(),
    }
}

/// One member, its sockets bound and the signals caught for it.
struct Member {
    member: Option<u32>,
    out: Output,
    bound: Vec<crate::sys::socket::BoundSocket>,
    /// The lease on its ports, given back when its supervisor ends.
    lease: ports::LeaseGuard,
    /// How a reload binds fresh sockets for it.
    rebind: Box<dyn Fn() -> anyhow::Result<ports::Allocated>>,
    signals: stop::Signals,
}

/// Everything one member's supervisor holds, made ready: its route registered, its notify
/// socket bound, its server's command and environment filled in. The reload helper can
/// build a new member's server the same way.
async fn supervisor(
    ctx: &Context,
    args: &RunArgs,
    plan: &mode::Launch,
    source: mode::Source<'_>,
    dirs: &Dirs,
    member: Member,
    log: &Option<Log>,
) -> anyhow::Result<Supervisor> {
    let Member {
        member,
        out,
        bound,
        lease,
        rebind,
        signals,
    } = member;
    let leased = bound.iter().map(|b| (b.name.clone(), b.port)).collect();
    for b in &bound {
        out.event(
            "port",
            serde_json::json!({"socket": b.name, "port": b.port}),
        );
    }
    let ports: Vec<(String, u16)> = bound.iter().map(|b| (b.name.clone(), b.port)).collect();
    let argv = mode::substitute(&plan.argv, &ports);

    let mut route = Registration::new(
        &out,
        &dirs.runtime,
        &ctx.self_exe,
        &args.name,
        plan.mode,
        &bound,
    );
    route.instance.member = member;
    route.instance.sticky = args.sticky;
    route.instance.restarts = args.restart != Restart::No;
    route.instance.declared = args.declared.clone();
    if args.on_demand {
        // Registered as what it is until its first connection: not starting, waiting.
        route.instance.state = crate::model::instance::State::Idle;
    }
    route.instance.about = About::new(
        &argv,
        Some(ctx.cwd.clone()),
        args.log.as_ref().map(|path| ctx.cwd.join(path)),
    );
    route.connect().await?;
    let url = route.url(bound[0].port);
    let mut expect = Expect::new(
        plan.mode,
        args.ready.clone(),
        bound[0].port,
        route.main_addr(),
        source,
    );
    expect.notifies = start::offers_notify(args, plan);
    let notify_file = match member {
        None => format!("notify-{}.sock", std::process::id()),
        Some(k) => format!("notify-{}-{k}.sock", std::process::id()),
    };
    let notify = NotifySocket::bind(&dirs.runtime.join(notify_file))
        .context("creating the notify socket for the server")?;

    let mut env = start::environment(args, plan, &bound, &url, &notify);
    env.extend(start::trust_environment(&dirs.state, args, &out));
    if let Some(k) = route.instance.member {
        env.push(("WHARF_MEMBER".to_string(), k.to_string()));
    }
    start::say_handoff(&out, plan.mode, &bound);
    out.url(&url);
    let server = start::Server::new(args, plan, argv, &bound, env, log.clone());
    Ok(Supervisor {
        stopper: stop::Stopper::new(&out, server.own_group, args.stop_grace),
        ready_timeout: args.reload_timeout,
        rebind,
        lease,
        leased,
        others: Vec::new(),
        prepared: None,
        starting_because: None,
        sent_ready: false,
        hurry: Default::default(),
        restarts: restart::Restarts::new(args.restart, args.on_demand),
        on_demand: args.on_demand,
        idle_limit: args
            .idle_timeout
            .unwrap_or(crate::model::project::DEFAULT_IDLE),
        ports: bound.iter().map(|b| b.port).collect(),
        declared: args.declared.is_some(),
        health: args.health.clone(),
        held: Some(bound),
        out,
        route,
        signals,
        notify,
        server,
        expect,
    })
}

/// `--reuse` found the name running this command here: its URL, through the proxy (started if
/// it must be, as the running one would), else its own port.
async fn reuse(
    ctx: &Context,
    name: &Name,
    running: &Lease,
    runtime_dir: &Path,
    out: &Output,
) -> anyhow::Result<i32> {
    out.say(format!(
        "already running this command here (wharf pid {}); using it",
        running.holder.pid
    ));
    out.event("reused", serde_json::json!({"pid": running.holder.pid}));
    let direct = running.ports.get(MAIN_SOCKET).copied().unwrap_or(0);
    let front = match crate::control::launch::connect_or_start(runtime_dir, &ctx.self_exe).await {
        Ok(connected) => connected.hello.front(),
        Err(_) => crate::model::instance::Front::http(direct),
    };
    out.url(&front.url(name));
    Ok(0)
}

/// Bind the instance's sockets and lease their ports, saying how each port was found; the
/// running instance's lease instead when `--reuse` finds this command running already.
fn allocate(
    args: &RunArgs,
    run: &Run,
    member: Option<u32>,
    socket_names: &[String],
    dirs: &Dirs,
    out: &Output,
) -> anyhow::Result<Result<ports::Allocated, Lease>> {
    // `--port` (and PORT) is the first member's (or the joining one's); the others take what
    // the range has free.
    let prefer = match member.is_none_or(|k| k <= 1) {
        true => preference(args.port, args.inherited_port.as_deref(), out),
        false => args.port.filter(|p| *p == 0),
    };
    let request = ports::Request {
        name: &args.name,
        sockets: socket_names,
        prefer,
        range: args.range.as_ref(),
        exclude: &args.exclude,
        force: args.force,
        run,
        reuse: args.reuse,
        member,
        join: args.join,
    };
    let store = Store::new(&dirs.state)
        .recovering_from(crate::control::client::running_instances(&dirs.runtime));
    let allocated = match ports::allocate(store, &request, &mut |line| out.say(line)) {
        Err(ports::AllocError::AlreadyRunning { lease, .. }) => return Ok(Err(*lease)),
        other => other?,
    };
    for how in &allocated.how {
        if args.verbose {
            how.details(&args.name).into_iter().for_each(|l| out.say(l));
        }
        if let Some(summary) = how.summary(&args.name) {
            out.say(summary);
        }
    }
    Ok(Ok(allocated))
}

/// How a reload binds fresh sockets for its new version: as at the first start (the range,
/// the exclusions, this member's lease, which the new one replaces), on any free port of the
/// range; with `--port 0`, on any free port the OS offers, as the first ones were.
fn rebinder(
    args: &RunArgs,
    run: &Run,
    member: Option<u32>,
    sockets: Vec<String>,
    state_dir: &Path,
) -> Box<dyn Fn() -> anyhow::Result<ports::Allocated>> {
    let (name, range, exclude) = (args.name.clone(), args.range.clone(), args.exclude.clone());
    let prefer = (args.port == Some(0)).then_some(0);
    let (run, state_dir, join) = (run.clone(), state_dir.to_path_buf(), args.join);
    Box::new(move || {
        let request = ports::Request {
            name: &name,
            sockets: &sockets,
            prefer,
            range: range.as_ref(),
            exclude: &exclude,
            force: false,
            run: &run,
            reuse: false,
            // A joined member is not the name's first holder: `join: false` would find the
            // name taken.
            member,
            join,
        };
        Ok(ports::allocate(
            Store::new(&state_dir),
            &request,
            &mut |_| {},
        )?)
    })
}

/// The port to try first: `--port`, else a valid `PORT` inherited from our own environment
/// (said, like an invalid one, which is then ignored).
fn preference(port: Option<u16>, inherited: Option<&str>, out: &Output) -> Option<u16> {
    let raw = match inherited.map(str::trim) {
        Some(raw) if !raw.is_empty() && port.is_none() => raw,
        _ => return port,
    };
    match raw.parse::<u16>() {
        Ok(p) => {
            out.say(format!(
                "PORT={p} in the environment: trying it first, as for --port"
            ));
            Some(p)
        }
        Err(_) => {
            out.say(format!(
                "ignoring PORT={raw:?} in the environment: not a port number (0-65535)"
            ));
            None
        }
    }
}

fn socket_names(subs: &[Name]) -> anyhow::Result<Vec<String>> {
    let mut names = vec![MAIN_SOCKET.to_string()];
    for sub in subs {
        if names.iter().any(|n| n == sub.as_str()) {
            bail!("--socket {sub} is given twice, or is the main socket's name; pick another name");
        }
        names.push(sub.to_string());
    }
    Ok(names)
}
