//! Where the `wharf` binary starts (`main.rs` only calls `main` here): reads inherited
//! sockets, parses arguments, builds the runtime, dispatches, and prints errors.

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::args::{Cli, Command, ProxyCli};
use crate::cli::{commands, hosts, https, mcp, reload, run, service, up};
use crate::model::config;
use crate::model::mode::Mode;
use crate::model::project::{DEFAULT_HEALTH_FAILURES, DEFAULT_HEALTH_INTERVAL, Health, Restart};
use crate::proxy::listeners;
use crate::state::context::Context;
use crate::sys::stdio;
use crate::{proxy, supervise};
use anyhow::Context as _;
use clap::Parser;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => exit(code),
        // Whoever read our output has what they wanted (`wharf ls | head`).
        Err(e) if stdio::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            stdio::err(&format!("wharf: error: {e:#}\n"));
            ExitCode::FAILURE
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let mut ctx = Context::new(
        |k| std::env::var_os(k),
        std::env::current_exe().context("finding the wharf binary")?,
        std::env::current_dir().context("finding the current directory")?,
    )?;
    let current_thread = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Run(args) => {
            let config = user_config(&ctx)?;
            let grace = stop_grace()?;
            let filled = run::fill(&ctx, &project_trust(&ctx)?, args)?;
            if let Some(dir) = &filled.dir {
                // A declared instance's `dir`: where its server starts, as under `wharf up`.
                std::env::set_current_dir(dir)
                    .with_context(|| format!("changing to {}", dir.display()))?;
                ctx.cwd = dir.clone();
            }
            let args = run_args(filled, &config, grace)?;
            current_thread()?.block_on(supervise::run(&ctx, args))
        }
        Command::Proxy(args) => {
            // SAFETY: no other thread exists yet (the runtime is built below).
            let inherited = match unsafe { listeners::inherited() }? {
                Some(passed) => Some(passed),
                None => listeners::launchd()?,
            };
            let args = proxy_args(args, inherited, &ctx)?;
            // One CPU to run on (pinned, or a small machine): a single-threaded runtime does the
            // same work without the work-stealing scheduler's cross-thread wake-ups.
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let runtime = if cpus == 1 {
                current_thread()?
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?
            };
            runtime.block_on(proxy::run(args))?;
            Ok(0)
        }
        Command::Ls(args) => current_thread()?.block_on(commands::ls(&ctx, args.json)),
        Command::Stop(args) => {
            let grace = stop_grace()?;
            current_thread()?.block_on(commands::stop(
                &ctx, args.names, args.all, args.proxy, grace,
            ))
        }
        Command::Alias(args) => {
            let addr = if args.rm { None } else { args.addr };
            current_thread()?.block_on(commands::alias(&ctx, args.name, addr))
        }
        Command::Env(args) => {
            current_thread()?.block_on(commands::env(&ctx, args.name, args.format, args.ca))
        }
        Command::Install(args) => service::install(&ctx, args),
        Command::Uninstall(args) => service::uninstall(&ctx, args),
        Command::Doctor(args) => current_thread()?.block_on(service::doctor(&ctx, args)),
        Command::Hosts(args) => {
            let keep = user_config(&ctx)?.hosts_sync;
            current_thread()?.block_on(hosts::hosts(&ctx, args, keep))
        }
        Command::Up(args) => {
            let (trust, up) = (project_trust(&ctx)?, args.up);
            let file = up.file.as_deref();
            current_thread()?.block_on(up::up(&ctx, &trust, file, &up.names, args.json))
        }
        Command::Down(args) => current_thread()?.block_on(up::down(
            &ctx,
            &crate::sys::trust::Trust::anything(),
            args.file.as_deref(),
            &args.names,
        )),
        Command::Logs(args) => up::logs(&ctx.dirs, &args.name, args.follow),
        Command::Ca(args) => https::ca(&ctx, args.pem),
        Command::Trust(args) => https::trust(&ctx, args.dry_run),
        Command::Untrust(args) => https::untrust(&ctx, args.dry_run),
        Command::Url(args) => current_thread()?.block_on(commands::url(&ctx, &args.name)),
        Command::Reload(args) => {
            current_thread()?.block_on(reload::reload(&ctx, args.name, args.member))
        }
        Command::Wait(args) => {
            current_thread()?.block_on(commands::wait(&ctx, &args.name, args.timeout))
        }
        Command::Mcp => {
            let (trust, grace, runtime) = (project_trust(&ctx)?, stop_grace()?, current_thread()?);
            let code = runtime.block_on(mcp::run(ctx, trust, grace));
            // A read of stdin may still be under way: it must not hold up the exit.
            runtime.shutdown_background();
            code
        }
    }
}

/// Where the proxy listens: `--listen`, else `$WHARF_LISTEN`, else config.toml, else default.
fn proxy_args(
    cli: ProxyCli,
    inherited: Option<listeners::Inherited>,
    ctx: &Context,
) -> anyhow::Result<proxy::ProxyArgs> {
    let config = user_config(ctx)?;
    let limits = proxy_limits(&config)?;
    let listen = if !cli.listen.is_empty() {
        config::parse_listen(&cli.listen).context("--listen")?
    } else if let Some(env) = std::env::var("WHARF_LISTEN").ok().filter(|v| !v.is_empty()) {
        config::parse_listen(&[env]).context("$WHARF_LISTEN")?
    } else {
        config.proxy_listen
    };
    Ok(proxy::ProxyArgs {
        inherited,
        listen,
        runtime_dir: ctx.dirs.runtime()?.to_path_buf(),
        state_dir: ctx.dirs.state()?.to_path_buf(),
        limits,
        express: config.express,
        https: config.https,
        redirect: config.redirect,
        hosts_file: config.hosts_sync.then(|| ctx.hosts_file.clone()),
    })
}

/// The proxy's limits: its defaults with config.toml's values, and for tests only,
/// `$WHARF_TEST_LIMITS`'s shrunk deadlines (`Limits::with_test_overrides`).
fn proxy_limits(config: &config::Config) -> anyhow::Result<crate::proxy::limits::Limits> {
    let limits = crate::proxy::limits::Limits::new(config);
    match std::env::var("WHARF_TEST_LIMITS") {
        Ok(v) if !v.is_empty() => limits
            .with_test_overrides(&v)
            .map_err(anyhow::Error::msg)
            .context("$WHARF_TEST_LIMITS"),
        _ => Ok(limits),
    }
}

/// `~/.config/wharf/config.toml` (or under `$XDG_CONFIG_HOME`); defaults if there is none.
fn user_config(ctx: &Context) -> anyhow::Result<config::Config> {
    Ok(match ctx.config_file() {
        Some(path) => config::load(&path, &ctx.trust)?,
        None => config::Config::default(),
    })
}

/// What may be read though another user could have written it: `$WHARF_TRUST`, and for
/// project files also `[trust] paths` in config.toml.
fn project_trust(ctx: &Context) -> anyhow::Result<crate::sys::trust::Trust> {
    let config = user_config(ctx)?;
    Ok(match ctx.config_file() {
        Some(file) => ctx.trust.with_config(&config.trust, &file),
        None => ctx.trust.clone(),
    })
}

/// `$WHARF_STOP_TIMEOUT` (90, 90s, 2m), else `process::STOP_GRACE`.
fn stop_grace() -> anyhow::Result<Duration> {
    match std::env::var("WHARF_STOP_TIMEOUT") {
        Ok(v) if !v.is_empty() => {
            crate::model::project::parse_duration_str(&v).context("$WHARF_STOP_TIMEOUT")
        }
        _ => Ok(crate::sys::process::STOP_GRACE),
    }
}

/// `$WHARF_RELOAD_TIMEOUT` (90, 90s, 2m): how long a reload's new version has to be ready.
fn reload_timeout() -> anyhow::Result<Duration> {
    match std::env::var("WHARF_RELOAD_TIMEOUT") {
        Ok(v) if !v.is_empty() => {
            crate::model::project::parse_duration_str(&v).context("$WHARF_RELOAD_TIMEOUT")
        }
        _ => Ok(supervise::DEFAULT_RELOAD_TIMEOUT),
    }
}

fn run_args(
    filled: run::Filled,
    config: &config::Config,
    stop_grace: Duration,
) -> anyhow::Result<supervise::RunArgs> {
    let cli = filled.cli;
    let mode = match (cli.fd, cli.env) {
        (true, _) => Some(Mode::Fd),
        (_, true) => Some(Mode::Env),
        _ => None,
    };
    Ok(supervise::RunArgs {
        name: cli
            .name
            .context("no name for the instance; pass --name NAME")?,
        notes: filled.notes,
        mode,
        port: cli.port,
        range: Some(cli.range.unwrap_or_else(|| config.range.clone())),
        exclude: config.exclude.clone(),
        sockets: cli.sockets,
        // A member that dies comes back: replicas are there to keep the name served.
        restart: cli.restart.unwrap_or(
            match cli.members.replicas.is_some_and(|n| n > 1) || cli.members.join {
                true => Restart::OnFailure,
                false => Restart::No,
            },
        ),
        on_demand: cli.on_demand,
        idle_timeout: Some(cli.idle_timeout.unwrap_or(config.idle_timeout)),
        ready: cli.ready,
        log: cli.log,
        declared: cli
            .declared_in
            .zip(cli.fingerprint)
            .map(|(file, fingerprint)| crate::model::instance::Declaration { file, fingerprint }),
        env: filled.env,
        https: config.https,
        ca_vars: crate::ca::bundle::VARS
            .iter()
            .filter_map(|v| Some((v.to_string(), std::env::var_os(v)?.into())))
            .collect(),
        force: cli.force,
        reuse: cli.reuse,
        no_pid: cli.no_pid,
        inherited_port: std::env::var_os("PORT").map(|p| p.to_string_lossy().into_owned()),
        quiet: cli.quiet,
        json: cli.json,
        stop_grace,
        reload_timeout: reload_timeout()?,
        verbose: cli.verbose,
        replicas: cli.members.replicas.unwrap_or(1),
        join: cli.members.join,
        sticky: cli.members.sticky,
        health: cli.members.health.map(|path| Health {
            interval: cli
                .members
                .health_interval
                .unwrap_or(DEFAULT_HEALTH_INTERVAL),
            failures: cli
                .members
                .health_failures
                .unwrap_or(DEFAULT_HEALTH_FAILURES),
            path,
        }),
        command: cli.command,
    })
}
