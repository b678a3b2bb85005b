//! Connections to instances for the express lane: each client connection keeps the one it
//! used last, and gives it to the shared pool of idle ones (`idle::Pool`) when it closes. An
//! idle connection is reused for at most `UPSTREAM_IDLE` (below Node's 5 s keep-alive) and
//! never once the server has closed or written to it.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::idle::{Fit, Idle};
use super::{UPSTREAM_CONNECT, UPSTREAM_IDLE};

/// One connection to an instance.
#[derive(Debug)]
pub struct Upstream {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// When its last response ended.
    pub idle_since: Instant,
}

impl Upstream {
    /// Connect, failing after `UPSTREAM_CONNECT`.
    pub async fn connect(addr: SocketAddr) -> io::Result<Upstream> {
        let connect = TcpStream::connect(addr);
        let stream =
            crate::deadline::within(UPSTREAM_CONNECT, "connect timed out", connect).await?;
        stream.set_nodelay(true)?;
        Ok(Upstream {
            stream,
            addr,
            idle_since: Instant::now(),
        })
    }

    /// Acknowledge at once what the server sent so far, before waiting for the rest. A server
    /// with Nagle's algorithm on that writes its head and body separately (werkzeug, wsgiref,
    /// http.server) holds the body until that ACK, and on a reused connection Linux delays it:
    /// 40 ms on every response. Called only when a response did not arrive in one read.
    pub fn ack_now(&self) {
        #[cfg(target_os = "linux")]
        let _ = socket2::SockRef::from(&self.stream).set_tcp_quickack(true);
    }

    /// Fit to carry another request: not idle too long, and nothing (no EOF, no stray bytes)
    /// waiting to be read. The check costs no system call unless the socket became readable.
    pub fn reusable(&self) -> bool {
        if self.idle_since.elapsed() >= UPSTREAM_IDLE {
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

/// Idle connections kept per address; more than this many at once are closed.
pub const MAX_IDLE_PER_ADDR: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::idle::Pool;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_connection_the_server_closed_or_wrote_to_is_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(MAX_IDLE_PER_ADDR);
        for _ in 0..3 {
            pool.put(addr, Upstream::connect(addr).await.unwrap());
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
        let pool = Pool::new(MAX_IDLE_PER_ADDR);
        pool.put(addr, Upstream::connect(addr).await.unwrap());
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
