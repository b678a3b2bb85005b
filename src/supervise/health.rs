//! Health checks of a ready server (`--health PATH`, wharf.toml's `health`): `GET PATH` on
//! the member's own address every interval, with the readiness probe's code (`demand::Prober`).
//! After `failures` failures in a row the route is marked unhealthy (the proxy takes it out of
//! rotation); the first check that passes makes it ready again. Each change is said once.

use std::net::SocketAddr;
use std::time::Duration;

use super::demand::{Probe, Prober};
use super::output::Output;
use super::registration::Registration;
use crate::model::instance::State;
use crate::model::project::Health;

/// A check without an answer this long counts as failed (and is still awaited): at least a
/// second, so that a busy machine does not make a healthy server look dead.
const MIN_DEADLINE: Duration = Duration::from_secs(1);

/// The checks of one running server.
pub(super) struct Checks {
    prober: Prober,
    failures: u32,
    /// Failed checks in a row.
    failed: u32,
}

impl Checks {
    pub(super) fn new(health: &Health) -> Checks {
        Checks {
            prober: Prober::every(
                health.path.clone(),
                health.interval,
                health.interval.max(MIN_DEADLINE),
            ),
            failures: health.failures.max(1),
            failed: 0,
        }
    }

    /// Whether checks run now: while the server is ready, or unhealthy (to see it recover).
    pub(super) fn due_in(state: State) -> bool {
        matches!(state, State::Ready | State::Unhealthy)
    }

    /// The next check's result (after the interval). Cancel-safe.
    pub(super) async fn next(&mut self, addr: SocketAddr) -> Probe {
        self.prober.next(addr).await
    }

    /// Act on a check's result: unhealthy after `failures` in a row, ready at the first pass.
    pub(super) async fn on(&mut self, probe: Probe, route: &mut Registration, out: &Output) {
        let path = self.prober.path().to_string();
        let state = route.instance.state;
        match probe {
            Probe::Ready(status) => {
                self.failed = 0;
                if state == State::Unhealthy {
                    // Listed first, said second: whoever waits for the line finds the route so.
                    route.set_state(State::Ready).await;
                    out.say(format!(
                        "healthy again (GET {path} answered {status}); back in rotation"
                    ));
                    out.event("healthy", serde_json::json!({ "status": status.as_u16() }));
                }
            }
            failed => {
                self.failed = self.failed.saturating_add(1);
                if self.failed == self.failures && state == State::Ready {
                    let why = match failed {
                        Probe::Answered(status) => format!("answered {status}"),
                        _ => "no answer".to_string(),
                    };
                    route.set_state(State::Unhealthy).await;
                    out.say(format!(
                        "unhealthy: GET {path} failed {} time(s) in a row (the last: {why}); \
                         out of rotation until it passes",
                        self.failed
                    ));
                    out.event(
                        "unhealthy",
                        serde_json::json!({ "failures": self.failed, "last": why }),
                    );
                }
            }
        }
    }
}
