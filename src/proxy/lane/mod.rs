//! The express lane. Most requests a dev proxy carries are plain HTTP/1.1 requests without a
//! body or with a `Content-Length` one (pages, assets, API calls, HMR polls). For those the
//! lane works on the bytes: it parses the head with httparse, writes the upstream head
//! straight from it (same rules as `Forwarder::forward`, from `rules`: origin-form, hop-by-hop
//! headers and those `Connection` names dropped, the proxy's `X-Forwarded-*` and `Via` written
//! in place of the client's), sends the body on, and
//! streams the response back over the upstream connection this client connection keeps,
//! re-framing chunked bodies. No header maps, no boxed bodies, no connection task: the request
//! is served in the client's own task.
//!
//! Anything else — a chunked body, an upgrade, `Expect`, HTTP/1.0, an absolute-form target, a
//! Host that is not a ready instance, anything odd or over a limit — is handed to hyper, with
//! the bytes read so far, before the lane has answered or forwarded any of it. hyper then
//! serves the connection to its end and gives the answers and errors it always gave. With
//! `[proxy] express = false` every request is handed over so: the lane only keeps the first
//! request's deadlines and tells HTTP/2 from HTTP/1.1.

/// Public only for the fuzz tier (tests/it/fuzz.rs), which drives the decoder directly.
#[doc(hidden)]
pub mod chunked;
mod splice;

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::host::{self, Target};
use crate::proxy::deadline::{self, CLIENT_STALLED, Timer};
use crate::proxy::errors::ProxyError;
use crate::proxy::forward::Forwarder;
use crate::proxy::lane::chunked::Decoder;
use crate::proxy::lane::splice::Pipe;
use crate::proxy::limits::Limits;
use crate::proxy::routes::Route;
use crate::proxy::rules::{self, Fate, tokens};
use crate::proxy::upstream::Upstream;

/// Read size for heads, and for bodies.
const HEAD_BUF: usize = 8 * 1024;
const BODY_BUF: usize = 64 * 1024;
/// What a client speaking HTTP/2 with prior knowledge sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How the lane left a client connection.
pub enum Outcome {
    /// Served and closed (or the client went away).
    Closed,
    /// hyper serves the rest, in this protocol: the connection and what was read from it but
    /// not used.
    Handoff(Protocol, TcpStream, BytesMut),
}

/// What hyper is to speak on a connection the lane hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// The client sent HTTP/2's preface (all of it, in what was read).
    Http2,
}

/// Serve `client` for as long as its requests fit the lane.
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    forwarder: &Forwarder,
    shutdown: &CancellationToken,
) -> Outcome {
    let mut lane = Lane {
        client,
        // Rendered once: every request's X-Forwarded-For carries it.
        peer: peer.ip().to_canonical().to_string(),
        forwarder,
        timer: Timer::default(),
        inbuf: BytesMut::with_capacity(HEAD_BUF),
        upbuf: BytesMut::new(),
        request: Vec::new(),
        out: Vec::new(),
        upstream: None,
        fresh: true,
        unread: 0,
    };
    let handoff = lane.run(shutdown).await;
    if let Some(up) = lane.upstream.take() {
        forwarder.pool.put(up.addr, up);
    }
    match handoff {
        Some(protocol) => Outcome::Handoff(protocol, lane.client, lane.inbuf),
        None => Outcome::Closed,
    }
}

struct Lane<'f> {
    client: TcpStream,
    /// The client's address, as X-Forwarded-For gives it.
    peer: String,
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
    /// Bytes of the current request's body not yet sent upstream.
    unread: u64,
}

/// A request the lane takes, once checked and its upstream head written.
struct Plan {
    route: Arc<Route>,
    addr: SocketAddr,
    /// The client did not ask to close after this response.
    keep_alive: bool,
    /// Safe to send again if a reused connection failed before answering.
    idempotent: bool,
    /// HEAD: the response has no body whatever its headers say.
    head: bool,
    /// The request body's length (`Content-Length`; 0 without one).
    body: u64,
}

enum Next {
    Request(Plan),
    Handoff(Protocol),
    Close,
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the instance closes the connection.
    UntilClose,
}

/// What the response head said, once its downstream copy is in `out`.
struct Answer {
    framing: Framing,
    /// The instance keeps the connection open after this response.
    reusable: bool,
}

/// Why a request body did not get through.
enum BodyFailure {
    /// The head could not be written: nothing of the request was used, it may go again.
    HeadNotSent(io::Error),
    Upstream(io::Error),
    /// The client sent nothing for `Limits::body_idle`.
    Stalled,
    ClientGone,
}

/// Why an exchange with the instance failed before a response head arrived.
enum Failure {
    /// Nothing was received: on a reused connection, the server had closed it.
    Silent(io::Error),
    Io(io::Error),
    Invalid(&'static str),
}

impl Lane<'_> {
    /// Serve requests until the connection ends (None) or must go to hyper.
    async fn run(&mut self, shutdown: &CancellationToken) -> Option<Protocol> {
        let mut cancelled = std::pin::pin!(shutdown.cancelled());
        loop {
            let plan = match self.next_request(cancelled.as_mut()).await {
                Next::Request(plan) => plan,
                Next::Handoff(protocol) => return Some(protocol),
                Next::Close => return None,
            };
            match self.exchange(&plan).await {
                Ok(true) if plan.keep_alive => {}
                _ => return None,
            }
        }
    }

    /// Read the next request head (within `Limits::header_read`) and plan it.
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
        let mut deadline = Instant::now() + first;
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
                        let plan = plan(&req, self.forwarder, &self.peer, &mut self.request);
                        let Some(plan) = plan else {
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
            self.inbuf.reserve(HEAD_BUF);
            // The kept upstream connection is closed once idle for `max_idle`, as pooled
            // ones are, so an on-demand instance sees no connection and may go idle; the
            // same timer serves both waits.
            let release = self
                .upstream
                .as_ref()
                .map(|up| up.idle_since + up.max_idle)
                .filter(|at| *at < deadline);
            let read = tokio::select! {
                biased;
                read = self.client.read_buf(&mut self.inbuf) => Some(read),
                () = self.timer.until(release.unwrap_or(deadline)) => None,
                _ = cancelled.as_mut(), if self.inbuf.is_empty() => return Next::Close,
            };
            match read {
                Some(Ok(n)) if n > 0 => {
                    if self.fresh {
                        self.fresh = false;
                        deadline = Instant::now() + limits.header_read;
                    }
                }
                None if release.is_some() => self.upstream = None,
                // Closed, failed, or too slow: nothing to answer.
                _ => return Next::Close,
            }
        }
    }

    /// Forward one request and its response. True when both connections are fit for the
    /// next request.
    async fn exchange(&mut self, plan: &Plan) -> io::Result<bool> {
        plan.route.count_request();
        self.unread = plan.body;
        let (mut up, answer) = match self.send(plan).await? {
            Ok(sent) => sent,
            Err(e) => {
                // Answered before the body was all read: what follows on the connection is
                // the rest of that body, never a request. It closes.
                let keep_alive = plan.keep_alive && self.unread == 0;
                self.write_error(&e, plan.head, keep_alive).await?;
                if self.unread > 0 {
                    linger(&mut self.client, self.forwarder.limits.linger).await;
                }
                return Ok(keep_alive);
            }
        };
        self.forwarder.mark_answered(&plan.route);
        // On any error the connection is dropped here, mid-response: never kept or pooled.
        let complete = self.relay_body(&mut up, answer.framing).await?;
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
    async fn send(&mut self, plan: &Plan) -> io::Result<Result<(Upstream, Answer), ProxyError>> {
        let name = &plan.route.instance.name;
        let mut fresh_only = false;
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
                            match Upstream::connect(plan.addr, budget, limits).await {
                                Ok(up) => (up, false),
                                Err(e) => return Ok(Err(unreachable(plan, e, false, false))),
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
                        return Ok(self.early_answer(up, plan, e, reused).await);
                    }
                    Err(BodyFailure::Stalled) => {
                        let idle = self.forwarder.limits.body_idle;
                        return Ok(Err(ProxyError::BodyStalled(idle)));
                    }
                    Err(BodyFailure::ClientGone) => return Err(went_away()),
                }
            }
            // The answer's clock starts once the request is all out.
            let deadline = Instant::now() + self.forwarder.limits.upstream_head;
            self.upbuf.clear();
            let exchange = exchange_heads(
                &mut up,
                head,
                &mut self.upbuf,
                &mut self.out,
                plan,
                plan.keep_alive,
            );
            let result = tokio::select! {
                biased;
                result = exchange => Some(result),
                () = self.timer.until(deadline) => None,
                // Nobody is left to answer: drop the request (and its connection).
                () = client_gone(&self.client) => return Err(went_away()),
            };
            match result {
                Some(Ok(answer)) => {
                    return Ok(Ok((up, answer)));
                }
                None => {
                    return Ok(Err(ProxyError::UpstreamTimeout {
                        name: name.clone(),
                        addr: plan.addr,
                        after: self.forwarder.limits.upstream_head,
                    }));
                }
                Some(Err(Failure::Silent(_)))
                    if rules::may_send_again(plan.idempotent, reused, false) =>
                {
                    fresh_only = true;
                }
                Some(Err(Failure::Silent(e))) => {
                    return Ok(Err(unreachable(plan, e, reused, false)));
                }
                Some(Err(Failure::Io(e))) => return Ok(Err(unreachable(plan, e, reused, true))),
                Some(Err(Failure::Invalid(why))) => {
                    return Ok(Err(ProxyError::BadResponse {
                        name: name.clone(),
                        addr: plan.addr,
                        why,
                    }));
                }
            }
        }
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

    /// Send the request head and its body: what the head read brought, then the rest from the
    /// client, each read within `Limits::body_idle`, each write within the upstream timeout.
    async fn send_with_body(&mut self, up: &mut Upstream) -> Result<(), BodyFailure> {
        let (patience, body_idle) = (
            self.forwarder.limits.upstream_head,
            self.forwarder.limits.body_idle,
        );
        let write = async |up: &mut Upstream, bytes: &[u8]| {
            let what = "the server stopped reading the request";
            deadline::within(patience, what, up.stream.write_all(bytes)).await
        };
        write(up, &self.request)
            .await
            .map_err(BodyFailure::HeadNotSent)?;
        loop {
            let take = body_part(self.inbuf.len(), self.unread);
            if take > 0 {
                write(up, &self.inbuf[..take])
                    .await
                    .map_err(BodyFailure::Upstream)?;
                self.inbuf.advance(take);
                self.unread -= take as u64;
            }
            if self.unread == 0 {
                return Ok(());
            }
            self.inbuf.reserve(BODY_BUF);
            match tokio::time::timeout(body_idle, self.client.read_buf(&mut self.inbuf)).await {
                Err(_) => return Err(BodyFailure::Stalled),
                Ok(Ok(0) | Err(_)) => return Err(BodyFailure::ClientGone),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Send the head in `out` and the body after it. False if the body ended early (the
    /// client connection must close so the client sees the truncation).
    async fn relay_body(&mut self, up: &mut Upstream, framing: Framing) -> io::Result<bool> {
        match framing {
            Framing::Empty => write_client(
                &mut self.client,
                &self.out,
                self.forwarder.limits.write_stall,
            )
            .await
            .map(|()| true),
            Framing::Length(mut left) => {
                let take = body_part(self.upbuf.len(), left);
                self.out.extend_from_slice(&self.upbuf[..take]);
                self.upbuf.advance(take);
                left -= take as u64;
                write_client(
                    &mut self.client,
                    &self.out,
                    self.forwarder.limits.write_stall,
                )
                .await?;
                if left > BODY_BUF as u64
                    && let Some(pipe) = Pipe::open(&self.forwarder.budget)
                {
                    let stall = self.forwarder.limits.write_stall;
                    return pipe.relay(&up.stream, &self.client, left, stall).await;
                }
                if left > 0 {
                    up.ack_now();
                }
                while left > 0 {
                    if read_upstream(up, &mut self.upbuf, &self.client).await? == 0 {
                        return Ok(false);
                    }
                    let take = body_part(self.upbuf.len(), left);
                    write_client(
                        &mut self.client,
                        &self.upbuf[..take],
                        self.forwarder.limits.write_stall,
                    )
                    .await?;
                    self.upbuf.advance(take);
                    left -= take as u64;
                }
                Ok(true)
            }
            Framing::Chunked => {
                let mut decoder = Decoder::new(&self.forwarder.limits);
                let mut first_read = true;
                loop {
                    let out = &mut self.out;
                    let decoded = decoder.decode(&self.upbuf, |data| {
                        let _ = write!(Append(out), "{:x}\r\n", data.len());
                        out.extend_from_slice(data);
                        out.extend_from_slice(b"\r\n");
                    });
                    let Ok(used) = decoded else {
                        // Pass on the head and what was valid; closing tells the rest.
                        write_client(
                            &mut self.client,
                            &self.out,
                            self.forwarder.limits.write_stall,
                        )
                        .await?;
                        return Ok(false);
                    };
                    self.upbuf.advance(used);
                    if decoder.is_done() {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    if !self.out.is_empty() {
                        write_client(
                            &mut self.client,
                            &self.out,
                            self.forwarder.limits.write_stall,
                        )
                        .await?;
                        self.out.clear();
                    }
                    if decoder.is_done() {
                        return Ok(true);
                    }
                    if first_read {
                        up.ack_now();
                        first_read = false;
                    }
                    if read_upstream(up, &mut self.upbuf, &self.client).await? == 0 {
                        return Ok(false);
                    }
                }
            }
            Framing::UntilClose => {
                self.out.extend_from_slice(&self.upbuf);
                self.upbuf.clear();
                write_client(
                    &mut self.client,
                    &self.out,
                    self.forwarder.limits.write_stall,
                )
                .await?;
                up.ack_now();
                loop {
                    if read_upstream(up, &mut self.upbuf, &self.client).await? == 0 {
                        return Ok(true);
                    }
                    write_client(
                        &mut self.client,
                        &self.upbuf,
                        self.forwarder.limits.write_stall,
                    )
                    .await?;
                    self.upbuf.clear();
                }
            }
        }
    }

    /// Answer with wharf's own page for `e`, as hyper would have (no body after HEAD).
    async fn write_error(
        &mut self,
        e: &ProxyError,
        head: bool,
        keep_alive: bool,
    ) -> io::Result<()> {
        let page = self.forwarder.error_page(e);
        let (parts, body) = page.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        self.out.clear();
        status_line(
            &mut self.out,
            parts.status.as_u16(),
            parts.status.canonical_reason(),
        );
        for (name, value) in &parts.headers {
            header_line(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
        }
        content_length_line(&mut self.out, body.len() as u64);
        date_line(&mut self.out);
        if !keep_alive {
            self.out.extend_from_slice(b"connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        if !head {
            self.out.extend_from_slice(&body);
        }
        write_client(
            &mut self.client,
            &self.out,
            self.forwarder.limits.write_stall,
        )
        .await
    }
}

/// Send the request head and read the response head, writing its downstream copy into `out`.
async fn exchange_heads(
    up: &mut Upstream,
    request: Option<&[u8]>,
    upbuf: &mut BytesMut,
    out: &mut Vec<u8>,
    plan: &Plan,
    keep_alive: bool,
) -> Result<Answer, Failure> {
    if let Some(request) = request {
        up.stream
            .write_all(request)
            .await
            .map_err(Failure::Silent)?;
    }
    // Once the instance has sent anything (a 1xx, say), the request is not sent again.
    let mut received = false;
    loop {
        if !upbuf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; Limits::MAX_HEADERS];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(upbuf) {
                Ok(httparse::Status::Complete(len)) => {
                    let code = res.code.unwrap_or_default();
                    // The lane never asks for an upgrade.
                    if let Some(why) = rules::unasked_switch(code, false) {
                        return Err(Failure::Invalid(why));
                    }
                    if code < 100 {
                        return Err(Failure::Invalid("invalid status code"));
                    }
                    if code < 200 {
                        // 100 Continue, 103 Early Hints: the final answer follows.
                        upbuf.advance(len);
                        continue;
                    }
                    let answer = response_head(&res, plan.head, keep_alive, out)?;
                    upbuf.advance(len);
                    return Ok(answer);
                }
                Ok(httparse::Status::Partial) if upbuf.len() < Limits::MAX_RESPONSE_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    return Err(Failure::Invalid("response head over 64 KiB"));
                }
                Err(_) => return Err(Failure::Invalid("malformed response head")),
            }
        }
        upbuf.reserve(HEAD_BUF);
        if !upbuf.is_empty() {
            up.ack_now();
        }
        match up.stream.read_buf(upbuf).await {
            Ok(0) => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed the connection without answering",
                );
                return Err(if received {
                    Failure::Io(e)
                } else {
                    Failure::Silent(e)
                });
            }
            Ok(_) => received = true,
            Err(e) if received => return Err(Failure::Io(e)),
            Err(e) => return Err(Failure::Silent(e)),
        }
    }
}

/// Check a request head against everything the lane does not do, and write its upstream head
/// into `request`. None: hyper takes it.
fn plan(
    req: &httparse::Request<'_, '_>,
    forwarder: &Forwarder,
    peer: &str,
    request: &mut Vec<u8>,
) -> Option<Plan> {
    let (method, path) = (req.method?, req.path?);
    if !forwarder.express
        || req.version != Some(1)
        || method == "CONNECT"
        || !path.starts_with('/')
        || path.len() > forwarder.limits.max_uri
        || !path.bytes().all(is_plain_uri_byte)
    {
        return None;
    }
    let mut host = None;
    let mut connection = rules::Connection::default();
    let mut content_length = None;
    for h in req.headers.iter() {
        if rules::line_too_long(h.name.as_bytes(), h.value, forwarder.limits.max_header_line) {
            return None;
        }
        let is = |n: &str| h.name.eq_ignore_ascii_case(n);
        if is("host") {
            if host.replace(h.value).is_some() {
                return None;
            }
        } else if is("content-length") {
            // One plain length; lists, signs and the rest are hyper's to judge.
            let n = decimal(h.value)?;
            if content_length.replace(n).is_some() {
                return None;
            }
        } else if is("transfer-encoding") || is("upgrade") || is("expect") {
            return None;
        } else if is("via") {
            if rules::via_is_loop(h.value) {
                return None;
            }
        } else if is("connection") {
            connection.read(h.value);
        }
    }
    if connection.upgrade {
        return None;
    }
    let keep_alive = !connection.close;
    let host = host?;
    let body = content_length.unwrap_or(0);
    let Ok(Target::Instance { name, sub }) = host::parse(std::str::from_utf8(host).ok()?) else {
        return None;
    };
    let route = forwarder.routes.get(&name)?;
    if route.failed() || route.not_listening() {
        return None;
    }
    let addr = route.upstream(sub.as_ref())?.0;

    request.clear();
    // Room for the head and what is added to it, at once rather than by doubling.
    request.reserve(head_room(method.len() + path.len(), req.headers));
    request.extend_from_slice(method.as_bytes());
    request.push(b' ');
    request.extend_from_slice(path.as_bytes());
    request.extend_from_slice(b" HTTP/1.1\r\n");
    // The framing is written from what was parsed, never copied: a `Connection` header naming
    // Content-Length must not leave the body unannounced upstream.
    let connection_values = || {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value)
    };
    let named = |name: &[u8]| {
        connection.names_headers && rules::named_by_connection(connection_values(), name)
    };
    let mut prior_hops = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        match rules::request_header(name, named) {
            Fate::Keep if !name.eq_ignore_ascii_case(b"content-length") => {
                header_line(request, name, h.value);
            }
            Fate::PriorHops => prior_hops = true,
            Fate::Keep | Fate::Dropped => {}
        }
    }
    if let Some(n) = content_length {
        content_length_line(request, n);
    }
    // Prior hops (a tunnel in front of wharf) keep their place, every line of them.
    request.extend_from_slice(b"x-forwarded-for: ");
    let prior = req
        .headers
        .iter()
        .filter(|h| {
            prior_hops && rules::request_header(h.name.as_bytes(), named) == Fate::PriorHops
        })
        .map(|h| h.value);
    rules::forwarded_for(prior, peer.as_bytes(), request);
    request.extend_from_slice(b"\r\n");
    for (name, value) in rules::forwarded_headers(host) {
        header_line(request, name.as_bytes(), value);
    }
    request.extend_from_slice(b"\r\n");
    Some(Plan {
        route,
        addr,
        keep_alive,
        idempotent: rules::repeatable(method.as_bytes(), body > 0),
        head: method == "HEAD",
        body,
    })
}

/// Read the response head's framing and write its downstream copy into `out`: the answer to
/// a HEAD request if `head`, on a client connection that stays open if `keep_alive`.
fn response_head(
    res: &httparse::Response<'_, '_>,
    head: bool,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> Result<Answer, Failure> {
    let code = res.code.unwrap_or_default();
    let mut connection = rules::Connection::default();
    let mut chunked = None;
    let mut length: Option<u64> = None;
    let mut has_date = false;
    for h in res.headers.iter() {
        let is = |n: &str| h.name.eq_ignore_ascii_case(n);
        if is("transfer-encoding") {
            if let Some(why) = rules::transfer_encoding_fault(res.version == Some(0), h.value) {
                return Err(Failure::Invalid(why));
            }
            // The last coding decides; anything but chunked (even none) runs until close.
            chunked = Some(
                tokens(h.value)
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
            );
        } else if is("content-length") {
            // One value, or a list of the same value ("5, 5"), as hyper accepts; an empty
            // element is invalid, as there.
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let n = decimal(token).ok_or(Failure::Invalid("invalid Content-Length"))?;
                if length.replace(n).is_some_and(|prior| prior != n) {
                    return Err(Failure::Invalid("conflicting Content-Length"));
                }
            }
        } else if is("connection") {
            connection.read(h.value);
        } else if is("date") {
            has_date = true;
        }
    }
    let framing = if head || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    // The framing headers of a response with a body are rebuilt from what was read; a
    // bodiless one keeps its Content-Length (what a GET would have had) unless chunked, and a
    // 204 never has one.
    let rebuilt = framing != Framing::Empty || chunked.is_some() || code == 204;
    let announced = chunked.is_some() || length.is_some_and(|n| n > 0);
    let reusable =
        res.version == Some(1) && !connection.close && rules::reusable_after(head, code, announced);

    out.clear();
    out.reserve(head_room(res.reason.map_or(0, str::len), res.headers));
    status_line(out, code, res.reason);
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        let named = |name: &[u8]| {
            connection.names_headers
                && rules::named_by_connection(
                    res.headers
                        .iter()
                        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                        .map(|h| h.value),
                    name,
                )
        };
        let dropped = (rebuilt && name.eq_ignore_ascii_case(b"content-length"))
            || rules::stays_on_hop(name, named);
        if !dropped {
            header_line(out, name, h.value);
        }
    }
    if !has_date {
        date_line(out);
    }
    match framing {
        Framing::Length(n) => content_length_line(out, n),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::UntilClose => {}
    }
    if framing == Framing::UntilClose || !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Answer {
        framing,
        reusable: reusable && framing != Framing::UntilClose,
    })
}

/// Read more of a response body; fails if the client hangs up meanwhile.
async fn read_upstream(
    up: &mut Upstream,
    buf: &mut BytesMut,
    client: &TcpStream,
) -> io::Result<usize> {
    buf.reserve(BODY_BUF);
    tokio::select! {
        biased;
        n = up.stream.read_buf(buf) => n,
        () = client_gone(client) => Err(went_away()),
    }
}

/// Resolves once the client has closed its connection (or it failed). Bytes it sent ahead, a
/// pipelined request, are not a close: then this never resolves.
pub(super) async fn client_gone(client: &TcpStream) {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    match std::future::poll_fn(|cx| client.poll_peek(cx, &mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

pub(super) fn went_away() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the client went away")
}

fn unreachable(plan: &Plan, e: io::Error, reused: bool, answered: bool) -> ProxyError {
    let name = &plan.route.instance.name;
    ProxyError::unreachable(name, plan.addr, reused, answered, Box::new(e))
}

/// Write all of `bytes`; what the socket does not take at once must go within `stall`.
async fn write_client(client: &mut TcpStream, bytes: &[u8], stall: Duration) -> io::Result<()> {
    // Usually the socket takes it all at once, and no timer is needed.
    let sent = match client.try_write(bytes) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if sent == bytes.len() {
        return Ok(());
    }
    deadline::within(stall, CLIENT_STALLED, client.write_all(&bytes[sent..])).await
}

/// Close a connection whose request was answered before its body was all read: stop
/// writing, then discard what the client still sends for up to `within`, so that closing
/// with unread bytes does not reset the connection before the client has read the answer.
pub(crate) async fn linger(client: &mut TcpStream, within: Duration) {
    let _ = client.shutdown().await;
    // On the heap: in the future, it would be copied with every connection's task.
    let mut sink = vec![0u8; 8 * 1024];
    let discard = async { while let Ok(1..) = client.read(&mut sink).await {} };
    let _ = tokio::time::timeout(within, discard).await;
}

/// Bytes a request target may hold as it is (RFC 3986 unreserved, reserved but `#`, and `%`).
/// Anything else goes to hyper, whose URI parser decides.
fn is_plain_uri_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:/?[]@!$&'()*+,;=%".contains(&b)
}

/// How many of `buffered` bytes belong to a body with `left` bytes to go.
fn body_part(buffered: usize, left: u64) -> usize {
    usize::try_from(left).map_or(buffered, |left| buffered.min(left))
}

/// A Content-Length value: digits only (no sign, no space), within u64.
fn decimal(value: &[u8]) -> Option<u64> {
    if !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn status_line(out: &mut Vec<u8>, code: u16, reason: Option<&str>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn content_length_line(out: &mut Vec<u8>, n: u64) {
    let mut digits = itoa::Buffer::new();
    header_line(out, b"content-length", digits.format(n).as_bytes());
}

/// Bytes enough for a head (its first line's variable part, its headers) and the lines the
/// lane adds (`X-Forwarded-*`, `Via`, `Date`, framing): growing a head by doubling cost a
/// new connection's first request about ten reallocations.
fn head_room(first_line: usize, headers: &[httparse::Header<'_>]) -> usize {
    let lines: usize = headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 4)
        .sum();
    first_line + lines + 256
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Date` header, formatted at most once a second per thread.
fn date_line(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        header_line(out, b"date", text.as_bytes());
    });
}

/// `fmt::Write` into a byte buffer.
struct Append<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Append<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A stream that first gives back bytes already read from it: how hyper receives a
/// connection the lane handed over.
pub struct Replay<S> {
    buffered: BytesMut,
    inner: S,
}

impl<S> Replay<S> {
    pub fn new(buffered: BytesMut, inner: S) -> Self {
        Replay { buffered, inner }
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
