//! Connections to instances. Every one, on each of the three paths (the express lane, hyper's
//! HTTP/1.1 pool, gRPC's h2c client), is opened by `open`, under the descriptor budget.
//!
//! Three pools, each for a reason: the lane's holds raw streams (`Upstream`: there is no
//! hyper connection to hold); hyper's HTTP/1.1 one (`forward::http1`) replaced hyper-util's
//! legacy client pool, which cost about ten times its instructions per request (a SipHash per
//! checkout, a task per request); gRPC keeps hyper-util's legacy client, which multiplexes
//! streams over pooled HTTP/2 connections, which `idle::Pool` (one request per connection at a
//! time) does not do. The first two share `idle::Pool`.
//!
//! The express lane's: each client connection keeps the one it used last, and gives it to
//! the shared pool of idle ones (`idle::Pool`) when it closes; hyper's pool takes one over from
//! there when it has none idle. An idle connection is reused for at most
//! `Limits::upstream_idle` (below Node's 5 s keep-alive) and never once the server has closed or
//! written to it.

pub(crate) mod idle;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::proxy::body::BoxError;
use crate::proxy::budget::{Budget, Fds, Held};
use crate::proxy::limits::Limits;
use crate::proxy::upstream::idle::{Fit, Idle};

/// Connect to `addr` with a descriptor from `budget`, failing after `within`
/// (`Limits::upstream_connect`), or at once with `OutOfFds` (inside the `io::Error`) when the
/// budget has none to spare.
pub(crate) async fn open(
    addr: SocketAddr,
    budget: &Budget,
    within: std::time::Duration,
) -> io::Result<(TcpStream, Fds)> {
    let fds = budget.take(1).map_err(io::Error::other)?;
    let connect = TcpStream::connect(addr);
    let stream = crate::proxy::deadline::within(within, "connect timed out", connect).await?;
    stream.set_nodelay(true)?;
    Ok((stream, fds))
}

/// One connection to an instance.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) stream: TcpStream,
    pub(crate) addr: SocketAddr,
    /// When its last response ended.
    pub(crate) idle_since: Instant,
    /// How long it may stay idle and still be reused (`Limits::upstream_idle`).
    pub(crate) max_idle: std::time::Duration,
    /// Its descriptor's share of the budget.
    fds: Fds,
}

impl Upstream {
    /// Connect (see `open`).
    pub(crate) async fn connect(
        addr: SocketAddr,
        budget: &Budget,
        limits: &Limits,
    ) -> io::Result<Upstream> {
        let (stream, fds) = open(addr, budget, limits.upstream_connect).await?;
        Ok(Upstream {
            stream,
            addr,
            idle_since: Instant::now(),
            max_idle: limits.upstream_idle,
            fds,
        })
    }

    /// Its stream and share of the budget: an idle one of the lane's, for hyper's client to
    /// carry requests on (`forward::http1`).
    pub(crate) fn into_parts(self) -> (TcpStream, Fds) {
        (self.stream, self.fds)
    }

    /// Acknowledge at once what the server sent so far, before waiting for the rest. A server
    /// with Nagle's algorithm on that writes its head and body separately (werkzeug, wsgiref,
    /// http.server) holds the body until that ACK, and on a reused connection Linux delays it:
    /// 40 ms on every response. Called only when a response did not arrive in one read.
    pub(crate) fn ack_now(&self) {
        crate::sys::socket::ack_now(&self.stream);
    }

    /// Fit to carry another request: not idle too long, and nothing (no EOF, no stray bytes)
    /// waiting to be read. The check costs no system call unless the socket became readable.
    pub(crate) fn reusable(&self) -> bool {
        if self.idle_since.elapsed() >= self.max_idle {
            return false;
        }
        // A peek: looking never takes a byte that would make the next look pass.
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let peek = self.stream.try_io(tokio::io::Interest::READABLE, || {
            socket2::SockRef::from(&self.stream).peek(&mut probe)
        });
        matches!(peek, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl Idle for Upstream {
    fn fit(&self) -> Fit {
        if self.reusable() {
            Fit::Ready
        } else {
            Fit::Done
        }
    }
}

/// How hyper-util's client (gRPC's h2c) connects: with `open`, to the socket address the
/// request's URI names (a route's authority is one).
#[derive(Clone)]
pub(crate) struct Connector {
    budget: Budget,
    /// How long a connect may take.
    within: std::time::Duration,
}

impl Connector {
    pub(crate) fn new(budget: Budget, within: std::time::Duration) -> Connector {
        Connector { budget, within }
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Held<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (budget, within) = (self.budget.clone(), self.within);
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or("the URI names no socket address")?;
            let (stream, fds) = open(addr, &budget, within).await?;
            Ok(TokioIo::new(Held::new(stream, fds)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::upstream::idle::Pool;

    fn budget() -> Budget {
        Budget::new(64)
    }
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_connection_the_server_closed_or_wrote_to_is_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(Limits::default().lane_idle_per_addr);
        for _ in 0..3 {
            pool.put(
                addr,
                Upstream::connect(addr, &budget(), &Limits::default())
                    .await
                    .unwrap(),
            );
        }
        let (closed, _) = listener.accept().await.unwrap();
        let (mut chatty, _) = listener.accept().await.unwrap();
        let (_quiet, _) = listener.accept().await.unwrap();
        drop(closed);
        chatty.write_all(b"x").await.unwrap();
        // Let the proxy side see both events (bounded).
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while pool.len() > 1 && Instant::now() < deadline {
            tokio::task::yield_now().await;
            pool.sweep();
        }
        assert_eq!(pool.len(), 1);
        assert!(pool.take(addr).is_some());
        assert!(pool.take(addr).is_none());
    }

    #[tokio::test]
    async fn a_connection_the_server_wrote_one_byte_to_is_never_handed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(Limits::default().lane_idle_per_addr);
        pool.put(
            addr,
            Upstream::connect(addr, &budget(), &Limits::default())
                .await
                .unwrap(),
        );
        let (mut chatty, _) = listener.accept().await.unwrap();
        chatty.write_all(b"x").await.unwrap();
        // Until the proxy side has seen the byte, take hands the connection out; put it back.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while let Some(up) = pool.take(addr) {
            assert!(Instant::now() < deadline, "the byte never showed");
            pool.put(addr, up);
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.len(), 0, "seen once, closed at once");
        assert!(pool.take(addr).is_none());
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_connection_holds_its_descriptor_until_closed_and_none_is_opened_past_the_budget() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let budget = Budget::new(2);
        let a = Upstream::connect(addr, &budget, &Limits::default())
            .await
            .unwrap();
        let b = Upstream::connect(addr, &budget, &Limits::default())
            .await
            .unwrap();
        let err = Upstream::connect(addr, &budget, &Limits::default())
            .await
            .unwrap_err();
        assert!(
            err.get_ref()
                .is_some_and(|e| e.is::<crate::proxy::budget::OutOfFds>()),
            "{err}"
        );
        drop(a);
        let _c = Upstream::connect(addr, &budget, &Limits::default())
            .await
            .unwrap();
        assert_eq!(budget.in_use(), 2);
        drop(b);
        assert_eq!(budget.in_use(), 1);
    }
}
