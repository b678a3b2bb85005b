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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::mode::Mode;
    use crate::sys::socket::{BoundSocket, bind_loopback, local_port};
    use std::path::Path;

    /// Out after `failures` failures in a row (said once), back at the first pass; a pass in
    /// between starts the count again.
    #[tokio::test]
    async fn unhealthy_after_failures_in_a_row_and_ready_at_the_first_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = bind_loopback(0).unwrap();
        let port = local_port(&socket).unwrap();
        let bound = [BoundSocket {
            name: "http".into(),
            port,
            socket,
        }];
        let name = "api".parse().unwrap();
        let out = Output::new("api".parse().unwrap(), true, None, false);
        // Never connected: the route only records its state.
        let mut route = Registration::new(
            &out,
            tmp.path(),
            Path::new("/nonexistent"),
            &name,
            Mode::Fd,
            &bound,
        );
        route.instance.state = State::Ready;
        let health = Health {
            path: "/health".into(),
            interval: Duration::from_millis(10),
            failures: 2,
        };
        let mut checks = Checks::new(&health);
        let ok = || Probe::Ready(http::StatusCode::OK);
        let bad = || Probe::Answered(http::StatusCode::INTERNAL_SERVER_ERROR);
        checks.on(bad(), &mut route, &out).await;
        checks.on(ok(), &mut route, &out).await;
        checks.on(bad(), &mut route, &out).await;
        assert_eq!(route.instance.state, State::Ready, "not two in a row");
        checks.on(Probe::Silent, &mut route, &out).await;
        assert_eq!(route.instance.state, State::Unhealthy);
        checks.on(bad(), &mut route, &out).await;
        assert_eq!(route.instance.state, State::Unhealthy);
        checks.on(ok(), &mut route, &out).await;
        assert_eq!(route.instance.state, State::Ready);
        // A server still starting is not made ready by a passing check.
        route.instance.state = State::Starting;
        checks.on(ok(), &mut route, &out).await;
        assert_eq!(route.instance.state, State::Starting);
        assert!(!Checks::due_in(State::Starting) && Checks::due_in(State::Unhealthy));
    }
}
