//! The express lane. Most requests a dev proxy carries are plain HTTP/1.1 requests without a
//! body or with a `Content-Length` one (pages, assets, API calls, HMR polls). For those the
//! lane works on the bytes: it parses the head with httparse, writes the upstream head
//! straight from it (`request`; by the rulebook hyper's path follows too, `rules`:
//! origin-form, hop-by-hop headers and those `Connection` names dropped, the proxy's
//! `X-Forwarded-*` and `Via` written in place of the client's), sends the body on, and
//! streams the response back over the upstream connection this client connection keeps,
//! re-framing chunked bodies. No header maps, no boxed bodies, no connection task: the request
//! is served in the client's own task. It does so on plain TCP and, once `proxy::tls` has
//! shaken hands and ALPN said HTTP/1.1 (or nothing), on TLS (`client`: long bodies are spliced
//! on plain TCP only, and requests over TLS say `X-Forwarded-Proto: https`).
//!
//! Anything else — a chunked body, an upgrade, `Expect`, HTTP/1.0, an absolute-form target, a
//! Host that is not a ready instance, anything odd or over a limit — is handed to hyper, with
//! the bytes read so far, before the lane has answered or forwarded any of it. hyper then
//! serves the connection (over TLS, the TLS stream) to its end and gives the answers and
//! errors it always gave. With `[proxy] express = false` every request is handed over so: the
//! lane only keeps the first request's deadlines and tells HTTP/2 from HTTP/1.1 and TLS.
//!
//! A plain-HTTP connection that has waited `Limits::park_after` for its next request (or its
//! first) leaves the lane for the park (`proxy::park`), with where its wait stood (`Idle`); it
//! comes back through `serve` again, with that `Idle`, when its client sends something.

pub(crate) mod chunked;
mod client;
mod lines;
mod relay;
mod request;
mod response;
mod socket;
mod spare;
mod splice;

use client::Client;
pub(crate) use relay::linger;
pub(crate) use socket::Socket;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::proxy::balance::{self, Choice};
use crate::proxy::deadline::Timer;
use crate::proxy::errors::ProxyError;
use crate::proxy::forward::Forwarder;
use crate::proxy::lane::relay::{BodyFailure, went_away};
use crate::proxy::lane::request::{Plan, plan};
use crate::proxy::lane::response::{Answer, Failure, Framing, exchange_heads, page_bytes};
use crate::proxy::limits::Limits;
use crate::proxy::park::Idle;
use crate::proxy::routes::Route;
use crate::proxy::rules;
use crate::proxy::upstream::Upstream;
use std::sync::Arc;

/// Read size for heads, and for bodies.
const HEAD_BUF: usize = 8 * 1024;
const BODY_BUF: usize = 64 * 1024;
/// How long an answer may take before a client connection not registered with tokio yet
/// (`Client::is_watched`) is registered to notice its hang-up: most answers come sooner, and
/// the connection never pays for the registration; a slow one is abandoned this much later.
const WATCH_AFTER: std::time::Duration = std::time::Duration::from_millis(50);
/// What a client speaking HTTP/2 with prior knowledge sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The first byte of a TLS handshake record (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// How the lane left a client connection.
pub(crate) enum Outcome<C> {
    /// Served and closed (or the client went away).
    Closed,
    /// hyper serves the rest, in this protocol: the connection and what was read from it but
    /// not used.
    Handoff(Protocol, C, BytesMut),
    /// Idle for `Limits::park_after`: the connection is for the park (only when `Wait` said it
    /// may be). It holds no buffers, and its connection to an instance went to the pool.
    Park(C, Idle),
}

/// How the lane starts waiting for a connection's first request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wait {
    /// Where the wait stood, for a connection back from the park; None for a new one.
    pub(crate) resumed: Option<Idle>,
    /// Whether the connection may go to the park once idle (`Outcome::Park`).
    pub(crate) may_park: bool,
}

/// What hyper is to speak on a connection the lane hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    /// The client sent HTTP/2's preface (all of it, in what was read).
    Http2,
    /// The client's first byte opens a TLS handshake record: HTTPS (`proxy::tls`).
    Tls,
}

/// Serve `client` for as long as its requests fit the lane.
pub(crate) async fn serve<C: Client>(
    client: C,
    peer: SocketAddr,
    forwarder: &Forwarder,
    shutdown: &CancellationToken,
    wait: Wait,
) -> Outcome<C> {
    let mut lane = Lane {
        client,
        // Rendered once: every request's X-Forwarded-For carries it.
        peer: rules::peer_text(peer.ip()),
        forwarder,
        timer: Timer::default(),
        // None yet: the first read waits for the client's bytes without them.
        inbuf: BytesMut::new(),
        upbuf: BytesMut::new(),
        request: Vec::new(),
        out: Vec::new(),
        upstream: None,
        // Over TLS the handshake was the first byte; the head has `header_read`, and a
        // record of its own is no ClientHello.
        fresh: wait.resumed.map_or(!C::TLS, |idle| idle.fresh),
        resumed: wait.resumed.map(|idle| idle.deadline),
        may_park: wait.may_park,
        unread: 0,
    };
    let ended = lane.run(shutdown).await;
    if let Some(up) = lane.upstream.take() {
        forwarder.pool.put(up.addr, up);
    }
    match ended {
        Next::Handoff(protocol) => Outcome::Handoff(protocol, lane.client, lane.inbuf),
        Next::Park(idle) => Outcome::Park(lane.client, idle),
        Next::Request(_) | Next::Close => {
            if C::TLS {
                // close_notify: how a TLS client tells the end of an answer that runs until
                // the close from a cut (OpenSSL reports a close without one as an error).
                let stall = forwarder.limits.write_stall;
                let _ = tokio::time::timeout(stall, lane.client.shutdown()).await;
            }
            lane.park();
            Outcome::Closed
        }
    }
}

struct Lane<'f, C> {
    client: C,
    /// The client's address, as X-Forwarded-For gives it.
    peer: std::borrow::Cow<'static, str>,
    forwarder: &'f Forwarder,
    /// The one timer behind the waits for a request head and for a response head.
    timer: Timer,
    /// Bytes from the client not used yet.
    inbuf: BytesMut,
    /// Bytes from the instance not used yet.
    upbuf: BytesMut,
    /// The upstream request head being sent.
    request: Vec<u8>,
    /// What goes to the client next.
    out: Vec<u8>,
    /// The connection to the last instance used, between two complete exchanges.
    upstream: Option<Upstream>,
    /// Nothing has been read from the client yet.
    fresh: bool,
    /// The deadline of the wait a connection back from the park was in.
    resumed: Option<Instant>,
    /// The connection may go to the park (`Outcome::Park`) once idle.
    may_park: bool,
    /// Bytes of the current request's body not yet sent upstream.
    unread: u64,
}

enum Next {
    Request(Plan),
    Handoff(Protocol),
    Close,
    Park(Idle),
}

/// Read what the client sent into `inbuf`; or, `lean`, wait until it has sent something
/// (None), reading nothing.
async fn read_or_wait<C: Client>(
    client: &mut C,
    inbuf: &mut BytesMut,
    lean: bool,
) -> io::Result<Option<usize>> {
    if lean {
        client.readable().await?;
        return Ok(None);
    }
    // Part of a head read already: the rest is more of a request.
    let more = !inbuf.is_empty();
    read_more(client, inbuf, more).await.map(Some)
}

/// Read what the client sent next into `buf` (0 at its end); `more`: it is more of a request
/// than came so far, and a read that must wait for it first acknowledges what came
/// (`Client::ack_now`). A client with Nagle's algorithm on holds the rest back until then,
/// and the connection delays its ACKs for an answer to carry them
/// (`accept::acks_ride_on_answers`).
async fn read_more<C: Client>(client: &mut C, buf: &mut BytesMut, more: bool) -> io::Result<usize> {
    let mut ack = more;
    std::future::poll_fn(|cx| {
        let read = client.poll_read_into(cx, buf);
        if ack && read.is_pending() {
            client.ack_now();
            ack = false;
        }
        read
    })
    .await
}

/// Wait for an answer's `deadline` (false), or for the client's hang-up (true). A client
/// connection not registered with tokio yet is watched only once the answer is slow
/// (`WATCH_AFTER`): most answers come sooner, and it is never registered.
async fn answer_wait<C: Client>(
    timer: &mut Timer,
    client: &mut C,
    patience: std::time::Duration,
    deadline: Instant,
) -> bool {
    if !client.is_watched() && WATCH_AFTER < patience {
        timer.until(deadline - (patience - WATCH_AFTER)).await;
    }
    tokio::select! {
        biased;
        () = timer.until(deadline) => false,
        () = client.gone() => true,
    }
}

/// Whether a request head says a body follows.
fn announces_body(req: &httparse::Request) -> bool {
    req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
    })
}

fn unreachable(plan: &Plan, e: io::Error, reused: bool, answered: bool) -> ProxyError {
    let name = plan.members.name();
    ProxyError::unreachable(name, plan.addr, reused, answered, Box::new(e))
}

impl<C: Client> Lane<'_, C> {
    /// Serve requests until the connection ends (`Close`), must go to hyper (`Handoff`) or
    /// to the park (`Park`).
    async fn run(&mut self, shutdown: &CancellationToken) -> Next {
        let mut cancelled = std::pin::pin!(shutdown.cancelled());
        loop {
            let mut plan = match self.next_request(cancelled.as_mut()).await {
                Next::Request(plan) => plan,
                other => return other,
            };
            // Not boxed: an exchange's state (over a kilobyte, past glibc's per-thread cache)
            // cost 600 instructions per request to allocate; its big, rare parts are boxed.
            match self.exchange(&mut plan).await {
                Ok(true) if plan.keep_alive => {}
                _ => return Next::Close,
            }
        }
    }

    /// Read the next request head (within `Limits::header_read`) and plan it; or, once idle
    /// for `Limits::park_after` with nothing read, leave for the park.
    async fn next_request(
        &mut self,
        mut cancelled: Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> Next {
        let limits = &self.forwarder.limits;
        // A new connection gets `first_byte` to start talking, then `header_read` for the head.
        let first = if self.fresh {
            limits.first_byte
        } else {
            limits.header_read
        };
        let now = Instant::now();
        // Back from the park: the wait goes on to the deadline it had.
        let mut deadline = self.resumed.take().unwrap_or(now + first);
        let park_at = now + limits.park_after;
        loop {
            // HTTP/2's preface goes to hyper whole, however it was split (httparse stops at
            // its version, half-way).
            let preface_so_far = H2_PREFACE.starts_with(&self.inbuf);
            if self.inbuf.starts_with(H2_PREFACE) {
                return Next::Handoff(Protocol::Http2);
            }
            if !self.inbuf.is_empty() && !preface_so_far {
                let mut headers = [httparse::EMPTY_HEADER; Limits::MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&self.inbuf) {
                    Ok(httparse::Status::Complete(len)) if len <= limits.max_head => {
                        let (forwarder, peer) = (self.forwarder, &self.peer);
                        let plan = plan(&req, forwarder, peer, C::TLS, &mut self.request);
                        let Some(plan) = plan else {
                            // hyper waits for the body without acknowledging the head first
                            // (`read_more`): it is done here, and the connection acknowledges
                            // at once until it has exchanged a request and answer again.
                            if announces_body(&req) {
                                self.client.ack_now();
                            }
                            return Next::Handoff(Protocol::Http1);
                        };
                        self.inbuf.advance(len);
                        return Next::Request(plan);
                    }
                    Ok(httparse::Status::Partial) if self.inbuf.len() < limits.max_head => {}
                    // Over a limit, or malformed: hyper gives the answer it always gave.
                    _ => return Next::Handoff(Protocol::Http1),
                }
            }
            // Nothing to read yet and none of it buffered: wait without buffers (`spare`).
            let lean = self.inbuf.is_empty() && !self.client.readable_now();
            if lean {
                self.park();
            } else {
                // A new connection whose first bytes are already there (most are) takes a
                // kept set as a woken one does, instead of allocating four buffers that its
                // close then frees.
                if self.bare() {
                    self.unpark();
                }
                self.inbuf.reserve(HEAD_BUF);
            }
            // Idle with nothing read: the park, unless the deadline comes first. (Not only
            // `lean`: a new socket is readable as far as tokio knows until a read finds
            // nothing, and that read then waits holding a buffer.)
            let park = self.may_park && self.inbuf.is_empty() && park_at < deadline;
            let until = if park { park_at } else { deadline };
            // The kept upstream connection is closed once idle for `max_idle`, as pooled
            // ones are, so an on-demand instance sees no connection and may go idle; the
            // same timer serves all three waits (parking gives it to the pool).
            let release = self
                .upstream
                .as_ref()
                .map(|up| up.idle_since + up.max_idle)
                .filter(|at| *at < until);
            let read = tokio::select! {
                biased;
                read = read_or_wait(&mut self.client, &mut self.inbuf, lean) => match read {
                    // The client's bytes are here: buffers again, then read them.
                    Ok(None) => {
                        self.unpark();
                        continue;
                    }
                    Ok(Some(n)) => Some(Ok(n)),
                    Err(e) => Some(Err(e)),
                },
                () = self.timer.until(release.unwrap_or(until)) => None,
                _ = cancelled.as_mut(), if self.inbuf.is_empty() => return Next::Close,
            };
            match read {
                Some(Ok(n)) if n > 0 => {
                    if self.fresh {
                        if self.inbuf[0] == TLS_HANDSHAKE {
                            return Next::Handoff(Protocol::Tls);
                        }
                        self.fresh = false;
                        deadline = Instant::now() + limits.header_read;
                    }
                }
                None if release.is_some() => self.upstream = None,
                None if park => {
                    if !lean {
                        self.park();
                    }
                    let fresh = self.fresh;
                    return Next::Park(Idle { fresh, deadline });
                }
                // Closed, failed, or too slow: nothing to answer.
                _ => return Next::Close,
            }
        }
    }

    /// Give the buffers to `spare` for the wait.
    fn park(&mut self) {
        spare::give(spare::Buffers {
            inbuf: std::mem::take(&mut self.inbuf),
            upbuf: std::mem::take(&mut self.upbuf),
            request: std::mem::take(&mut self.request),
            out: std::mem::take(&mut self.out),
        });
    }

    /// Holds no buffers: new, or parked.
    fn bare(&self) -> bool {
        self.inbuf.capacity() == 0
            && self.upbuf.capacity() == 0
            && self.request.capacity() == 0
            && self.out.capacity() == 0
    }

    /// Buffers again, after a wait.
    fn unpark(&mut self) {
        let bufs = spare::take();
        (self.inbuf, self.upbuf) = (bufs.inbuf, bufs.upbuf);
        (self.request, self.out) = (bufs.request, bufs.out);
    }

    /// Forward one request and its response. True when both connections are fit for the
    /// next request.
    async fn exchange(&mut self, plan: &mut Plan) -> io::Result<bool> {
        self.unread = plan.body;
        let (mut up, answer) = match self.send(plan).await? {
            Ok(sent) => sent,
            Err(e) => {
                // Answered before the body was all read: the connection closes.
                let keep_alive = rules::open_after_error(plan.keep_alive, self.unread > 0);
                Box::pin(self.write_error(&e, plan.head, keep_alive)).await?;
                if self.unread > 0 {
                    linger(&mut self.client, self.forwarder.limits.linger).await;
                }
                return Ok(keep_alive);
            }
        };
        self.forwarder.mark_answered(plan.route());
        if let Some(cookie) =
            balance::cookie_to_set(&plan.members, plan.cookie, plan.route().number)
        {
            // Before the blank line that ends the head.
            self.out.truncate(self.out.len() - 2);
            lines::header_line(&mut self.out, b"set-cookie", cookie.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        // On any error the connection is dropped here, mid-response: never kept or pooled.
        // The last write of an answer that ends the connection says so: over TLS with the
        // close_notify, on plain TCP with the FIN in the same segment (`Client::send`).
        let closing = !plan.keep_alive;
        let complete = self.relay_body(&mut up, answer.framing, closing).await?;
        if self.unread > 0 {
            // An early answer: the request body was cut short on both connections.
            linger(&mut self.client, self.forwarder.limits.linger).await;
            return Ok(false);
        }
        if complete && answer.reusable && self.upbuf.is_empty() {
            up.idle_since = Instant::now();
            self.upstream = Some(up);
        }
        // Keep idle connections small after a large response.
        if self.upbuf.capacity() > HEAD_BUF {
            self.upbuf = BytesMut::new();
        }
        if self.out.capacity() > HEAD_BUF {
            self.out = Vec::new();
        }
        if self.request.capacity() > HEAD_BUF {
            self.request = Vec::new();
        }
        if self.inbuf.is_empty() && self.inbuf.capacity() > 2 * HEAD_BUF {
            self.inbuf = BytesMut::with_capacity(HEAD_BUF);
        }
        Ok(complete && answer.framing != Framing::UntilClose)
    }

    /// Send the request head and read the response head, on the kept connection or a pooled
    /// one (once more on a fresh one if that had been closed), within the upstream timeout.
    /// The outer error: the client went away meanwhile.
    /// A connection refused (or closed unanswered on a fresh connection, to a request that
    /// may go again) sends it to another member, if the name has one in rotation.
    async fn send(
        &mut self,
        plan: &mut Plan,
    ) -> io::Result<Result<(Upstream, Answer), ProxyError>> {
        let mut fresh_only = false;
        let mut tried = Vec::new();
        let mut comeback = None;
        loop {
            // After a failure the kept connection is gone, and only a new one will do.
            let (mut up, reused) = match self.upstream.take() {
                Some(up) if up.addr == plan.addr && up.reusable() => (up, true),
                other => {
                    // Another instance's connection waits in the pool; a stale one closes.
                    if let Some(up) = other.filter(|up| up.addr != plan.addr) {
                        self.forwarder.pool.put(up.addr, up);
                    }
                    let pooled = if fresh_only {
                        None
                    } else {
                        self.forwarder.pool.take(plan.addr)
                    };
                    match pooled {
                        Some(up) => (up, true),
                        None => {
                            let (budget, limits) = (&self.forwarder.budget, &self.forwarder.limits);
                            // Boxed: a connect's state is large, and most requests reuse one.
                            let connect = Box::pin(Upstream::connect(plan.addr, budget, limits));
                            match connect.await {
                                Ok(up) => (up, false),
                                Err(e) => {
                                    let e = unreachable(plan, e, false, false);
                                    match self.next_member(plan, &mut tried, &mut comeback, e).await
                                    {
                                        Ok(()) => {
                                            fresh_only = false;
                                            continue;
                                        }
                                        Err(e) => return Ok(Err(e)),
                                    }
                                }
                            }
                        }
                    }
                }
            };
            let mut head = Some(self.request.as_slice());
            if plan.body > 0 {
                match self.send_with_body(&mut up).await {
                    Ok(()) => head = None,
                    Err(BodyFailure::HeadNotSent(_)) if reused => {
                        fresh_only = true;
                        continue;
                    }
                    Err(BodyFailure::HeadNotSent(e)) => {
                        return Ok(Err(unreachable(plan, e, reused, false)));
                    }
                    Err(BodyFailure::Upstream(e)) => {
                        return Ok(Box::pin(self.early_answer(up, plan, e, reused)).await);
                    }
                    Err(BodyFailure::Stalled) => {
                        let idle = self.forwarder.limits.body_idle;
                        return Ok(Err(ProxyError::BodyStalled(idle)));
                    }
                    Err(BodyFailure::ClientGone) => return Err(went_away()),
                }
            }
            // The answer's clock starts once the request is all out.
            let patience = self.forwarder.limits.upstream_head;
            let deadline = Instant::now() + patience;
            self.upbuf.clear();
            let exchange = exchange_heads(
                &mut up,
                head,
                &mut self.upbuf,
                &mut self.out,
                plan,
                plan.keep_alive,
            );
            let (timer, client) = (&mut self.timer, &mut self.client);
            let result = tokio::select! {
                biased;
                result = exchange => Some(result),
                gone = answer_wait(timer, client, patience, deadline) => {
                    // Nobody is left to answer: drop the request (and its connection).
                    if gone {
                        return Err(went_away());
                    }
                    None
                }
            };
            match result {
                Some(Ok(answer)) => {
                    plan.route().health.admit();
                    return Ok(Ok((up, answer)));
                }
                None => {
                    return Ok(Err(ProxyError::UpstreamTimeout {
                        name: plan.members.name().clone(),
                        addr: plan.addr,
                        after: self.forwarder.limits.upstream_head,
                    }));
                }
                Some(Err(Failure::Silent(_)))
                    if rules::may_send_again(plan.idempotent, reused, false) =>
                {
                    fresh_only = true;
                }
                // A member closing new connections unanswered is going away (a drain, a
                // crash): another (or its new registration) may take a request that can go
                // again, as nginx's `proxy_next_upstream error` does.
                Some(Err(Failure::Silent(e))) if plan.idempotent => {
                    let e = unreachable(plan, e, reused, false);
                    match self.next_member(plan, &mut tried, &mut comeback, e).await {
                        Ok(()) => fresh_only = false,
                        Err(e) => return Ok(Err(e)),
                    }
                }
                Some(Err(Failure::Silent(e))) => {
                    return Ok(Err(unreachable(plan, e, reused, false)));
                }
                Some(Err(Failure::Io(e))) => return Ok(Err(unreachable(plan, e, reused, true))),
                Some(Err(Failure::Invalid(why))) => {
                    return Ok(Err(ProxyError::BadResponse {
                        name: plan.members.name().clone(),
                        addr: plan.addr,
                        why,
                    }));
                }
            }
        }
    }

    /// The member `plan` went to could not be reached (`e`): take it out of rotation and
    /// switch to the next one in rotation, by the name's members as they are now (the same
    /// member, if it has registered a new socket since); `e` (or, for a replicated name, what
    /// each member is up to) when none is left. An env-mode server that restarts is waited
    /// for (`Forwarder::after_refusal`; `comeback`: since when).
    async fn next_member(
        &self,
        plan: &mut Plan,
        tried: &mut Vec<Arc<Route>>,
        comeback: &mut Option<Instant>,
        e: ProxyError,
    ) -> Result<(), ProxyError> {
        if matches!(e, ProxyError::OutOfFds(_)) {
            return Err(e);
        }
        tried.push(plan.route().clone());
        if let Some(now) = self.forwarder.routes.get(plan.members.name()) {
            plan.members = now;
        }
        if let Choice::Member(next) = balance::choose(&plan.members, None, tried)
            && plan.switch(next, &e)
        {
            return Ok(());
        }
        let name = plan.members.name().clone();
        let back = self
            .forwarder
            .after_refusal(&name, plan.route(), &e, comeback);
        if let Some((now, next)) = Box::pin(back).await {
            plan.members = now;
            if plan.switch(next, &e) {
                return Ok(());
            }
        }
        balance::eject(plan.route(), &e, &plan.members);
        Err(balance::exhausted(&plan.members, e))
    }

    /// The answer a server sent before it stopped taking the request body (`e`, the failed
    /// write): an early 413 or 401, often followed by a close. It is in the socket already, or
    /// within `Limits::early_answer`; without one, the failed write is the error. What follows on the
    /// client connection is the rest of that body, never a request: it closes after the answer.
    async fn early_answer(
        &mut self,
        mut up: Upstream,
        plan: &Plan,
        e: io::Error,
        reused: bool,
    ) -> Result<(Upstream, Answer), ProxyError> {
        self.upbuf.clear();
        let exchange = exchange_heads(&mut up, None, &mut self.upbuf, &mut self.out, plan, false);
        match tokio::time::timeout(self.forwarder.limits.early_answer, exchange).await {
            Ok(Ok(answer)) => Ok((up, answer)),
            _ => Err(unreachable(plan, e, reused, false)),
        }
    }

    /// Answer with wharf's own page for `e`, as hyper would have (no body after HEAD).
    async fn write_error(
        &mut self,
        e: &ProxyError,
        head: bool,
        keep_alive: bool,
    ) -> io::Result<()> {
        page_bytes(
            self.forwarder.error_page(e),
            head,
            keep_alive,
            &mut self.out,
        )
        .await;
        let stall = self.forwarder.limits.write_stall;
        self.client
            .send(&self.out, stall, C::TLS && !keep_alive)
            .await
    }
}

/// A stream that first gives back bytes already read from it: how hyper receives a
/// connection the lane handed over. Why hand-written: `AsyncReadExt::chain` over a `Cursor`
/// is a reader only, and hyper needs one object that reads and writes; `tokio::io::join` of
/// that with a write half needs `TcpStream::into_split` (an `Arc` per connection, and a write
/// half that shuts the socket down when dropped). hyper's own `Rewind` is private.
pub(crate) struct Replay<S> {
    buffered: BytesMut,
    inner: S,
}

impl<S> Replay<S> {
    pub(crate) fn new(buffered: BytesMut, inner: S) -> Self {
        Replay { buffered, inner }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Bytes read ahead are still to be given back.
    pub(crate) fn has_buffered(&self) -> bool {
        !self.buffered.is_empty()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.buffered.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.buffered.len().min(buf.remaining());
        buf.put_slice(&self.buffered[..n]);
        self.buffered.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// A connection with something to read when it starts reads it into a kept set of
    /// buffers, and gives that set back at its close, for the next connection: none allocated.
    #[tokio::test]
    async fn a_new_connection_with_bytes_ready_uses_a_kept_set() {
        while spare::take().inbuf.capacity() > 0 {}
        let kept = BytesMut::with_capacity(HEAD_BUF);
        let at = kept.as_ptr();
        spare::give(spare::Buffers {
            inbuf: kept,
            ..spare::Buffers::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        // Its end is what it sends first (a head would need an instance): the lane closes.
        client.shutdown().await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        stream.readable().await.unwrap();
        let stream = Socket::new(stream.into_std().unwrap());
        let forwarder = Forwarder::new(
            Arc::default(),
            Box::new(Vec::new),
            Limits::default(),
            crate::proxy::budget::Budget::new(64),
        );
        let shutdown = CancellationToken::new();
        let wait = Wait {
            resumed: None,
            may_park: false,
        };
        let outcome = serve(stream, peer, &forwarder, &shutdown, wait).await;
        assert!(matches!(outcome, Outcome::Closed));
        let back = spare::take();
        assert_eq!(back.inbuf.as_ptr(), at, "the kept set, not a new one");
        assert_eq!(
            spare::take().inbuf.capacity(),
            0,
            "one set, given back once"
        );
    }
}
