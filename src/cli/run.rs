//! `wharf run` without `--name`, or without a command: both read from the project around the
//! working directory (`model::naming`), with what git says of the checkout (`sys::git`).
//! `--name` and a command given always win.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::cli::args::RunCli;
use crate::model::mode::Mode;
use crate::model::naming::{self, DevCommand};
use crate::model::project::{self, Activation, Project, ProjectError};
use crate::state::context::Context;
use crate::sys::trust::Trust;

/// `wharf run` with its name and command filled in.
pub(crate) struct Filled {
    pub(crate) cli: RunCli,
    /// How the name and the command were chosen, to be said first.
    pub(crate) notes: Vec<String>,
    /// A declared instance's `env`.
    pub(crate) env: Vec<(String, String)>,
    /// A declared instance's `dir`, when it is not the current directory.
    pub(crate) dir: Option<PathBuf>,
}

/// Fill in what `cli` leaves out: the command (the project's dev command) and the name.
pub(crate) fn fill(ctx: &Context, trust: &Trust, mut cli: RunCli) -> anyhow::Result<Filled> {
    let mut filled = Vec::new();
    let (mut env, mut dir) = (Vec::new(), None);
    if cli.name.is_some() && !cli.command.is_empty() {
        return Ok(Filled {
            cli,
            notes: filled,
            env,
            dir,
        });
    }
    let bare = cli.command.is_empty();
    let project = match nearest_project(ctx, trust) {
        Ok(p) => p,
        Err(e) if bare => return Err(e),
        Err(e) => {
            filled.push(format!("{e:#}; naming without it"));
            None
        }
    };
    let checkout = crate::sys::git::checkout(&ctx.cwd);
    if bare {
        match naming::dev_command(&ctx.cwd, project.as_ref())? {
            DevCommand::Declared(d) => {
                let file = project
                    .as_ref()
                    .map_or_else(PathBuf::new, |p| p.path.clone());
                if cli.name.is_none() {
                    let named = naming::declared_name(&d, checkout.as_ref(), &file)?;
                    filled.push(named.describe());
                    cli.name = Some(named.name);
                }
                filled.push(format!(
                    "running instance {} of {} (its only one)",
                    d.name,
                    file.display()
                ));
                apply(&mut cli, &d);
                env = d.env.clone().into_iter().collect();
                dir = (d.dir != ctx.cwd).then(|| d.dir.clone());
            }
            DevCommand::Script { argv, lockfile } => {
                let why = match lockfile {
                    Some(lock) => format!("as {lock} says"),
                    None => "no lockfile: npm".to_string(),
                };
                filled.push(format!(
                    "running `{}` (package.json scripts.dev; {why})",
                    argv.join(" ")
                ));
                cli.command = argv;
            }
        }
    }
    if cli.name.is_none() {
        let named = naming::infer(&ctx.cwd, &cli.command, project.as_ref(), checkout.as_ref())?;
        filled.insert(0, named.describe());
        cli.name = Some(named.name);
    }
    Ok(Filled {
        cli,
        notes: filled,
        env,
        dir,
    })
}

/// The nearest wharf.toml, read and checked; `None` when there is none.
fn nearest_project(ctx: &Context, trust: &Trust) -> anyhow::Result<Option<Project>> {
    match project::find(&ctx.cwd) {
        Ok(path) => Ok(Some(project::load(&path, trust)?)),
        Err(ProjectError::NotFound(_)) => Ok(None),
        Err(e) => Err(e).context("reading wharf.toml"),
    }
}

/// A declared instance's settings, where the command line gives none.
fn apply(cli: &mut RunCli, d: &project::Declared) {
    cli.command = d.command.clone();
    if !cli.fd && !cli.env {
        cli.fd = d.mode == Some(Mode::Fd);
        cli.env = d.mode == Some(Mode::Env);
    }
    cli.port = cli.port.or(d.port);
    cli.range = cli.range.take().or_else(|| d.range.clone());
    if cli.sockets.is_empty() {
        cli.sockets = d.sockets.clone();
    }
    cli.restart = cli.restart.or(Some(d.restart));
    cli.ready = cli.ready.take().or_else(|| d.ready.clone());
    if cli.members.replicas.is_none() && !cli.members.join && d.replicas > 1 {
        cli.members.replicas = Some(d.replicas);
    }
    cli.members.sticky |= d.sticky;
    if cli.members.health.is_none()
        && let Some(h) = &d.health
    {
        cli.members.health = Some(h.path.clone());
        cli.members.health_interval = Some(h.interval);
        cli.members.health_failures = Some(h.failures);
    }
    if d.activation == Activation::OnDemand {
        cli.on_demand = true;
        cli.idle_timeout = cli.idle_timeout.or(d.idle_timeout);
    }
}
