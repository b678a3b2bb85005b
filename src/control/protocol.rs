//! The control protocol between `wharf` commands and the front proxy: JSON, one object per
//! line, over a Unix stream socket in the private runtime directory (same user only). This
//! file owns the messages; `client` and `proxy::control` are the two ends.
//!
//! Requests (`op`): `hello`, `register`, `list`, `stop`, `alias`, `reload`, `reloaded`. Every request gets one
//! response line: `{"ok":true,…}` or `{"ok":false,"error":"…"}`. A `register`ed route lives as
//! long as the connection that registered it; on shutdown the proxy sends
//! `{"ok":true,"event":"stopping"}` before closing. While routes live, the proxy sends their
//! request counts (`{"ok":true,"event":"requests","requests":{"api":12}}`) when they change,
//! so an instance can carry them to the next proxy if this one dies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::instance::*;
use crate::model::name::Name;

pub(crate) const SOCKET_FILE: &str = "control.sock";

pub(crate) fn socket_path(runtime: &Path) -> PathBuf {
    runtime.join(SOCKET_FILE)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum Request {
    /// Who are you: the proxy's HTTP port and pid.
    Hello,
    /// Add or replace an instance; it lives as long as this connection.
    Register { instance: Box<Instance> },
    /// Every route.
    List,
    /// Remove a route at once; answers with the pid of the `wharf run` that held it.
    Stop { name: Name },
    /// Route `name` to a server wharf did not start (`addr: null` removes the alias).
    Alias {
        name: Name,
        addr: Option<SocketAddr>,
    },
    /// Start a new version of `name`'s server(s) and switch to it once ready, one member at a
    /// time (only `member`, if given). The proxy passes a `reload` event to each member's
    /// registration connection and answers when every one has reported (`reloaded`), or at the
    /// first that failed, with its `error`.
    Reload {
        name: Name,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member: Option<u32>,
    },
    /// A supervisor's report on the `reload` event numbered `reload`: `error` (with the new
    /// version's last output) when the new version did not become ready and the old one
    /// kept serving.
    Reloaded {
        reload: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// One route as `list` and the dashboard show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Listed {
    #[serde(flatten)]
    pub(crate) instance: Instance,
    pub(crate) url: String,
    pub(crate) alias: bool,
    pub(crate) uptime_secs: u64,
    pub(crate) requests: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Response {
    pub(crate) ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// `hello`: the proxy's HTTP port (for URLs) and pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) http_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pid: Option<i32>,
    /// `hello`: the port the proxy serves HTTPS on, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) https_port: Option<u16>,
    /// `hello`: URLs say `https://` (on `https_port`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) https: bool,
    /// `hello`: every address the proxy's HTTP listeners are on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) listen: Vec<SocketAddr>,
    /// `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) instances: Option<Vec<Listed>>,
    /// Things the user should know that did not stop the request (a corrupt file moved aside).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) notes: Vec<String>,
    /// Unprompted news on a registration connection: `"stopping"` when the proxy shuts down,
    /// `"requests"` with the counts of the routes it registered, `"reload"` to start a new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) event: Option<String>,
    /// `requests` event: requests forwarded so far, per name this connection registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) requests: Option<BTreeMap<Name, u64>>,
    /// `register` of `member: Some(0)` (a `--join`): the member number the proxy gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) member: Option<u32>,
    /// `reload` event: the number to answer with `reloaded`. `reload` answer: how many
    /// members were reloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reload: Option<u64>,
}

impl Response {
    pub(crate) fn ok() -> Response {
        Response {
            ok: true,
            ..Default::default()
        }
    }

    /// `hello`: how URLs reach this proxy.
    pub(crate) fn front(&self) -> Front {
        match (self.https, self.https_port) {
            (true, Some(port)) => Front { https: true, port },
            _ => Front::http(self.http_port.unwrap_or(80)),
        }
    }

    pub(crate) fn error(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }
}

/// Why a registration connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The proxy said it is shutting down on purpose: do not start another.
    Stopping,
    /// The connection just broke (the proxy crashed or was killed).
    Lost,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::mode::Mode;
    use std::collections::BTreeMap;

    #[test]
    fn requests_are_one_json_line_with_an_op() {
        let instance = Instance {
            name: "api".parse().unwrap(),
            pid: 10,
            member: None,
            sticky: false,
            restarts: false,
            child_pid: Some(11),
            mode: Mode::Fd,
            state: State::Starting,
            sockets: BTreeMap::from([("http".to_string(), "127.0.0.1:4001".parse().unwrap())]),
            last_exit: None,
            exposed: None,
            own_port: false,
            declared: None,
            started_at: None,
            requests_before: None,
            about: About::default(),
        };
        let line = serde_json::to_string(&Request::Register {
            instance: Box::new(instance),
        })
        .unwrap();
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with(r#"{"op":"register","instance":{"name":"api""#),
            "{line}"
        );
        let back: Request = serde_json::from_str(&line).unwrap();
        assert!(matches!(back, Request::Register { .. }));
        let bad: Result<Request, _> =
            serde_json::from_str(r#"{"op":"register","instance":{"name":"Bad!"}}"#);
        assert!(bad.is_err());
    }
}
