//! `wharf mcp`: a Model Context Protocol server on stdin/stdout (rmcp), so that coding agents
//! list instances, ensure one runs (started, or reused, and ready), read its output and stop
//! it. Each instance is started as `wharf up` starts one: a background `wharf run` with its
//! output in `state/logs/NAME.log`, asked with `--reuse` (which decides, under the registry's
//! lock, whether the same command already runs here) and `--json` (whose events say which
//! happened). What a session started is leased to it (`state::leases`): when the session
//! ends (stdin closes, SIGTERM, SIGINT, SIGHUP), the instances it holds and no other live
//! session holds are stopped as `wharf stop` stops them.
//!
//! Nothing here writes to stdout: it is the protocol's. wharf's own lines go to stderr.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt as _, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use tokio::io::AsyncBufReadExt as _;
use tokio::time::Instant;

use crate::cli::args::RunCli;
use crate::cli::{commands, run, up};
use crate::model::name::Name;
use crate::state::context::Context;
use crate::state::leases::Leases;
use crate::state::logs;
use crate::sys::process::ProcessId;
use crate::sys::trust::Trust;

/// How long `ensure_instance` waits for readiness unless told otherwise.
const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// How many lines `instance_logs` returns unless told otherwise.
const DEFAULT_LINES: usize = 100;
/// How many lines of its log a failed start shows.
const FAILURE_LINES: usize = 20;

/// Serve one MCP session on stdin/stdout until the client goes (stdin closes) or a signal
/// ends it; then stop what this session leased and nobody else holds.
pub(crate) async fn run(ctx: Context, trust: Trust, grace: Duration) -> anyhow::Result<i32> {
    use std::io::IsTerminal as _;
    use tokio::signal::unix::{SignalKind, signal};
    if std::io::stdin().is_terminal() {
        crate::errln!(
            "wharf: wharf mcp speaks the Model Context Protocol on stdin/stdout, for an agent to \
             start; add it to one with `claude mcp add wharf -- wharf mcp` (README: For agents)"
        );
    }
    let wharf = Wharf {
        session: Arc::new(Session {
            ctx,
            trust,
            grace,
            me: ProcessId::current(),
        }),
    };
    // Leases whose sessions all died without leaving (killed outright) expire now.
    let sweeper = wharf.clone();
    tokio::spawn(async move { sweeper.leave(false).await });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let session = async {
        let running = wharf
            .clone()
            .serve(rmcp::transport::stdio_pipes())
            .await
            .context("starting the MCP session on stdin/stdout")?;
        running.waiting().await?;
        anyhow::Ok(())
    };
    let ended = tokio::select! {
        ended = session => ended,
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
        _ = hup.recv() => Ok(()),
    };
    wharf.leave(true).await;
    ended.map(|()| 0)
}

/// What every tool call of one session shares.
struct Session {
    ctx: Context,
    /// What project files may be read though another user could have written them.
    trust: Trust,
    /// What `wharf stop` gives a server before it is killed.
    grace: Duration,
    /// This session, as lease records name it.
    me: ProcessId,
}

#[derive(Clone)]
pub(crate) struct Wharf {
    session: Arc<Session>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct EnsureArgs {
    /// The project directory the server runs in (absolute, or relative to where `wharf mcp`
    /// runs; default: there).
    #[serde(default)]
    dir: Option<String>,
    /// The server command and its arguments, e.g. ["npm", "run", "dev"]. Without it: the
    /// instance `name` of the nearest wharf.toml, or with no name either the project's dev
    /// command (its one wharf.toml instance, else package.json's scripts.dev).
    #[serde(default)]
    command: Option<Vec<String>>,
    /// The instance name, served at http://NAME.localhost. Default with a command: from the
    /// project (package.json, pyproject.toml, Cargo.toml name, the repository's directory;
    /// in a git worktree the branch in front).
    #[serde(default)]
    name: Option<String>,
    /// How long to wait until it is ready, in seconds (default 60).
    #[serde(default)]
    timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct LogsArgs {
    /// The instance's name.
    name: String,
    /// How many of the last lines (default 100).
    #[serde(default)]
    lines: Option<usize>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct StopArgs {
    /// The instance's name.
    name: String,
}

#[tool_router]
impl Wharf {
    #[tool(
        description = "List the running instances, as `wharf ls --json` does: name, url, state \
                       (starting, ready, restarting, idle, failed), pid (its `wharf run`), \
                       server_pid, command, dir, log."
    )]
    async fn list_instances(&self) -> Result<CallToolResult, String> {
        let (list, via_proxy) = commands::instances(&self.session.ctx)
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(CallToolResult::structured(
            serde_json::json!({"instances": list, "via_proxy": via_proxy}),
        ))
    }

    #[tool(
        description = "Make sure a dev server runs and is ready, and return its URL \
                       (http://NAME.localhost:PORT). Give `dir` and either a `command` (argv) \
                       or the `name` of an instance in that project's wharf.toml. If the same \
                       command already runs from the same directory under the name, it is \
                       reused (reused: true); else it is started in the background. Instances \
                       this session starts are stopped when it ends, unless another session \
                       ensured them too."
    )]
    async fn ensure_instance(
        &self,
        Parameters(args): Parameters<EnsureArgs>,
    ) -> Result<CallToolResult, String> {
        self.ensure(args)
            .await
            .map(CallToolResult::structured)
            .map_err(|e| format!("{e:#}"))
    }

    #[tool(description = "The last lines of an instance's output (default 100).")]
    async fn instance_logs(
        &self,
        Parameters(args): Parameters<LogsArgs>,
    ) -> Result<CallToolResult, String> {
        let text = self.logs(args).await.map_err(|e| format!("{e:#}"))?;
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
    }

    #[tool(
        description = "Stop an instance as `wharf stop` does: its route goes at once, its \
                       server gets SIGTERM, then after the grace everything it started is killed."
    )]
    async fn stop_instance(
        &self,
        Parameters(args): Parameters<StopArgs>,
    ) -> Result<CallToolResult, String> {
        let line = self.stop(&args.name).await.map_err(|e| format!("{e:#}"))?;
        Ok(CallToolResult::success(vec![ContentBlock::text(line)]))
    }
}

#[tool_handler]
impl ServerHandler for Wharf {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("wharf", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "wharf runs local dev servers as named instances at http://NAME.localhost, \
                 each on a socket wharf binds. Call ensure_instance instead of starting a dev \
                 server yourself: parallel agents asking for the same server get one.",
            )
    }
}

/// A background `wharf run`, and how its instance was chosen.
struct Plan {
    name: Name,
    notes: Vec<String>,
    command: tokio::process::Command,
    log: PathBuf,
}

/// What the first events of a background `wharf run --reuse --json` said.
enum Began {
    /// It bound the instance's sockets: a new instance, run by this supervisor.
    Started(ProcessId),
    /// The same command runs here already, under this supervisor pid.
    Reused(i32),
    /// It ended first (its reason is in the log).
    Ended,
    /// It said neither before the deadline.
    Late,
}

impl Wharf {
    async fn ensure(&self, args: EnsureArgs) -> anyhow::Result<serde_json::Value> {
        let s = &self.session;
        let secs = args.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let dir = self.dir(args.dir.as_deref())?;
        let name = args
            .name
            .as_deref()
            .map(str::parse::<Name>)
            .transpose()
            .context("name")?;
        let mut plan = self.plan(&dir, name, args.command.unwrap_or_default())?;
        let name = plan.name.clone();
        // The lease lock is held from before `wharf run --reuse` decides until the lease is
        // written: a session leaving meanwhile cannot stop what this one is about to share.
        let mut leases = self.leases().await?;
        let from = std::fs::metadata(&plan.log).map_or(0, |m| m.len());
        let mut child = plan
            .command
            .spawn()
            .with_context(|| format!("starting `wharf run` for '{name}'"))?;
        let stdout = child.stdout.take().context("no pipe from `wharf run`")?;
        let mut events = tokio::io::BufReader::new(stdout).lines();
        let began = loop {
            let line = match tokio::time::timeout_at(deadline, events.next_line()).await {
                Err(_) => break Began::Late,
                Ok(Ok(Some(line))) => line,
                Ok(_) => break Began::Ended,
            };
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            match event["event"].as_str() {
                Some("reused") => {
                    let pid = event["pid"].as_i64().and_then(|p| i32::try_from(p).ok());
                    break pid.map_or(Began::Ended, Began::Reused);
                }
                Some("port") => {
                    let id = child
                        .id()
                        .and_then(|p| ProcessId::of(i32::try_from(p).ok()?));
                    break id.map_or(Began::Ended, Began::Started);
                }
                _ => {}
            }
        };
        let (supervisor, leased, reused) = match began {
            Began::Started(id) => {
                leases.start(&name, id, s.me);
                (id.pid, true, false)
            }
            Began::Reused(pid) => (pid, leases.join(&name, pid, s.me), true),
            Began::Ended => {
                drop(leases);
                let status = child.wait().await.map(|s| s.to_string());
                bail!(
                    "`wharf run` for '{name}' ended ({}) before it started anything; its log {} says:\n{}",
                    status.unwrap_or_else(|e| e.to_string()),
                    plan.log.display(),
                    since(&plan.log, from)
                );
            }
            Began::Late => {
                drop(leases);
                if let Some(id) = child.id().and_then(|p| ProcessId::of(p as i32)) {
                    id.signal(nix::sys::signal::Signal::SIGTERM);
                }
                bail!(
                    "`wharf run` for '{name}' did not bind its sockets within {secs}s; stopped it. \
                     Its log {} says:\n{}",
                    plan.log.display(),
                    since(&plan.log, from)
                );
            }
        };
        leases
            .commit()
            .context("writing the MCP leases in wharf's runtime directory")?;
        drop(leases);
        // Read what else it says (nobody must block on a full pipe) and tell when it ends.
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            while let Ok(Some(_)) = events.next_line().await {}
            let status = child.wait().await;
            let _ = ended_tx.send(status.map_or_else(|e| e.to_string(), |s| s.to_string()));
        });
        let left = deadline.saturating_duration_since(Instant::now());
        let ready = if reused {
            commands::until_ready(&s.ctx, &name, left).await?
        } else {
            tokio::select! {
                ready = commands::until_ready(&s.ctx, &name, left) => ready?,
                status = ended_rx => Err(format!(
                    "'{name}' ended ({}) before it was ready",
                    status.unwrap_or_default()
                )),
            }
        };
        let url = match ready {
            Ok(url) => url,
            Err(why) => {
                let kept = if leased && !reused {
                    "; it stays this session's until the session ends (stop_instance stops it)"
                } else {
                    ""
                };
                bail!(
                    "{why}{kept}. Its log {} says:\n{}",
                    plan.log.display(),
                    since(&plan.log, from)
                );
            }
        };
        let mut answer = serde_json::json!({
            "name": name,
            "url": url,
            "reused": reused,
            "leased": leased,
            "pid": supervisor,
            "notes": plan.notes,
        });
        if !reused && let Some(fields) = answer.as_object_mut() {
            fields.insert("log".into(), plan.log.display().to_string().into());
        }
        Ok(answer)
    }

    /// `dir` made absolute (against where `wharf mcp` runs) and real, as `wharf run`'s own
    /// working directory would be, so that `--reuse` compares like with like.
    fn dir(&self, dir: Option<&str>) -> anyhow::Result<PathBuf> {
        let cwd = &self.session.ctx.cwd;
        let dir = dir.map_or_else(|| cwd.clone(), |d| cwd.join(d));
        let real = std::fs::canonicalize(&dir)
            .with_context(|| format!("dir {} cannot be used", dir.display()))?;
        if !real.is_dir() {
            bail!("dir {} is not a directory", dir.display());
        }
        Ok(real)
    }

    /// The background `wharf run` for a command, a declared instance, or the project's dev
    /// command, named as `wharf run` names it.
    fn plan(&self, dir: &Path, name: Option<Name>, command: Vec<String>) -> anyhow::Result<Plan> {
        let s = &self.session;
        let ctx = Context {
            cwd: dir.to_path_buf(),
            ..s.ctx.clone()
        };
        let state = ctx.dirs.state()?.to_path_buf();
        // `--reuse` decides between starting and reusing; `--json`'s events say which.
        const EXTRA: [&str; 2] = ["--reuse", "--json"];
        if let (true, Some(wanted)) = (command.is_empty(), &name) {
            use crate::model::project::{ProjectError, find};
            if let Err(ProjectError::NotFound(_)) = find(dir) {
                bail!(
                    "no command given, so '{wanted}' must be an instance of a wharf.toml, and \
                     there is none in {} or above; pass `command` (argv) to run one",
                    dir.display()
                );
            }
            let (project, selected) = up::load(&ctx, &s.trust, None, std::slice::from_ref(wanted))?;
            let decl = selected
                .into_iter()
                .next()
                .with_context(|| format!("{} declares no '{wanted}'", project.path.display()))?;
            decl.check_dir(&project.path)?;
            let log = logs::path(&state, &decl.name);
            let mut command = up::supervisor(
                &ctx,
                &decl,
                &project.path,
                &decl.fingerprint(),
                &log,
                &EXTRA,
            )?;
            command.stdout(Stdio::piped());
            return Ok(Plan {
                notes: vec![format!(
                    "instance {wanted} of {}, as `wharf up` runs it",
                    project.path.display()
                )],
                name: decl.name,
                command,
                log,
            });
        }
        let filled = run::fill(
            &ctx,
            &s.trust,
            RunCli {
                name,
                command: command.clone(),
                ..RunCli::default()
            },
        )?;
        let name = filled
            .cli
            .name
            .context("no name for the instance; pass `name`")?;
        let log = logs::path(&state, &name);
        let mut cmd = tokio::process::Command::new(&ctx.self_exe);
        cmd.arg("run")
            .arg("--name")
            .arg(name.as_str())
            .args(EXTRA)
            .arg("--quiet")
            .arg("--log")
            .arg(&log);
        if !command.is_empty() {
            // Without one, that `wharf run` finds the project's dev command again, with the
            // settings of a wharf.toml instance.
            cmd.arg("--").args(&command);
        }
        // Its own errors (a missing program, a name held elsewhere) go to the log too.
        let stderr =
            logs::open_append(&log).with_context(|| format!("opening {}", log.display()))?;
        cmd.current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(false);
        // Its own session: no signal meant for this one reaches it; its lease decides.
        crate::control::launch::detach(&mut cmd);
        Ok(Plan {
            name,
            notes: filled.notes,
            command: cmd,
            log,
        })
    }

    async fn logs(&self, args: LogsArgs) -> anyhow::Result<String> {
        let ctx = &self.session.ctx;
        let name: Name = args.name.parse().context("name")?;
        let (list, via_proxy) = commands::instances(ctx).await?;
        let path = match list.iter().find(|l| l.instance.name == name) {
            Some(l) if l.alias => bail!("'{name}' is an alias: wharf runs no process for it"),
            Some(l) => match &l.instance.about.log {
                Some(log) => log.clone(),
                // Only the proxy knows where an instance's output goes.
                None if !via_proxy => logs::path(&ctx.dirs.state, &name),
                None => bail!(
                    "'{name}' keeps no log: its output goes to the terminal of its `wharf run` \
                     (pid {}); instances started by ensure_instance or `wharf up` keep one",
                    l.instance.pid
                ),
            },
            // Stopped: what it left behind, if anything.
            None => logs::path(&ctx.dirs.state, &name),
        };
        if !path.exists() {
            bail!(
                "no log of '{name}' ({} does not exist); list_instances lists what runs",
                path.display()
            );
        }
        logs::tail(&path, args.lines.unwrap_or(DEFAULT_LINES))
            .with_context(|| format!("reading {}", path.display()))
    }

    async fn stop(&self, name: &str) -> anyhow::Result<String> {
        let s = &self.session;
        let name: Name = name.parse().context("name")?;
        let mut leases = self.leases().await?;
        let running = commands::running(&s.ctx).await?;
        running.stoppable(&name).map_err(anyhow::Error::msg)?;
        let said = commands::stop_running(&s.ctx, &running, vec![name.clone()], s.grace).await?;
        leases.end(&name);
        leases.commit()?;
        match said.into_iter().next() {
            Some((true, line)) => Ok(line),
            Some((false, line)) => bail!("{line}"),
            None => bail!("no instance named '{name}' is running; list_instances lists them"),
        }
    }

    /// Stop the leased instances nobody holds any more: with `me`, after this session leaves
    /// every lease it holds; else only those whose holders all died.
    async fn leave(&self, me: bool) {
        let s = &self.session;
        let mut leases = match self.leases().await {
            Ok(l) => l,
            Err(e) => {
                crate::errln!("wharf: {e:#}");
                return;
            }
        };
        if me {
            leases.leave(s.me);
        }
        let unheld = leases.unheld();
        if let Err(e) = leases.commit() {
            crate::errln!("wharf: writing the MCP leases: {e}");
        }
        if unheld.is_empty() {
            return;
        }
        // Still under the lock: a session ensuring one of these waits until it is gone.
        let stopped = async {
            let running = commands::running(&s.ctx).await?;
            let targets: Vec<Name> = unheld
                .into_iter()
                .filter(|(n, sup)| {
                    running
                        .supervisors
                        .get(n)
                        .is_some_and(|(pid, _)| *pid == sup.pid)
                })
                .map(|(n, _)| n)
                .collect();
            commands::stop_running(&s.ctx, &running, targets, s.grace).await
        };
        match stopped.await {
            Ok(lines) => lines
                .iter()
                .for_each(|(_, line)| crate::errln!("wharf: {line}: its MCP lease ended")),
            Err(e) => crate::errln!("wharf: stopping the instances of ended MCP leases: {e:#}"),
        }
        drop(leases);
    }

    /// The lease records, locked (waiting for the lock off the runtime's thread).
    async fn leases(&self) -> anyhow::Result<Leases> {
        let runtime = self.session.ctx.dirs.runtime()?.to_path_buf();
        tokio::task::spawn_blocking(move || {
            Leases::lock(&runtime)
                .with_context(|| format!("locking the MCP leases in {}", runtime.display()))
        })
        .await?
    }
}

/// The last lines of `log` written after byte `from` (all of it if it was rotated since).
fn since(log: &Path, from: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let new = usize::try_from(from)
        .ok()
        .and_then(|f| bytes.get(f..))
        .unwrap_or(&bytes);
    let text = String::from_utf8_lossy(new);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(FAILURE_LINES)..].join("\n")
}
