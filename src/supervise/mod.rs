//! `wharf run`: bind an instance's sockets, start its server with them, supervise it (signals,
//! readiness, restarts on the same socket) and keep its route registered while it lives.

pub mod demand;
pub mod ports;
pub mod registration;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::exfiltrator::WithRawSiginfo;
use signal_hook_tokio::SignalsInfo;

use crate::model::instance::{Declaration, State};
use crate::model::mode::{self, Mode};
use crate::model::name::Name;
use crate::model::ports::{MAIN_SOCKET, PortRanges};
use crate::model::project::{Ready, Restart};
use crate::state::context::Context;
use crate::state::logs::Log;
use crate::state::registry::Store;
use crate::sys::handoff::{self, Handoff};
use crate::sys::netstat::{self, Listener, Verdict};
use crate::sys::notify::{Notice, NotifySocket};
use crate::sys::process::{self, ProcessId};
use registration::Registration;

/// A child that lived shorter than this before exiting counts as a fast exit.
const FAST_EXIT: Duration = Duration::from_secs(2);
/// Give up after this many fast failures in a row (the route is removed, then the socket closed).
const GIVE_UP_AFTER: u32 = 5;
/// Fast clean exits restarted at once before backoff starts (servers that recycle themselves).
const FREE_RESTARTS: u32 = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Stop requests before wharf stops asking and kills the server.
const KILL_ON_REQUEST: u32 = 3;
/// What is left of a server after it exited gets at least this long to go after SIGTERM.
const MIN_LEFTOVER_GRACE: Duration = Duration::from_secs(1);

/// What `wharf run` was asked to do.
#[derive(Debug)]
pub struct RunArgs {
    pub name: Name,
    pub mode: Option<Mode>,
    pub port: Option<u16>,
    /// `None`: any free port.
    pub range: Option<PortRanges>,
    /// Ports never handed out (`[defaults] exclude`).
    pub exclude: PortRanges,
    pub sockets: Vec<Name>,
    pub restart: Restart,
    /// Start the server on the first connection; stop it after `idle_timeout` without any.
    pub on_demand: bool,
    pub idle_timeout: Option<Duration>,
    pub ready: Option<Ready>,
    /// Send wharf's and the server's output to this bounded file instead of the terminal.
    pub log: Option<PathBuf>,
    /// Set by `wharf up`: the wharf.toml entry this instance comes from.
    pub declared: Option<Declaration>,
    /// Extra environment for the server (wharf.toml's `env`).
    pub env: Vec<(String, String)>,
    pub force: bool,
    pub no_pid: bool,
    /// `PORT` in wharf's own environment, if set: a preference like `--port` when valid.
    pub inherited_port: Option<String>,
    pub quiet: bool,
    /// After a stop signal, how long the server has before it (and everything it started) is
    /// killed.
    pub stop_grace: Duration,
    /// Say every port tried and why it was not taken, not just the summary.
    pub verbose: bool,
    pub command: Vec<String>,
}

/// Run the instance until its server exits for good; returns the exit code for wharf
/// (the server's, or 128+signal).
pub async fn run(ctx: &Context, args: RunArgs) -> anyhow::Result<i32> {
    let log = match &args.log {
        Some(path) => Some(Log::open(path).with_context(|| format!("opening {}", path.display()))?),
        None => None,
    };
    let out = Output {
        name: args.name.clone(),
        quiet: args.quiet,
        log: log.clone(),
    };
    let socket_names = socket_names(&args.sockets)?;
    let source = match &args.declared {
        Some(d) => mode::Source::File(&d.file),
        None => mode::Source::CommandLine,
    };
    let plan = mode::choose(
        args.mode,
        args.on_demand,
        source,
        &args.command,
        &package_scripts(&ctx.cwd),
    );
    out.say(format!("{} mode: {}", plan.mode, plan.reason));
    if args.on_demand && plan.mode != Mode::Fd {
        bail!(
            "--on-demand needs fd mode: the socket must exist before the server does (drop --env)"
        );
    }
    if args.on_demand && plan.follows {
        bail!(
            "on demand, the first request waits on the socket wharf holds, and this server \
             cannot take it, so that request would never be answered; drop {}, or \
             run a server that takes an inherited socket (gunicorn, uvicorn, puma, or one given \
             {{fd}})",
            source.on_demand_switch()
        );
    }
    if plan.mode == Mode::Fd
        && plan.argv.iter().any(|a| a.contains("{port"))
        && !plan.argv.iter().any(|a| a.contains("{fd"))
    {
        bail!(
            "{{port}} asks the server to bind the port itself, but in fd mode wharf holds that \
             port and hands it over as fd 3, so the server would fail with \"address in use\"; \
             use {{fd}} to pass the socket{}",
            if args.on_demand {
                String::new()
            } else {
                format!(", or {} to let it bind", source.switch(Mode::Env))
            }
        );
    }
    let program = &plan.argv[0];
    if handoff::resolve_program(program, ctx.path_var.clone(), &ctx.cwd).is_none() {
        bail!("cannot find `{program}`: not an executable file, nor a command in $PATH");
    }

    let state_dir = ctx.dirs.state()?.to_path_buf();
    let runtime_dir = ctx.dirs.runtime()?.to_path_buf();
    let request = ports::Request {
        name: &args.name,
        sockets: &socket_names,
        prefer: preference(args.port, args.inherited_port.as_deref(), &out),
        range: args.range.as_ref(),
        exclude: &args.exclude,
        force: args.force,
    };
    let store = Store::new(&state_dir).recovering_from({
        let runtime = runtime_dir.clone();
        move || crate::control::client::running_instances(&runtime)
    });
    let allocated = ports::allocate(store, &request, &mut |line| out.say(line))?;
    for how in &allocated.how {
        if args.verbose {
            how.details(&args.name).into_iter().for_each(|l| out.say(l));
        }
        if let Some(summary) = how.summary(&args.name) {
            out.say(summary);
        }
    }
    let (bound, _lease) = (allocated.sockets, allocated.lease);
    let ports: Vec<(String, u16)> = bound.iter().map(|b| (b.name.clone(), b.port)).collect();
    let port_numbers: Vec<u16> = ports.iter().map(|(_, p)| *p).collect();
    let argv = mode::substitute(&plan.argv, &ports);

    let mut route = Registration::new(
        &out,
        &runtime_dir,
        &ctx.self_exe,
        &args.name,
        plan.mode,
        &bound,
    );
    route.instance.declared = args.declared.clone();
    route.instance.about = crate::model::instance::About::new(
        &argv,
        Some(ctx.cwd.clone()),
        args.log.as_ref().map(|path| ctx.cwd.join(path)),
    );
    route.connect().await?;
    let url = route.url(bound[0].port);
    let handed = route.main_addr();
    let expected = bound[0].port;
    let notify =
        NotifySocket::bind(&runtime_dir.join(format!("notify-{}.sock", std::process::id())))
            .context("creating the notify socket for the server")?;

    let mut env = args.env.clone();
    env.push(("WHARF_NAME".to_string(), args.name.to_string()));
    env.push(("WHARF_URL".to_string(), url.clone()));
    if plan.notify || args.ready == Some(Ready::Notify) {
        env.push((
            "NOTIFY_SOCKET".to_string(),
            notify.path().display().to_string(),
        ));
    }
    // In fd mode too, so that configs reading it (puma's `port ENV.fetch("PORT")`) name the
    // handed socket's port rather than fail or see a stale one from our own environment.
    for b in &bound {
        env.push((port_var(&b.name), b.port.to_string()));
    }
    let fds: Vec<_> = match plan.mode {
        Mode::Fd => bound
            .iter()
            .map(|b| (b.socket.as_raw_fd(), b.name.clone()))
            .collect(),
        Mode::Env => {
            env.push(("HOST".into(), "127.0.0.1".into()));
            Vec::new()
        }
    };
    for (i, b) in bound.iter().enumerate() {
        let how = match plan.mode {
            Mode::Fd => format!("passed as fd {} ({})", 3 + i, b.name),
            Mode::Env => format!("given as {}", port_var(&b.name)),
        };
        out.say(format!("{} {how}", b.addr()));
    }
    out.url(&url);
    // Our copy of the sockets: kept for the instance's life in fd mode (restarts reuse them),
    // dropped at the first start in env mode.
    let mut held = Some(bound);

    let handoff = Handoff {
        self_exe: &ctx.self_exe,
        argv: &argv,
        env: &env,
        fds: &fds,
        set_pid: !args.no_pid && plan.listen_pid,
        own_group: !std::io::IsTerminal::is_terminal(&std::io::stdin()),
    };
    let mut signals =
        SignalsInfo::<WithRawSiginfo>::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2])
            .context("installing signal handlers")?;
    let mut supervisor = Supervisor {
        out: &out,
        group: handoff.own_group,
        restart: args.restart,
        on_demand: args.on_demand,
        grace: args.stop_grace,
        stopping: None,
        stop_requests: 0,
        fast_exits: 0,
        fast_failures: 0,
    };
    let idle_limit = args
        .idle_timeout
        .unwrap_or(crate::model::project::DEFAULT_IDLE);

    let code = 'instance: loop {
        if args.on_demand {
            route.set_state(State::Idle).await;
            let sockets = held.as_ref().expect("on-demand keeps its sockets");
            // While idle the route must outlive a proxy restart like a running one.
            loop {
                tokio::select! {
                    waiting = demand::connection_waiting(sockets) => {
                        waiting.context("watching the instance's sockets")?;
                        out.say("a connection is waiting; starting the server".to_string());
                        break;
                    }
                    () = stop_signal(&mut signals) => break 'instance 0,
                    event = route.next_event() => route.on_event(event).await,
                }
            }
        }
        let started = Instant::now();
        let mut command = handoff.command();
        if log.is_some() {
            command
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", argv.join(" ")))?;
        if let Some(log) = &log {
            tokio::spawn(log.clone().copy_from(child.stdout.take().expect("piped")));
            tokio::spawn(log.clone().copy_from(child.stderr.take().expect("piped")));
        }
        let child_pid = child.id().expect("a child just spawned has a pid") as i32;
        if plan.mode == Mode::Env {
            // Held until this moment so that nobody else could take the port.
            held = None;
        }
        route.started(child_pid).await;
        let mut looking = plan.mode == Mode::Env;
        // In fd mode: does the server serve on the socket it was handed?
        let mut guard = match (&held, plan.mode) {
            (Some(sockets), Mode::Fd) => netstat::Guard::new(sockets),
            _ => None,
        };
        let mut checking: Option<tokio::task::JoinHandle<(netstat::Guard, Verdict)>> = None;
        route.instance.exposed = None;
        let mut look_pause = Duration::from_millis(20);
        let mut probing = match &args.ready {
            Some(Ready::Http(path)) => Some(path.clone()),
            _ => None,
        };
        let mut last_answer = None;
        if plan.mode == Mode::Fd && args.ready == Some(Ready::Connect) {
            // The socket accepts from the start: that is all `connect` asks.
            route.set_state(State::Ready).await;
        }
        let mut idle = demand::IdleClock::new(idle_limit);

        let status: ExitStatus = loop {
            tokio::select! {
                status = child.wait() => break status.context("waiting for the server")?,
                Some(info) = signals.next() => supervisor.on_signal(&info, child_pid),
                notices = notify.recv(|pid| pid.is_none_or(|p| crate::sys::process::in_tree(p, child_pid))) => {
                    for notice in notices.unwrap_or_default() {
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
                _ = tokio::time::sleep(look_pause), if looking || guard.is_some() => {
                    if looking
                        && let Some(l) = pick_listener(&netstat::listening(child_pid, expected), expected)
                    {
                        looking = false;
                        if l.connect.port() == expected {
                            out.say(format!("listening on {}", l.bound));
                        } else {
                            out.say(format!("listens on {}, not on port {expected} as asked; routing there", l.bound));
                        }
                        follow(&mut route, &out, l, probing.is_some()).await;
                    }
                    if let Some(mut g) = guard.take() {
                        // Reading /proc can take a while on a busy machine: off this loop,
                        // which must stay quick to pass signals on and notice an exit.
                        checking = Some(tokio::task::spawn_blocking(move || {
                            let verdict = g.check(child_pid);
                            (g, verdict)
                        }));
                    }
                    look_pause = (look_pause * 2).min(Duration::from_millis(500));
                }
                Some((g, verdict)) = async { checking.as_mut()?.await.ok() }, if checking.is_some() => {
                    checking = None;
                    if verdict == Verdict::Watching {
                        guard = Some(g);
                    }
                    let says_ready = args.ready.is_none();
                    on_verdict(verdict, &mut route, &out, handed, source, says_ready, probing.is_some()).await;
                }
                probe = demand::http_ready(route.main_addr(), probing.as_deref()), if probing.is_some() => {
                    let path = probing.as_deref().unwrap_or_default();
                    match probe {
                        demand::Probe::Ready(status) => {
                            out.say(format!("ready (GET {path} answered {status})"));
                            probing = None;
                            route.set_state(State::Ready).await;
                        }
                        demand::Probe::Answered(status) if last_answer != Some(status) => {
                            out.say(format!("GET {path} answered {status}; not ready until it answers 2xx or 3xx"));
                            last_answer = Some(status);
                        }
                        _ => {}
                    }
                }
                _ = tokio::time::sleep(demand::IDLE_TICK), if args.on_demand && supervisor.stopping.is_none() => {
                    if idle.tick(netstat::established(&port_numbers)) {
                        out.say(format!("idle for {}s; stopping the server (its socket stays)", idle_limit.as_secs()));
                        supervisor.begin_stop(StopWhy::Idle, child_pid);
                        supervisor.signal(child_pid, Signal::SIGTERM);
                    }
                }
                () = supervisor.kill_due(), if supervisor.kill_pending() => supervisor.kill(child_pid),
                event = route.next_event() => route.on_event(event).await,
            }
        };
        let code = exit_code(status);
        let ran = started.elapsed();
        let stop = supervisor.stopping.take();
        end_leftovers(&out, child_pid, stop.as_ref(), supervisor.grace).await;
        let how = describe(status, stop.as_ref());
        route.instance.last_exit = Some(how.clone());
        route.instance.child_pid = None;
        if stop.as_ref().is_some_and(|s| s.why == StopWhy::Idle) && supervisor.stop_requests == 0 {
            out.say(format!(
                "server {how} (ran {}); starting again on the next connection",
                ran_for(ran)
            ));
            continue 'instance;
        }
        match supervisor.after_exit(status, ran) {
            Next::Stop => {
                route.remove().await;
                out.say(format!(
                    "server {how} (ran {}); route removed",
                    ran_for(ran)
                ));
                break code;
            }
            Next::GiveUp => {
                out.say(format!(
                    "giving up after {GIVE_UP_AFTER} fast failures in a row (the last: {how})"
                ));
                if args.declared.is_some() || args.on_demand {
                    // Declared instances stay listed as failed; the proxy answers for them
                    // without contacting anything, so the socket can go.
                    route.set_state(State::Failed).await;
                    drop(held.take());
                    pause(&mut route, &mut signals, None).await;
                } else {
                    route.remove().await;
                    drop(held.take());
                    out.say("route removed".to_string());
                }
                break code;
            }
            Next::RestartAfter(delay) => {
                out.say(format!(
                    "server {how} (ran {}); {}{} on the same socket",
                    ran_for(ran),
                    if args.on_demand {
                        "starting again on demand"
                    } else {
                        "restarting"
                    },
                    if delay.is_zero() {
                        String::new()
                    } else {
                        format!(" in {:.1}s", delay.as_secs_f64())
                    }
                ));
                route.set_state(State::Restarting).await;
                if !pause(&mut route, &mut signals, Some(delay)).await {
                    break code;
                }
            }
        }
    };
    route.remove().await;
    Ok(code)
}

/// The environment variable that carries a socket's port in env mode: PORT, PORT_SUB.
fn port_var(socket: &str) -> String {
    match socket {
        MAIN_SOCKET => "PORT".to_string(),
        sub => format!("PORT_{}", sub.to_ascii_uppercase().replace('-', "_")),
    }
}

/// Waits `delay` (`None`: until a stop signal) while keeping the route registered through
/// proxy restarts. False if a stop signal came first.
async fn pause(
    route: &mut Registration,
    signals: &mut SignalsInfo<WithRawSiginfo>,
    delay: Option<Duration>,
) -> bool {
    let until = async {
        match delay {
            Some(delay) => tokio::time::sleep(delay).await,
            None => std::future::pending().await,
        }
    };
    let mut until = std::pin::pin!(until);
    loop {
        tokio::select! {
            () = until.as_mut() => return true,
            () = stop_signal(signals) => return false,
            event = route.next_event() => route.on_event(event).await,
        }
    }
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

/// After the server exited: whatever it started that still runs (in its process tree when a
/// stop began, or in the process group it led) is stopped too, SIGTERM then SIGKILL after
/// the rest of the grace, so nothing keeps the socket or outlives the instance.
async fn end_leftovers(out: &Output, server: i32, stop: Option<&Stop>, grace: Duration) {
    let known = stop.map(|s| s.family.clone()).unwrap_or_default();
    let left: Vec<_> = process::union(known, process::family_of(server))
        .into_iter()
        .filter(|p| p.pid != server && p.is_alive())
        .collect();
    if left.is_empty() {
        return;
    }
    let deadline = match stop {
        Some(s) if !s.killed => s
            .kill_at
            .into_std()
            .max(Instant::now() + MIN_LEFTOVER_GRACE),
        _ => Instant::now() + grace,
    };
    out.say(format!(
        "{} process(es) the server started still run; stopping them",
        left.len()
    ));
    let ended = tokio::task::spawn_blocking(move || process::end_all(&left, deadline)).await;
    match ended {
        Ok((0, true)) => {}
        Ok((killed, true)) => out.say(format!(
            "killed {killed} of them (SIGKILL): they ignored SIGTERM"
        )),
        _ => out.say("some survived SIGKILL; are they stuck in the kernel?".to_string()),
    }
}

/// Resolves at the first SIGINT/SIGTERM/SIGQUIT (others are ignored while no server runs).
async fn stop_signal(signals: &mut SignalsInfo<WithRawSiginfo>) {
    while let Some(info) = signals.next().await {
        if is_stop(info.si_signo) {
            return;
        }
    }
    std::future::pending().await
}

/// The restart policy and stop bookkeeping of one instance.
struct Supervisor<'a> {
    out: &'a Output,
    /// The server leads its own process group: signals go to the whole group.
    group: bool,
    restart: Restart,
    on_demand: bool,
    /// How long a stopping server has before it is killed.
    grace: Duration,
    /// The stop in progress, if any.
    stopping: Option<Stop>,
    stop_requests: u32,
    fast_exits: u32,
    fast_failures: u32,
}

/// Why wharf is stopping the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopWhy {
    /// A stop signal (`wharf stop`, Ctrl-C): this one.
    Asked(Signal),
    /// On demand, idle for the whole timeout (SIGTERM).
    Idle,
}

/// A stop in progress.
struct Stop {
    why: StopWhy,
    /// When the server and everything it started get SIGKILL if still there.
    kill_at: tokio::time::Instant,
    /// Everything the server had started when the stop began (and when it was killed): what
    /// is left of it after the server exits is stopped too.
    family: Vec<ProcessId>,
    /// The grace ran out and SIGKILL was sent.
    killed: bool,
}

enum Next {
    Stop,
    GiveUp,
    RestartAfter(Duration),
}

impl Supervisor<'_> {
    /// Pass a signal on. SIGINT/SIGQUIT typed at the terminal already reached the server when
    /// it shares wharf's process group, so they are only noted; repeated stop requests end in
    /// SIGKILL.
    fn on_signal(&mut self, info: &libc::siginfo_t, child: i32) {
        let signal = Signal::try_from(info.si_signo).expect("only real signals are registered");
        let reached_server = !self.group
            && matches!(signal, Signal::SIGINT | Signal::SIGQUIT)
            && typed_at_terminal(info);
        let mut send = (!reached_server).then_some(signal);
        if is_stop(info.si_signo) {
            self.stop_requests += 1;
            self.begin_stop(StopWhy::Asked(signal), child);
            if self.stop_requests >= KILL_ON_REQUEST {
                self.out.say(format!(
                    "asked to stop {} times; killing the server",
                    self.stop_requests
                ));
                send = Some(Signal::SIGKILL);
            }
        }
        if let Some(signal) = send {
            self.signal(child, signal);
        }
    }

    /// Note that a stop began (the first one counts; a stop request outranks an idle stop)
    /// and what the server has started by now.
    fn begin_stop(&mut self, why: StopWhy, child: i32) {
        match &mut self.stopping {
            Some(stop) => {
                if stop.why == StopWhy::Idle {
                    stop.why = why;
                }
            }
            None => {
                self.stopping = Some(Stop {
                    why,
                    kill_at: tokio::time::Instant::now() + self.grace,
                    family: process::family_of(child),
                    killed: false,
                });
            }
        }
    }

    /// A stop is on and its SIGKILL not sent yet.
    fn kill_pending(&self) -> bool {
        self.stopping.as_ref().is_some_and(|s| !s.killed)
    }

    /// Resolves when the stop in progress runs out of grace (pending without one).
    async fn kill_due(&self) {
        match self.stopping.as_ref() {
            Some(stop) => tokio::time::sleep_until(stop.kill_at).await,
            None => std::future::pending().await,
        }
    }

    /// The grace ran out: SIGKILL the server and everything it started.
    fn kill(&mut self, child: i32) {
        let Some(stop) = self.stopping.as_mut() else {
            return;
        };
        self.out.say(format!(
            "the server did not stop within {} of {}; killing it and everything it started (SIGKILL)",
            ran_for(self.grace),
            stop.signal().as_str()
        ));
        stop.family = process::union(std::mem::take(&mut stop.family), process::family_of(child));
        process::kill_all(&stop.family);
        stop.killed = true;
    }

    /// Signal the server (and, when it leads its own group, everything it started).
    fn signal(&self, child: i32, signal: Signal) {
        let target = if self.group { -child } else { child };
        let _ = kill(Pid::from_raw(target), signal);
    }

    /// What to do after the server exited. An on-demand server that exits cleanly simply
    /// waits for its next connection; otherwise the restart policy decides.
    fn after_exit(&mut self, status: ExitStatus, ran: Duration) -> Next {
        if self.stop_requests > 0 {
            return Next::Stop;
        }
        let wants = match self.restart {
            Restart::No => false,
            Restart::OnFailure => !status.success(),
            Restart::Always => true,
        };
        let idle_again = self.on_demand && status.success();
        if !(wants || idle_again) {
            return if self.on_demand {
                Next::GiveUp
            } else {
                Next::Stop
            };
        }
        if ran >= FAST_EXIT {
            self.fast_exits = 0;
            self.fast_failures = 0;
            return Next::RestartAfter(Duration::ZERO);
        }
        self.fast_exits += 1;
        if status.success() {
            self.fast_failures = 0;
        } else {
            self.fast_failures += 1;
            if self.fast_failures >= GIVE_UP_AFTER {
                return Next::GiveUp;
            }
        }
        let over = match (status.success(), self.on_demand) {
            // On demand, a clean exit waits for a connection: no busy loop to slow down.
            (true, true) => 0,
            (true, false) => self.fast_exits.saturating_sub(FREE_RESTARTS),
            (false, _) => self.fast_failures,
        };
        Next::RestartAfter(backoff(over))
    }
}

/// 0 for the first, then 100 ms doubling up to `MAX_BACKOFF`.
fn backoff(n: u32) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    (Duration::from_millis(100) * 2u32.saturating_pow(n.min(16) - 1)).min(MAX_BACKOFF)
}

/// Whether a signal came from the terminal (typed ^C or ^\), which sends it to its whole
/// foreground process group. Linux says so in `si_code`.
#[cfg(target_os = "linux")]
fn typed_at_terminal(info: &libc::siginfo_t) -> bool {
    info.si_code == libc::SI_KERNEL
}

/// Whether a signal came from the terminal. macOS leaves `si_code` 0 for every signal (and
/// `si_pid` names whoever wrote to the terminal), so this asks whether wharf's group is the
/// terminal's foreground group, the one a typed ^C reaches.
#[cfg(not(target_os = "linux"))]
fn typed_at_terminal(_: &libc::siginfo_t) -> bool {
    nix::unistd::tcgetpgrp(std::io::stdin()).is_ok_and(|fg| fg == nix::unistd::getpgrp())
}

fn is_stop(signal: i32) -> bool {
    matches!(signal, SIGINT | SIGTERM | SIGQUIT)
}

/// The expected port if the server listens there, else the lowest port it listens on.
fn pick_listener(found: &[Listener], expected: u16) -> Option<Listener> {
    found
        .iter()
        .find(|l| l.connect.port() == expected)
        .or(found.first())
        .copied()
}

/// Route to `listener` from now on, and say so loudly if the whole network reaches it.
/// `probing`: an `--ready http:` probe decides readiness, so listening is not enough.
async fn follow(route: &mut Registration, out: &Output, listener: Listener, probing: bool) {
    route.instance.exposed = listener.is_exposed().then_some(listener.bound);
    route.set_main_addr(listener.connect);
    let state = if probing {
        State::Starting
    } else {
        State::Ready
    };
    route.set_state(state).await;
    if listener.is_exposed() {
        out.say(format!(
            "warning: {}",
            netstat::exposed_warning(listener.bound)
        ));
    }
}

/// Act on what the fd-mode guard found out about the server and the `handed` socket.
/// `says_ready`: no `--ready` was given, so a server that accepts is ready.
async fn on_verdict(
    verdict: Verdict,
    route: &mut Registration,
    out: &Output,
    handed: SocketAddr,
    source: mode::Source<'_>,
    says_ready: bool,
    probing: bool,
) {
    let fix = format!(
        "to serve on the handed socket, give it fd 3 (an {{fd}} placeholder); or let it bind \
         PORT itself ({})",
        source.switch(Mode::Env)
    );
    match verdict {
        Verdict::Watching => {}
        Verdict::Serving => {
            let state = match route.instance.state {
                State::Starting if says_ready => {
                    out.say("ready (accepted a connection on its socket)".to_string());
                    State::Ready
                }
                state => state,
            };
            if route.main_addr() != handed || state != route.instance.state {
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
            // Routed first, said second: whoever waits for the line finds the route in place.
            follow(route, out, listener, probing).await;
            out.say(format!(
                "the server {what} ({handed}) and listens on {} instead; routing there ({fix})",
                listener.bound
            ));
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

/// Shell convention: the exit code, or 128 + the signal that killed it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

impl Stop {
    /// The signal that asked the server to stop.
    fn signal(&self) -> Signal {
        match self.why {
            StopWhy::Asked(signal) => signal,
            StopWhy::Idle => Signal::SIGTERM,
        }
    }
}

/// How the server's exit reads: a stop wharf made is said as such (`stopped on request`),
/// with the raw status only when it is not what that stop leads to.
fn describe(status: ExitStatus, stop: Option<&Stop>) -> String {
    let plain = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?");
            format!("was killed by {name}")
        }
        _ => "ended".to_string(),
    };
    let Some(stop) = stop else {
        return plain;
    };
    let sent = stop.signal() as i32;
    if stop.killed && status.signal() == Some(libc::SIGKILL) {
        return format!(
            "was killed (SIGKILL) after ignoring {}",
            stop.signal().as_str()
        );
    }
    let said = match stop.why {
        StopWhy::Asked(_) => "stopped on request",
        StopWhy::Idle => "stopped when idle",
    };
    // What a server does on the signal: die by it, exit cleanly, or exit 128+signal (shells).
    let expected =
        status.success() || status.signal() == Some(sent) || status.code() == Some(128 + sent);
    if expected {
        said.to_string()
    } else {
        format!("{said} ({plain})")
    }
}

/// A run time as people read it: `0.4s`, `12.0s`, then `3m 20s`.
fn ran_for(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        crate::model::text::human_duration(d.as_secs())
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

/// `scripts` of ./package.json, for seeing through `npm run dev`; empty if there is none.
fn package_scripts(dir: &Path) -> BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Package {
        #[serde(default)]
        scripts: BTreeMap<String, String>,
    }
    std::fs::read(dir.join("package.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Package>(&bytes).ok())
        .map(|p| p.scripts)
        .unwrap_or_default()
}

/// wharf's messages go to stderr, prefixed, so the server's own output stays its own.
#[derive(Clone)]
pub(crate) struct Output {
    name: Name,
    quiet: bool,
    /// With `--log`, everything goes there too (the terminal may be gone).
    log: Option<Log>,
}

impl Output {
    pub(crate) fn say(&self, line: String) {
        self.emit(&format!("wharf: {}: {line}\n", self.name), !self.quiet);
    }

    /// The one line a script looks for: always printed, even with --quiet.
    fn url(&self, url: &str) {
        self.emit(&format!("wharf: {} is at {url}\n", self.name), true);
    }

    fn emit(&self, line: &str, to_terminal: bool) {
        if let Some(log) = &self.log {
            log.write(line.as_bytes());
        }
        // Under `wharf up` the terminal is the log itself: one copy is enough.
        if to_terminal && !self.log.as_ref().is_some_and(Log::is_stderr) {
            // A closed terminal or pipe must not take the supervisor (and its server) down.
            crate::sys::stdio::err(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(raw: i32) -> ExitStatus {
        ExitStatus::from_raw(raw)
    }

    #[test]
    fn a_stop_wharf_made_is_not_described_as_a_kill() {
        let stop = |why, killed| Stop {
            why,
            kill_at: tokio::time::Instant::now(),
            family: Vec::new(),
            killed,
        };
        let term = stop(StopWhy::Asked(Signal::SIGTERM), false);
        assert_eq!(
            describe(status(libc::SIGTERM), None),
            "was killed by SIGTERM"
        );
        assert_eq!(
            describe(status(libc::SIGTERM), Some(&term)),
            "stopped on request"
        );
        assert_eq!(
            describe(status(143 << 8), Some(&term)),
            "stopped on request"
        );
        assert_eq!(
            describe(status(3 << 8), Some(&term)),
            "stopped on request (exited with code 3)"
        );
        let idle = stop(StopWhy::Idle, false);
        assert_eq!(describe(status(0), Some(&idle)), "stopped when idle");
        let killed = stop(StopWhy::Idle, true);
        assert_eq!(
            describe(status(libc::SIGKILL), Some(&killed)),
            "was killed (SIGKILL) after ignoring SIGTERM"
        );
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(status(3 << 8)), 3);
        assert_eq!(exit_code(status(libc::SIGTERM)), 128 + libc::SIGTERM);
    }

    #[test]
    fn fast_failures_back_off_then_give_up_and_slow_ones_reset() {
        let out = Output {
            name: "t".parse().unwrap(),
            quiet: true,
            log: None,
        };
        let mut s = Supervisor {
            out: &out,
            group: false,
            restart: Restart::Always,
            on_demand: false,
            grace: Duration::from_secs(10),
            stopping: None,
            stop_requests: 0,
            fast_exits: 0,
            fast_failures: 0,
        };
        let fail = status(1 << 8);
        let quick = Duration::from_millis(10);
        let mut delays = Vec::new();
        for _ in 0..GIVE_UP_AFTER - 1 {
            match s.after_exit(fail, quick) {
                Next::RestartAfter(d) => delays.push(d),
                _ => panic!("gave up too early"),
            }
        }
        assert!(delays.windows(2).all(|w| w[0] < w[1]), "{delays:?}");
        assert!(matches!(s.after_exit(fail, quick), Next::GiveUp));
        s.fast_failures = 0;
        assert!(matches!(s.after_exit(fail, FAST_EXIT * 2), Next::RestartAfter(d) if d.is_zero()));
        for _ in 0..50 {
            assert!(
                matches!(s.after_exit(status(0), quick), Next::RestartAfter(d) if d <= MAX_BACKOFF)
            );
        }
        s.stop_requests = 1;
        assert!(matches!(s.after_exit(status(0), quick), Next::Stop));
    }
}
