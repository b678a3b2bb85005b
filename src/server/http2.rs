//! HTTP/2 with prior knowledge (`h2c`, RFC 9113 §3.3), on the same port as HTTP/1.1: what
//! `curl --http2-prior-knowledge`, `h2load` and plaintext gRPC-style clients speak. Requests
//! are routed by `:authority` and forwarded as HTTP/1.1, exactly like HTTP/1.1 ones.
//!
//! hyper's HTTP/2 server has no idle timeout and no pings of its own: a connection with no
//! stream open for `IDLE` is closed with GOAWAY (streams in flight finish first), and a peer
//! that stops answering pings is dropped.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use tokio_util::sync::CancellationToken;

use super::{HEADER_READ, MAX_HEAD};
use crate::forward::{BoxError, Forwarder, ProxyBody};

/// What a client speaking HTTP/2 with prior knowledge sends first (the preface's first line).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
/// A connection with no stream open is closed after this, as an idle HTTP/1.1 one is.
const IDLE: Duration = HEADER_READ;
/// Ping a quiet peer this often, and drop it if the answer takes longer.
const PING: Duration = Duration::from_secs(20);
/// Streams one connection may have open at once [nginx: 128].
const MAX_STREAMS: u32 = 128;

/// Serve one HTTP/2 connection until the client closes it, it idles, or `shutdown`.
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
            // The stream stays open until its response body is done.
            Ok::<_, std::convert::Infallible>(
                response.map(|body| CountedBody { body, _open: open }.boxed_unsync()),
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
            .serve_connection(TokioIo::new(io), service)
    );
    loop {
        let idle = streams.open.load(Ordering::Relaxed) == 0;
        tokio::select! {
            _ = conn.as_mut() => return,
            () = shutdown.cancelled() => break,
            () = streams.changed.notified() => {}
            () = tokio::time::sleep(IDLE), if idle => break,
        }
    }
    // GOAWAY: the streams in flight finish, no new ones start.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// How many streams of one connection are open, and a wake-up when that changes.
#[derive(Default)]
struct Streams {
    open: AtomicUsize,
    changed: Notify,
}

/// One open stream, from its request until its response body is done or dropped.
struct Open(Arc<Streams>);

impl Open {
    fn new(streams: &Arc<Streams>) -> Open {
        streams.open.fetch_add(1, Ordering::Relaxed);
        streams.changed.notify_one();
        Open(streams.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its stream counted as open while it lives.
struct CountedBody {
    body: ProxyBody,
    _open: Open,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
