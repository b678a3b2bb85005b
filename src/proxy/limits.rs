//! Every limit and deadline the proxy keeps, in one place: `Limits::default()` holds the
//! values, `Limits::new` applies what the user configured (`[proxy]` in config.toml) on top,
//! and the proxy takes the result at start (`ProxyArgs`), reaching each part through the
//! `Forwarder`. Tests shrink deadlines through `Limits::with_test_overrides`.

use std::time::Duration;

use crate::model::config::Config;

/// What the proxy bounds, and how long it waits for each I/O phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    // The client's side.
    /// A client that connects and sends nothing is dropped after this (on Linux counted from
    /// about a second after its connection, when the kernel hands over one that has not spoken:
    /// `accept::accept_once_spoken`).
    pub(crate) first_byte: Duration,
    /// The whole request head, the idle time between keep-alive requests, and an HTTP/2
    /// connection with no stream open.
    pub(crate) header_read: Duration,
    /// A plain-HTTP client connection waiting this long for its next request (or its first)
    /// leaves its task for the park (`proxy::park`), where waiting costs a hundred bytes
    /// instead of kilobytes; its deadlines stay as they were. Short enough that a burst of
    /// new connections does not pile up waiting tasks, longer than a busy client's pause
    /// between requests, which then pays nothing for it.
    pub(crate) park_after: Duration,
    /// A client that stops reading our response for this long is dropped.
    pub(crate) write_stall: Duration,
    /// A request body that sends nothing for this long is abandoned with 408.
    pub(crate) body_idle: Duration,
    /// Largest request head [Envoy: 60 KiB].
    pub(crate) max_head: usize,
    /// Longest request target [nginx: 8 KiB].
    pub(crate) max_uri: usize,
    /// Longest single header line [Envoy-like].
    pub(crate) max_header_line: usize,
    /// How often a quiet HTTP/2 peer is pinged, and how long its answer may take.
    pub(crate) http2_ping: Duration,
    /// How long a connection closed mid-request-body keeps draining it (`lane::linger`).
    pub(crate) linger: Duration,
    /// How long a client refused for want of descriptors has to read its 503.
    pub(crate) refusal: Duration,
    /// How long shutdown waits for requests in flight.
    pub(crate) drain: Duration,

    // The instance's side.
    /// How long a connect to an instance may take: loopback connects work at once or not at all.
    pub(crate) upstream_connect: Duration,
    /// How long to wait for an instance's response head: dev servers may compile on their
    /// first hit (`upstream_timeout` in config.toml).
    pub(crate) upstream_head: Duration,
    /// An idle connection to an instance is closed after this: below Node's 5 s keep-alive,
    /// so one the server is closing is rarely reused.
    pub(crate) upstream_idle: Duration,
    /// How long an answer is awaited from an instance that stopped taking the request body:
    /// one it sent before it closed is there at once.
    pub(crate) early_answer: Duration,
    /// How long a request waits for an env-mode instance that is (re)starting to listen.
    pub(crate) starting_wait: Duration,
    /// How long an upgraded connection (a WebSocket) stays open once one side has ended it
    /// (`tunnel_linger` in config.toml).
    pub(crate) tunnel_linger: Duration,
    /// Idle connections the express lane keeps per instance address; more are closed.
    pub(crate) lane_idle_per_addr: usize,
    /// Idle connections hyper's path keeps per instance address. Above what a few HTTP/2
    /// clients at 128 streams each have in flight: a lower cap closes connections that the
    /// next burst has to open again (128 made 8 600 connects for 320 streams, 1024 made 320).
    pub(crate) http1_idle_per_addr: usize,
    /// Longest chunk-size line, extensions included, in an instance's chunked body.
    pub(crate) chunk_line: usize,
    /// Largest trailer section of an instance's chunked body.
    pub(crate) chunk_trailers: usize,
}

impl Limits {
    /// Most header lines in one request or response [hyper, Envoy, Apache: 100]. Fixed at
    /// build time: it sizes the array the express lane parses a head into, on the stack.
    pub(crate) const MAX_HEADERS: usize = 100;
    /// Largest response head accepted from an instance [nginx's largest proxy_buffer_size in
    /// use]. Fixed at build time: the error that names it is static text.
    pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

    /// The defaults, with what the user configured in place of them.
    pub(crate) fn new(config: &Config) -> Limits {
        let default = Limits::default();
        Limits {
            upstream_head: config.upstream_timeout.unwrap_or(default.upstream_head),
            tunnel_linger: config.tunnel_linger.unwrap_or(default.tunnel_linger),
            ..default
        }
    }

    /// For tests only (`$WHARF_TEST_LIMITS`, read in `main`): deadlines shrunk so that no
    /// test waits a real minute. `overrides` is `field=duration` pairs, comma-separated, with
    /// the fields' names and the durations `model::project::parse_duration_str` reads
    /// (`3`, `3s`), e.g. `body_idle=3,write_stall=4`. Only the deadlines tests shrink are
    /// known; anything else is an error.
    pub(crate) fn with_test_overrides(mut self, overrides: &str) -> Result<Limits, String> {
        for pair in overrides
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (field, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not field=duration"))?;
            let value = crate::model::project::parse_duration_str(value.trim())
                .map_err(|e| format!("{field}: {e}"))?;
            let slot = match field.trim() {
                "first_byte" => &mut self.first_byte,
                "header_read" => &mut self.header_read,
                "park_after" => &mut self.park_after,
                "write_stall" => &mut self.write_stall,
                "body_idle" => &mut self.body_idle,
                other => return Err(format!("{other:?} is not a limit tests may set")),
            };
            *slot = value;
        }
        Ok(self)
    }
}

impl Default for Limits {
    fn default() -> Limits {
        let secs = Duration::from_secs;
        Limits {
            first_byte: secs(10),
            header_read: secs(15),
            park_after: Duration::from_millis(100),
            write_stall: secs(60),
            body_idle: secs(60),
            max_head: 64 * 1024,
            max_uri: 8 * 1024,
            max_header_line: 16 * 1024,
            http2_ping: secs(20),
            linger: secs(2),
            refusal: secs(1),
            drain: secs(10),
            upstream_connect: secs(2),
            upstream_head: secs(120),
            upstream_idle: secs(4),
            early_answer: secs(1),
            starting_wait: secs(60),
            tunnel_linger: secs(30),
            lane_idle_per_addr: 128,
            http1_idle_per_addr: 1024,
            chunk_line: 4 * 1024,
            chunk_trailers: 16 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_values_replace_the_defaults_and_nothing_else() {
        let config = crate::model::config::parse("[proxy]\nupstream_timeout = 5\n").unwrap();
        let limits = Limits::new(&config);
        assert_eq!(limits.upstream_head, Duration::from_secs(5));
        assert_eq!(
            limits,
            Limits {
                upstream_head: Duration::from_secs(5),
                ..Limits::default()
            }
        );
        assert_eq!(Limits::new(&Config::default()), Limits::default());
    }

    #[test]
    fn tests_shrink_deadlines_by_name() {
        let limits = Limits::default()
            .with_test_overrides("body_idle=3, write_stall=4s")
            .unwrap();
        assert_eq!(limits.body_idle, Duration::from_secs(3));
        assert_eq!(limits.write_stall, Duration::from_secs(4));
        assert_eq!(limits.first_byte, Limits::default().first_byte);
        for bad in ["body_idle", "max_head=3", "body_idle=soon"] {
            assert!(Limits::default().with_test_overrides(bad).is_err(), "{bad}");
        }
    }
}
