//! `wharf up`, `down` and `logs`: bring a project's declared instances (wharf.toml) to what the
//! file says, each run by its own background `wharf run` supervisor, and show their output.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::control::launch;
use crate::control::protocol::{Listed, Request};
use crate::model::instance::State;
use crate::model::mode::Mode;
use crate::model::name::Name;
use crate::model::naming;
use crate::model::ports::{Allocation, MAIN_SOCKET, Preference};
use crate::model::project::{self, Activation, Declared, Project, Restart};
use crate::state::context::Context;
use crate::state::dirs::Dirs;
use crate::sys::process::ProcessId;
use crate::sys::trust::Trust;

/// How long `up` waits for a started instance to register with the proxy.
const REGISTER_PATIENCE: Duration = Duration::from_secs(15);
/// How long a changed instance's new version has to be ready beside the old one (as long as
/// a `wharf reload`'s).
const SWAP_PATIENCE: Duration = crate::supervise::DEFAULT_RELOAD_TIMEOUT;

/// The project file (`file`, else the nearest wharf.toml), read if `trust` allows it, and
/// the instances `names` pick from it (all of them when `names` is empty).
pub(crate) fn load(
    ctx: &Context,
    trust: &Trust,
    file: Option<&Path>,
    names: &[Name],
) -> anyhow::Result<(Project, Vec<Declared>)> {
    let path = match file {
        Some(f) => ctx.cwd.join(f),
        None => project::find(&ctx.cwd)?,
    };
    let mut project = project::load(&path, trust)?;
    for n in names {
        if !project.instances.iter().any(|d| d.name == *n) {
            let known: Vec<&str> = project.instances.iter().map(|d| d.name.as_str()).collect();
            bail!(
                "{} declares no instance '{n}' (it declares: {})",
                project.path.display(),
                known.join(", ")
            );
        }
    }
    let mut selected: Vec<Declared> = project
        .instances
        .iter()
        .filter(|d| names.is_empty() || names.contains(&d.name))
        .cloned()
        .collect();
    let dir = project.path.parent().unwrap_or(Path::new("/"));
    if let Some(checkout) = crate::sys::git::checkout(dir).filter(|c| c.linked) {
        let file = project.path.clone();
        let mut prefix = None;
        for d in project.instances.iter_mut().chain(selected.iter_mut()) {
            let named = naming::declared_name(d, Some(&checkout), &file)?;
            let label = named
                .name
                .as_str()
                .strip_suffix(d.name.as_str())
                .map(String::from);
            prefix = named.worktree.zip(label);
            d.name = named.name;
        }
        if let Some((branch, label)) = prefix {
            crate::errln!("wharf: in the worktree of {branch}: instances run as {label}NAME");
        }
    }
    Ok((project, selected))
}

async fn routes(
    client: &mut crate::control::client::Client,
) -> anyhow::Result<BTreeMap<Name, Listed>> {
    let list = client
        .call(&Request::List)
        .await?
        .instances
        .unwrap_or_default();
    Ok(list
        .into_iter()
        .map(|l| (l.instance.name.clone(), l))
        .collect())
}

fn declared_here(l: &Listed, project: &Project) -> bool {
    l.instance
        .declared
        .as_ref()
        .is_some_and(|d| d.file == project.path)
}

/// One line of the summary `up` ends with.
struct Row {
    name: Name,
    /// `started`, `restarted`, `swapped`, `unchanged`, `on demand`, `kept old` (its new
    /// version failed) or `failed`.
    outcome: &'static str,
}

impl Row {
    /// Whether it runs (or waits for its first request): then its port and URL are shown.
    fn running(&self) -> bool {
        self.outcome != "failed"
    }

    /// Whether `up` did not bring it to what the file says (`up` then exits 1).
    fn failed(&self) -> bool {
        matches!(self.outcome, "failed" | "kept old")
    }
}

/// Bring the instances of the project file (`file`, else the nearest wharf.toml) to what it
/// declares, if `trust` allows reading it; 1 when any instance failed.
/// With `json`, the summary is one JSON object a line on stdout, and the lines on the way go
/// to stderr.
pub(crate) async fn up(
    ctx: &Context,
    trust: &Trust,
    file: Option<&Path>,
    names: &[Name],
    json: bool,
) -> anyhow::Result<i32> {
    let progress = |line: String| {
        if json {
            crate::errln!("{line}");
        } else {
            crate::progressln!("{line}");
        }
    };
    // A broken file changes nothing: everything is validated before anything is touched.
    let (project, selected) = load(ctx, trust, file, names)?;
    let runtime = ctx.dirs.runtime()?.to_path_buf();
    let state = ctx.dirs.state()?.to_path_buf();
    let mut proxy = launch::connect_or_start(&runtime, &ctx.self_exe).await?;
    let front = proxy.hello.front();
    let running = routes(&mut proxy.client).await?;
    let mut rows = Vec::new();
    let mut row = |decl: &Declared, outcome| {
        rows.push(Row {
            name: decl.name.clone(),
            outcome,
        })
    };

    if names.is_empty() {
        for l in running.values().filter(|l| declared_here(l, &project)) {
            if !project.instances.iter().any(|d| d.name == l.instance.name) {
                stop(&mut proxy.client, &l.instance.name).await;
                progress(format!(
                    "{:<12} removed (no longer in {})",
                    l.instance.name,
                    project.path.display()
                ));
            }
        }
    }
    let mut started = Vec::new();
    let mut restarted = Vec::new();
    for decl in &selected {
        let fingerprint = decl.fingerprint();
        if let Err(e) = decl.check_dir(&project.path) {
            crate::errln!("wharf: {e}");
            row(decl, "failed");
            continue;
        }
        match running.get(&decl.name) {
            Some(l) if !declared_here(l, &project) => {
                let origin = match &l.instance.declared {
                    Some(d) => format!("from {}", d.file.display()),
                    None => "by `wharf run`".to_string(),
                };
                crate::errln!(
                    "wharf: {} is already running, started {origin} (wharf pid {}); `wharf stop {}` first",
                    decl.name,
                    l.instance.pid,
                    decl.name
                );
                row(decl, "failed");
                continue;
            }
            Some(l)
                if l.instance
                    .declared
                    .as_ref()
                    .is_some_and(|d| d.fingerprint == fingerprint)
                    && l.instance.state != State::Failed =>
            {
                row(decl, "unchanged");
                continue;
            }
            Some(l) if l.instance.own_port => {
                stop(&mut proxy.client, &decl.name).await;
                progress(format!(
                    "{:<12} changed: restarting (its server listens on {}, a port of its own \
                     choosing, so a new version cannot start beside it)",
                    decl.name,
                    l.instance
                        .sockets
                        .get(MAIN_SOCKET)
                        .map_or_else(String::new, |a| a.to_string())
                ));
                restarted.push(decl.name.clone());
            }
            Some(l) if l.instance.state != State::Failed => {
                progress(format!(
                    "{:<12} changed: starting the new version beside the old one",
                    decl.name
                ));
                let log = crate::state::logs::path(&state, &decl.name);
                match swap(
                    ctx,
                    &mut proxy.client,
                    decl,
                    &project.path,
                    &fingerprint,
                    &log,
                )
                .await
                {
                    Swap::Done(how) => {
                        progress(format!("{:<12} {how}", decl.name));
                        row(decl, "swapped");
                        continue;
                    }
                    Swap::Failed(why) => {
                        crate::errln!(
                            "wharf: {} ({}:{}): {why}",
                            decl.name,
                            project.path.display(),
                            decl.line
                        );
                        row(decl, "kept old");
                        continue;
                    }
                    Swap::CannotJoin(why) => {
                        stop(&mut proxy.client, &decl.name).await;
                        progress(format!(
                            "{:<12} changed: restarting (the new version could not join the \
                             old one: {why})",
                            decl.name
                        ));
                        restarted.push(decl.name.clone());
                    }
                }
            }
            Some(_) => {
                stop(&mut proxy.client, &decl.name).await;
                progress(format!("{:<12} changed: restarting", decl.name));
                restarted.push(decl.name.clone());
            }
            None => {}
        }
        let log = crate::state::logs::path(&state, &decl.name);
        match spawn_supervisor(ctx, decl, &project.path, &fingerprint, &log) {
            Ok(child) => started.push((decl, child, log)),
            Err(e) => {
                crate::errln!(
                    "wharf: {}:{}: cannot start {}: {e:#}",
                    project.path.display(),
                    decl.line,
                    decl.name
                );
                row(decl, "failed");
            }
        }
    }

    let deadline = Instant::now() + REGISTER_PATIENCE;
    for (decl, mut child, log) in started {
        loop {
            let now = routes(&mut proxy.client).await?;
            if now
                .get(&decl.name)
                .is_some_and(|l| declared_here(l, &project))
            {
                let how = match decl.activation {
                    Activation::OnDemand => "on demand",
                    Activation::Start if restarted.contains(&decl.name) => "restarted",
                    Activation::Start => "started",
                };
                row(decl, how);
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let tail = crate::state::logs::tail(&log, 8).unwrap_or_default();
                crate::errln!(
                    "wharf: {} ({}:{}) did not start ({status}); its log {} ends:\n{tail}",
                    decl.name,
                    project.path.display(),
                    decl.line,
                    log.display()
                );
                row(decl, "failed");
                break;
            }
            if Instant::now() >= deadline {
                crate::errln!(
                    "wharf: {} did not register within {REGISTER_PATIENCE:?}; see `wharf logs {}`",
                    decl.name,
                    decl.name
                );
                row(decl, "failed");
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // The supervisor lives on by itself; tokio reaps it if it exits while we run.
        drop(child);
    }
    rows.sort_by_key(|r| selected.iter().position(|d| d.name == r.name));
    let failed = rows.iter().any(Row::failed);
    print_summary(ctx, &rows, front, json)?;
    Ok(i32::from(failed))
}

/// The table `up` ends with: each instance, what happened, its port and how it was chosen
/// (preferred or fallback, and why), how many ports were tried, its URL. With `json`, one
/// object a line instead (`event` "instance", `name`, `status`, and for a running one `port`,
/// `chosen`, `tried`, `url`).
fn print_summary(
    ctx: &Context,
    rows: &[Row],
    front: crate::model::instance::Front,
    json: bool,
) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let leases = crate::cli::commands::registry(ctx).map(|reg| reg.leases.clone());
    let mut table = vec![["NAME", "STATUS", "PORT", "CHOSEN", "TRIED", "URL"].map(String::from)];
    for r in rows {
        let lease = leases
            .as_ref()
            .ok()
            .and_then(|l| l.get(&r.name))
            .and_then(|l| l.first());
        let port = lease.and_then(|l| l.ports.get(MAIN_SOCKET));
        let how = lease.and_then(|l| l.allocation.as_ref());
        if json {
            let mut event = serde_json::json!({
                "event": "instance",
                "name": r.name,
                "status": r.outcome,
            });
            if r.running()
                && let Some(fields) = event.as_object_mut()
            {
                fields.insert("port".into(), port.copied().into());
                fields.insert("chosen".into(), how.map(describe_choice).into());
                fields.insert("tried".into(), how.map(|a| a.tried).into());
                let url = front.url(&r.name);
                fields.insert("url".into(), url.into());
            }
            crate::outln!("{event}")?;
            continue;
        }
        let known = |s: Option<String>| s.filter(|_| r.running()).unwrap_or_else(|| "-".into());
        table.push([
            r.name.to_string(),
            r.outcome.to_string(),
            known(port.map(u16::to_string)),
            known(how.map(describe_choice)),
            known(how.map(|a| a.tried.to_string())),
            known(Some(front.url(&r.name))),
        ]);
    }
    if !json {
        for line in crate::sys::stdio::columns(&table) {
            crate::progressln!("{line}");
        }
    }
    Ok(())
}

/// `preferred (its port)`, `fallback: 4000 (its last port) is in use by python3 (pid 7)`.
fn describe_choice(a: &Allocation) -> String {
    let wish = |w: Preference| match w {
        Preference::Asked => "its port",
        Preference::Sticky => "its last port",
    };
    match (a.preferred, a.refused()) {
        (None, _) => "first free (nothing preferred)".to_string(),
        (Some((_, w)), None) => format!("preferred ({})", wish(w)),
        (Some(_), Some((p, w, taken))) => format!("fallback: {p} ({}) {taken}", wish(w)),
    }
}

fn spawn_supervisor(
    ctx: &Context,
    decl: &Declared,
    file: &Path,
    fingerprint: &str,
    log: &Path,
) -> std::io::Result<tokio::process::Child> {
    supervisor(ctx, decl, file, fingerprint, log, &[])?.spawn()
}

/// The background `wharf run` of a declared instance, with `extra` options: in its own
/// session, in the instance's directory, its output and its own errors in `log`.
pub(crate) fn supervisor(
    ctx: &Context,
    decl: &Declared,
    file: &Path,
    fingerprint: &str,
    log: &Path,
    extra: &[&str],
) -> std::io::Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(&ctx.self_exe);
    cmd.arg("run")
        .arg("--name")
        .arg(decl.name.as_str())
        .arg("--quiet");
    match decl.mode {
        Some(Mode::Fd) => {
            cmd.arg("--fd");
        }
        Some(Mode::Env) => {
            cmd.arg("--env");
        }
        None => {}
    }
    if let Some(port) = decl.port {
        cmd.arg("--port").arg(port.to_string());
    }
    if let Some(range) = &decl.range {
        cmd.arg("--range").arg(range.to_string());
    }
    for sub in &decl.sockets {
        cmd.arg("--socket").arg(sub.as_str());
    }
    if decl.activation == Activation::OnDemand {
        cmd.arg("--on-demand");
        if let Some(idle) = decl.idle_timeout {
            cmd.arg("--idle-timeout").arg(idle.as_secs().to_string());
        }
    }
    let restart = match decl.restart {
        Restart::No => "no",
        Restart::OnFailure => "on-failure",
        Restart::Always => "always",
    };
    cmd.arg(format!("--restart={restart}"));
    if let Some(ready) = &decl.ready {
        cmd.arg("--ready").arg(ready.to_string());
    }
    // A `--join` is one member (`swap` starts one per replica).
    if decl.replicas > 1 && !extra.contains(&"--join") {
        cmd.arg("--replicas").arg(decl.replicas.to_string());
    }
    if decl.sticky {
        cmd.arg("--sticky");
    }
    if let Some(h) = &decl.health {
        cmd.arg("--health").arg(&h.path);
        let ms = h.interval.as_millis();
        cmd.arg("--health-interval").arg(format!("{ms}ms"));
        cmd.arg("--health-failures").arg(h.failures.to_string());
    }
    cmd.arg("--log").arg(log);
    cmd.arg("--declared-in")
        .arg(file)
        .arg("--fingerprint")
        .arg(fingerprint);
    cmd.args(extra).arg("--").args(&decl.command);
    // Its own errors (a missing program, no free port) go to the log `wharf logs` shows.
    let stderr = crate::state::logs::open_append(log)?;
    // The shell's PORT is no preference for every instance of the file (each has `port`).
    cmd.current_dir(&decl.dir)
        .env_remove("PORT")
        .envs(&decl.env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(false);
    // The supervisor must not die with this terminal.
    launch::detach(&mut cmd);
    Ok(cmd)
}

/// Remove the route at once, then stop the instance: every supervisor of its members and
/// whatever their servers started (`process::stop_instance`).
async fn stop(client: &mut crate::control::client::Client, name: &Name) {
    let members = supervisors(client, name, &[]).await;
    let _ = client.call(&Request::Stop { name: name.clone() }).await;
    end(members).await;
}

/// The supervisors (`wharf run` pids, each with its server's pid) listed under `name`, but
/// those in `except`, each once.
async fn supervisors(
    client: &mut crate::control::client::Client,
    name: &Name,
    except: &[i32],
) -> Vec<(i32, Option<i32>)> {
    let list = client.call(&Request::List).await.ok();
    let mut found: Vec<(i32, Option<i32>)> = Vec::new();
    let listed = list.and_then(|r| r.instances).unwrap_or_default();
    for l in listed.iter().filter(|l| l.instance.name == *name) {
        let pid = l.instance.pid;
        if !except.contains(&pid) && !found.iter().any(|(p, _)| *p == pid) {
            found.push((pid, l.instance.child_pid));
        }
    }
    found
}

/// SIGTERM to each supervisor, which takes its route out of rotation first and then stops
/// its server (the grace, then SIGKILL); waits until they are gone.
async fn end(supervisors: Vec<(i32, Option<i32>)>) {
    let stops = supervisors.into_iter().filter_map(|(pid, server)| {
        let id = ProcessId::of(pid)?;
        Some(tokio::task::spawn_blocking(move || {
            crate::sys::process::stop_instance(id, server, crate::sys::process::STOP_GRACE)
        }))
    });
    futures_util::future::join_all(stops).await;
}

/// How a changed instance's swap went.
enum Swap {
    /// The new version serves; the old one was stopped. What was done.
    Done(String),
    /// The new version failed; it was stopped and the old one serves on. Why.
    Failed(String),
    /// The new version ended before it registered beside the old one (a proxy that holds one
    /// server per name, a port it could not have): nothing changed, restart instead. Why.
    CannotJoin(String),
}

/// A changed instance, without refusing a request: its new version is started beside the
/// old one (`wharf run --join`, one per replica), and once every new member is ready the old
/// supervisors are stopped (each takes its route out first, then drains). A new version that
/// fails, or is not ready within `SWAP_PATIENCE`, is stopped and the old one keeps serving.
async fn swap(
    ctx: &Context,
    client: &mut crate::control::client::Client,
    decl: &Declared,
    file: &Path,
    fingerprint: &str,
    log: &Path,
) -> Swap {
    let mut joiners = Vec::new();
    for _ in 0..decl.replicas.max(1) {
        match supervisor(ctx, decl, file, fingerprint, log, &["--join"]).and_then(|mut c| c.spawn())
        {
            Ok(child) => joiners.push(child),
            Err(e) => {
                end(pids_of(&joiners)).await;
                let why = format!("cannot start the new version: {e}");
                return Swap::Failed(format!("{why}; the old version keeps serving"));
            }
        }
    }
    let new = pids_of(&joiners);
    let new_pids: Vec<i32> = new.iter().map(|(p, _)| *p).collect();
    let deadline = Instant::now() + SWAP_PATIENCE;
    let mut seen = Vec::new();
    let failure = loop {
        let listed = match client.call(&Request::List).await {
            Ok(r) => r.instances.unwrap_or_default(),
            Err(e) => break failed(format!("the proxy did not answer: {e}"), log),
        };
        let mine: Vec<&Listed> = listed
            .iter()
            .filter(|l| l.instance.name == decl.name && new_pids.contains(&l.instance.pid))
            .collect();
        seen.extend(mine.iter().map(|l| l.instance.pid));
        if let Some(l) = mine.iter().find(|l| l.instance.state == State::Failed) {
            let how = l.instance.last_exit.as_deref().unwrap_or("gave up");
            break failed(format!("the new version failed ({how})"), log);
        }
        let up = |s| matches!(s, State::Ready | State::Idle | State::Running);
        if mine.len() == joiners.len() && mine.iter().all(|l| up(l.instance.state)) {
            let old = supervisors(client, &decl.name, &new_pids).await;
            let stopped = old.len();
            end(old).await;
            return Swap::Done(format!(
                "swapped: {} new member(s) serve; stopped the old version's {stopped} \
                 supervisor(s)",
                joiners.len()
            ));
        }
        let exited = joiners
            .iter_mut()
            .find_map(|c| Some((c.id(), c.try_wait().ok()??)));
        if let Some((pid, status)) = exited {
            if pid.is_none_or(|p| seen.contains(&(p as i32))) {
                break failed(format!("the new version ended ({status})"), log);
            }
            end(pids_of(&joiners)).await;
            let tail = crate::state::logs::tail(log, 1).unwrap_or_default();
            return Swap::CannotJoin(tail.trim().to_string());
        }
        if Instant::now() >= deadline {
            let why = format!("the new version was not ready within {SWAP_PATIENCE:?}");
            break failed(why, log);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    end(new).await;
    failure
}

/// A failed swap: why, that the old version serves on, and the end of the instance's log
/// (where the new version's output went).
fn failed(why: String, log: &Path) -> Swap {
    let mut said = format!("{why}; the old version keeps serving");
    let tail = crate::state::logs::tail(log, 8).unwrap_or_default();
    if !tail.trim().is_empty() {
        said.push_str(&format!(
            "; its log ({}) ends:\n{}",
            log.display(),
            tail.trim_end()
        ));
    }
    Swap::Failed(said)
}

/// The supervisors `up` started and still knows the pid of.
fn pids_of(children: &[tokio::process::Child]) -> Vec<(i32, Option<i32>)> {
    let pids = children.iter().filter_map(tokio::process::Child::id);
    pids.map(|p| (p as i32, None)).collect()
}

pub(crate) async fn down(
    ctx: &Context,
    trust: &Trust,
    file: Option<&Path>,
    names: &[Name],
) -> anyhow::Result<i32> {
    let (project, selected) = load(ctx, trust, file, names)?;
    let Some(mut proxy) = launch::connect(ctx.dirs.runtime()?).await else {
        crate::progressln!("no front proxy is running, so no declared instance is either");
        return Ok(0);
    };
    let running = routes(&mut proxy.client).await?;
    for decl in selected {
        match running.get(&decl.name) {
            Some(l) if declared_here(l, &project) => {
                stop(&mut proxy.client, &l.instance.name).await;
                crate::progressln!("{:<12} stopped", decl.name);
            }
            Some(_) => crate::progressln!(
                "{:<12} left alone: not started from {}",
                decl.name,
                project.path.display()
            ),
            None => crate::progressln!("{:<12} not running", decl.name),
        }
    }
    Ok(0)
}

pub(crate) fn logs(dirs: &Dirs, name: &Name, follow: bool) -> anyhow::Result<i32> {
    let path = crate::state::logs::path(&dirs.state, name);
    if !path.exists() && !follow {
        bail!(
            "no log for '{name}' ({} does not exist); only instances started by `wharf up` or `wharf mcp` keep one",
            path.display()
        );
    }
    let stdout = std::io::stdout();
    crate::state::logs::show(&path, follow, &mut stdout.lock())
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(0)
}
