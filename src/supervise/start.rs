//! Starting the server: choosing fd or env mode (refusing what cannot work), the environment
//! it gets, the sockets it is handed, and spawning it with its output sent to the log.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use anyhow::{Context as _, bail};

use super::RunArgs;
use super::output::{Output, Tail};
use crate::model::mode::{self, Launch, Mode};
use crate::model::ports::MAIN_SOCKET;
use crate::model::project::Ready;
use crate::state::context::Context;
use crate::state::logs::Log;
use crate::sys::child::Child;
use crate::sys::handoff::{self, Handoff, Out};
use crate::sys::notify::NotifySocket;
use crate::sys::socket::BoundSocket;

/// Choose the mode and the command line, say which and why, and refuse combinations that
/// cannot work, before anything is bound.
pub(super) fn plan(
    ctx: &Context,
    args: &RunArgs,
    source: mode::Source<'_>,
    out: &Output,
) -> anyhow::Result<Launch> {
    let plan = mode::choose(
        args.mode,
        args.on_demand,
        source,
        &args.command,
        &package_scripts(&ctx.cwd),
        &|program| installed(&ctx.cwd, program),
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
    Ok(plan)
}

/// How to start the server, as often as it takes: its command line, environment and sockets.
#[derive(Clone)]
pub(super) struct Server {
    /// The command line before its `{port}`/`{fd}` placeholders were filled in.
    template: Vec<String>,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// fd mode: the sockets handed over (fd 3, 4, …) with their names; empty in env mode.
    fds: Vec<(RawFd, String)>,
    set_pid: bool,
    /// The server leads a process group of its own (wharf has no terminal).
    pub(super) own_group: bool,
    /// With `--log`, the server's output goes there.
    log: Option<Log>,
    /// `--json`: stdout carries wharf's events, so the server's goes to stderr.
    stdout_to_stderr: bool,
}

/// The server's environment: wharf.toml's `env`, then what wharf tells it (its name and URL,
/// `NOTIFY_SOCKET`, each socket's port, and `HOST` in env mode).
pub(super) fn environment(
    args: &RunArgs,
    plan: &Launch,
    bound: &[BoundSocket],
    url: &str,
    notify: &NotifySocket,
) -> Vec<(String, String)> {
    let mut env = args.env.clone();
    env.push(("WHARF_NAME".to_string(), args.name.to_string()));
    env.push(("WHARF_URL".to_string(), url.to_string()));
    if offers_notify(args, plan) {
        env.push((
            "NOTIFY_SOCKET".to_string(),
            notify.path().display().to_string(),
        ));
    }
    // In fd mode too, so that configs reading it (puma's `port ENV.fetch("PORT")`) name the
    // handed socket's port rather than fail or see a stale one from our own environment.
    for b in bound {
        env.push((port_var(&b.name), b.port.to_string()));
    }
    if plan.mode == Mode::Env {
        env.push(("HOST".into(), "127.0.0.1".into()));
    }
    env
}

/// Whether the server is given `NOTIFY_SOCKET`: it is known to speak sd_notify, or
/// `--ready notify` says it does.
pub(super) fn offers_notify(args: &RunArgs, plan: &Launch) -> bool {
    plan.notify || args.ready == Some(Ready::Notify)
}

/// What makes the server's own HTTPS clients trust wharf's CA (`ca::bundle`), made now if
/// there is none yet; a variable wharf.toml sets for the instance is left to it. Without a CA
/// (`[proxy] https = false`, or it cannot be made) nothing.
pub(super) fn trust_environment(
    state: &std::path::Path,
    args: &RunArgs,
    out: &Output,
) -> Vec<(String, String)> {
    if args.https == crate::model::config::Https::Off {
        return Vec::new();
    }
    let user = |var: &str| {
        args.ca_vars
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.clone())
    };
    let vars = crate::ca::Authority::open_or_create(state)
        .and_then(|ca| crate::ca::bundle::environment(state, &ca, user));
    match vars {
        Ok(vars) => vars
            .into_iter()
            .filter(|(k, _)| !args.env.iter().any(|(e, _)| e == k))
            .map(|(k, v)| (k.to_string(), v.display().to_string()))
            .collect(),
        Err(e) => {
            out.say(format!("not offering the server wharf's CA: {e}"));
            Vec::new()
        }
    }
}

/// Say how each socket reaches the server: as an fd, or as a port in its environment.
pub(super) fn say_handoff(out: &Output, mode: Mode, bound: &[BoundSocket]) {
    for (i, b) in bound.iter().enumerate() {
        let how = match mode {
            Mode::Fd => format!("passed as fd {} ({})", 3 + i, b.name),
            Mode::Env => format!("given as {}", port_var(&b.name)),
        };
        out.say(format!("{} {how}", b.addr()));
    }
}

impl Server {
    pub(super) fn new(
        args: &RunArgs,
        plan: &Launch,
        argv: Vec<String>,
        bound: &[BoundSocket],
        env: Vec<(String, String)>,
        log: Option<Log>,
    ) -> Server {
        let fds = match plan.mode {
            Mode::Fd => bound
                .iter()
                .map(|b| (b.socket.as_raw_fd(), b.name.clone()))
                .collect(),
            Mode::Env => Vec::new(),
        };
        Server {
            template: plan.argv.clone(),
            argv,
            env,
            fds,
            set_pid: !args.no_pid && plan.listen_pid,
            own_group: !std::io::IsTerminal::is_terminal(&std::io::stdin()),
            log,
            stdout_to_stderr: args.json,
        }
    }

    /// The same server on other sockets (a reload's fresh ones): the placeholders, the port
    /// variables and, in fd mode, the sockets handed over follow them.
    pub(super) fn on_sockets(&self, bound: &[BoundSocket]) -> Server {
        let ports: Vec<(String, u16)> = bound.iter().map(|b| (b.name.clone(), b.port)).collect();
        let mut env = self.env.clone();
        for b in bound {
            let var = port_var(&b.name);
            env.retain(|(k, _)| *k != var);
            env.push((var, b.port.to_string()));
        }
        let fds = match self.fds.is_empty() {
            true => Vec::new(),
            false => bound
                .iter()
                .map(|b| (b.socket.as_raw_fd(), b.name.clone()))
                .collect(),
        };
        Server {
            argv: mode::substitute(&self.template, &ports),
            env,
            fds,
            ..self.clone()
        }
    }

    /// Start the server with its output passed on as `spawn` does (to the log, or wharf's own
    /// stdout and stderr) through pipes, its last lines kept in `tail`; also the tasks that
    /// copy, which end when the server's output does.
    pub(super) fn spawn_tailed(
        &self,
        tail: &Tail,
    ) -> anyhow::Result<(Child, Vec<tokio::task::JoinHandle<()>>)> {
        use std::io::Write as _;
        let spawned = self
            .handoff()
            .start(Out::Pipe, Out::Pipe)
            .context("preparing the server's start")?
            .spawn()
            .with_context(|| format!("starting {}", self.argv.join(" ")))?;
        let to = |stdout: bool| {
            let log = self.log.clone();
            let to_stdout = stdout && !self.stdout_to_stderr;
            move |bytes: &[u8]| match &log {
                Some(log) => log.write(bytes),
                // Nobody reading any more must not take the supervisor down.
                None if to_stdout => drop(std::io::stdout().lock().write_all(bytes)),
                None => drop(std::io::stderr().lock().write_all(bytes)),
            }
        };
        let copiers = [(spawned.stdout, true), (spawned.stderr, false)]
            .into_iter()
            .filter_map(|(pipe, stdout)| Some(tokio::spawn(tail.clone().copy(pipe?, to(stdout)))))
            .collect();
        Ok((spawned.child, copiers))
    }

    fn handoff(&self) -> Handoff<'_> {
        Handoff {
            argv: &self.argv,
            env: &self.env,
            fds: &self.fds,
            set_pid: self.set_pid,
            own_group: self.own_group,
        }
    }

    /// Everything a start needs but the fork: the environment, the command line, where its
    /// output goes. Built while the supervisor waits (for a connection, for the server to
    /// exit), so that a start, once due, forks at once.
    pub(super) fn prepare(&self) -> anyhow::Result<Prepared> {
        let (stdout, stderr) = if self.log.is_some() {
            (Out::Pipe, Out::Pipe)
        } else if self.stdout_to_stderr {
            let stderr = std::os::fd::AsFd::as_fd(&std::io::stderr())
                .try_clone_to_owned()
                .context("passing stderr to the server as its stdout")?;
            (Out::Fd(stderr), Out::Inherit)
        } else {
            (Out::Inherit, Out::Inherit)
        };
        let start = self
            .handoff()
            .start(stdout, stderr)
            .context("preparing the server's start")?;
        Ok(Prepared(start))
    }

    /// Start the server (the child hands the sockets over before it execs), its output
    /// copied to the log if there is one; `prepared` (by `prepare` from this same `Server`)
    /// saves building the start now.
    pub(super) fn spawn(&self, prepared: Option<Prepared>) -> anyhow::Result<Child> {
        let Prepared(start) = match prepared {
            Some(prepared) => prepared,
            None => self.prepare()?,
        };
        let spawned = start
            .spawn()
            .with_context(|| format!("starting {}", self.argv.join(" ")))?;
        if let (Some(log), Some(stdout), Some(stderr)) = (&self.log, spawned.stdout, spawned.stderr)
        {
            let copiers = [
                tokio::spawn(log.clone().copy_from(stdout)),
                tokio::spawn(log.clone().copy_from(stderr)),
            ];
            if let Ok(mut all) = LOG_COPIERS.lock() {
                all.retain(|c| !c.is_finished());
                all.extend(copiers);
            }
        }
        Ok(spawned.child)
    }
}

/// A start of the server, built ahead (`Server::prepare`); a spawn uses it up.
pub(super) struct Prepared(handoff::Start);

/// The tasks copying servers' output to their logs: a supervisor that ends lets them finish
/// first ([`logs_copied`]), so that a server's last lines (why it failed) are in its log by
/// the time anyone who saw the supervisor end reads it.
static LOG_COPIERS: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// How long an ending supervisor waits for its servers' output (what they started may hold
/// the pipes open).
const LOG_COPY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Wait, at most `LOG_COPY_WAIT`, until every server's output is in its log.
pub(super) async fn logs_copied() {
    let copiers = LOG_COPIERS
        .lock()
        .map(|mut all| std::mem::take(&mut *all))
        .unwrap_or_default();
    let _ = tokio::time::timeout(LOG_COPY_WAIT, futures_util::future::join_all(copiers)).await;
}

/// The environment variable that carries a socket's port in env mode: PORT, PORT_SUB.
fn port_var(socket: &str) -> String {
    match socket {
        MAIN_SOCKET => "PORT".to_string(),
        sub => format!("PORT_{}", sub.to_ascii_uppercase().replace('-', "_")),
    }
}

/// The release of `program`'s npm package that runs in `dir`: from the nearest
/// node_modules/PROGRAM/package.json upward, as Node resolves it.
fn installed(dir: &Path, program: &str) -> Option<mode::Version> {
    let package = dir.ancestors().find_map(|d| {
        crate::model::naming::Package::read(
            &d.join("node_modules").join(program).join("package.json"),
        )
    })?;
    mode::parse_version(package.version.as_deref()?)
}

/// `scripts` of ./package.json, for seeing through `npm run dev`; empty if there is none.
fn package_scripts(dir: &Path) -> BTreeMap<String, String> {
    crate::model::naming::Package::read(&dir.join("package.json"))
        .map(|p| p.scripts)
        .unwrap_or_default()
}
