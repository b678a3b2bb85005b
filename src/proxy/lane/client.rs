//! The client side of a lane connection: a plain TCP socket (`Socket`, registered with
//! tokio only once something must wait for it), or the TLS stream `proxy::tls` made of one.
//! The lane is generic over it (monomorphised: the plain path pays nothing for TLS), and asks
//! it a few things beyond reading and writing: whether it is TLS (for `X-Forwarded-Proto` and
//! the redirect), the socket a long body may be spliced into and out of (plain only: over TLS
//! the bytes must pass through rustls), whether the client has gone away, and whether waiting
//! for that would first register the socket (`is_watched`).

use std::future::Future;
use std::io::{self, Write as _};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::proxy::budget::Held;
use crate::proxy::deadline::{self, CLIENT_STALLED};
use crate::proxy::lane::Replay;
use crate::proxy::lane::socket::Socket;
use crate::proxy::tls::Wire;

/// A client connection the lane serves.
pub(crate) trait Client: AsyncRead + AsyncWrite + Unpin + Send {
    /// Requests arrive over TLS (`https`).
    const TLS: bool;

    /// The socket bodies may be spliced into and out of, when the bytes pass it unchanged.
    fn splice_target(&self) -> Option<&TcpStream>;

    /// Whether a wait for the client (`gone`, `readable`) would not first have to register
    /// its socket with tokio (`Socket`): always, over TLS.
    fn is_watched(&self) -> bool {
        true
    }

    /// Register the socket with tokio now, if it is not (before a splice, which waits on it).
    fn watch(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Resolves once the client has closed its connection (or it failed). Bytes it sent
    /// ahead — a pipelined request, or over TLS any record (a close_notify too) — are not a
    /// close: then this never resolves, and the next read finds out what they are.
    fn gone(&mut self) -> impl Future<Output = ()> + Send + '_;

    /// Whether the client has sent something not read yet (or closed), as far as is known
    /// without a system call; over TLS, always (rustls buffers what it read, and the lane
    /// keeps its buffers there: a TLS session's own are larger).
    fn readable_now(&self) -> bool;

    /// Resolves once `readable_now` would say so.
    fn readable(&mut self) -> impl Future<Output = io::Result<()>> + Send + '_;

    /// Read what the client sent next into `buf`; 0 at its end.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>>;

    /// Acknowledge at once what the client sent so far: before waiting for the rest of a
    /// request, which a client with Nagle's algorithm on holds back until that ACK.
    fn ack_now(&self);

    /// Write all of `bytes` (and, over TLS, the records they make); what the socket does not
    /// take at once must go within `stall`. `last`: nothing more will be written, and the
    /// end goes in the same write: over TLS the close_notify (the shutdown then has nothing
    /// to send), on plain TCP the FIN.
    fn send(
        &mut self,
        bytes: &[u8],
        stall: Duration,
        last: bool,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

impl Client for Socket {
    const TLS: bool = false;

    fn splice_target(&self) -> Option<&TcpStream> {
        self.registered()
    }

    fn is_watched(&self) -> bool {
        self.is_registered()
    }

    fn watch(&mut self) -> io::Result<()> {
        self.stream().map(|_| ())
    }

    async fn gone(&mut self) {
        // Not registered, it cannot be waited for: registered now (a failure is a close).
        if let Ok(stream) = self.stream() {
            socket_gone(stream).await;
        }
    }

    fn readable_now(&self) -> bool {
        Socket::readable_now(self)
    }

    fn readable(&mut self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        // The reader's waker slot, as a read that waits uses: `TcpStream::readable` queues a
        // waiter in a list instead, which cost 400 instructions per keep-alive request more.
        let stream = self.stream();
        async move {
            let stream = stream?;
            std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await
        }
    }

    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        Socket::poll_read_into(self, cx, buf)
    }

    fn ack_now(&self) {
        Socket::ack_now(self);
    }

    async fn send(&mut self, bytes: &[u8], stall: Duration, last: bool) -> io::Result<()> {
        // Usually the socket takes it all at once: no timer, and no registration.
        let sent = self.try_write(bytes, last)?;
        if sent < bytes.len() {
            let stream = self.stream()?;
            deadline::within(stall, CLIENT_STALLED, stream.write_all(&bytes[sent..])).await?;
        }
        // The FIN in the same segment as the answer's end: the client takes in one segment
        // less (and acknowledges both at once).
        if last {
            self.finish();
        }
        Ok(())
    }
}

/// HTTPS after the handshake: what `proxy::accept` hands `proxy::tls`, a TCP stream behind
/// the bytes the lane read before it saw a ClientHello, holding its share of the budget.
type TlsClient = TlsStream<Wire<Held<Replay<TcpStream>>>>;

impl Client for TlsClient {
    const TLS: bool = true;

    fn splice_target(&self) -> Option<&TcpStream> {
        None
    }

    fn gone(&mut self) -> impl Future<Output = ()> + Send + '_ {
        // rustls may hold records or plaintext it has read already; those were bytes ahead
        // on the socket, as a plain client's pipelined request in the lane's buffer is, and
        // are not a close either. What the socket says next decides, as for plain TCP.
        let replay = self.get_ref().0.get_ref().get_ref();
        let ahead = replay.has_buffered();
        let socket = replay.get_ref();
        async move {
            if ahead {
                std::future::pending::<()>().await;
            }
            socket_gone(socket).await;
        }
    }

    fn readable_now(&self) -> bool {
        true
    }

    fn readable(&mut self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        std::future::ready(Ok(()))
    }

    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut *self), cx, buf);
        // What rustls answers on its own while reading (a `no_renegotiation` alert, a TLS 1.3
        // key update) waits in its buffer for a write; none may come, so it goes now. A
        // failure shows on the next read.
        if self.get_ref().1.wants_write() {
            let _ = Pin::new(&mut *self).poll_flush(cx);
        }
        read
    }

    fn ack_now(&self) {
        crate::sys::socket::ack_now(self.get_ref().0.get_ref().get_ref().get_ref());
    }

    async fn send(&mut self, mut bytes: &[u8], stall: Duration, last: bool) -> io::Result<()> {
        if last {
            // The records and the close_notify after them, queued in the session (no I/O)
            // and written together by the flush below; what does not fit its buffer (a long
            // body) is written as usual, and the shutdown sends the close_notify.
            let session = self.get_mut().1;
            let queued = session.writer().write(bytes)?;
            if queued == bytes.len() {
                session.send_close_notify();
            }
            bytes = &bytes[queued..];
        }
        // rustls encrypts into its own buffer and writes what the socket takes; the flush
        // sends the rest. Tried once without a timer: usually the socket takes it all.
        let mut write = pin!(async {
            self.write_all(bytes).await?;
            self.flush().await
        });
        if let Poll::Ready(done) = write.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            return done;
        }
        deadline::within(stall, CLIENT_STALLED, write).await
    }
}

/// Resolves once the peer of `socket` has closed it (or it failed); never while it has
/// bytes to read.
pub(super) async fn socket_gone(socket: &TcpStream) {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    match std::future::poll_fn(|cx| socket.poll_peek(cx, &mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}
