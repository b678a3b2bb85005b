//! The control protocol between `wharf` commands and the front proxy: JSON, one object per
//! line, over a Unix stream socket in the private runtime directory. This file owns the message
//! types and the client; the proxy serves them.
//!
//! Requests (`op`): `hello`, `register`, `update`, `list`, `stop`. Every request gets one
//! response line: `{"ok":true,…}` or `{"ok":false,"error":"…"}`. A `register`ed route lives as
//! long as the connection that registered it.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::mode::Mode;
use crate::name::Name;

pub const SOCKET_FILE: &str = "control.sock";

pub fn socket_path(runtime: &Path) -> PathBuf {
    runtime.join(SOCKET_FILE)
}

/// Where an instance is in its life, as the proxy shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Started, not yet known to serve (fd mode before `READY=1`, env mode before it listens).
    Starting,
    Ready,
    /// Between an exit and the next start (`--restart`).
    Restarting,
}

/// One instance as registered: where each of its sockets is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub name: Name,
    /// The `wharf run` process that holds the registration.
    pub pid: i32,
    /// The server's pid, when one runs.
    #[serde(default)]
    pub child_pid: Option<i32>,
    pub mode: Mode,
    pub state: State,
    /// socket name (`http`, or a `--socket` name) → address the proxy forwards to.
    pub sockets: BTreeMap<String, SocketAddr>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Hello,
    Register { instance: Instance },
    Update { instance: Instance },
    List,
    Stop { name: Name },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `hello`: the proxy's HTTP port (for URLs) and pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<Instance>>,
}

/// A connection to the proxy's control socket.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    /// Connect to the proxy; `Ok(None)` when no proxy listens there.
    pub async fn connect(path: &Path) -> io::Result<Option<Client>> {
        match UnixStream::connect(path).await {
            Ok(stream) => {
                let (r, w) = stream.into_split();
                Ok(Some(Client {
                    reader: BufReader::new(r),
                    writer: w,
                }))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Send one request and read its response; a response with `ok: false` becomes an error.
    pub async fn call(&mut self, request: &Request) -> io::Result<Response> {
        let mut line = serde_json::to_vec(request).expect("requests serialise");
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the proxy closed the connection",
            ));
        }
        let response: Response = serde_json::from_str(&answer).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad answer from the proxy: {e}"),
            )
        })?;
        if !response.ok {
            let msg = response
                .error
                .unwrap_or_else(|| "the proxy refused".to_string());
            return Err(io::Error::other(msg));
        }
        Ok(response)
    }

    /// Resolves when the proxy closes the connection (it stopped or restarted).
    pub async fn closed(&mut self) {
        let mut buf = String::new();
        loop {
            buf.clear();
            match self.reader.read_line(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line_with_an_op() {
        let instance = Instance {
            name: "api".parse().unwrap(),
            pid: 10,
            child_pid: Some(11),
            mode: Mode::Fd,
            state: State::Starting,
            sockets: BTreeMap::from([("http".to_string(), "127.0.0.1:4001".parse().unwrap())]),
        };
        let line = serde_json::to_string(&Request::Register { instance }).unwrap();
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
