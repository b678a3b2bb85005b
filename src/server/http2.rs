//! HTTP/2 with prior knowledge (`h2c`, RFC 9113 §3.3), on the same port as HTTP/1.1: what
//! `curl --http2-prior-knowledge`, `h2load` and plaintext gRPC clients speak. Requests are
//! routed by `:authority` under the same rules as HTTP/1.1 ones and forwarded as HTTP/1.1,
//! except gRPC, which `forward` sends on over h2c.
//!
//! hyper's HTTP/2 server has no idle timeout and no pings of its own: a connection with no
//! stream open for `IDLE` is closed with GOAWAY (streams in flight finish first), a peer that
//! stops answering pings is dropped, and so is one that takes no response data for
//! `WRITE_STALL` (flow control hides that from the socket's write deadline).

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{HEADER_READ, MAX_HEAD, WRITE_STALL};
use crate::forward::{BoxError, Forwarder, ProxyBody};

/// A connection with no stream open is closed after this, as an idle HTTP/1.1 one is.
const IDLE: Duration = HEADER_READ;
/// Ping a quiet peer this often, and drop it if the answer takes longer.
const PING: Duration = Duration::from_secs(20);
/// Streams one connection may have open at once [nginx: 128].
const MAX_STREAMS: u32 = 128;
/// Response data buffered per stream beyond what the client's window lets out [hyper: 400 KB].
const SEND_BUF: usize = 64 * 1024;

/// Serve one HTTP/2 connection until the client closes it, it idles, stops reading, or
/// `shutdown`.
pub async fn serve<I>(
    io: I,
    peer: std::net::SocketAddr,
    forwarder: Arc<Forwarder>,
    shutdown: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let streams = Arc::new(Streams::default());
    let counted = streams.clone();
    // Never set: HTTP/2 has no upgrades (extended CONNECT is not enabled).
    let exempt = Arc::default();
    let service = service_fn(move |req| {
        let forwarder = forwarder.clone();
        let exempt = Arc::clone(&exempt);
        let open = Open::new(&counted);
        async move {
            let response = forwarder.handle(req, peer, &exempt).await;
            // The stream stays open until its response body is done; hyper owes it a poll.
            open.owed(true);
            Ok::<_, std::convert::Infallible>(
                response.map(|body| CountedBody { body, open }.boxed_unsync()),
            )
        }
    });
    let mut conn = pin!(
        http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING)
            .keep_alive_timeout(PING)
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(u32::try_from(MAX_HEAD).expect("64 KiB fits"))
            .max_send_buf_size(SEND_BUF)
            .serve_connection(TokioIo::new(io), service)
    );
    // Once GOAWAY is sent, streams in flight finish and no new ones start.
    let mut closing = false;
    loop {
        let (open, oldest_owed) = streams.snapshot();
        // A poll owed since before the last check is found within a quarter of the limit.
        let stall_check = oldest_owed.map_or(Instant::now() + WRITE_STALL / 4, |since| {
            since + WRITE_STALL
        });
        tokio::select! {
            _ = conn.as_mut() => return,
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = streams.changed.notified() => {}
            () = tokio::time::sleep(IDLE), if open == 0 => {
                if closing {
                    // Still no stream and still not closed: a handshake that never ended.
                    return;
                }
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(stall_check), if open > 0 => {
                if streams.stalled() {
                    // The client takes no more data (no flow-control window, or no reads):
                    // dropped, as an HTTP/1.1 client that stops reading is.
                    return;
                }
            }
        }
    }
}

/// The open streams of one connection, each with the time hyper took data from its response
/// body without coming back for more (a client that grants no window never lets it), and a
/// wake-up when streams open or close.
#[derive(Default)]
struct Streams {
    table: Mutex<Table>,
    changed: Notify,
}

#[derive(Default)]
struct Table {
    next: u64,
    /// Per open stream: since when hyper owes its response body a poll.
    owed: HashMap<u64, Option<Instant>>,
}

impl Streams {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many streams are open, and the oldest poll owed.
    fn snapshot(&self) -> (usize, Option<Instant>) {
        let table = self.table();
        (
            table.owed.len(),
            table.owed.values().flatten().min().copied(),
        )
    }

    fn stalled(&self) -> bool {
        self.snapshot()
            .1
            .is_some_and(|since| since.elapsed() >= WRITE_STALL)
    }
}

/// One open stream, from its request until its response body is done or dropped.
struct Open {
    streams: Arc<Streams>,
    id: u64,
}

impl Open {
    fn new(streams: &Arc<Streams>) -> Open {
        let id = {
            let mut table = streams.table();
            table.next += 1;
            let id = table.next;
            table.owed.insert(id, None);
            id
        };
        streams.changed.notify_one();
        Open {
            streams: streams.clone(),
            id,
        }
    }

    /// Whether hyper owes the response body a poll (from now on).
    fn owed(&self, owed: bool) {
        if let Some(since) = self.streams.table().owed.get_mut(&self.id) {
            *since = owed.then(Instant::now);
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.streams.table().owed.remove(&self.id);
        self.streams.changed.notify_one();
    }
}

/// A response body that keeps its stream counted as open while it lives, and notes when hyper
/// took data from it.
struct CountedBody {
    body: ProxyBody,
    open: Open,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        // Data handed over: hyper comes back once the client has room for more.
        self.open
            .owed(matches!(&poll, Poll::Ready(Some(Ok(frame))) if frame.is_data()));
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
