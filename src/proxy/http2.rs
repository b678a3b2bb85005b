//! HTTP/2, over TLS (ALPN `h2`) or with prior knowledge (`h2c`, RFC 9113 §3.3) on the same
//! port as HTTP/1.1: what browsers, `curl --http2-prior-knowledge`, `h2load` and gRPC
//! clients speak. WebSockets open over it with extended CONNECT (RFC 8441), as browsers do. Requests are
//! routed by `:authority` under the same rules as HTTP/1.1 ones and forwarded as HTTP/1.1,
//! except gRPC, which `forward` sends on over h2c.
//!
//! hyper's HTTP/2 server has no idle timeout and no pings of its own: a connection with no
//! stream open for `Limits::header_read` is closed with GOAWAY (streams in flight finish
//! first), as an idle HTTP/1.1 one is; a peer that stops answering pings is dropped, and so is
//! one that takes no response data for `Limits::write_stall` (flow control hides that from the
//! socket's write deadline).

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
use slab::Slab;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::proxy::body::{BoxError, ProxyBody};
use crate::proxy::forward::Forwarder;
/// Response data buffered per stream beyond what the client's window lets out [hyper: 400 KB].
const SEND_BUF: usize = 64 * 1024;

/// Serve one HTTP/2 connection until the client closes it, it idles, stops reading, or
/// `shutdown`.
pub(crate) async fn serve<I>(
    io: I,
    peer: crate::proxy::rules::Peer,
    forwarder: Arc<Forwarder>,
    shutdown: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = forwarder.limits();
    let streams = Arc::new(Streams::new(limits.header_read, limits.write_stall));
    let (ping, max_head) = (limits.http2_ping, limits.max_head);
    let counted = streams.clone();
    // Each stream may need a connection to an instance: the budget says how many.
    let max_streams = forwarder.budget().streams_per_connection();
    // Set once a WebSocket opens over extended CONNECT (RFC 8441): from then on its stream
    // may idle as long as it likes, so the connection is not closed as idle.
    let exempt: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let tunnels = exempt.clone();
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
            .keep_alive_interval(ping)
            .keep_alive_timeout(ping)
            .max_concurrent_streams(max_streams)
            .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
            .max_send_buf_size(SEND_BUF)
            .enable_connect_protocol()
            .serve_connection(TokioIo::new(io), service)
    );
    // Once GOAWAY is sent, streams in flight finish and no new ones start.
    let mut closing = false;
    loop {
        // Streams come and go without waking this loop (that would cost every request two
        // wake-ups); it looks at them when the next limit could be reached.
        let check = streams.next_check();
        tokio::select! {
            _ = conn.as_mut() => return,
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(check) => match streams.state() {
                State::Busy => {}
                // The client takes no more data (no flow-control window, or no reads):
                // dropped, as an HTTP/1.1 client that stops reading is.
                State::Stalled => return,
                // Still no stream and still not closed: a handshake that never ended.
                State::Idle if tunnels.load(std::sync::atomic::Ordering::Relaxed) => {
                    streams.idle_from_now();
                }
                State::Idle if closing => return,
                State::Idle => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                    streams.idle_from_now();
                }
            },
        }
    }
}

/// The open streams of one connection, each with the time hyper took data from its response
/// body without coming back for more (a client that grants no window never lets it), and
/// since when none has been open.
struct Streams {
    table: Mutex<Table>,
    /// A connection with no stream open this long is closed.
    idle: Duration,
    /// A response body owed a poll this long is a client that stopped reading.
    stall: Duration,
}

struct Table {
    /// Per open stream: since when hyper owes its response body a poll.
    owed: Slab<Option<Instant>>,
    /// When the last stream closed, or the connection opened.
    idle_since: Instant,
}

/// What the connection's streams say about it.
enum State {
    Busy,
    /// A response body has owed a poll for `stall`.
    Stalled,
    /// No stream has been open for `idle`.
    Idle,
}

impl Streams {
    fn new(idle: Duration, stall: Duration) -> Streams {
        Streams {
            table: Mutex::new(Table {
                owed: Slab::new(),
                idle_since: Instant::now(),
            }),
            idle,
            stall,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When a limit could next be reached: the idle one with no stream open; with streams
    /// open, the oldest owed poll's, but no later than `idle` from now, as they may all close
    /// meanwhile. A stall that starts later is found within a quarter of the limit.
    fn next_check(&self) -> Instant {
        let table = self.table();
        if table.owed.is_empty() {
            return table.idle_since + self.idle;
        }
        let soon = Instant::now() + self.idle.min(self.stall / 4);
        table
            .oldest_owed()
            .map_or(soon, |since| (since + self.stall).min(soon))
    }

    fn state(&self) -> State {
        let table = self.table();
        if table.owed.is_empty() {
            if table.idle_since.elapsed() >= self.idle {
                return State::Idle;
            }
        } else if table
            .oldest_owed()
            .is_some_and(|since| since.elapsed() >= self.stall)
        {
            return State::Stalled;
        }
        State::Busy
    }

    /// Start the idle period again (after GOAWAY, the connection gets one more to close).
    fn idle_from_now(&self) {
        self.table().idle_since = Instant::now();
    }
}

impl Table {
    fn oldest_owed(&self) -> Option<Instant> {
        self.owed.iter().filter_map(|(_, since)| *since).min()
    }
}

/// One open stream, from its request until its response body is done or dropped.
struct Open {
    streams: Arc<Streams>,
    key: usize,
}

impl Open {
    fn new(streams: &Arc<Streams>) -> Open {
        let key = streams.table().owed.insert(None);
        Open {
            streams: streams.clone(),
            key,
        }
    }

    /// Whether hyper owes the response body a poll (from now on).
    fn owed(&self, owed: bool) {
        if let Some(since) = self.streams.table().owed.get_mut(self.key) {
            *since = owed.then(Instant::now);
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut table = self.streams.table();
        table.owed.try_remove(self.key);
        if table.owed.is_empty() {
            table.idle_since = Instant::now();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(15);
    const WRITE_STALL: Duration = Duration::from_secs(60);

    fn idle(streams: &Streams) -> bool {
        matches!(streams.state(), State::Idle)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_stream_closing() {
        let streams = Arc::new(Streams::new(IDLE, WRITE_STALL));
        let start = Instant::now();
        assert_eq!(streams.next_check(), start + IDLE);
        let open = Open::new(&streams);
        tokio::time::advance(IDLE * 2).await;
        assert!(!idle(&streams), "a stream is open");
        assert_eq!(streams.next_check(), Instant::now() + IDLE);
        drop(open);
        let closed = Instant::now();
        assert_eq!(streams.next_check(), closed + IDLE);
        tokio::time::advance(IDLE - Duration::from_millis(1)).await;
        assert!(!idle(&streams));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(idle(&streams));
        streams.idle_from_now();
        assert!(!idle(&streams));
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_owed_for_the_write_stall_limit_is_a_stall() {
        let streams = Arc::new(Streams::new(IDLE, WRITE_STALL));
        let quiet = Open::new(&streams);
        let stuck = Open::new(&streams);
        quiet.owed(false);
        stuck.owed(true);
        let since = Instant::now();
        // Checked at least every IDLE, in case every stream closes meanwhile.
        assert_eq!(streams.next_check(), since + IDLE.min(WRITE_STALL / 4));
        tokio::time::advance(WRITE_STALL - Duration::from_millis(1)).await;
        assert_eq!(streams.next_check(), since + WRITE_STALL);
        assert!(matches!(streams.state(), State::Busy));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(matches!(streams.state(), State::Stalled));
        // Data taken again: no longer owed.
        stuck.owed(false);
        assert!(matches!(streams.state(), State::Busy));
        drop(stuck);
        assert!(
            matches!(streams.state(), State::Busy),
            "one stream still open"
        );
    }
}
