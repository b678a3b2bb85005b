//! An instance as wharf describes it everywhere: its name and sockets, where it is in its life,
//! what started it, where it was declared, and the URL it is reached at.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::mode::Mode;
use crate::model::name::Name;

/// Where an instance is in its life, as the proxy shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    /// Started, not yet known to serve (fd mode before `READY=1`, env mode before it listens).
    Starting,
    Ready,
    /// Between an exit and the next start (`--restart`).
    Restarting,
    /// On demand: the socket is held, no server runs; the next connection starts one.
    Idle,
    /// Its server runs but failed its health check `failures` times in a row: out of rotation
    /// until a check passes again.
    Unhealthy,
    /// Gave up after repeated failures; the proxy answers for it (`wharf logs NAME`).
    Failed,
    /// Listed from the registry while no proxy runs: its `wharf run` lives, nothing more is
    /// known. Never registered.
    Running,
}

impl std::fmt::Display for State {
    /// The name `ls`, its JSON and the dashboard all use.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Restarting => "restarting",
            State::Idle => "idle",
            State::Unhealthy => "unhealthy",
            State::Failed => "failed",
            State::Running => "running",
        })
    }
}

/// One instance as registered: where each of its sockets is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Instance {
    pub(crate) name: Name,
    /// The `wharf run` process that holds the registration (`PID` in `ls`).
    pub(crate) pid: i32,
    /// Set when this is one member of a replicated name (`--replicas`, `--join`): its number,
    /// unique among the name's members (`Some(0)`: any free number, which the proxy answers
    /// with). A registration with a member number joins the name's other registrations, and
    /// the proxy balances across them (a registration without one counts as member 1 there);
    /// one without a member number is refused while the name is registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) member: Option<u32>,
    /// Keep each client on one member (a cookie) for apps with in-memory sessions: set by
    /// `sticky = true`; a name is sticky when any of its members asks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) sticky: bool,
    /// Its supervisor starts the server again when it exits (`--restart`): in env mode, a
    /// connection refused while the server is down waits for the route's next change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) restarts: bool,
    /// The server's pid, when one runs (`SERVER PID` in `ls`).
    #[serde(default, rename = "server_pid", alias = "child_pid")]
    pub(crate) child_pid: Option<i32>,
    pub(crate) mode: Mode,
    pub(crate) state: State,
    /// socket name (`http`, or a `--socket` name) → address the proxy forwards to.
    pub(crate) sockets: BTreeMap<String, SocketAddr>,
    /// Set when its server listens on every interface (`0.0.0.0`, `[::]`): that address, so
    /// that `ls` and the dashboard warn that the network reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) exposed: Option<SocketAddr>,
    /// Set when its server listens on a port of its own choosing, not the one wharf gave it
    /// (wharf routes there): a second version cannot listen beside it, so a reload is refused
    /// and `wharf up` restarts it instead of swapping.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) own_port: bool,
    /// The last exit of its server, described (`exited with code 3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_exit: Option<String>,
    /// For instances declared in a wharf.toml: which file, and a digest of the declaration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) declared: Option<Declaration>,
    /// When the instance started (Unix seconds): its uptime outlives a proxy restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) started_at: Option<u64>,
    /// Requests earlier proxies forwarded to it, carried to the next one when it registers
    /// again; folded into `requests` when listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) requests_before: Option<u64>,
    /// What it runs and where, for people looking at it (`ls --json`, the dashboard).
    #[serde(default, flatten)]
    pub(crate) about: About,
}

/// Where an instance's server comes from and where its output goes, as `wharf run` knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct About {
    /// The command as run (placeholders filled in, flags wharf added included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) command: Vec<String>,
    /// Its working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dir: Option<PathBuf>,
    /// The file its output goes to (`--log`); `None`: the terminal of `wharf run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) log: Option<PathBuf>,
}

/// How much of a command the registration carries: enough to recognise it, and far below
/// the control socket's line limit however long the real one is.
const SHOWN_COMMAND: usize = 4096;

impl Instance {
    /// An instance known only by name, pid, state and sockets (an alias, a lease read from
    /// the registry): mode fd, everything else unknown.
    pub(crate) fn bare(
        name: Name,
        pid: i32,
        state: State,
        sockets: BTreeMap<String, SocketAddr>,
    ) -> Instance {
        Instance {
            name,
            pid,
            member: None,
            sticky: false,
            restarts: false,
            child_pid: None,
            mode: Mode::Fd,
            state,
            sockets,
            last_exit: None,
            exposed: None,
            own_port: false,
            declared: None,
            started_at: None,
            requests_before: None,
            about: About::default(),
        }
    }
}

impl About {
    /// `command` is cut after `SHOWN_COMMAND` bytes, its last argument then `…`.
    pub(crate) fn new(command: &[String], dir: Option<PathBuf>, log: Option<PathBuf>) -> About {
        let mut shown = Vec::new();
        let mut len = 0;
        for arg in command {
            len += arg.len() + 1;
            if len > SHOWN_COMMAND {
                shown.push("…".to_string());
                break;
            }
            shown.push(arg.clone());
        }
        About {
            command: shown,
            dir,
            log,
        }
    }
}

/// Where a declared instance comes from, so `wharf up` can tell what changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Declaration {
    pub(crate) file: PathBuf,
    pub(crate) fingerprint: String,
}

/// How URLs reach the front proxy: the scheme, and the port (left out when it is the
/// scheme's own). The proxy decides it and tells every client in its `hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Front {
    pub(crate) https: bool,
    pub(crate) port: u16,
}

impl Front {
    pub(crate) const fn http(port: u16) -> Front {
        Front { https: false, port }
    }

    /// `http://NAME.localhost[:PORT]` (or `https://`).
    pub(crate) fn url(&self, name: &Name) -> String {
        self.origin(&format!("{name}.localhost"))
    }

    /// `http://localhost[:PORT]/`, the dashboard.
    pub(crate) fn dashboard(&self) -> String {
        self.origin("localhost") + "/"
    }

    fn origin(&self, host: &str) -> String {
        match (self.https, self.port) {
            (false, 80) => format!("http://{host}"),
            (true, 443) => format!("https://{host}"),
            (false, port) => format!("http://{host}:{port}"),
            (true, port) => format!("https://{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_command_still_fits_a_registration_line() {
        let argv: Vec<String> = (0..20_000).map(|i| format!("arg{i}")).collect();
        let about = About::new(&argv, None, None);
        assert_eq!(about.command[..2], ["arg0", "arg1"]);
        assert_eq!(about.command.last().unwrap(), "…");
        assert!(serde_json::to_string(&about).unwrap().len() < crate::proxy::control::MAX_LINE / 4);
        let short = About::new(&argv[..3], None, None);
        assert_eq!(short.command, argv[..3]);
    }
}
