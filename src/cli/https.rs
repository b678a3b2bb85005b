//! HTTPS's commands: `wharf ca`, `trust` and `untrust`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::ca::{self, Authority};
use crate::install::stores::{self, Cert, Outcome, Places, Store};
use crate::state::context::Context;
use crate::sys::stdio;

/// `wharf ca`: the CA certificate's path (or, with `--pem`, the certificate), for tools that
/// take a CA file (`curl --cacert "$(wharf ca)"`). Makes the CA if there is none yet.
pub(crate) fn ca(ctx: &Context, pem: bool) -> anyhow::Result<i32> {
    let ca = Authority::open_or_create(ctx.dirs.state()?)?;
    if pem {
        stdio::out(ca.cert_pem())?;
    } else {
        stdio::out(&format!("{}\n", ca.cert_path().display()))?;
    }
    Ok(0)
}

/// Where the trust stores are: under `$HOME`, and the system's under `/`, or, for tests only,
/// under `$WHARF_SYSTEM_TRUST_ROOT` (the one place it is read).
pub(crate) fn places(ctx: &Context) -> Places {
    Places {
        home: ctx.home.clone(),
        system_root: std::env::var_os("WHARF_SYSTEM_TRUST_ROOT")
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from("/"), PathBuf::from),
        path_var: ctx.path_var.clone(),
    }
}

fn cert(ca: &Authority) -> anyhow::Result<Cert> {
    Cert::new(ca.cert_path(), ca.cert_pem())
        .with_context(|| format!("{} holds no certificate", ca.cert_path().display()))
}

/// The stores a previous `trust` noted, with `found` (each once).
fn with_recorded(state: &Path, mut found: Vec<Store>) -> Vec<Store> {
    for store in ca::trusted_stores(state)
        .iter()
        .filter_map(|l| Store::from_id(l))
    {
        if !found.contains(&store) {
            found.push(store);
        }
    }
    found
}

/// `wharf trust`: add the CA to every store this machine's clients read, saying first what
/// it will run, then each store's result.
pub(crate) fn trust(ctx: &Context, dry_run: bool) -> anyhow::Result<i32> {
    let state = ctx.dirs.state()?;
    let ca = Authority::open_or_create(state)?;
    let cert = cert(&ca)?;
    let places = places(ctx);
    let plan = stores::plan(stores::detect(&places), &cert, &places, true);
    crate::outln!(
        "{} wharf's CA ({}, {}) to the trust stores on this machine:",
        if dry_run { "Would add" } else { "Adding" },
        cert.path.display(),
        cert.fingerprint()
    )?;
    finish(state, plan, &cert, &places, true, dry_run)
}

/// `wharf untrust`: remove the CA from every store, those a previous `trust` noted included.
pub(crate) fn untrust(ctx: &Context, dry_run: bool) -> anyhow::Result<i32> {
    let state = ctx.dirs.state()?;
    let Some(ca) = Authority::open(state)? else {
        crate::outln!("There is no wharf CA here, so no store has it.")?;
        if !dry_run {
            ca::mark_trusted(state, &[])?;
        }
        return Ok(0);
    };
    let cert = cert(&ca)?;
    let places = places(ctx);
    let stores = with_recorded(state, stores::detect(&places));
    let plan = stores::plan(stores, &cert, &places, false);
    crate::outln!(
        "{} wharf's CA ({}, {}) from the trust stores on this machine:",
        if dry_run { "Would remove" } else { "Removing" },
        cert.path.display(),
        cert.fingerprint()
    )?;
    finish(state, plan, &cert, &places, false, dry_run)
}

/// Print the plan, run it unless `dry_run`, report each store and note where the CA is now.
fn finish(
    state: &Path,
    plan: Vec<stores::Planned>,
    cert: &Cert,
    places: &Places,
    add: bool,
    dry_run: bool,
) -> anyhow::Result<i32> {
    stdio::out(&stores::describe(&plan, places, add, dry_run))?;
    let sudo = plan.iter().any(|p| match &p.step {
        stores::Step::Run(cmds) => cmds.iter().any(stores::Cmd::sudo),
        _ => false,
    });
    if sudo {
        crate::outln!(
            "The commands starting with sudo need root (you are not): sudo may ask for your password."
        )?;
    }
    if dry_run {
        crate::outln!("Nothing was changed (--dry-run).")?;
        return Ok(0);
    }
    let recorded = ca::trusted_stores(state);
    let results = stores::apply(plan, cert, places, add);
    let mut failed = false;
    let mut keep: Vec<String> = if add { recorded.clone() } else { Vec::new() };
    for (store, outcome) in &results {
        let line = match outcome {
            Outcome::Changed if add => "added".to_string(),
            Outcome::Changed => "removed".to_string(),
            Outcome::Unchanged if add => "already there".to_string(),
            Outcome::Unchanged => "already absent".to_string(),
            Outcome::Skipped(why) => format!("skipped: {why}"),
            Outcome::Failed(why, fix) => {
                failed = true;
                format!("FAILED: {why}; fix: {fix}")
            }
        };
        crate::outln!("{}: {line}", store.describe(places))?;
        let id = store.id();
        // Where the CA is (or may still be), so that `untrust` visits it.
        let there = match outcome {
            Outcome::Changed | Outcome::Unchanged => add,
            Outcome::Skipped(_) | Outcome::Failed(..) => !add && recorded.contains(&id),
        };
        if there && !keep.contains(&id) {
            keep.push(id);
        }
    }
    ca::mark_trusted(state, &keep)?;
    if add && keep.is_empty() {
        crate::outln!("No store has wharf's CA: URLs stay http://.")?;
    } else if !add && !keep.is_empty() {
        crate::outln!("Some stores may still have wharf's CA; `wharf untrust` again once fixed.")?;
    }
    Ok(i32::from(failed))
}
