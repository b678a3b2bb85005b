//! A plain client connection's socket, which joins tokio's reactor only once it must wait.
//! Registering a socket with the reactor costs an `epoll_ctl(ADD)` and tokio's state for it
//! (an allocation), and dropping it an `epoll_ctl(DEL)` before the close. Most new
//! connections never wait on their client: the request is there when the connection is
//! accepted (or woken from the park), the answer fits the socket's buffer, and the
//! connection closes, or goes back to the park. Such a socket is read and written with plain
//! non-blocking system calls, as nginx and HAProxy do, and is registered (`stream`) the first
//! time a read or write would block, or when something must wait for it (a hang-up, a splice).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A plain-TCP client connection, registered with tokio or not yet.
pub(crate) struct Socket(State);

enum State {
    /// Not registered: non-blocking system calls only, nothing to wait with. `drained`: a read
    /// took less than it had room for, so nothing more had come then (as tokio's readiness
    /// says of a registered socket after such a read).
    Raw {
        stream: std::net::TcpStream,
        drained: bool,
    },
    /// Registered with tokio's reactor.
    Watched(TcpStream),
    /// The registration failed, and the socket with it (closed).
    Lost,
}

fn lost() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the client connection could not be registered for waiting",
    )
}

impl Socket {
    /// A connected socket in non-blocking mode, not registered (as `accept` and the park
    /// hand them over).
    pub(crate) fn new(stream: std::net::TcpStream) -> Socket {
        Socket(State::Raw {
            stream,
            drained: false,
        })
    }

    /// The socket registered with tokio, so that it can be waited for; registered now if it
    /// was not (a failure closes it, and every use after that fails).
    pub(crate) fn stream(&mut self) -> io::Result<&mut TcpStream> {
        if let State::Raw { .. } = self.0 {
            let State::Raw { stream, .. } = std::mem::replace(&mut self.0, State::Lost) else {
                return Err(lost());
            };
            self.0 = State::Watched(TcpStream::from_std(stream)?);
        }
        match &mut self.0 {
            State::Watched(stream) => Ok(stream),
            _ => Err(lost()),
        }
    }

    /// Registered with tokio already (or lost): waits need no registration.
    pub(crate) fn is_registered(&self) -> bool {
        !matches!(self.0, State::Raw { .. })
    }

    /// The registered stream, if it is.
    pub(crate) fn registered(&self) -> Option<&TcpStream> {
        match &self.0 {
            State::Watched(stream) => Some(stream),
            _ => None,
        }
    }

    /// Whether the client may have sent something not read yet, as far as is known without a
    /// system call: an unregistered socket may, unless the last read drained it.
    pub(crate) fn readable_now(&self) -> bool {
        match &self.0 {
            State::Watched(stream) => stream
                .poll_read_ready(&mut Context::from_waker(std::task::Waker::noop()))
                .is_ready(),
            State::Raw { drained, .. } => !drained,
            State::Lost => true,
        }
    }

    /// Read what the client sent into `buf` (0 at its end), registering the socket to wait if
    /// nothing is there. (A poll function, not an `async fn`: an idle connection's state holds
    /// this wait, and an `async fn`'s is larger.)
    pub(crate) fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        if let State::Raw { stream, drained } = &mut self.0 {
            let room = buf.spare_capacity_mut();
            let wanted = room.len();
            match socket2::SockRef::from(&*stream).recv(room) {
                Ok(n) => {
                    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity.
                    unsafe { buf.set_len(buf.len() + n) };
                    *drained = n < wanted;
                    return Poll::Ready(Ok(n));
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        match self.stream() {
            Ok(stream) => tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Acknowledge at once what the client sent so far (and go on acknowledging at once until
    /// a request and its answer have been exchanged): for when the rest of a request must be
    /// waited for, which a client with Nagle's algorithm on holds back until that ACK
    /// (`accept::acks_ride_on_answers` delays it otherwise).
    pub(crate) fn ack_now(&self) {
        if let Some(socket) = self.socket() {
            crate::sys::socket::ack_now(&*socket);
        }
    }

    /// Write what the socket takes of `bytes` now, without waiting: how many it took. `last`:
    /// nothing follows but the FIN (`finish`), and on Linux the socket holds the bytes for it
    /// (`MSG_MORE`), so that both leave in one segment.
    pub(crate) fn try_write(&self, bytes: &[u8], last: bool) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        let flags = if last { libc::MSG_MORE } else { 0 };
        #[cfg(not(target_os = "linux"))]
        let flags = {
            let _ = last;
            0
        };
        let written = match &self.0 {
            State::Raw { stream, .. } => {
                socket2::SockRef::from(stream).send_with_flags(bytes, flags)
            }
            State::Watched(stream) if flags == 0 => stream.try_write(bytes),
            State::Watched(stream) => stream.try_io(Interest::WRITABLE, || {
                socket2::SockRef::from(stream).send_with_flags(bytes, flags)
            }),
            State::Lost => return Err(lost()),
        };
        match written {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    /// Send the FIN now, after what was written: the connection is done with (and with
    /// `try_write`'s `last`, the FIN goes with the last bytes). A failure is left to the
    /// close that follows.
    pub(crate) fn finish(&self) {
        if let Some(socket) = self.socket() {
            let _ = socket.shutdown(std::net::Shutdown::Write);
        }
    }

    /// The socket itself, registered or not, for its options and system calls that need no
    /// wait; `None` once lost.
    fn socket(&self) -> Option<socket2::SockRef<'_>> {
        match &self.0 {
            State::Raw { stream, .. } => Some(socket2::SockRef::from(stream)),
            State::Watched(stream) => Some(socket2::SockRef::from(stream)),
            State::Lost => None,
        }
    }

    /// The socket as tokio's stream, registered (for hyper, or TLS).
    pub(crate) fn into_tokio(mut self) -> io::Result<TcpStream> {
        self.stream()?;
        match self.0 {
            State::Watched(stream) => Ok(stream),
            _ => Err(lost()),
        }
    }

    /// The socket out of tokio's hands (for the park): an unregistered one as it is.
    pub(crate) fn into_std(self) -> io::Result<std::net::TcpStream> {
        match self.0 {
            State::Raw { stream, .. } => Ok(stream),
            State::Watched(stream) => stream.into_std(),
            State::Lost => Err(lost()),
        }
    }
}

/// Reads and writes through tokio, registering the socket first: for the rare paths that
/// use it as any stream (an early answer's linger, a client's refusal).
impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP streams have nothing to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::io::{Read, Write};

    async fn read_into(socket: &mut Socket, buf: &mut BytesMut) -> io::Result<usize> {
        std::future::poll_fn(|cx| socket.poll_read_into(cx, buf)).await
    }

    fn pair() -> (std::net::TcpStream, Socket) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        (client, Socket::new(accepted))
    }

    /// Bytes already there are read, and an answer written, without the reactor; a read that
    /// finds nothing registers the socket and waits.
    #[tokio::test]
    async fn it_registers_only_to_wait() {
        let (mut client, mut socket) = pair();
        client.write_all(b"ping").unwrap();
        let mut buf = BytesMut::with_capacity(64);
        // The bytes may take a moment to show on loopback: a raw read then waits registered,
        // which this test allows (it checks what follows).
        assert_eq!(read_into(&mut socket, &mut buf).await.unwrap(), 4);
        assert_eq!(&buf[..], b"ping");
        assert_eq!(socket.try_write(b"pong", false).unwrap(), 4);
        let mut got = [0u8; 4];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");

        buf.clear();
        let mut read = Box::pin(read_into(&mut socket, &mut buf));
        let noop = &mut Context::from_waker(std::task::Waker::noop());
        assert!(read.as_mut().poll(noop).is_pending(), "nothing sent yet");
        client.write_all(b"again").unwrap();
        assert_eq!(read.await.unwrap(), 5);
        assert!(socket.is_registered(), "a read that waited registered it");
        drop(client);
        buf.clear();
        assert_eq!(read_into(&mut socket, &mut buf).await.unwrap(), 0);
    }

    /// A last write is held for the FIN (`MSG_MORE`), and `finish` sends both: nothing of it
    /// stays behind.
    #[test]
    fn the_last_write_goes_out_with_the_fin() {
        let (mut client, socket) = pair();
        assert_eq!(socket.try_write(b"bye", true).unwrap(), 3);
        socket.finish();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye");
    }
}
