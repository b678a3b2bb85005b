//! The commands' end of the control socket: one connection to the proxy, its requests, and the
//! events it may hear (the proxy stopping, request counts, a reload to carry out).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::protocol::*;
use crate::model::instance::Instance;
use crate::model::name::Name;

/// Why a call to the proxy got no answer to use.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the proxy closed the connection")]
    Closed,
    #[error("bad answer from the proxy: {0}")]
    BadAnswer(serde_json::Error),
    /// The proxy answered `ok: false`; its `error` says why and what to do.
    #[error("{0}")]
    Refused(String),
}

/// A connection to the proxy's control socket.
pub(crate) struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The proxy said it is stopping on purpose (an `event` line, possibly mid-call).
    stopping: bool,
    /// The latest request counts the proxy sent for what this connection registered.
    requests: BTreeMap<Name, u64>,
    /// `reload` events heard (possibly mid-call) and not yet taken by `next_event`.
    reloads: VecDeque<u64>,
    /// The line being read: kept here so that a read cancelled halfway (a `select!` that
    /// chose another branch) loses nothing.
    partial: Vec<u8>,
}

/// What a registration connection brings unprompted (`Client::next_event`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    /// The connection ended, and how.
    Closed(Closed),
    /// Start a new version; answer with `report_reloaded` and this number.
    Reload(u64),
}

impl Client {
    /// Connect to the proxy; `Ok(None)` when no proxy listens there.
    pub(crate) async fn connect(path: &Path) -> io::Result<Option<Client>> {
        match UnixStream::connect(path).await {
            Ok(stream) => Ok(Some(Client::over(stream))),
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

    /// A client on a connected stream.
    fn over(stream: UnixStream) -> Client {
        let (r, w) = stream.into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
            stopping: false,
            requests: BTreeMap::new(),
            reloads: VecDeque::new(),
            partial: Vec::new(),
        }
    }

    /// Send one request and read its response; a response with `ok: false` becomes an error.
    pub(crate) async fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let mut line = serde_json::to_vec(request).expect("requests serialise");
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        let response = loop {
            let response = self.read_response().await?.ok_or(ClientError::Closed)?;
            if response.event.is_none() {
                break response;
            }
        };
        if !response.ok {
            let msg = response
                .error
                .unwrap_or_else(|| "the proxy refused".to_string());
            return Err(ClientError::Refused(msg));
        }
        Ok(response)
    }

    /// The next line as a response (`None` at the end); events are noted on the way.
    /// Cancel-safe: a partial line stays in `partial` for the next call.
    async fn read_response(&mut self) -> Result<Option<Response>, ClientError> {
        self.reader.read_until(b'\n', &mut self.partial).await?;
        if !self.partial.ends_with(b"\n") {
            // The end of the stream (a last line without its newline is no answer either).
            return Ok(None);
        }
        let answer = std::mem::take(&mut self.partial);
        let response: Response = serde_json::from_slice(&answer).map_err(ClientError::BadAnswer)?;
        match response.event.as_deref() {
            Some("stopping") => self.stopping = true,
            Some("requests") => self.requests = response.requests.clone().unwrap_or_default(),
            Some("reload") => self.reloads.extend(response.reload),
            _ => {}
        }
        Ok(Some(response))
    }

    /// Requests the proxy last said it forwarded to `name` (registered on this connection).
    pub(crate) fn requests(&self, name: &Name) -> Option<u64> {
        self.requests.get(name).copied()
    }

    /// How this connection ended (or would, if it is broken now): on purpose or not.
    pub(crate) fn how_closed(&self) -> Closed {
        if self.stopping {
            Closed::Stopping
        } else {
            Closed::Lost
        }
    }

    /// The next reload asked for (one heard mid-call first), or the connection's end.
    /// Cancel-safe, for a `select!`.
    pub(crate) async fn next_event(&mut self) -> Heard {
        loop {
            if let Some(id) = self.reloads.pop_front() {
                return Heard::Reload(id);
            }
            if !matches!(self.read_response().await, Ok(Some(_))) {
                return Heard::Closed(self.how_closed());
            }
        }
    }

    /// Answer the `reload` event numbered `id`: done, or why not (`error`).
    pub(crate) async fn report_reloaded(
        &mut self,
        id: u64,
        error: Option<String>,
    ) -> Result<(), ClientError> {
        let request = Request::Reloaded { reload: id, error };
        self.call(&request).await.map(drop)
    }
}

/// How long a registry rebuild waits on each step of asking the proxy what runs.
const PROXY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// What a corrupt registry is rebuilt from (`Store::recovering_from`): the instances (not
/// aliases) the proxy whose runtime directory is `runtime` routes when asked; empty when no
/// proxy answers in time.
pub(crate) fn running_instances(
    runtime: &Path,
) -> impl Fn() -> Vec<Instance> + Send + Sync + 'static {
    let control = socket_path(runtime);
    move || {
        list_blocking(&control, PROXY_PATIENCE)
            .unwrap_or_default()
            .into_iter()
            .filter(|l| !l.alias)
            .map(|l| l.instance)
            .collect()
    }
}

/// Every route the proxy at `path` knows, asked without an async runtime (for code holding a
/// file lock), each step bounded by `limit`; `None` when no proxy answers in time.
pub(crate) fn list_blocking(path: &Path, limit: std::time::Duration) -> Option<Vec<Listed>> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    stream.set_write_timeout(Some(limit)).ok()?;
    let mut line = serde_json::to_vec(&Request::List).expect("requests serialise");
    line.push(b'\n');
    stream.write_all(&line).ok()?;
    let mut reader = std::io::BufReader::new(stream);
    loop {
        let mut answer = String::new();
        if reader.read_line(&mut answer).ok()? == 0 {
            return None;
        }
        let response: Response = serde_json::from_str(&answer).ok()?;
        if response.event.is_none() {
            return response.instances.filter(|_| response.ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A client on one end of a socket pair; the test plays the proxy on the other.
    fn pair() -> (Client, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (Client::over(ours), theirs)
    }

    #[tokio::test]
    async fn a_reload_event_survives_a_select_that_chose_another_branch() {
        let (mut client, mut proxy) = pair();
        proxy
            .write_all(br#"{"ok":true,"event":"rel"#)
            .await
            .unwrap();
        tokio::select! {
            heard = client.next_event() => panic!("heard {heard:?} from half a line"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        proxy.write_all(b"oad\",\"reload\":7}\n").await.unwrap();
        assert_eq!(client.next_event().await, Heard::Reload(7));
        drop(proxy);
        assert_eq!(client.next_event().await, Heard::Closed(Closed::Lost));
    }

    #[tokio::test]
    async fn a_reload_heard_during_a_call_waits_for_next_event() {
        let (mut client, proxy) = pair();
        let answering = tokio::spawn(async move {
            let (r, mut w) = proxy.into_split();
            let mut lines = BufReader::new(r).lines();
            let request = lines.next_line().await.unwrap().unwrap();
            assert!(
                request.contains(r#""op":"reloaded","reload":3"#),
                "{request}"
            );
            w.write_all(b"{\"ok\":true,\"event\":\"reload\",\"reload\":4}\n{\"ok\":true}\n")
                .await
                .unwrap();
            w
        });
        client.report_reloaded(3, None).await.unwrap();
        assert_eq!(client.next_event().await, Heard::Reload(4));
        drop(answering.await.unwrap());
    }
}
