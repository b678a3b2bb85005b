//! Finding the front proxy, and starting one in the background when none answers: exactly
//! one, even when many `wharf` commands race to be first (they queue on a lock).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::control::client::Client;
use crate::control::protocol::{Request, Response};
use crate::state::dirs;

/// How long a fresh proxy may take to answer on its control socket.
const START_PATIENCE: Duration = Duration::from_secs(10);
const LOCK_FILE: &str = "proxy.lock";
const LOG_FILE: &str = "proxy.log";
/// The background proxy's log is restarted beyond this size.
const LOG_LIMIT: u64 = 1 << 20;

/// A connection to a proxy that said hello.
pub(crate) struct Connected {
    pub(crate) client: Client,
    pub(crate) hello: Response,
    /// True if this call started the proxy.
    pub(crate) started: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LaunchError {
    #[error("cannot start the front proxy: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the front proxy exited at once ({status}); its log {log} says:\n{tail}")]
    Died {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("the front proxy did not answer within {secs}s; see {0}", secs = START_PATIENCE.as_secs())]
    Silent(PathBuf),
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Connect to the proxy whose control socket is in `runtime`; `None` if none answers.
pub(crate) async fn connect(runtime: &Path) -> Option<Connected> {
    let mut client = Client::connect(&crate::control::protocol::socket_path(runtime))
        .await
        .ok()??;
    let hello = client.call(&Request::Hello).await.ok()?;
    Some(Connected {
        client,
        hello,
        started: false,
    })
}

/// Connect to the proxy, starting `self_exe proxy` in the background first if none answers.
pub(crate) async fn connect_or_start(
    runtime: &Path,
    self_exe: &Path,
) -> Result<Connected, LaunchError> {
    if let Some(c) = connect(runtime).await {
        return Ok(c);
    }
    let lock_path = runtime.join(LOCK_FILE);
    let lock = lock_exclusive(&lock_path).await?;
    // Someone else may have started it while we waited for the lock.
    if let Some(c) = connect(runtime).await {
        return Ok(c);
    }
    let log = runtime.join(LOG_FILE);
    let mut child = spawn_proxy(self_exe, &log).map_err(LaunchError::Spawn)?;
    let deadline = Instant::now() + START_PATIENCE;
    let mut pause = Duration::from_millis(2);
    let connected = loop {
        if let Some(c) = connect(runtime).await {
            break c;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            return Err(LaunchError::Died {
                status: status.to_string(),
                log,
                tail,
            });
        }
        if Instant::now() >= deadline {
            return Err(LaunchError::Silent(log));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    drop(lock);
    // The proxy outlives us; tokio reaps it if it exits first.
    drop(child);
    Ok(Connected {
        started: true,
        ..connected
    })
}

async fn lock_exclusive(path: &Path) -> Result<std::fs::File, LaunchError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let file = dirs::open_private(&path).map_err(|source| LaunchError::Lock {
            path: path.clone(),
            source,
        })?;
        file.lock()
            .map_err(|source| LaunchError::Lock { path, source })?;
        Ok(file)
    })
    .await
    .expect("the lock task does not panic")
}

fn spawn_proxy(self_exe: &Path, log: &Path) -> std::io::Result<tokio::process::Child> {
    if std::fs::metadata(log).is_ok_and(|m| m.len() > LOG_LIMIT) {
        let _ = std::fs::remove_file(log);
    }
    let out = {
        let f = dirs::open_private(log)?;
        let mut f = f;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))?;
        f
    };
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(self_exe);
    cmd.arg("proxy")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(false);
    for var in crate::sys::handoff::SCRUBBED {
        cmd.env_remove(var);
    }
    // A Ctrl-C meant for the `wharf run` that started it must not reach the proxy.
    detach(&mut cmd);
    cmd.spawn()
}

/// Start `cmd` in a session of its own: no controlling terminal, no signals meant for ours,
/// and it outlives us.
pub(crate) fn detach(cmd: &mut tokio::process::Command) {
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.as_std_mut().pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
}
