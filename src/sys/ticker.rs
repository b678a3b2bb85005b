//! A steady tick finer than tokio's timers (they count whole milliseconds), on the runtime's
//! own reactor: a `timerfd` (Linux), so a tick wakes the task that waits for it and no other
//! thread. For watches that must notice a change within a fraction of a millisecond, for a
//! bounded time.

use std::time::Duration;

/// Ticks `every` so long, from its creation on.
pub(crate) struct Ticker(imp::Ticker);

impl Ticker {
    /// `None` where the platform has no such timer (or the kernel refuses one); must be called
    /// within a tokio runtime.
    pub(crate) fn new(every: Duration) -> Option<Ticker> {
        imp::Ticker::new(every).map(Ticker)
    }

    /// The next tick (ticks missed while nobody waited count as one). Cancel-safe.
    pub(crate) async fn tick(&mut self) -> std::io::Result<()> {
        self.0.tick().await
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Duration;

    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    pub(crate) struct Ticker(AsyncFd<OwnedFd>);

    impl Ticker {
        pub(crate) fn new(every: Duration) -> Option<Ticker> {
            // SAFETY: a plain timerfd_create; the fd is owned at once.
            let fd = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if fd < 0 {
                return None;
            }
            // SAFETY: a new fd nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let period = libc::timespec {
                tv_sec: every.as_secs() as libc::time_t,
                tv_nsec: every.subsec_nanos() as libc::c_long,
            };
            let spec = libc::itimerspec {
                it_interval: period,
                it_value: period,
            };
            // SAFETY: sets the timer of our own fd from `spec`, which lives across the call.
            if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } != 0
            {
                return None;
            }
            // SAFETY: the AsyncFd owns `fd`, so it stays open and the same for its lifetime.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .ok()
                .map(Ticker)
        }

        pub(crate) async fn tick(&mut self) -> std::io::Result<()> {
            loop {
                let mut ready = self.0.readable().await?;
                let read = ready.try_io(|fd| {
                    let mut expirations = [0u8; 8];
                    // SAFETY: reads 8 bytes into `expirations`, as a timerfd answers.
                    let n =
                        unsafe { libc::read(fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
                    match n {
                        8 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                });
                match read {
                    Ok(result) => {
                        // Read to the end: no need to find that out with one more read at the
                        // next wait (the next expiry makes it readable again).
                        ready.clear_ready();
                        return result;
                    }
                    // Read already (a tick taken before this wait): wait for the next.
                    Err(_would_block) => continue,
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::time::Duration;

    pub(crate) struct Ticker;

    impl Ticker {
        pub(crate) fn new(_every: Duration) -> Option<Ticker> {
            None
        }

        pub(crate) async fn tick(&mut self) -> std::io::Result<()> {
            std::future::pending().await
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_come_steadily_never_early() {
        let every = Duration::from_micros(250);
        // Before the timer starts: four ticks are four expiries (missed ones coalesce, so
        // a slow test sees fewer ticks, never more), at least four periods after this.
        let start = std::time::Instant::now();
        let mut ticker = Ticker::new(every).expect("timerfd on Linux");
        for _ in 0..4 {
            ticker.tick().await.unwrap();
        }
        assert!(start.elapsed() >= every * 4);
    }
}
