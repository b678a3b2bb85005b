//! On-demand instances: noticing a connection waiting on a socket nobody accepts yet, telling
//! when an instance has gone idle, and probing readiness over HTTP. Starting and stopping the
//! server is the supervisor's job (`supervise`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::sys::socket::BoundSocket;

/// How often an on-demand instance looks at its open connections.
pub(crate) const IDLE_TICK: Duration = Duration::from_secs(1);
/// Pause between readiness probes.
const PROBE_PAUSE: Duration = Duration::from_millis(100);

/// Resolves when any of `sockets` has a connection waiting in its accept queue. Nothing is
/// accepted: the server started next takes it. A fresh registration reports a connection that
/// is already queued, so none is missed between two waits.
pub(crate) async fn connection_waiting(sockets: &[BoundSocket]) -> std::io::Result<()> {
    let mut watchers = Vec::new();
    for b in sockets {
        // The AsyncFd owns what it watches, so it gets a duplicate (close-on-exec: the server
        // started next never inherits it). A dup shares the socket's file status flags, so
        // nothing here may make it non-blocking: the socket stays blocking, as it is handed
        // over. Registering for readiness does not touch them.
        let dup = b.socket.try_clone()?;
        // SAFETY: the AsyncFd owns `dup`, so its fd stays open and the same for its lifetime.
        let watcher = unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        watchers.push(watcher);
    }
    let waits = watchers.iter().map(|w| Box::pin(w.readable()));
    let (ready, _, _) = futures_util::future::select_all(waits).await;
    ready.map(drop)
}

/// Counts idle time from samples of the open connection count.
pub(crate) struct IdleClock {
    limit: Duration,
    idle_for: Duration,
}

impl IdleClock {
    pub(crate) fn new(limit: Duration) -> IdleClock {
        IdleClock {
            limit,
            idle_for: Duration::ZERO,
        }
    }

    /// One `IDLE_TICK` passed with `open` connections (`None`: unknown, never idle). True once
    /// the instance has been idle for the whole limit.
    pub(crate) fn tick(&mut self, open: Option<usize>) -> bool {
        match open {
            Some(0) => self.idle_for += IDLE_TICK,
            _ => self.idle_for = Duration::ZERO,
        }
        self.idle_for >= self.limit
    }
}

/// What one readiness probe found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A 2xx or 3xx answer: ready.
    Ready(http::StatusCode),
    /// An answer, but not one that says ready (a 404 while routes load, a 503).
    Answered(http::StatusCode),
    /// No answer: not listening yet, closed, or slower than the probe's deadline.
    Silent,
}

/// How long the supervisor waits for a probe's answer before it says `Silent` (and waits on).
const PROBE_DEADLINE: Duration = Duration::from_secs(2);
/// How long a probe waits for its answer at most: a server still starting accepts the probe's
/// queued connection late.
const PROBE_LINGER: Duration = Duration::from_secs(30);
/// A probe reads at most this much of a body before it stops caring.
const PROBE_BODY_LIMIT: usize = 64 * 1024;

/// `--ready http:PATH` probes, one at a time. A probe outlives the supervisor's wait for it
/// (a `select!` that ended for another reason, or its deadline), so the server sees an
/// ordinary client that reads its whole answer and closes, never one that vanishes mid-request
/// (servers log reset connections and broken pipes for those).
pub(crate) struct Prober {
    path: String,
    /// Pause before each probe.
    pause: Duration,
    /// How long a probe may go unanswered before the wait for it says `Silent`.
    deadline: Duration,
    /// When the next probe starts, once a wait for it began (a cancelled wait keeps it).
    due: Option<tokio::time::Instant>,
    /// The probe under way and when the wait for it reports `Silent`.
    inflight: Option<(tokio::time::Instant, JoinHandle<Option<http::StatusCode>>)>,
}

impl Prober {
    /// Readiness probes: quick pauses, a generous deadline.
    pub(crate) fn new(path: String) -> Prober {
        Prober::every(path, PROBE_PAUSE, PROBE_DEADLINE)
    }

    /// Probes `pause` apart, each `Silent` after `deadline` without an answer.
    pub(crate) fn every(path: String, pause: Duration, deadline: Duration) -> Prober {
        Prober {
            path,
            pause,
            deadline,
            due: None,
            inflight: None,
        }
    }

    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// After a probe pause, `GET path` at `addr`. A probe not answered within its deadline is
    /// `Silent` and still awaited by the next call. Cancel-safe: a probe under way is kept.
    pub(crate) async fn next(&mut self, addr: SocketAddr) -> Probe {
        if self.inflight.is_none() {
            let due = *self
                .due
                .get_or_insert_with(|| tokio::time::Instant::now() + self.pause);
            tokio::time::sleep_until(due).await;
            self.due = None;
            let path = self.path.clone();
            let task = tokio::spawn(async move {
                tokio::time::timeout(PROBE_LINGER, probe(addr, &path))
                    .await
                    .ok()
                    .flatten()
            });
            self.inflight = Some((tokio::time::Instant::now() + self.deadline, task));
        }
        let Some((deadline, task)) = self.inflight.as_mut() else {
            return Probe::Silent;
        };
        match tokio::time::timeout_at(*deadline, task).await {
            Err(_) => {
                *deadline = tokio::time::Instant::now() + self.deadline;
                Probe::Silent
            }
            Ok(joined) => {
                self.inflight = None;
                joined.ok().flatten().map_or(Probe::Silent, |status| {
                    if status.is_success() || status.is_redirection() {
                        Probe::Ready(status)
                    } else {
                        Probe::Answered(status)
                    }
                })
            }
        }
    }
}

/// One `GET path` with `Connection: close`: the status, once the body has been read (up to
/// `PROBE_BODY_LIMIT`) and the server has closed its side.
async fn probe(addr: SocketAddr, path: &str) -> Option<http::StatusCode> {
    use http_body_util::BodyExt as _;
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    let request = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::CONNECTION, "close")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .ok()?;
    let exchange = async move {
        let response = sender.send_request(request).await.ok()?;
        let status = response.status();
        let mut body = response.into_body();
        let mut read = 0;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len());
            if read > PROBE_BODY_LIMIT {
                break;
            }
        }
        Some(status)
    };
    // The connection does the I/O; after a `Connection: close` exchange it ends by itself.
    let (status, _) = tokio::join!(exchange, connection);
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_means_no_connection_for_the_whole_limit() {
        let mut clock = IdleClock::new(IDLE_TICK * 3);
        assert!(!clock.tick(Some(0)));
        assert!(!clock.tick(Some(0)));
        assert!(!clock.tick(Some(2)), "a connection resets the clock");
        assert!(!clock.tick(Some(0)));
        assert!(!clock.tick(Some(0)));
        assert!(clock.tick(Some(0)));
        let mut unknown = IdleClock::new(IDLE_TICK);
        assert!(!unknown.tick(None) && !unknown.tick(None));
    }

    #[tokio::test]
    async fn a_queued_connection_is_noticed_and_left_for_the_server() {
        let bound = [BoundSocket::for_test()];
        let early = std::net::TcpStream::connect(bound[0].addr()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), connection_waiting(&bound))
            .await
            .unwrap()
            .unwrap();
        assert!(
            !bound[0].socket.nonblocking().unwrap(),
            "watching leaves the socket blocking, as servers are handed it"
        );
        // Still queued: the server accepts it.
        let listener = std::net::TcpListener::from(bound[0].socket.try_clone().unwrap());
        let (_accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, early.local_addr().unwrap());
    }

    // Multi-threaded: the test blocks in std I/O while the probe's task reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_past_its_deadline_still_reads_its_answer() {
        use std::io::{Read, Write};
        // A server still starting: the probe's connection waits in the backlog past the
        // probe's deadline, then is accepted and answered.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut prober = Prober::new("/health".into());
        assert_eq!(
            prober.next(addr).await,
            Probe::Silent,
            "no answer within the deadline"
        );
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut request = [0u8; 1024];
        assert!(conn.read(&mut request).unwrap() > 0);
        // A body the probe reads whole, written in pieces: to a client gone at the deadline,
        // the first piece brings a reset and a later one fails (broken pipe).
        let body = vec![b'x'; PROBE_BODY_LIMIT - 1024];
        let head = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).unwrap();
        for piece in body.chunks(1024) {
            conn.write_all(piece).expect("the probe is still reading");
        }
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the probe closes after the answer");
    }
}
