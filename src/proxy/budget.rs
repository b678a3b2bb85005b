//! The descriptor budget: every file descriptor the proxy opens for traffic (client and
//! upstream connections, tunnels, splice pipes) holds a share of one budget kept under the soft
//! `RLIMIT_NOFILE`, so that running short is a 503 for one request, never `EMFILE`. A share is
//! owned by what owns the descriptor (`Held` carries it with a stream into a pool or a tunnel).
//! The process's own descriptors (listeners, control socket, files) live in the reserve.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most client connections at once, whatever the limit allows.
const MAX_CLIENTS: usize = 10_000;
/// Streams one HTTP/2 connection may have open at once [nginx: 128].
const MAX_STREAMS: usize = 128;

/// The budget shared by every connection of one proxy. Cloning shares it.
#[derive(Clone)]
pub(crate) struct Budget(Arc<Counts>);

struct Counts {
    /// Descriptors held, and how many may be.
    fds: AtomicUsize,
    limit: usize,
    /// Client connections open (each also holds a descriptor), and how many may be.
    clients: AtomicUsize,
    max_clients: usize,
    /// Clients over the budget being told so, on descriptors from the reserve.
    refusing: AtomicUsize,
    max_refusing: usize,
}

/// There is no descriptor to spare: the request gets a 503.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("wharf is using all {limit} file descriptors it allows itself (the open-file limit)")]
pub(crate) struct OutOfFds {
    pub(crate) limit: usize,
}

impl Budget {
    /// Raise the soft open-file limit to the hard one, and budget all of it but a reserve for
    /// the process's own descriptors and for refusing clients over the budget.
    pub(crate) fn from_rlimit() -> Budget {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        // macOS refuses a soft limit above OPEN_MAX when the hard one is unlimited (its
        // default): then the most it takes is tried.
        const OPEN_MAX: u64 = 10_240;
        let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) => [hard, hard.min(OPEN_MAX)]
                .into_iter()
                .find(|&limit| {
                    limit > soft && setrlimit(Resource::RLIMIT_NOFILE, limit, hard).is_ok()
                })
                .unwrap_or(soft),
            Err(_) => 1024,
        };
        let soft = usize::try_from(soft).unwrap_or(usize::MAX);
        let reserve = reserve(soft);
        Budget::with_reserve(soft.saturating_sub(reserve), reserve)
    }

    /// A budget of `fds` descriptors, with a reserve of 16 outside it.
    #[cfg(test)]
    pub(crate) fn new(fds: usize) -> Budget {
        Budget::with_reserve(fds, 16)
    }

    /// Client connections may take half of the `fds` (each needs one to its instance too
    /// [HAProxy: maxconn needs 2 fds]), at most `MAX_CLIENTS`; a quarter of the `reserve` may
    /// be clients being refused.
    fn with_reserve(fds: usize, reserve: usize) -> Budget {
        let fds = fds.max(2);
        Budget(Arc::new(Counts {
            fds: AtomicUsize::new(0),
            limit: fds,
            clients: AtomicUsize::new(0),
            max_clients: (fds / 2).min(MAX_CLIENTS),
            refusing: AtomicUsize::new(0),
            max_refusing: reserve / 4,
        }))
    }

    /// A descriptor for a client connection just accepted, and its place among the client
    /// connections; None when either is full (the client gets a 503).
    pub(crate) fn client(&self) -> Option<Fds> {
        let counts = &*self.0;
        if !take(&counts.clients, 1, counts.max_clients) {
            return None;
        }
        if !take(&counts.fds, 1, counts.limit) {
            counts.clients.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Fds {
            budget: self.clone(),
            n: 1,
            counted: Counted::Client,
        })
    }

    /// A place among the clients being told they are over the budget (their descriptors
    /// are in the reserve); None when there are enough of those: close without a word.
    pub(crate) fn refusal(&self) -> Option<Fds> {
        let counts = &*self.0;
        take(&counts.refusing, 1, counts.max_refusing).then(|| Fds {
            budget: self.clone(),
            n: 0,
            counted: Counted::Refusal,
        })
    }

    /// `n` descriptors about to be opened (a connection to an instance, a pipe).
    pub(crate) fn take(&self, n: usize) -> Result<Fds, OutOfFds> {
        if !take(&self.0.fds, n, self.0.limit) {
            return Err(OutOfFds {
                limit: self.0.limit,
            });
        }
        Ok(Fds {
            budget: self.clone(),
            n,
            counted: Counted::Fds,
        })
    }

    /// Streams one HTTP/2 connection may have open: each may need a connection to an
    /// instance, and no one client may hold more than an eighth of the budget that way.
    pub(crate) fn streams_per_connection(&self) -> u32 {
        let streams = (self.0.limit / 8).clamp(1, MAX_STREAMS);
        u32::try_from(streams).expect("at most 128")
    }

    /// Descriptors held now.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.0.fds.load(Ordering::Relaxed)
    }
}

/// Descriptors kept outside the budget: the process's own (standard streams, listeners, the
/// control socket and its clients, the runtime's, files being written) and clients being told
/// 503. A quarter of the limit, between 16 and 256.
fn reserve(soft: usize) -> usize {
    (soft / 4).clamp(16, 256)
}

/// Add `n` to `count` unless that would pass `limit`.
fn take(count: &AtomicUsize, n: usize, limit: usize) -> bool {
    count
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
            (held + n <= limit).then_some(held + n)
        })
        .is_ok()
}

/// A share of the budget: given back when dropped, with the descriptors it stands for.
pub(crate) struct Fds {
    budget: Budget,
    n: usize,
    counted: Counted,
}

/// What else a share counts, besides its descriptors.
enum Counted {
    Fds,
    Client,
    Refusal,
}

impl Fds {
    /// Whether this share is of `budget` (not another proxy's, as tests run several).
    pub(crate) fn is_of(&self, budget: &Budget) -> bool {
        Arc::ptr_eq(&self.budget.0, &budget.0)
    }
}

impl Drop for Fds {
    fn drop(&mut self) {
        let counts = &*self.budget.0;
        counts.fds.fetch_sub(self.n, Ordering::Relaxed);
        match self.counted {
            Counted::Fds => {}
            Counted::Client => {
                counts.clients.fetch_sub(1, Ordering::Relaxed);
            }
            Counted::Refusal => {
                counts.refusing.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl std::fmt::Debug for Fds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fds({})", self.n)
    }
}

/// A stream with its share of the budget: wherever the stream goes (hyper's connection task,
/// an upgraded tunnel), the share goes, and it is given back when the stream is closed.
/// Why a wrapper: once hyper owns the stream, its I/O type is the only thing that travels with
/// it, and no kept crate ties a value's drop to an I/O object. (It could merge into `Replay`
/// and `UpstreamSocket`, which wrap the same streams, giving each the budget's concern.)
pub(crate) struct Held<S> {
    inner: S,
    _fds: Fds,
}

impl<S> Held<S> {
    pub(crate) fn new(inner: S, fds: Fds) -> Held<S> {
        Held { inner, _fds: fds }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Held<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Held<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl hyper_util::client::legacy::connect::Connection for Held<tokio::net::TcpStream> {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.inner.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_come_back_when_dropped_and_none_pass_the_limit() {
        let budget = Budget::new(8);
        let pipe = budget.take(2).unwrap();
        let clients: Vec<Fds> = std::iter::from_fn(|| budget.client()).collect();
        assert_eq!(clients.len(), 4, "half the budget goes to clients");
        let up = budget.take(2).unwrap();
        assert_eq!(budget.in_use(), 8);
        assert!(budget.take(1).is_err());
        drop(pipe);
        assert!(budget.client().is_none(), "still 4 clients");
        let one = budget.take(1).unwrap();
        drop(clients);
        assert_eq!(budget.in_use(), 3);
        assert!(budget.client().is_some());
        drop((up, one));
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_client_refused_for_want_of_a_descriptor_leaves_no_place_taken() {
        let budget = Budget::new(4);
        let all = budget.take(4).unwrap();
        assert!(budget.client().is_none());
        drop(all);
        let clients: Vec<Fds> = std::iter::from_fn(|| budget.client()).collect();
        assert_eq!(clients.len(), 2);
    }

    #[test]
    fn a_quarter_of_the_reserve_refuses_clients() {
        let budget = Budget::new(4);
        let refusing: Vec<Fds> = std::iter::from_fn(|| budget.refusal()).collect();
        assert_eq!(refusing.len(), 4);
        assert_eq!(budget.in_use(), 0, "not in the budget");
        drop(refusing);
        assert!(budget.refusal().is_some());
    }

    #[test]
    fn the_reserve_and_streams_scale_with_the_limit() {
        assert_eq!(reserve(64), 16);
        assert_eq!(reserve(256), 64);
        assert_eq!(reserve(1 << 20), 256);
        assert_eq!(Budget::new(192).streams_per_connection(), 24);
        assert_eq!(Budget::new(1 << 20).streams_per_connection(), 128);
        assert_eq!(Budget::new(2).streams_per_connection(), 1);
    }
}
