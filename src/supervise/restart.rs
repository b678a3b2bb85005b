//! The restart policy: after the server exited on its own, start it again at once, after a
//! backoff (servers that keep failing fast), or give up.

use std::process::ExitStatus;
use std::time::Duration;

use crate::model::project::Restart;

/// A child that lived shorter than this before exiting counts as a fast exit.
const FAST_EXIT: Duration = Duration::from_secs(2);
/// Give up after this many fast failures in a row (the route is removed, then the socket closed).
pub(super) const GIVE_UP_AFTER: u32 = 5;
/// Fast clean exits restarted at once before backoff starts (servers that recycle themselves).
const FREE_RESTARTS: u32 = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the policy says after an exit.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    Stop,
    GiveUp,
    RestartAfter(Duration),
}

/// The restart policy of one instance and the fast exits it counts.
pub(super) struct Restarts {
    policy: Restart,
    on_demand: bool,
    fast_exits: u32,
    fast_failures: u32,
}

impl Restarts {
    pub(super) fn new(policy: Restart, on_demand: bool) -> Restarts {
        Restarts {
            policy,
            on_demand,
            fast_exits: 0,
            fast_failures: 0,
        }
    }

    /// What to do after the server exited by itself (`ran`: how long it lived). An on-demand
    /// server that exits cleanly simply waits for its next connection; otherwise the restart
    /// policy decides.
    pub(super) fn after_exit(&mut self, status: ExitStatus, ran: Duration) -> Next {
        let wants = match self.policy {
            Restart::No => false,
            Restart::OnFailure => !status.success(),
            Restart::Always => true,
        };
        let idle_again = self.on_demand && status.success();
        if !(wants || idle_again) {
            return if self.on_demand {
                Next::GiveUp
            } else {
                Next::Stop
            };
        }
        if ran >= FAST_EXIT {
            self.fast_exits = 0;
            self.fast_failures = 0;
            return Next::RestartAfter(Duration::ZERO);
        }
        self.fast_exits += 1;
        if status.success() {
            self.fast_failures = 0;
        } else {
            self.fast_failures += 1;
            if self.fast_failures >= GIVE_UP_AFTER {
                return Next::GiveUp;
            }
        }
        let over = match (status.success(), self.on_demand) {
            // On demand, a clean exit waits for a connection: no busy loop to slow down.
            (true, true) => 0,
            (true, false) => self.fast_exits.saturating_sub(FREE_RESTARTS),
            (false, _) => self.fast_failures,
        };
        Next::RestartAfter(backoff(over))
    }
}

/// 0 for the first, then 100 ms doubling up to `MAX_BACKOFF`.
fn backoff(n: u32) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    (Duration::from_millis(100) * 2u32.saturating_pow(n.min(16) - 1)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn status(raw: i32) -> ExitStatus {
        ExitStatus::from_raw(raw)
    }

    #[test]
    fn fast_failures_back_off_then_give_up_and_slow_ones_reset() {
        let mut s = Restarts::new(Restart::Always, false);
        let fail = status(1 << 8);
        let quick = Duration::from_millis(10);
        let mut delays = Vec::new();
        for _ in 0..GIVE_UP_AFTER - 1 {
            match s.after_exit(fail, quick) {
                Next::RestartAfter(d) => delays.push(d),
                _ => panic!("gave up too early"),
            }
        }
        assert!(delays.windows(2).all(|w| w[0] < w[1]), "{delays:?}");
        assert!(matches!(s.after_exit(fail, quick), Next::GiveUp));
        s.fast_failures = 0;
        assert!(matches!(s.after_exit(fail, FAST_EXIT * 2), Next::RestartAfter(d) if d.is_zero()));
        for _ in 0..50 {
            assert!(
                matches!(s.after_exit(status(0), quick), Next::RestartAfter(d) if d <= MAX_BACKOFF)
            );
        }
    }

    #[test]
    fn the_policy_names_which_exits_restart() {
        let quick = Duration::from_millis(10);
        let mut no = Restarts::new(Restart::No, false);
        assert_eq!(no.after_exit(status(1 << 8), quick), Next::Stop);
        let mut on_failure = Restarts::new(Restart::OnFailure, false);
        assert_eq!(on_failure.after_exit(status(0), quick), Next::Stop);
        // On demand, a clean exit waits for the next connection whatever the policy says.
        let mut on_demand = Restarts::new(Restart::No, true);
        assert_eq!(
            on_demand.after_exit(status(0), quick),
            Next::RestartAfter(Duration::ZERO)
        );
        assert_eq!(on_demand.after_exit(status(1 << 8), quick), Next::GiveUp);
    }
}
