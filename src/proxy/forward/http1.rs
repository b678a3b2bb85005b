//! HTTP/1.1 connections to instances for the requests that take hyper's path: HTTP/2 clients'
//! requests, and the HTTP/1.1 ones the express lane hands over (chunked bodies, WebSockets).
//! Each connection is driven by a task of its own; while it idles, its `SendRequest` waits in
//! an `idle::Pool`. With none idle, one of the express lane's idle connections is taken over
//! before a new one is opened. A connection goes back to the pool the moment its response body
//! ends, is reused for at most `Limits::upstream_idle`, and only if it is ready for a request
//! when taken.
//!
//! hyper-util's pool did this before, at about a tenth of the proxy's instructions per
//! request on HTTP/2: a SipHash of the key on every checkout and return, and a task spawned
//! per request to wait for the connection to be ready again.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::proxy::body::{BoxError, ProxyBody};
use crate::proxy::budget::{Budget, Fds, Held};
use crate::proxy::forward::SendError;
use crate::proxy::limits::Limits;
use crate::proxy::rules;
use crate::proxy::upstream::Upstream;
use crate::proxy::upstream::idle::{self, Fit, Idle};

/// Which connection a request may go on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Connection {
    /// An idle one if there is one, else a new one.
    Any,
    /// A new one: a retry after a pooled connection failed.
    New,
}

/// One connection to an instance, as the pool holds it.
struct Link {
    sender: SendRequest<ProxyBody>,
    /// Its writing was cut short by the server (see `UpstreamSocket`): it never carries another
    /// request.
    cut: Arc<AtomicBool>,
    /// Set when a byte arrives (see `UpstreamSocket`); cleared before each request, so a
    /// failed request knows whether it had been answered in part.
    read: Arc<AtomicBool>,
}

/// A connection waiting for its next request.
struct Waiting {
    link: Link,
    /// When it has been idle too long to be reused.
    expires: Instant,
}

impl Idle for Waiting {
    /// Ready when not idle too long and waiting for a request; busy while still writing the
    /// last one's request body (its response came early) or its task has yet to notice.
    fn fit(&self) -> Fit {
        let sender = &self.link.sender;
        if Instant::now() >= self.expires
            || sender.is_closed()
            || self.link.cut.load(Ordering::Relaxed)
        {
            Fit::Done
        } else if sender.is_ready() {
            Fit::Ready
        } else {
            Fit::Busy
        }
    }
}

/// hyper's idle connections to instances.
pub(crate) struct Pool {
    idle: idle::Pool<Waiting>,
    /// The express lane's idle connections: one is taken over when none of hyper's is idle,
    /// so a client connection the lane hands to hyper goes on with the instance's connection
    /// it had.
    lane: Arc<idle::Pool<Upstream>>,
    /// New connections are opened under it.
    budget: Budget,
    /// How long a connect may take.
    connect: Duration,
    /// How long a connection may wait for its next request.
    max_idle: Duration,
}

impl Pool {
    pub(crate) fn new(budget: Budget, limits: &Limits, lane: Arc<idle::Pool<Upstream>>) -> Pool {
        Pool {
            idle: idle::Pool::new(limits.http1_idle_per_addr),
            lane,
            budget,
            connect: limits.upstream_connect,
            max_idle: limits.upstream_idle,
        }
    }

    /// Send `req` (in origin form) to `addr` on an idle connection, or a new one. The
    /// response's body gives the connection back when it ends.
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<ProxyBody>,
        connection: Connection,
    ) -> Result<Response<ProxyBody>, SendError> {
        let idle = match connection {
            Connection::Any => match self.idle.take(addr) {
                Some(waiting) => Some(waiting.link),
                None => match self.lane.take(addr) {
                    Some(up) => {
                        let (stream, fds) = up.into_parts();
                        // Only a handshake without I/O fails here: a new connection then.
                        link(stream, fds).await.ok()
                    }
                    None => None,
                },
            },
            Connection::New => None,
        };
        let (mut link, reused) = match idle {
            Some(link) => (link, true),
            None => match connect(addr, &self.budget, self.connect).await {
                Ok(link) => (link, false),
                // Nothing was sent: the request comes back, to go elsewhere.
                Err(source) => {
                    return Err(SendError {
                        reused: false,
                        answered: false,
                        source,
                        unsent: Some(Box::new(req)),
                    });
                }
            },
        };
        let head = req.method() == http::Method::HEAD;
        link.read.store(false, Ordering::Relaxed);
        let response = link.sender.send_request(req).await.map_err(|e| SendError {
            reused,
            answered: link.read.load(Ordering::Relaxed),
            source: e.into(),
            unsent: None,
        })?;
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // The upgrade takes the connection over.
            return Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()));
        }
        if !rules::reusable_after(head, response.status().as_u16(), announces_body(&response)) {
            // Dropping its sender closes the connection once this response is read.
            return Ok(response.map(|body| Returning::boxed(body, None)));
        }
        let home = Home {
            link,
            addr,
            pool: Arc::clone(self),
        };
        Ok(response.map(|body| Returning::boxed(body, Some(home))))
    }

    fn put(&self, addr: SocketAddr, link: Link) {
        if !link.sender.is_closed() && !link.cut.load(Ordering::Relaxed) {
            let expires = Instant::now() + self.max_idle;
            self.idle.put(addr, Waiting { link, expires });
        }
    }

    /// Close connections idle too long or closed by their server (a busy one that never
    /// becomes ready ages out too).
    pub(crate) fn sweep(&self) {
        self.idle.sweep();
    }
}

/// The response's head announced a body: `Transfer-Encoding`, or a non-zero `Content-Length`.
fn announces_body<B>(response: &Response<B>) -> bool {
    let headers = response.headers();
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().iter().any(|&b| b != b'0'))
}

/// A new connection to `addr`, its task started. WebSocket upgrades take the connection over,
/// with its share of the budget.
async fn connect(addr: SocketAddr, budget: &Budget, within: Duration) -> Result<Link, BoxError> {
    let (stream, fds) = crate::proxy::upstream::open(addr, budget, within).await?;
    link(stream, fds).await
}

/// hyper's client on `stream`, its task started.
async fn link(stream: TcpStream, fds: Fds) -> Result<Link, BoxError> {
    let cut = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicBool::new(false));
    let stream = UpstreamSocket {
        stream,
        cut: Arc::clone(&cut),
        read: Arc::clone(&read),
        read_ended: false,
    };
    let (sender, conn) = http1::handshake(TokioIo::new(Held::new(stream, fds))).await?;
    tokio::spawn(conn.with_upgrades());
    Ok(Link { sender, cut, read })
}

/// The socket under a hyper connection to an instance. A server may answer an upload early
/// (413, 401) and close without reading the rest: writing then fails (EPIPE, ECONNRESET)
/// while the answer waits in the socket, and hyper would report the write error and drop
/// the answer. Here such a failure cuts writing short instead: what hyper writes next is
/// discarded until reading ends, so hyper reads on and finds the answer, or the close (and
/// reports that). Once reading has ended, writes fail with the error they met. It notes that
/// bytes came: a request that failed with none read may go again (`rules::may_send_again`).
struct UpstreamSocket {
    stream: TcpStream,
    cut: Arc<AtomicBool>,
    read: Arc<AtomicBool>,
    read_ended: bool,
}

impl UpstreamSocket {
    /// What a write that met `result` tells hyper.
    fn written(&mut self, result: Poll<io::Result<usize>>, len: usize) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Err(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) && !self.read_ended =>
            {
                self.cut.store(true, Ordering::Relaxed);
                Poll::Ready(Ok(len))
            }
            other => other,
        }
    }

    /// Once cut: Ok to discard the next write, or the error once reading has ended too.
    fn cut_short(&self) -> Option<io::Result<()>> {
        if !self.cut.load(Ordering::Relaxed) {
            None
        } else if self.read_ended {
            Some(Err(io::ErrorKind::BrokenPipe.into()))
        } else {
            Some(Ok(()))
        }
    }
}

impl AsyncRead for UpstreamSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (before, room) = (buf.filled().len(), buf.remaining() > 0);
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(result) = &poll {
            let got = buf.filled().len() - before;
            if result.is_err() || (room && got == 0) {
                self.read_ended = true;
            }
            if got > 0 {
                // A plain store, not a read-modify-write: this runs on every body read.
                self.read.store(true, Ordering::Relaxed);
            }
        }
        poll
    }
}

impl AsyncWrite for UpstreamSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(discard) = self.cut_short() {
            return Poll::Ready(discard.map(|()| buf.len()));
        }
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.written(poll, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if let Some(discard) = self.cut_short() {
            return Poll::Ready(discard.map(|()| len));
        }
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.written(poll, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Where a connection goes back to once its response is read.
struct Home {
    link: Link,
    addr: SocketAddr,
    pool: Arc<Pool>,
}

/// A response body that returns its connection to the pool when it ends (if it has a `home`).
/// One dropped before its end takes the connection with it: hyper closes it.
///
/// A body that fails (cut short, invalid chunking) fails one poll late: hyper's server drops
/// what it holds for the client (the head, the start of the body) when a body fails, but
/// flushes it when the body is pending. The client then gets the head and what came of the
/// body before the connection closes, as from the express lane.
struct Returning {
    body: Incoming,
    home: Option<Home>,
    /// The body's failure, held back until hyper has flushed.
    failed: Option<hyper::Error>,
}

impl Returning {
    fn boxed(body: Incoming, home: Option<Home>) -> ProxyBody {
        let mut returning = Returning {
            body,
            home,
            failed: None,
        };
        // An empty body may never be polled.
        returning.settle();
        returning.boxed_unsync()
    }

    /// Once the body has ended, the connection goes back.
    fn settle(&mut self) {
        if self.body.is_end_stream() {
            self.go_home();
        }
    }

    fn go_home(&mut self) {
        if let Some(home) = self.home.take() {
            home.pool.put(home.addr, home.link);
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Some(Err(e.into())));
        }
        let poll = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = poll {
            self.home = None;
            self.failed = Some(e);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match &poll {
            Poll::Ready(None) => self.go_home(),
            // Trailers end an HTTP/1.1 body, and hyper's server asks for nothing after them.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => self.go_home(),
            Poll::Ready(Some(Ok(_))) => self.settle(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        poll.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        self.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn lane() -> Arc<idle::Pool<Upstream>> {
        Arc::new(idle::Pool::new(8))
    }

    fn get() -> Request<ProxyBody> {
        let mut req = Request::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
        *req.uri_mut() = "/".parse().unwrap();
        req.headers_mut()
            .insert(http::header::HOST, "a.localhost".parse().unwrap());
        req
    }

    /// A server that answers every request on a connection with `response`, counting
    /// connections.
    async fn serve(response: &'static [u8]) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    loop {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        if s.write_all(response).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_connection_goes_back_when_its_body_ends_and_is_reused() {
        let (addr, accepted) = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let pool = Arc::new(Pool::new(Budget::new(64), &Limits::default(), lane()));
        for _ in 0..3 {
            let response = pool.send(addr, get(), Connection::Any).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            assert_eq!(pool.idle.len(), 1);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A retry asks for a new connection.
        let response = pool.send(addr, get(), Connection::New).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(pool.idle.len(), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_of_the_lanes_is_taken_over() {
        let (addr, accepted) = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let (budget, limits) = (Budget::new(64), Limits::default());
        let lanes = lane();
        let up = Upstream::connect(addr, &budget, &limits).await.unwrap();
        lanes.put(addr, up);
        let pool = Arc::new(Pool::new(budget, &limits, Arc::clone(&lanes)));
        let response = pool.send(addr, get(), Connection::Any).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        assert_eq!(lanes.len(), 0);
        assert_eq!(pool.idle.len(), 1, "it is hyper's now");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_read_up_to_its_trailers_gives_its_connection_back() {
        let (addr, accepted) = serve(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n",
        )
        .await;
        let pool = Arc::new(Pool::new(Budget::new(64), &Limits::default(), lane()));
        for _ in 0..2 {
            let response = pool.send(addr, get(), Connection::Any).await.unwrap();
            let mut body = response.into_body();
            // As hyper's server reads it: up to the trailers, then the body is dropped.
            loop {
                let frame = body.frame().await.unwrap().unwrap();
                if frame.is_trailers() {
                    break;
                }
            }
            drop(body);
            assert_eq!(pool.idle.len(), 1);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_half_read_or_a_closing_server_keeps_nothing() {
        let (addr, _) = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok").await;
        let pool = Arc::new(Pool::new(Budget::new(64), &Limits::default(), lane()));
        let response = pool.send(addr, get(), Connection::Any).await.unwrap();
        drop(response);
        assert_eq!(pool.idle.len(), 0, "3 bytes of its body were never read");

        let (addr, _) =
            serve(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok").await;
        let response = pool.send(addr, get(), Connection::Any).await.unwrap();
        response.into_body().collect().await.unwrap();
        // hyper closes it after the response: never handed out, and swept once closed.
        assert!(pool.idle.take(addr).is_none());
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while pool.idle.len() > 0 && Instant::now() < deadline {
            tokio::task::yield_now().await;
            pool.sweep();
        }
        assert_eq!(pool.idle.len(), 0);
    }

    /// The server closes an idle connection, and the FIN is in the socket before hyper's task
    /// has seen it, so the connection still looks ready when the next request takes it: hyper
    /// writes the request, then meets the close. That fails as `reused`, so that `forward`
    /// sends an idempotent request once more (a POST is never sent twice); the next request
    /// finds the closed connection gone.
    #[tokio::test]
    async fn a_pooled_connection_closed_under_a_request_fails_as_reused() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (close, closing) = std::sync::mpsc::channel::<()>();
        let (closed, was_closed) = std::sync::mpsc::channel::<()>();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let mut stream = stream.unwrap();
                let mut buf = [0; 4096];
                let read = stream.read(&mut buf).unwrap();
                let head = String::from_utf8_lossy(&buf[..read]).to_string();
                log.lock()
                    .unwrap()
                    .push((n, head.lines().next().unwrap().to_string()));
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .unwrap();
                if n == 0 {
                    closing.recv().unwrap();
                    drop(stream);
                    closed.send(()).unwrap();
                }
            }
        });
        let pool = Arc::new(Pool::new(Budget::new(64), &Limits::default(), lane()));
        let response = pool.send(addr, get(), Connection::Any).await.unwrap();
        response.into_body().collect().await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while pool
            .idle
            .take(addr)
            .map(|w| pool.put(addr, w.link))
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "the connection never became ready"
            );
            tokio::task::yield_now().await;
        }
        // Blocking this (single-threaded) runtime: hyper's task cannot see the FIN yet.
        close.send(()).unwrap();
        was_closed.recv().unwrap();
        let err = pool.send(addr, get(), Connection::Any).await.unwrap_err();
        assert!(err.reused && !err.answered, "{}", err.source);

        let response = pool.send(addr, get(), Connection::Any).await.unwrap();
        response.into_body().collect().await.unwrap();
        let connections: Vec<usize> = seen.lock().unwrap().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            connections,
            [0, 1],
            "the failed request never reached the server"
        );
    }

    #[tokio::test]
    async fn a_refused_connect_is_not_a_reused_connection() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let pool = Arc::new(Pool::new(Budget::new(64), &Limits::default(), lane()));
        let err = pool.send(addr, get(), Connection::Any).await.unwrap_err();
        assert!(!err.reused);
    }
}
