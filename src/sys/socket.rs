//! Loopback listening sockets as wharf binds them for instances: blocking (as systemd hands
//! sockets over), close-on-exec (only the handoff step passes one on), the kernel's full backlog;
//! and the TCP option the proxy sets on its connections one at a time.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};

/// A bound, listening socket on 127.0.0.1, blocking, close-on-exec.
#[derive(Debug)]
pub(crate) struct BoundSocket {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) socket: Socket,
}

impl BoundSocket {
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// A socket named `http` on a port the OS picks, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_test() -> BoundSocket {
        let socket = bind_loopback(0).unwrap();
        let port = local_port(&socket).unwrap();
        BoundSocket {
            name: "http".into(),
            port,
            socket,
        }
    }
}

/// Acknowledge at once what the peer of `stream` sent so far (`TCP_QUICKACK`), where Linux
/// would hold the ACK for an answer to carry: for when the rest must be waited for, and a peer
/// with Nagle's algorithm on holds it back until that ACK. Linux goes on acknowledging at once
/// until data has gone both ways again. Elsewhere nothing; a failure costs only a delay.
pub(crate) fn ack_now(stream: &impl std::os::fd::AsFd) {
    #[cfg(target_os = "linux")]
    let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

/// Bind and listen on 127.0.0.1:`port` with the full backlog. The socket is blocking (as systemd
/// hands sockets over) and close-on-exec (only the handoff step passes it on).
pub(crate) fn bind_loopback(port: u16) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())?;
    socket.listen(backlog())?;
    Ok(socket)
}

pub(crate) fn local_port(socket: &Socket) -> io::Result<u16> {
    socket
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

/// The kernel's cap on listen backlogs: asking for less would make bursts of connections wait
/// for SYN retries while an instance (re)starts. Rust's std asks for only 128.
pub(crate) fn backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(libc::SOMAXCONN)
}
