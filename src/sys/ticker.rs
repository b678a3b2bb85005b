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

    /// Tick `every` so long from now on, instead.
    pub(crate) fn every(&mut self, every: Duration) -> std::io::Result<()> {
        self.0.every(every)
    }

    /// The next tick (ticks missed while nobody waited count as one). Cancel-safe.
    pub(crate) async fn tick(&mut self) -> std::io::Result<()> {
        self.0.tick().await
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::time::Duration;

    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    pub(crate) struct Ticker(AsyncFd<Timer>);

    /// A `timerfd`, as tokio's reactor takes a descriptor.
    struct Timer(TimerFd);

    impl AsRawFd for Timer {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }

    impl Ticker {
        pub(crate) fn new(every: Duration) -> Option<Ticker> {
            let flags = TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC;
            let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, flags).ok()?;
            arm(&timer, every).ok()?;
            // SAFETY: the AsyncFd owns the timer, so its descriptor stays open and the same
            // for as long as it is registered.
            unsafe { AsyncFd::register_with_interest(Timer(timer), Interest::READABLE) }
                .ok()
                .map(Ticker)
        }

        pub(crate) fn every(&mut self, every: Duration) -> std::io::Result<()> {
            arm(&self.0.get_ref().0, every)
        }

        pub(crate) async fn tick(&mut self) -> std::io::Result<()> {
            loop {
                let mut ready = self.0.readable().await?;
                // The count of expiries since the last read; none yet: `WouldBlock`.
                let read = ready.try_io(|timer| Ok(timer.get_ref().0.wait()?));
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

    /// Expire every `every` from now on.
    fn arm(timer: &TimerFd, every: Duration) -> std::io::Result<()> {
        let period = Expiration::Interval(TimeSpec::from_duration(every));
        Ok(timer.set(period, TimerSetTimeFlags::empty())?)
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

        pub(crate) fn every(&mut self, _every: Duration) -> std::io::Result<()> {
            Ok(())
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
