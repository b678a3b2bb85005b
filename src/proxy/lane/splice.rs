//! Relaying a large body of known length through a pipe with splice(2), from an instance to the
//! client and from the client to the instance: the kernel moves the pages, so the bytes never
//! pass through wharf's memory (two copies of every byte saved). Linux only, plain TCP only;
//! elsewhere, over TLS, or without two descriptors to spare in the budget for the pipe, the
//! lane copies through its buffer instead.
//!
//! A pipe that has passed its whole body is empty and is kept for the next one (a few per
//! thread, as HAProxy keeps a pool of pipes): opening one and setting its size, then closing
//! both ends, is four system calls and about 5 µs of the kernel's time per large body.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::proxy::budget::{Budget, Fds};
use crate::proxy::deadline::{self, CLIENT_STALLED};
use crate::proxy::lane::client::socket_gone;
use crate::proxy::lane::spare;
use crate::proxy::lane::went_away;

/// The pipe capacity asked for (Linux's `fs.pipe-max-size` for unprivileged users, by
/// default): what has arrived of a 1 MiB body moves in one round, 2-3 rounds in all on
/// loopback, where the default 64 KiB pipe took 17 rounds of two splices and a wait each. Only
/// the pages the body fills are used, while it passes; the size counts against the user's
/// `fs.pipe-user-pages-soft` (64 MiB by default) while the pipe is open, so past 64 bodies at
/// once the next pipes stay small, which is slower, never wrong.
#[cfg(target_os = "linux")]
const WANTED: i32 = 1024 * 1024;
/// A pipe's capacity unless told otherwise.
#[cfg(target_os = "linux")]
const DEFAULT: usize = 64 * 1024;
/// Empty pipes kept per thread: the large bodies one thread has in flight at once, in the
/// usual case. Each keeps its two descriptors' share of the budget, and its size's share of
/// the user's `fs.pipe-user-pages-soft` (8 MiB of 64 for eight).
const KEPT: usize = 8;

thread_local! {
    static KEPT_PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A pipe, for one body at a time.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes it holds at most.
    capacity: usize,
    /// Its two descriptors' share of the budget (dropped after them).
    fds: Fds,
}

impl Pipe {
    /// A kept empty pipe, or a new one. None when no pipe can be had (no two descriptors to
    /// spare, or not Linux): copy instead.
    pub(crate) fn open(budget: &Budget) -> Option<Pipe> {
        spare::take_kept(&KEPT_PIPES, |pipe| pipe.fds.is_of(budget)).or_else(|| Pipe::new(budget))
    }

    /// Keep this pipe, which must be empty, for the next body, if the thread has room.
    pub(crate) fn keep(self) {
        spare::keep(&KEPT_PIPES, self, KEPT);
    }

    fn new(budget: &Budget) -> Option<Pipe> {
        #[cfg(target_os = "linux")]
        {
            use nix::fcntl::{FcntlArg, OFlag, fcntl};
            let fds = budget.take(2).ok()?;
            let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).ok()?;
            // Refused past the user's `fs.pipe-user-pages-soft`: then it is smaller still.
            let capacity = fcntl(&write, FcntlArg::F_SETPIPE_SZ(WANTED))
                .or_else(|_| fcntl(&write, FcntlArg::F_GETPIPE_SZ))
                .ok()
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(DEFAULT);
            Some(Pipe {
                read,
                write,
                capacity,
                fds,
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = budget;
            None
        }
    }

    /// Move `len` bytes from `from` to `to`. False when `from` ended first. Fails when the
    /// client goes away, or stops reading for `stall` (`Limits::write_stall`). The pipe is
    /// kept when it is left empty, and closed when not.
    pub(crate) async fn relay(
        self,
        from: &TcpStream,
        to: &TcpStream,
        mut len: u64,
        stall: std::time::Duration,
    ) -> io::Result<bool> {
        while len > 0 {
            let filled = tokio::select! {
                biased;
                n = self.fill(from, len) => n?,
                () = socket_gone(to) => return Err(went_away()),
            };
            if filled == 0 {
                self.keep();
                return Ok(false);
            }
            len -= filled as u64;
            self.drain(to, filled, stall, CLIENT_STALLED).await?;
        }
        self.keep();
        Ok(true)
    }

    /// Take what `from` has (at most `len` bytes, and what the pipe holds) into the empty
    /// pipe, once it has any; 0 at its end.
    pub(crate) async fn fill(&self, from: &TcpStream, len: u64) -> io::Result<usize> {
        let want = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(self.capacity);
        io_op(from, Interest::READABLE, || splice(from, &self.write, want)).await
    }

    /// Pass the `held` bytes the pipe holds on to `to`; each write must go within `limit`,
    /// or this fails saying `what` stalled.
    pub(crate) async fn drain(
        &self,
        to: &TcpStream,
        mut held: usize,
        limit: std::time::Duration,
        what: &'static str,
    ) -> io::Result<()> {
        while held > 0 {
            let drain = io_op(to, Interest::WRITABLE, || splice(&self.read, to, held));
            held -= deadline::within(limit, what, drain).await?;
        }
        Ok(())
    }
}

/// Run a non-blocking `op` on `stream` once it is ready for `interest`, until it does not
/// answer `WouldBlock`.
async fn io_op(
    stream: &TcpStream,
    interest: Interest,
    mut op: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    loop {
        stream.ready(interest).await?;
        match stream.try_io(interest, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
    }
}

#[cfg(target_os = "linux")]
fn splice(
    from: impl std::os::fd::AsFd,
    to: impl std::os::fd::AsFd,
    len: usize,
) -> io::Result<usize> {
    use nix::fcntl::SpliceFFlags;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    Ok(nix::fcntl::splice(from, None, to, None, len, flags)?)
}

#[cfg(not(target_os = "linux"))]
fn splice(_: impl std::os::fd::AsFd, _: impl std::os::fd::AsFd, _: usize) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::fd::AsRawFd;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use std::time::Duration;

    /// Two connected loopback streams.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap());
        let (near, far) = tokio::join!(near, listener.accept());
        (near.unwrap(), far.unwrap().0)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_pipe_left_empty_serves_the_next_body_and_only_its_own_budgets() {
        let budget = Budget::new(64);
        let (mut writer, from) = pair().await;
        let (to, mut reader) = pair().await;
        let body = vec![7u8; 300_000];
        let pipe = Pipe::open(&budget).unwrap();
        let fd = pipe.read.as_raw_fd();
        let send = async {
            writer.write_all(&body).await.unwrap();
        };
        let relay = pipe.relay(&from, &to, body.len() as u64, Duration::from_secs(5));
        let mut got = vec![0u8; body.len()];
        let (_, relayed, read) = tokio::join!(send, relay, reader.read_exact(&mut got));
        assert!(relayed.unwrap());
        read.unwrap();
        assert_eq!(got, body);
        // Kept, with its share of the budget, and handed out again.
        assert_eq!(budget.in_use(), 2);
        let again = Pipe::open(&budget).unwrap();
        assert_eq!(again.read.as_raw_fd(), fd);
        // Another proxy's budget never gets this one's pipe.
        again.keep();
        let other = Budget::new(64);
        let theirs = Pipe::open(&other).unwrap();
        assert_ne!(theirs.read.as_raw_fd(), fd);
        assert_eq!((budget.in_use(), other.in_use()), (2, 2));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_pipe_that_failed_with_bytes_in_it_is_closed() {
        let budget = Budget::new(64);
        let (mut writer, from) = pair().await;
        // Nobody reads what reaches `to`: once the socket buffers are full, the drain stalls.
        let (to, _reader) = pair().await;
        let len = 64 << 20;
        let send = tokio::spawn(async move {
            let _ = writer.write_all(&vec![1u8; len]).await;
        });
        let pipe = Pipe::open(&budget).unwrap();
        let relayed = pipe
            .relay(&from, &to, len as u64, Duration::from_millis(100))
            .await;
        assert!(relayed.is_err());
        assert_eq!(budget.in_use(), 0, "the pipe was closed, not kept");
        send.abort();
    }
}
