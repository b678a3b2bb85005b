//! Accepting HTTP connections: the accept loop that survives errors, a 503 for clients over
//! the descriptor budget, the deadlines and header limits, and a graceful drain on shutdown.
//! Each connection starts in the express lane, `lane` (which keeps the first-byte and header
//! deadlines); what the lane does not serve goes to hyper (`http2`, or HTTP/1.1 here). HTTPS
//! connections (`tls`) start in the lane again once their handshake chose HTTP/1.1. What
//! happens to each request is `lane`'s and `forward`'s job, by one rulebook, `rules`.
//! A plain-HTTP connection idle in the lane goes to the park (`park`) without its task, and
//! comes back here, to a task of its own again, when its client sends something.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::budget::{Fds, Held};
use crate::proxy::deadline::WriteDeadline;
use crate::proxy::forward::Forwarder;
use crate::proxy::lane::{self, Outcome, Protocol, Replay, Socket, Wait};
use crate::proxy::limits::Limits;
use crate::proxy::park::{Idle, Park, Parked};
use crate::proxy::rules::Peer;
use crate::proxy::tls::Alpn;

const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
content-length: 38\r\nconnection: close\r\nretry-after: 1\r\n\r\nwharf: too many connections; try again\n";

/// Serve `listeners` until `shutdown`, then stop accepting and drain for at most
/// `Limits::drain`.
/// Connections are admitted as the forwarder's descriptor budget allows.
pub(crate) async fn serve(
    listeners: Vec<TcpListener>,
    forwarder: Arc<Forwarder>,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    // Shared with each connection behind an `Arc`, as cloning the token takes its lock.
    let shared = Arc::new(Shared {
        shutdown,
        park: open_park(),
    });
    let parking = shared.park.is_some().then(|| {
        let run = run_park(shared.clone(), forwarder.clone(), connections.clone());
        tokio::spawn(run)
    });
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            acks_ride_on_answers(&listener);
            nodelay_for_all(&listener);
            accept_once_spoken(&listener);
            let ctx = Accept {
                forwarder: forwarder.clone(),
                connections: connections.clone(),
            };
            tokio::spawn(accept_loop(listener, ctx, shared.clone()))
        })
        .collect();
    for l in loops {
        let _ = l.await;
    }
    if let Some(parking) = parking {
        let _ = parking.await;
    }
    connections.close();
    let drain = forwarder.limits().drain;
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        eprintln!("wharf proxy: requests still open after {drain:?}; closing them");
    }
}

/// Delayed ACKs from the first request on, for every connection `listener` accepts
/// (`TCP_QUICKACK` off, as HAProxy sets it; on Linux an accepted socket inherits it from its
/// listener). Linux acknowledges a new connection's first bytes at once, in a segment of its
/// own, though the answer that follows carries that ACK, as it does on a connection past its
/// first exchange: a `Connection: close` request costs the client a segment less to take in.
/// Whoever waits for more of a request acknowledges what came first (`lane`'s `read_more`,
/// and its handoff to hyper), so a client with Nagle's algorithm on, which holds its next
/// write until that ACK, is not kept waiting 40 ms.
fn acks_ride_on_answers(listener: &TcpListener) {
    // Only a segment per connection at stake: no word if it fails.
    #[cfg(target_os = "linux")]
    let _ = socket2::SockRef::from(listener).set_tcp_quickack(false);
    #[cfg(not(target_os = "linux"))]
    let _ = listener;
}

/// Nagle's algorithm off for every connection `listener` accepts. On Linux an accepted socket
/// inherits `TCP_NODELAY` from its listener, so it is set once here instead of with a system
/// call per connection; elsewhere `accept_now` sets it on each.
fn nodelay_for_all(listener: &TcpListener) {
    #[cfg(target_os = "linux")]
    if let Err(e) = socket2::SockRef::from(listener).set_tcp_nodelay(true) {
        eprintln!("wharf proxy: cannot turn Nagle's algorithm off on the listener: {e}");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = listener;
}

/// Connections come out of `listener` once their client has sent something (a request line
/// or a ClientHello), not when the TCP handshake is done (Linux's `TCP_DEFER_ACCEPT`): the
/// proxy wakes once for a new connection and reads what it came with, where it would wake for
/// the connection and again for its first bytes, and each wake of a sleeping proxy is paid by
/// the client that woke it. Clients of an HTTP proxy speak first; one that does not is
/// accepted after about a second anyway (when the kernel sends its SYN-ACK again), and then
/// has `first_byte`.
fn accept_once_spoken(listener: &TcpListener) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        let seconds: libc::c_int = 1;
        // SAFETY: a valid descriptor, and a value of the size passed, alive for the call.
        let set = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&raw const seconds).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set != 0 {
            let e = io::Error::last_os_error();
            eprintln!("wharf proxy: new connections wake the proxy twice (TCP_DEFER_ACCEPT: {e})");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = listener;
}

/// The park for this proxy's idle connections, where there can be one.
fn open_park() -> Option<Park> {
    match Park::new() {
        Ok(park) => Some(park),
        Err(e) => {
            #[cfg(target_os = "linux")]
            eprintln!("wharf proxy: idle connections keep their tasks (no park for them: {e})");
            #[cfg(not(target_os = "linux"))]
            let _ = e;
            None
        }
    }
}

/// Serve the park until shutdown: a connection whose client sent something goes back to a
/// task of its own, where its wait stood.
async fn run_park(shared: Arc<Shared>, forwarder: Arc<Forwarder>, connections: TaskTracker) {
    let Some(park) = &shared.park else { return };
    let wake = |conn: Parked| {
        // Not registered with tokio: its request is there, and may be served without waiting.
        let stream = Socket::new(conn.stream);
        let (forwarder, shared) = (forwarder.clone(), shared.clone());
        let (fds, peer, resumed) = (conn.fds, conn.peer, Some(conn.idle));
        connections.spawn(async move {
            Box::pin(connection(stream, fds, peer, forwarder, shared, resumed)).await;
        });
    };
    park.run(&shared.shutdown, wake).await;
}

struct Accept {
    forwarder: Arc<Forwarder>,
    connections: TaskTracker,
}

/// What every connection of one `serve` shares.
struct Shared {
    shutdown: CancellationToken,
    /// Where idle plain-HTTP connections wait; None where there is none (`Park::new`).
    park: Option<Park>,
}

async fn accept_loop(listener: TcpListener, ctx: Accept, shared: Arc<Shared>) {
    // Accepted by hand, so that a connection is not registered with tokio before it has to
    // wait (`lane::Socket`); the listener itself is, to wait for connections.
    // SAFETY: the std listener owns its descriptor and the `AsyncFd` owns the listener, so
    // the descriptor stays open, the same one, for as long as it is registered.
    let listener = match listener
        .into_std()
        .and_then(|l| Ok(unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }?))
    {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("wharf proxy: cannot accept connections on a listener: {e}");
            return;
        }
    };
    // Waited for once, not once per accept (each wait joins and leaves the token's list of
    // waiters under its lock).
    let mut cancelled = std::pin::pin!(shared.shutdown.cancelled());
    loop {
        let accepted = tokio::select! {
            _ = cancelled.as_mut() => return,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(fds) = ctx.forwarder.budget().client() else {
                    if let Some(refusal) = ctx.forwarder.budget().refusal()
                        && let Ok(stream) = TcpStream::from_std(stream)
                    {
                        tokio::spawn(refuse(stream, refusal, ctx.forwarder.limits().refusal));
                    }
                    continue;
                };
                let stream = Socket::new(stream);
                let forwarder = ctx.forwarder.clone();
                let shared = shared.clone();
                ctx.connections.spawn(async move {
                    // Boxed, the connection's state (kilobytes) is written once; spawning moves
                    // the task's future several times, and each move copies all of it.
                    Box::pin(connection(stream, fds, peer, forwarder, shared, None)).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: the listener is fine, the process is short of something.
                eprintln!("wharf proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The next connection on `listener`: non-blocking, close-on-exec, Nagle off.
async fn accept(
    listener: &AsyncFd<std::net::TcpListener>,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        // The reader's waker slot, as `Client::readable` uses (not a list of waiters).
        let mut ready = std::future::poll_fn(|cx| listener.poll_read_ready(cx)).await?;
        // None waiting: readiness is cleared, and the next wait is for the next connection.
        if let Ok(accepted) = ready.try_io(|l| accept_now(l.get_ref())) {
            return accepted;
        }
    }
}

/// `accept` without waiting. On Linux one system call gives the socket its flags, and the
/// listener's `TCP_NODELAY` (`nodelay_for_all`).
#[cfg(target_os = "linux")]
fn accept_now(listener: &std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let flags = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    let (socket, addr) = socket2::SockRef::from(listener).accept4(flags)?;
    Ok((socket.into(), peer_of(&addr)?))
}

#[cfg(not(target_os = "linux"))]
fn accept_now(listener: &std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let (stream, peer) = listener.accept()?;
    stream.set_nonblocking(true)?;
    let _ = stream.set_nodelay(true);
    Ok((stream, peer))
}

#[cfg(target_os = "linux")]
fn peer_of(addr: &socket2::SockAddr) -> io::Result<SocketAddr> {
    addr.as_socket()
        .ok_or_else(|| io::Error::other("accepted a connection without an IP address"))
}

/// Tell a client over the budget 503, and close.
async fn refuse(mut stream: TcpStream, _refusal: Fds, within: Duration) {
    let tell = async {
        if stream.write_all(OVERLOADED).await.is_ok() {
            lane::linger(&mut stream, within).await;
        }
    };
    let _ = tokio::time::timeout(within, tell).await;
}

/// Serve one client connection: a new one (`resumed` None) or one back from the park.
async fn connection(
    stream: Socket,
    fds: Fds,
    peer: SocketAddr,
    forwarder: Arc<Forwarder>,
    shared: Arc<Shared>,
    resumed: Option<Idle>,
) {
    let shutdown = &shared.shutdown;
    let wait = Wait {
        resumed,
        may_park: shared.park.as_ref().is_some_and(Park::is_open),
    };
    // Where a connection chooses its path: the express lane first, hyper for what it hands
    // over. The lane also keeps the first-byte and header deadlines until it hands over.
    let (protocol, io) = match lane::serve(stream, peer, &forwarder, shutdown, wait).await {
        Outcome::Closed => return,
        // Idle: the task ends here, and the park keeps the socket (out of tokio's hands).
        Outcome::Park(stream, idle) => {
            if let (Some(park), Ok(stream)) = (&shared.park, stream.into_std()) {
                park.park(Parked {
                    stream,
                    fds,
                    peer,
                    idle,
                });
            }
            return;
        }
        // The client's share of the budget goes with its stream, into a tunnel if it becomes one.
        Outcome::Handoff(protocol, stream, read) => {
            let Ok(stream) = stream.into_tokio() else {
                return;
            };
            (protocol, Held::new(Replay::new(read, stream), fds))
        }
    };
    let peer = Peer {
        addr: peer,
        tls: false,
    };
    match protocol {
        // Boxed as TLS is: hyper's connection state is kilobytes, and the lane's idle
        // connections should not carry room for it.
        Protocol::Http1 => Box::pin(serve_hyper(io, Alpn::Http1, peer, forwarder, shutdown)).await,
        Protocol::Http2 => Box::pin(serve_hyper(io, Alpn::Http2, peer, forwarder, shutdown)).await,
        // Boxed: a TLS session's state is large, and plain connections should not carry it.
        Protocol::Tls => Box::pin(serve_tls(io, peer, forwarder, shutdown)).await,
    }
}

/// Shake hands, then serve what ALPN chose: HTTP/2 with hyper, HTTP/1.1 in the express lane
/// as plain connections are, and with hyper what the lane hands over.
async fn serve_tls(
    io: Held<Replay<TcpStream>>,
    peer: Peer,
    forwarder: Arc<Forwarder>,
    shutdown: &CancellationToken,
) {
    // `[proxy] https = false`: nothing to say to a TLS client in plain text.
    let Some(tls) = forwarder.tls() else { return };
    let within = forwarder.limits().header_read;
    let Some((io, alpn)) = tls.accept(io, &forwarder.routes, within).await else {
        return;
    };
    let peer = Peer { tls: true, ..peer };
    if alpn == Alpn::Http2 {
        return serve_hyper(io, alpn, peer, forwarder, shutdown).await;
    }
    // Not parked: the TLS session's state would have to be kept anyway.
    let wait = Wait {
        resumed: None,
        may_park: false,
    };
    match lane::serve(io, peer.addr, &forwarder, shutdown, wait).await {
        // `Park` only comes when asked for.
        Outcome::Closed | Outcome::Park(..) => {}
        // ALPN said HTTP/1.1 (or nothing): hyper speaks it whatever the lane saw (an HTTP/2
        // preface is then a bad request, as it always was).
        Outcome::Handoff(_, io, read) => {
            let io = Replay::new(read, io);
            serve_hyper(io, Alpn::Http1, peer, forwarder, shutdown).await;
        }
    }
}

/// Serve a connection the lane handed over (or its TLS stream) with hyper, in `protocol`.
async fn serve_hyper<I>(
    io: I,
    protocol: Alpn,
    peer: Peer,
    forwarder: Arc<Forwarder>,
    shutdown: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = forwarder.limits();
    let (io, exempt) = WriteDeadline::new(io, limits.write_stall);
    let (header_read, max_head) = (limits.header_read, limits.max_head);
    if protocol == Alpn::Http2 {
        return crate::proxy::http2::serve(io, peer, forwarder, shutdown).await;
    }
    let service = service_fn(move |req| {
        let forwarder = forwarder.clone();
        let exempt = exempt.clone();
        async move { Ok::<_, std::convert::Infallible>(forwarder.handle(req, peer, &exempt).await) }
    });
    let mut conn = std::pin::pin!(
        http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read)
            .max_headers(Limits::MAX_HEADERS)
            .max_header_size(max_head)
            .max_buf_size(max_head + 8 * 1024)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    );
    // Errors end here: a client that went away is not the proxy's problem.
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.cancelled() => {}
    }
    // Finish the request in flight, then close instead of waiting for the next one.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `nodelay_for_all` relies on: the kernel gives an accepted socket its listener's
    /// `TCP_NODELAY`.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_accepted_connection_has_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        nodelay_for_all(&listener);
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
        drop(client);
    }

    /// A connection's future holds its state across awaits, for as long as it is open: idle
    /// ones too, where they do not park (TLS, hyper's, macOS). A buffer kept there (an 8 KiB
    /// array once made it 19 KB), hyper's state or an exchange's (kilobytes: they are boxed)
    /// would be held by every such connection. (2,584 B in a debug build once the park, the
    /// wait for an env-mode restart and TLS's tickets came together.)
    #[tokio::test]
    async fn a_connections_state_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let forwarder = Arc::new(Forwarder::new(
            Arc::default(),
            Box::new(Vec::new),
            Limits::default(),
            crate::proxy::budget::Budget::new(64),
        ));
        let fds = forwarder.budget().client().unwrap();
        let shared = Arc::new(Shared {
            shutdown: CancellationToken::new(),
            park: None,
        });
        let client = Socket::new(client.into_std().unwrap());
        let state = connection(client, fds, addr, forwarder, shared, None);
        let size = std::mem::size_of_val(&state);
        assert!(
            size <= 2688,
            "{size} bytes: box what idle connections need not hold"
        );
    }

    /// What `acks_ride_on_answers` relies on: the kernel gives an accepted socket its
    /// listener's `TCP_QUICKACK`.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_accepted_connection_delays_its_acks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        acks_ride_on_answers(&listener);
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(!socket2::SockRef::from(&accepted).tcp_quickack().unwrap());
        drop(client);
    }
}
