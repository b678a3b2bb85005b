//! The park: where a plain-HTTP client connection waits for its next request once it has been
//! idle for `Limits::park_after`, without a task. A waiting task costs kilobytes (its future
//! holds the lane's state, tokio's task and the socket's registration with tokio's driver);
//! a parked connection is a slab entry of about a hundred bytes, its socket registered with
//! one epoll instance of the park's own (the kernel's memory, not the proxy's), as nginx keeps
//! an idle connection as a small struct in its event loop. One task serves the park: the
//! client sent something → the connection goes back to tokio and a task of its own
//! (`Park::run`'s `wake`, which starts the lane where its wait stood: `Idle`); the client
//! closed, or its deadline passed → it closes. Busy keep-alive connections never get here
//! (their next request comes sooner), so they pay nothing per request for it.
//!
//! What is not parked: connections over TLS (their session's state would have to be kept
//! anyway), connections hyper serves (handed over by the lane), and anything on systems
//! without epoll (macOS: `Park::new` says so, and connections wait in their tasks as before).
//! A parked connection keeps its share of the descriptor budget (`Fds`): it counts among the
//! clients as any open connection does.

use std::net::SocketAddr;

use tokio::time::Instant;

use crate::proxy::budget::Fds;

/// Where an idle connection's wait stood when it parked: what the lane needs to take it up
/// again where it left it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Idle {
    /// Nothing has been read from the client yet: the first-byte wait.
    pub(crate) fresh: bool,
    /// When the wait ends and the connection closes: its first-byte or keep-alive deadline,
    /// unchanged by parking.
    pub(crate) deadline: Instant,
}

/// A parked connection, with what it takes to serve it again.
pub(crate) struct Parked {
    pub(crate) stream: std::net::TcpStream,
    /// Its share of the budget: a parked connection is still a client.
    pub(crate) fds: Fds,
    pub(crate) peer: SocketAddr,
    pub(crate) idle: Idle,
}

#[cfg(target_os = "linux")]
pub(crate) use linux::Park;

#[cfg(not(target_os = "linux"))]
pub(crate) use elsewhere::Park;

#[cfg(target_os = "linux")]
mod linux {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::io;
    use std::os::fd::{AsRawFd, RawFd};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Mutex, MutexGuard, PoisonError};

    use nix::errno::Errno;
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    use slab::Slab;
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;
    use tokio::sync::Notify;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::Parked;

    /// Events taken from the epoll instance per system call.
    const BATCH: usize = 64;

    /// The park of one proxy (one per `accept::serve`, shared by its runtime's threads).
    pub(crate) struct Park {
        epoll: AsyncFd<EpollFd>,
        lot: Mutex<Lot>,
        /// The earliest deadline moved earlier: `run` sets its timer again.
        earlier: Notify,
        /// `run` has not ended: connections may come (`is_open`).
        open: AtomicBool,
    }

    struct Lot {
        /// The parked connections; each one's key is its epoll event's data.
        parked: Slab<Parked>,
        /// Deadlines, earliest first, with their connection's key. A connection woken since
        /// leaves its deadline behind: one whose key holds no connection with that deadline
        /// (none, or a later one's) is skipped.
        deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
        /// `run` has ended (shutdown, or epoll failed): what comes to park is closed.
        closed: bool,
    }

    /// nix's epoll instance, as `AsyncFd` takes it (nix gives it no `AsRawFd`).
    struct EpollFd(Epoll);

    impl AsRawFd for EpollFd {
        fn as_raw_fd(&self) -> RawFd {
            self.0.0.as_raw_fd()
        }
    }

    impl Park {
        /// A park with its own epoll instance, registered with the current runtime.
        pub(crate) fn new() -> io::Result<Park> {
            let epoll = EpollFd(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?);
            // SAFETY: `EpollFd` owns its descriptor and never gives it up or replaces it, so
            // it stays open, the same one, for as long as the `AsyncFd` holds it.
            let epoll = unsafe { AsyncFd::register_with_interest(epoll, Interest::READABLE) }?;
            Ok(Park {
                epoll,
                lot: Mutex::new(Lot {
                    parked: Slab::new(),
                    deadlines: BinaryHeap::new(),
                    closed: false,
                }),
                earlier: Notify::new(),
                open: AtomicBool::new(true),
            })
        }

        /// Whether connections may still be parked: not once `run` has ended (at shutdown,
        /// or when epoll failed), so that they wait in their tasks instead.
        pub(crate) fn is_open(&self) -> bool {
            self.open.load(Ordering::Relaxed)
        }

        fn lot(&self) -> MutexGuard<'_, Lot> {
            self.lot.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// Keep `conn` until its client sends something or closes, or its deadline passes.
        /// Its socket must be out of tokio's hands (`TcpStream::into_std`). Closed at once
        /// when the park has ended (shutdown) or epoll refuses it.
        pub(crate) fn park(&self, conn: Parked) {
            let mut lot = self.lot();
            if lot.closed {
                return;
            }
            let lot = &mut *lot;
            let entry = lot.parked.vacant_entry();
            let key = entry.key();
            // One event, then the connection is out of the park; bytes that came before this
            // call are reported at once.
            let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT;
            let event = EpollEvent::new(flags, key as u64);
            if let Err(e) = self.epoll.get_ref().0.add(&conn.stream, event) {
                eprintln!("wharf proxy: cannot park an idle connection, closing it: {e}");
                return;
            }
            let deadline = conn.idle.deadline;
            entry.insert(conn);
            let earliest = lot
                .deadlines
                .peek()
                .is_none_or(|Reverse((at, _))| deadline < *at);
            lot.deadlines.push(Reverse((deadline, key)));
            // Deadlines left behind by woken connections are dropped when they outnumber
            // the parked ones, so a connection that parks often does not grow the heap.
            if lot.deadlines.len() > 2 * lot.parked.len() + 64 {
                let parked = &lot.parked;
                lot.deadlines
                    .retain(|Reverse((at, key))| is_due_for(parked, *key, *at));
            }
            if earliest {
                self.earlier.notify_one();
            }
        }

        /// Serve the park until `shutdown`: a connection whose client sent something goes to
        /// `wake`; one whose client closed or failed, or whose deadline passed, closes. At
        /// shutdown every parked connection closes, as the lane closes idle ones.
        pub(crate) async fn run(&self, shutdown: &CancellationToken, mut wake: impl FnMut(Parked)) {
            let mut events = [EpollEvent::empty(); BATCH];
            loop {
                let next = self.lot().deadlines.peek().map(|Reverse((at, _))| *at);
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    ready = self.epoll.readable() => {
                        let mut ready = match ready {
                            Ok(ready) => ready,
                            Err(e) => {
                                eprintln!("wharf proxy: the park of idle connections failed: {e}");
                                break;
                            }
                        };
                        let n = match self.epoll.get_ref().0.wait(&mut events, EpollTimeout::ZERO) {
                            Ok(n) => n,
                            Err(Errno::EINTR) => continue,
                            Err(e) => {
                                eprintln!("wharf proxy: the park of idle connections failed: {e}");
                                break;
                            }
                        };
                        if n < BATCH {
                            ready.clear_ready();
                        }
                        for event in &events[..n] {
                            if let Some(conn) = self.take_up(event) {
                                wake(conn);
                            }
                        }
                    }
                    () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                        self.expire();
                    }
                    () = self.earlier.notified() => {}
                }
            }
            self.open.store(false, Ordering::Relaxed);
            let mut lot = self.lot();
            lot.closed = true;
            lot.parked.clear();
            lot.deadlines.clear();
        }

        /// The connection `event` is about, out of the park: for `wake` when its client sent
        /// something, None (closed) when it closed or failed without.
        fn take_up(&self, event: &EpollEvent) -> Option<Parked> {
            let key = usize::try_from(event.data()).ok()?;
            let conn = self.lot().parked.try_remove(key)?;
            let flags = event.events();
            if !flags.contains(EpollFlags::EPOLLIN) {
                return None;
            }
            // A client that closed is readable too: at its end (closed here, without a task),
            // or with a last request before it (served).
            let closing = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
            if flags.intersects(closing) && !matches!(conn.stream.peek(&mut [0]), Ok(1..)) {
                return None;
            }
            // Out of this instance (it stays in it, disabled, until closed otherwise): it may
            // park again.
            let _ = self.epoll.get_ref().0.delete(&conn.stream);
            Some(conn)
        }

        /// Close the connections whose deadline has passed.
        fn expire(&self) {
            let now = Instant::now();
            let mut lot = self.lot();
            let lot = &mut *lot;
            while let Some(&Reverse((at, key))) = lot.deadlines.peek() {
                if at > now {
                    break;
                }
                lot.deadlines.pop();
                if is_due_for(&lot.parked, key, at) {
                    lot.parked.remove(key);
                }
            }
        }

        /// Connections parked now.
        #[cfg(test)]
        pub(crate) fn len(&self) -> usize {
            self.lot().parked.len()
        }
    }

    /// The connection parked under `key` is the one whose deadline is `at`.
    fn is_due_for(parked: &Slab<Parked>, key: usize, at: Instant) -> bool {
        parked.get(key).is_some_and(|conn| conn.idle.deadline == at)
    }
}

#[cfg(not(target_os = "linux"))]
mod elsewhere {
    use std::io;

    use tokio_util::sync::CancellationToken;

    use super::Parked;

    /// No park without epoll: idle connections wait in their tasks (`Park::new` fails, and
    /// the lane is not asked to park).
    pub(crate) enum Park {}

    impl Park {
        pub(crate) fn new() -> io::Result<Park> {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "idle connections are parked with epoll, on Linux only",
            ))
        }

        pub(crate) fn is_open(&self) -> bool {
            match *self {}
        }

        pub(crate) fn park(&self, _conn: Parked) {
            match *self {}
        }

        pub(crate) async fn run(&self, _shutdown: &CancellationToken, _wake: impl FnMut(Parked)) {
            match *self {}
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::proxy::budget::Budget;

    /// Bounded: what a test waits for happens within this.
    const PATIENCE: Duration = Duration::from_secs(10);

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let waited = tokio::time::timeout(PATIENCE, async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert!(waited.await.is_ok(), "{what}: not within {PATIENCE:?}");
    }

    #[tokio::test]
    async fn parked_connections_wake_close_and_time_out() {
        let park = Arc::new(Park::new().unwrap());
        let shutdown = CancellationToken::new();
        let (woken_tx, mut woken) = mpsc::unbounded_channel();
        let runner = {
            let (park, shutdown) = (park.clone(), shutdown.clone());
            tokio::spawn(async move {
                park.run(&shutdown, |conn| {
                    let _ = woken_tx.send(conn);
                })
                .await;
            })
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let budget = Budget::new(16);
        // A client whose server side is parked until `deadline`.
        let parked_client = |deadline| {
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (stream, peer) = listener.accept().unwrap();
            stream.set_nonblocking(true).unwrap();
            let fds = budget.client().unwrap();
            let idle = Idle {
                fresh: false,
                deadline,
            };
            park.park(Parked {
                stream,
                fds,
                peer,
                idle,
            });
            client
        };
        let later = Instant::now() + PATIENCE * 3;
        let mut speaks = parked_client(later);
        let closes = parked_client(later);
        let mut times_out = parked_client(Instant::now() + Duration::from_millis(50));
        let stays = parked_client(later);
        assert_eq!((park.len(), budget.in_use()), (4, 4));

        // Bytes wake their connection, and only it, with its bytes unread.
        speaks.write_all(b"GET").unwrap();
        let conn = tokio::time::timeout(PATIENCE, woken.recv()).await;
        let conn = conn.unwrap().unwrap();
        assert_eq!(conn.peer, speaks.local_addr().unwrap());
        assert_eq!(conn.stream.peek(&mut [0; 3]).unwrap(), 3);
        // A close frees its place (and its share of the budget) at once; a deadline at its time.
        drop(closes);
        eventually("the closed one leaves", || park.len() == 2).await;
        eventually("the one past its deadline leaves", || park.len() == 1).await;
        // Closed: its client reads the end.
        times_out.set_read_timeout(Some(PATIENCE)).unwrap();
        assert_eq!(times_out.read_to_end(&mut Vec::new()).unwrap(), 0);
        assert_eq!(budget.in_use(), 2);
        assert!(woken.try_recv().is_err(), "only bytes wake a connection");

        // Shutdown closes what is parked, and what comes after.
        shutdown.cancel();
        runner.await.unwrap();
        assert_eq!(park.len(), 0);
        drop(stays);
        drop(conn);
        assert_eq!(budget.in_use(), 0);
        let late = parked_client(later);
        assert_eq!((park.len(), budget.in_use()), (0, 0));
        drop(late);
    }
}
