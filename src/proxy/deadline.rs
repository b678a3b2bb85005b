//! Deadlines for the I/O phases hyper leaves unbounded: a client not reading our response, a
//! request body that stops arriving, and any single I/O step (`within`). Each fails with
//! `TimedOut` when its phase overruns. `Timer` serves a connection's waits one after another.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Why a write to the client failed: it stopped reading.
pub(crate) const CLIENT_STALLED: &str = "the client stopped reading the response";

/// Run one I/O step within `limit`; past it, fail with `TimedOut` saying `what` stalled.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &'static str,
    step: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(limit, step)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, what)))
}

/// A stream whose writes fail once one has made no progress for `limit`. `exempt` turns the
/// deadline off (an upgraded WebSocket has no HTTP timers).
pub(crate) struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    exempt: Arc<AtomicBool>,
}

impl<S> WriteDeadline<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> (Self, Arc<AtomicBool>) {
        let exempt = Arc::new(AtomicBool::new(false));
        let stream = WriteDeadline {
            inner,
            limit,
            stalled: None,
            exempt: exempt.clone(),
        };
        (stream, exempt)
    }

    /// Called with the result of a write-side poll: arm the timer on `Pending`, disarm it on
    /// progress, and turn a timer that ran out into an error.
    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() || self.exempt.load(Ordering::Relaxed) {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, CLIENT_STALLED)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One timer for a connection's waits, which come one after another: for a request head, then
/// for the response head, then for the next request head. A new timer per wait costs an
/// insertion into tokio's timer wheel and a removal, two per request. This one stays armed
/// when a wait's deadline is later than its own (deadlines move forward as requests go by),
/// fires early, and only then moves to the deadline of the wait in progress. A wait that was
/// given up leaves it armed: it may wake its task once for nothing. Like `tokio::time::timeout`,
/// it fires even when what it races has used up the task's cooperative budget (an instance
/// flooding `100 Continue` lines, say).
#[derive(Default)]
pub(crate) struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Timer {
    /// Resolves at `deadline`, never before.
    pub(crate) async fn until(&mut self, deadline: Instant) {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        loop {
            tokio::task::coop::unconstrained(sleep.as_mut()).await;
            if sleep.deadline() >= deadline {
                return;
            }
            sleep.as_mut().reset(deadline);
        }
    }
}

/// The error a request body gives when the client stops sending it.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled for {0:?}")]
pub(crate) struct BodyStalled(pub Duration);

/// A body that fails with `BodyStalled` when no frame arrives for `limit`. Hand-written: no
/// crate wharf keeps has one (tower-http's `TimeoutBody` would add two crates for 40 lines).
pub(crate) struct IdleBody<B> {
    inner: B,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    /// Set once the body has been read to its end, for whoever asked (`noting_end`).
    ended: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl<B> IdleBody<B> {
    pub(crate) fn new(inner: B, limit: Duration) -> Self {
        IdleBody {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            ended: None,
        }
    }

    /// The same body, which sets `ended` once it has been read to its end.
    pub(crate) fn noting_end(self, ended: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        IdleBody {
            ended: Some(ended),
            ..self
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::proxy::body::BoxError>,
{
    type Data = Bytes;
    type Error = crate::proxy::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(ended) = &this.ended
                    && (frame.is_none() || this.inner.is_end_stream())
                {
                    ended.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let deadline = Instant::now() + this.limit;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                ready!(this.timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(BodyStalled(this.limit)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_fails_after_the_limit_unless_exempt() {
        let (a, _b) = tokio::io::duplex(16);
        let (mut w, exempt) = WriteDeadline::new(a, Duration::from_secs(60));
        w.write_all(&[0; 16]).await.unwrap();
        let err = w.write_all(&[0; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let (a, _b) = tokio::io::duplex(16);
        let (mut w, _) = WriteDeadline::new(a, Duration::from_secs(60));
        exempt.store(true, Ordering::Relaxed);
        w.exempt.store(true, Ordering::Relaxed);
        w.write_all(&[0; 16]).await.unwrap();
        let stalled = tokio::time::timeout(Duration::from_secs(600), w.write_all(&[0; 16])).await;
        assert!(
            stalled.is_err(),
            "an exempt stream waits for as long as it takes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_ends_each_wait_at_its_own_deadline() {
        let secs = Duration::from_secs;
        let start = Instant::now();
        let mut timer = Timer::default();
        // A wait given up at 1 s leaves the timer armed for 4 s.
        let gave_up = tokio::time::timeout(secs(1), timer.until(start + secs(4))).await;
        assert!(gave_up.is_err());
        // A later deadline is not cut short by the armed one.
        timer.until(start + secs(120)).await;
        assert_eq!(Instant::now() - start, secs(120));
        // Nor does a wait given up hold back an earlier one that follows.
        let at = Instant::now();
        let gave_up = tokio::time::timeout(secs(1), timer.until(at + secs(60))).await;
        assert!(gave_up.is_err());
        timer.until(at + secs(3)).await;
        assert_eq!(Instant::now() - at, secs(3));
        // A deadline already past ends the wait at once.
        let at = Instant::now();
        timer.until(at - secs(1)).await;
        assert_eq!(Instant::now(), at);
    }

    #[tokio::test]
    async fn a_timer_fires_while_what_it_races_uses_up_the_budget() {
        // Ready at every poll until the task's budget is gone, then yields: a select! polls
        // the timer only in those turns.
        let busy = async {
            loop {
                tokio::task::coop::consume_budget().await;
            }
        };
        let mut timer = Timer::default();
        let deadline = Instant::now() + Duration::from_millis(50);
        let raced = async {
            tokio::select! {
                biased;
                () = busy => {}
                () = timer.until(deadline) => {}
            }
        };
        let outcome = tokio::time::timeout(Duration::from_secs(10), raced).await;
        assert!(outcome.is_ok(), "the timer never fired");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_body_errors_with_body_stalled() {
        let (mut tx, body) =
            http_body_util::channel::Channel::<Bytes, crate::proxy::body::BoxError>::new(1);
        tx.send_data(Bytes::from_static(b"x")).await.unwrap();
        let mut body = IdleBody::new(body, Duration::from_secs(60));
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "x");
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyStalled>());
    }
}
