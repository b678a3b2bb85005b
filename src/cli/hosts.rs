//! `wharf hosts sync|clean`: the current names (from the proxy, else the registry and the
//! alias file) as wharf's block in the hosts file, or the block removed; `--dry-run` shows the
//! change; a file only root may write is written by wharf re-run through sudo.

use std::collections::BTreeSet;

use anyhow::bail;

use crate::cli::args::HostsCli;
use crate::model::hosts::{hostnames, is_local_hostname};
use crate::state::context::Context;

/// `keep`: whether config.toml has `[hosts] sync = true` (the proxy keeps the block in step).
pub(crate) async fn hosts(ctx: &Context, cli: HostsCli, keep: bool) -> anyhow::Result<i32> {
    let (names, dry_run) = match cli {
        HostsCli::Sync {
            dry_run,
            names: Some(list),
        } => (Some(given(&list)?), dry_run),
        HostsCli::Sync {
            dry_run,
            names: None,
        } => (Some(current(ctx).await?), dry_run),
        HostsCli::Clean { dry_run } => (None, dry_run),
    };
    let path = &ctx.hosts_file;
    let shown = path.display();
    let verb = if names.is_some() { "sync" } else { "clean" };
    let edit = crate::state::hosts::plan(path, names.as_ref())?;
    if !edit.changes() {
        match &names {
            Some(n) => crate::progressln!(
                "{shown}: wharf's block already lists {}; nothing to write",
                listing(n)
            ),
            None => crate::progressln!("{shown} has no wharf block; nothing to remove"),
        }
        return Ok(0);
    }
    if dry_run {
        crate::outln!("--- {shown}")?;
        crate::outln!("+++ {shown} (after `wharf hosts {verb}`)")?;
        crate::sys::stdio::out(&edit.diff())?;
        crate::progressln!("dry run: nothing written");
        return Ok(0);
    }
    if !nix::unistd::geteuid().is_root() && !crate::sys::sysfile::writable(&edit.target) {
        let cmd = crate::install::hosts::root_command(&ctx.self_exe, path, names.as_ref());
        let sudo = crate::sys::handoff::resolve_program("sudo", ctx.path_var.clone(), &ctx.cwd);
        return crate::install::hosts::run_as_root(path, &cmd, sudo);
    }
    crate::state::hosts::write(path, names.as_ref())?;
    match &names {
        Some(n) => {
            crate::progressln!("{shown}: wharf's block lists {}", listing(n));
            if !keep {
                crate::progressln!(
                    "names come and go with instances: run this again, or set `[hosts] sync = true` \
                     in config.toml and the proxy keeps the block in step"
                );
            }
        }
        None => {
            crate::progressln!("removed wharf's block from {shown}");
            if keep {
                crate::progressln!(
                    "note: config.toml has `[hosts] sync = true`: a running proxy writes the block \
                     again when names change; remove that line to stop it"
                );
            }
        }
    }
    Ok(0)
}

fn listing(names: &BTreeSet<String>) -> String {
    match names.len() {
        0 => "no names (no instance runs)".to_string(),
        _ => format!(
            "{} (at 127.0.0.1 and ::1)",
            names.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `--names a.localhost,b.a.localhost`, each checked: a root process writes them.
fn given(list: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for n in list.split(',').filter(|n| !n.is_empty()) {
        if !is_local_hostname(n) {
            bail!("--names: {n:?} is not NAME.localhost or SUB.NAME.localhost");
        }
        out.insert(n.to_string());
    }
    Ok(out)
}

/// What the proxy routes (instances, their sockets, aliases); without a proxy, the registry's
/// instances and the alias file's names.
async fn current(ctx: &Context) -> anyhow::Result<BTreeSet<String>> {
    let (list, via_proxy) = crate::cli::commands::instances(ctx).await?;
    let mut names = hostnames(list.iter().map(|l| &l.instance));
    if !via_proxy
        && let Ok(Some(bytes)) =
            crate::state::dirs::read_private(&ctx.dirs.state()?.join("aliases.json"))
        && let Ok(aliases) = serde_json::from_slice::<crate::proxy::routes::AliasMap>(&bytes)
    {
        names.extend(aliases.keys().map(|a| format!("{a}.localhost")));
    }
    Ok(names)
}
