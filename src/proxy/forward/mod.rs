//! The proxy's request handling: check and route each request before any upstream I/O, then
//! forward it to the instance over a pooled HTTP/1.1 connection, streaming both bodies, and
//! pass WebSocket upgrades through, by the rulebook the express lane follows too (`rules`).
//! Accepting connections is `accept`'s job.

mod http1;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::model::host::{self, HostError, Target};
use crate::model::name::Name;
use crate::proxy::balance::{self, Busy, Choice};
use crate::proxy::body::{BoxError, ProxyBody};
use crate::proxy::budget::Budget;
use crate::proxy::deadline::{BodyStalled, IdleBody};
use crate::proxy::errors::{CLOSED_UNANSWERED, ProxyError, cause, caused_by, invalid};
use crate::proxy::limits::Limits;
use crate::proxy::pages;
use crate::proxy::routes::{Members, Resolved, Route, Routes};
use crate::proxy::rules::{self, Fate, Peer};
use crate::proxy::tunnel;
use crate::proxy::upstream::{self, idle};
use http1::Connection;

/// How long a request an env-mode server refused waits for its supervisor to say the server
/// went down (`after_refusal`): it notices an exit at once, but a server may close its socket
/// a little before it exits (finishing what it accepted). A server that lives on without
/// listening gets its 502 after this.
const DOWN_NOTICE: std::time::Duration = std::time::Duration::from_secs(3);
/// How often a request an env-mode server refused looks whether something listens on its
/// address again (`after_refusal`).
const REOPEN_LOOK: std::time::Duration = std::time::Duration::from_millis(20);

/// Whether something listens on `addr` again: one kernel query where the platform has one,
/// else a connection (closed at once).
async fn listens_again(addr: std::net::SocketAddr) -> bool {
    match crate::sys::netstat::quickly_listened_on(addr.port()) {
        Some(listens) => listens,
        None => tokio::net::TcpStream::connect(addr).await.is_ok(),
    }
}

/// The client's request body failed (invalid chunked framing, a reset): its error, as the
/// upstream client reports it, must not read as the instance's.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ClientBodyError(hyper::Error);

/// Why an instance gave no response, on either client (hyper's HTTP/1.1 pool, or h2c).
#[derive(Debug)]
struct SendError {
    /// It failed on a pooled connection, which the server may have closed just then.
    reused: bool,
    /// Some of an answer had arrived before it failed.
    answered: bool,
    source: BoxError,
    /// The request, when it never left: no connection could be opened for it.
    unsent: Option<Box<Request<ProxyBody>>>,
}

/// A request `Forwarder::send` could not get answered: why, and the request itself when it
/// never left (it may go to another member).
type Unanswered = (ProxyError, Option<Box<Request<ProxyBody>>>);

/// What forwarding a request sets for its client connection's handler.
struct Signals<'a> {
    /// Set once the connection becomes a WebSocket: its HTTP write deadline is off.
    exempt: &'a Arc<AtomicBool>,
    /// For an HTTP/1 request with a body: set once the body has been read to its end.
    body_ended: Option<Arc<AtomicBool>>,
}

/// What a request asked for, once checked.
enum Routed {
    Dashboard,
    Instance {
        members: Arc<Members>,
        sub: Option<Name>,
        host: HeaderValue,
    },
}

/// The proxy's request handler, shared by every connection.
pub(crate) struct Forwarder {
    pub(crate) routes: Arc<Routes>,
    /// hyper's HTTP/1.1 connections to instances, for requests the express lane does not carry.
    http1: Arc<http1::Pool>,
    /// For gRPC, which needs HTTP/2 end to end: the instance is spoken to over h2c.
    h2c: Client<upstream::Connector, ProxyBody>,
    /// The express lane's idle upstream connections.
    pub(crate) pool: Arc<idle::Pool<upstream::Upstream>>,
    /// The dashboard's data (the control plane's view of the routes).
    list: Box<dyn Fn() -> Vec<crate::control::protocol::Listed> + Send + Sync>,
    /// Every limit and deadline, for each connection and request to read.
    pub(crate) limits: Limits,
    /// The dashboard's URL, where error pages send people.
    dashboard: String,
    /// The descriptors every connection, client or upstream, is opened under.
    pub(crate) budget: Budget,
    /// Whether plain HTTP/1.1 requests take the express lane (`[proxy] express`); off, the
    /// lane hands every connection to hyper at its first request head.
    pub(crate) express: bool,
    /// HTTPS, unless `[proxy] https = false`.
    tls: Option<crate::proxy::tls::Tls>,
    /// `[proxy] redirect`: plain-HTTP requests for instances get a 308 to HTTPS on this port.
    pub(crate) redirect: Option<u16>,
}

impl Forwarder {
    pub(crate) fn new(
        routes: Arc<Routes>,
        list: Box<dyn Fn() -> Vec<crate::control::protocol::Listed> + Send + Sync>,
        limits: Limits,
        budget: Budget,
    ) -> Forwarder {
        let connector = upstream::Connector::new(budget.clone(), limits.upstream_connect);
        let pool = Arc::new(idle::Pool::new(limits.lane_idle_per_addr));
        let h2c = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(limits.upstream_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .set_host(false)
            .http2_only(true)
            .build(connector);
        Forwarder {
            routes,
            http1: Arc::new(http1::Pool::new(budget.clone(), &limits, Arc::clone(&pool))),
            h2c,
            pool,
            list,
            limits,
            budget,
            dashboard: crate::model::instance::Front::http(80).dashboard(),
            express: true,
            tls: None,
            redirect: None,
        }
    }

    /// The same, with error pages pointing at the dashboard at `front`.
    pub(crate) fn with_dashboard(self, front: crate::model::instance::Front) -> Forwarder {
        Forwarder {
            dashboard: front.dashboard(),
            ..self
        }
    }

    /// The same, with the express lane on or off (`[proxy] express`).
    pub(crate) fn with_express(self, express: bool) -> Forwarder {
        Forwarder { express, ..self }
    }

    /// The same, serving HTTPS on the listeners too.
    pub(crate) fn with_tls(self, tls: Option<crate::proxy::tls::Tls>) -> Forwarder {
        Forwarder { tls, ..self }
    }

    /// The same, redirecting plain-HTTP requests for instances to HTTPS on `port`.
    pub(crate) fn with_redirect(self, port: Option<u16>) -> Forwarder {
        Forwarder {
            redirect: port,
            ..self
        }
    }

    /// HTTPS, if it is served.
    pub(crate) fn tls(&self) -> Option<&crate::proxy::tls::Tls> {
        self.tls.as_ref()
    }

    /// The descriptor budget connections are admitted and opened under.
    pub(crate) fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The limits and deadlines connections and requests are kept to.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Close idle upstream connections that are too old or that their server closed.
    pub(crate) fn sweep_idle(&self) {
        self.pool.sweep();
        self.http1.sweep();
    }

    /// Mark the route as it is now as answering: the server may have re-registered meanwhile.
    pub(crate) fn mark_answered(&self, route: &Route) {
        if !route.answered.load(Ordering::Relaxed)
            && let Some(members) = self.routes.get(&route.instance.name)
            && let Some(current) = members.by_owner(route.owner)
        {
            current.answered.store(true, Ordering::Relaxed);
        }
    }

    /// Answer one request. `exempt` turns the connection's HTTP write deadline off once it
    /// becomes a WebSocket.
    pub(crate) async fn handle(
        &self,
        req: Request<Incoming>,
        peer: Peer,
        exempt: &Arc<AtomicBool>,
    ) -> Response<ProxyBody> {
        let result = match self.route(&req, peer.tls) {
            Ok(Routed::Dashboard) => {
                let wants_json = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("application/json"));
                return pages::dashboard(&(self.list)(), wants_json);
            }
            // Boxed: its state is kilobytes, and HTTP/2 moves a stream's future several times
            // (into its task, and out again when done).
            Ok(Routed::Instance { host, .. }) if self.redirect.is_some() && !peer.tls => {
                let port = self.redirect.unwrap_or(443);
                return pages::to_https(&https_location(&host, port, req.uri()));
            }
            Ok(Routed::Instance { members, sub, host }) => {
                // An HTTP/1 request body is watched to its end: an error answered before it
                // closes the connection, as the lane's does (`rules::open_after_error`).
                let ended = (req.version() < Version::HTTP_2 && !req.body().is_end_stream())
                    .then(|| Arc::new(AtomicBool::new(false)));
                let signals = Signals {
                    exempt,
                    body_ended: ended.clone(),
                };
                let forwarded = Box::pin(self.forward(req, members, sub, host, peer, signals));
                match forwarded.await {
                    Ok(response) => return response,
                    Err(e) => {
                        let unread = ended.is_some_and(|ended| !ended.load(Ordering::Relaxed));
                        let mut page = self.error_page(&e);
                        if !rules::open_after_error(true, unread) {
                            // hyper closes the connection after an answer that says so.
                            page.headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        return page;
                    }
                }
            }
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| self.error_page(&e))
    }

    pub(crate) fn error_page(&self, e: &ProxyError) -> Response<ProxyBody> {
        match e {
            ProxyError::Unknown(name) => {
                pages::unknown_name(Ok(name), &(self.list)(), &self.dashboard)
            }
            ProxyError::NoSocket { name, sub } => {
                pages::unknown_name(Err((name, sub)), &(self.list)(), &self.dashboard)
            }
            ProxyError::Host(HostError::Foreign(host)) => pages::misdirected(host, &self.dashboard),
            ProxyError::NoMember { name, members } => {
                pages::no_member(name, members, &self.dashboard)
            }
            ProxyError::Failed(name) => pages::error(
                StatusCode::from(e),
                &e.to_string(),
                &format!("See why with `wharf logs {name}`; `wharf up` starts it again."),
                &self.dashboard,
            ),
            e => pages::error(
                StatusCode::from(e),
                &e.to_string(),
                e.hint(),
                &self.dashboard,
            ),
        }
    }

    /// Every check that happens before any upstream I/O.
    fn route(&self, req: &Request<Incoming>, tls: bool) -> Result<Routed, ProxyError> {
        if req.method() == Method::CONNECT && !is_extended_connect(req) {
            return Err(ProxyError::Connect);
        }
        let uri = req.uri();
        let target_len = uri.path_and_query().map_or(0, |p| p.as_str().len())
            + uri.authority().map_or(0, |a| a.as_str().len());
        let limits = &self.limits;
        if target_len > limits.max_uri {
            return Err(ProxyError::UriTooLong(limits.max_uri));
        }
        // hyper's HTTP/1 server counts header lines itself; its HTTP/2 server does not.
        if rules::too_many_headers(req.headers().len(), Limits::MAX_HEADERS)
            || req.headers().iter().any(|(k, v)| {
                rules::line_too_long(k.as_str().as_bytes(), v.as_bytes(), limits.max_header_line)
            })
        {
            return Err(ProxyError::HeaderTooLarge(limits.max_header_line));
        }
        if req
            .headers()
            .get_all(header::VIA)
            .iter()
            .any(|v| rules::via_is_loop(v.as_bytes()))
        {
            return Err(ProxyError::Loop);
        }
        let host = request_host(req, tls)?;
        let host_str = host.to_str().map_err(|_| ProxyError::NoHost)?;
        match host::parse(host_str)? {
            Target::Dashboard => Ok(Routed::Dashboard),
            Target::Instance { name } => match self.routes.resolve(&name) {
                Resolved::Found(members, sub) => Ok(Routed::Instance { members, sub, host }),
                Resolved::Unknown => Err(ProxyError::Unknown(name)),
                Resolved::NoSocket { members, sub } => Err(ProxyError::NoSocket {
                    name: members.name().clone(),
                    sub,
                }),
            },
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        members: Arc<Members>,
        sub: Option<Name>,
        host: HeaderValue,
        peer: Peer,
        signals: Signals<'_>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Signals { exempt, body_ended } = signals;
        let name = members.name().clone();
        let cookie = members
            .sticky()
            .then(|| {
                let values = req.headers().get_all(header::COOKIE).iter();
                balance::cookie_member(values.map(HeaderValue::as_bytes), &name)
            })
            .flatten();
        let (mut members, mut member) = self.member(&name, members, cookie).await?;
        let socket = |member: &Busy| {
            member
                .route()
                .upstream(sub.as_ref())
                .cloned()
                .ok_or_else(|| ProxyError::Unknown(name.clone()))
        };
        let (mut addr, authority) = socket(&member)?;

        // A WebSocket over HTTP/2 (RFC 8441) goes to the instance as HTTP/1.1's handshake.
        let extended = is_extended_connect(&req);
        let websocket = extended || is_websocket(req.headers());
        let grpc = is_grpc(&req);
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let upgrade = if extended {
            Some(HeaderValue::from_static("websocket"))
        } else {
            websocket
                .then(|| req.headers().get(header::UPGRADE).cloned())
                .flatten()
        };
        let (mut parts, body) = req.into_parts();
        if extended {
            parts.method = Method::GET;
            parts
                .headers
                .insert(header::SEC_WEBSOCKET_KEY, websocket_key());
        }
        let (headers, version) =
            upstream_headers(parts.headers, parts.version, grpc, upgrade, &host, peer);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // gRPC's client picks its connection by the URI's authority; HTTP/1.1 is sent in
        // origin form.
        let uri = if grpc {
            upstream_uri(&authority, path)
        } else {
            Uri::from(path)
        };

        let body: ProxyBody = if body.is_end_stream() {
            empty_body()
        } else if grpc {
            // A gRPC stream may idle as long as it likes, as a WebSocket may.
            body.map_err(|e| BoxError::from(ClientBodyError(e)))
                .boxed_unsync()
        } else {
            let body = IdleBody::new(body.map_err(ClientBodyError), self.limits.body_idle);
            match body_ended {
                Some(ended) => body.noting_end(ended).boxed_unsync(),
                None => body.boxed_unsync(),
            }
        };
        // A pooled connection the server closed just as we reused it fails before any answer;
        // requests that can be repeated safely get one more try. A member that refuses the
        // connection (or, to such a request, closes a new one unanswered: it is going away)
        // leaves rotation, and another takes the request.
        let retry = rules::repeatable(parts.method.as_str().as_bytes(), !body.is_end_stream())
            .then(|| (parts.method.clone(), uri.clone(), headers.clone()));
        let again = || {
            let (method, uri, headers) = retry.clone()?;
            Some(Box::new(build(method, uri, version, headers, empty_body())))
        };
        let mut request = Box::new(build(parts.method, uri, version, headers, body));
        let mut connection = Connection::Any;
        let mut tried = Vec::new();
        let mut comeback = None;
        let mut response = loop {
            let unsent = match self.send(*request, &name, addr, connection).await {
                Ok(response) => break response,
                Err((e @ ProxyError::OutOfFds(_), _)) => return Err(e),
                Err((
                    ProxyError::Unreachable {
                        reused, answered, ..
                    },
                    None,
                )) if connection == Connection::Any
                    && rules::may_send_again(retry.is_some(), reused, answered) =>
                {
                    request = again().expect("repeatable");
                    connection = Connection::New;
                    continue;
                }
                Err((e, Some(unsent))) => (e, unsent),
                Err((
                    e @ ProxyError::Unreachable {
                        reused: false,
                        answered: false,
                        ..
                    },
                    None,
                )) if retry.is_some() => (e, again().expect("repeatable")),
                Err((e, None)) => return Err(e),
            };
            // The name's members as they are now: the same member may have registered a new
            // socket since (a reload).
            let (e, unsent) = unsent;
            tried.push(member.route().clone());
            if let Some(now) = self.routes.get(&name) {
                members = now;
            }
            let next = match balance::choose(&members, None, &tried) {
                Choice::Member(next) => next,
                _ => match self
                    .after_refusal(&name, member.route(), &e, &mut comeback)
                    .await
                {
                    Some((now, next)) => {
                        members = now;
                        next
                    }
                    None => {
                        balance::eject(member.route(), &e, &members);
                        return Err(balance::exhausted(&members, e));
                    }
                },
            };
            addr = socket(&next)?.0;
            balance::refused(std::mem::replace(&mut member, next), &e, &members);
            request = unsent;
            connection = Connection::Any;
        };
        let route = member.route().clone();
        route.health.admit();

        if let Some(why) = rules::unasked_switch(response.status().as_u16(), websocket) {
            return Err(ProxyError::BadResponse { name, addr, why });
        }
        if let Some(client_upgrade) = client_upgrade
            && response.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            exempt.store(true, Ordering::Relaxed);
            let linger = self.limits.tunnel_linger;
            // Each side's stream holds its share of the budget until the tunnel closes.
            tokio::spawn(async move {
                let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade)
                else {
                    return;
                };
                tunnel::relay(TokioIo::new(client), TokioIo::new(upstream), linger).await;
            });
            let (mut parts, _) = response.into_parts();
            if extended {
                // HTTP/2 says yes to a CONNECT with 200; the HTTP/1.1 handshake's headers
                // answer a key the client never sent.
                parts.status = StatusCode::OK;
                for name in [
                    header::UPGRADE,
                    header::CONNECTION,
                    header::SEC_WEBSOCKET_ACCEPT,
                ] {
                    parts.headers.remove(name);
                }
            }
            return Ok(Response::from_parts(parts, empty_body()));
        }
        self.mark_answered(&route);
        let (mut parts, body) = response.into_parts();
        let http10 = parts.version == Version::HTTP_10;
        if let Some(why) = parts
            .headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .find_map(|v| rules::transfer_encoding_fault(http10, v.as_bytes()))
        {
            return Err(ProxyError::BadResponse { name, addr, why });
        }
        // hyper framed the body by Transfer-Encoding, which overrides a Content-Length beside
        // it (RFC 9112 §6.3): that length, passed on, would cut the body short or promise
        // bytes that never come. The lane rebuilds its framing headers alike.
        if parts.headers.contains_key(header::TRANSFER_ENCODING) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        strip_hop_by_hop(&mut parts.headers);
        if let Some(cookie) = balance::cookie_to_set(&members, cookie, route.number)
            && let Ok(cookie) = HeaderValue::from_str(&cookie)
        {
            parts.headers.append(header::SET_COOKIE, cookie);
        }
        // Balancing reads the count of requests in flight only where there is a choice: a
        // single server's response is spared the wrapping (an allocation per request).
        let body = match members.all.len() {
            1 => body,
            _ => Holding {
                body,
                _member: member,
            }
            .boxed_unsync(),
        };
        Ok(Response::from_parts(parts, body))
    }

    /// The member of `members` (of `name`) a request goes to (`balance::choose`), waiting
    /// (bounded) while none is in rotation but one is starting; the name's members may change
    /// meanwhile.
    async fn member(
        &self,
        name: &Name,
        mut members: Arc<Members>,
        cookie: Option<u32>,
    ) -> Result<(Arc<Members>, Busy), ProxyError> {
        let patience = self.limits.starting_wait;
        // Subscribed at the first wait (rarely: it costs every request otherwise), after
        // which the table is read again, as it may have changed before.
        let mut changes = None;
        let mut deadline = tokio::time::Instant::now();
        loop {
            match balance::choose(&members, cookie, &[]) {
                Choice::Member(member) => return Ok((members, member)),
                Choice::Nobody if !members.replicated() && members.first().failed() => {
                    return Err(ProxyError::Failed(name.clone()));
                }
                Choice::Nobody => return Err(balance::nobody(&members)),
                Choice::Wait => match &mut changes {
                    None => {
                        changes = Some(self.routes.subscribe());
                        deadline += patience;
                    }
                    Some(changes) => {
                        match tokio::time::timeout_at(deadline, changes.changed()).await {
                            Ok(Ok(())) => {}
                            _ => return Err(ProxyError::NotListening(name.clone(), patience)),
                        }
                    }
                },
            }
            members = self
                .routes
                .get(name)
                .ok_or_else(|| ProxyError::Unknown(name.clone()))?;
        }
    }

    /// `refused`, a registration of `name`, did not take a request that can go again (`e`:
    /// refused, or closed unanswered) and no other member can. An env-mode server may be
    /// between two sockets (wharf holds none to queue the request on): one that restarts has
    /// gone down and its supervisor has yet to say so, one that lives on may be opening its
    /// socket again. Wait (`DOWN_NOTICE` at most) for the name's registration to move on from
    /// `refused`, or for something to listen on the refused address again, then for a member
    /// as a first request does, all within `Limits::starting_wait` of the first such wait
    /// (`since`). None: not such a server, or it did not come back in time.
    pub(crate) async fn after_refusal(
        &self,
        name: &Name,
        refused: &Arc<Route>,
        e: &ProxyError,
        since: &mut Option<tokio::time::Instant>,
    ) -> Option<(Arc<Members>, Busy)> {
        let ProxyError::Unreachable {
            answered: false,
            addr,
            ..
        } = e
        else {
            return None;
        };
        if !refused.comes_back() && !refused.may_reopen() {
            return None;
        }
        let deadline =
            *since.get_or_insert_with(tokio::time::Instant::now) + self.limits.starting_wait;
        let noticed_by = deadline.min(tokio::time::Instant::now() + DOWN_NOTICE);
        // Subscribed before the table is read: a change after the read is not missed.
        let mut changes = self.routes.subscribe();
        loop {
            let now = self.routes.get(name)?;
            let moved_on = now
                .by_owner(refused.owner)
                .is_none_or(|r| !Arc::ptr_eq(r, refused));
            if moved_on || listens_again(*addr).await {
                let patience = deadline.saturating_duration_since(tokio::time::Instant::now());
                let pick = tokio::time::timeout(patience, self.member(name, now, None));
                return pick.await.ok()?.ok();
            }
            // Nobody says when a socket opens: look again every `REOPEN_LOOK`.
            let look_by = noticed_by.min(tokio::time::Instant::now() + REOPEN_LOOK);
            match tokio::time::timeout_at(look_by, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                Err(_) if look_by >= noticed_by => return None,
                Err(_) => {}
            }
        }
    }

    async fn send(
        &self,
        req: Request<ProxyBody>,
        name: &Name,
        addr: SocketAddr,
        connection: Connection,
    ) -> Result<Response<ProxyBody>, Unanswered> {
        let response = async {
            if req.version() != Version::HTTP_2 {
                return self.http1.send(addr, req, connection).await;
            }
            match self.h2c.request(req).await {
                Ok(response) => {
                    Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()))
                }
                // hyper-util's client does not say whether an answer had begun.
                Err(e) => Err(SendError {
                    reused: !e.is_connect(),
                    answered: false,
                    source: e.into(),
                    unsent: None,
                }),
            }
        };
        let patience = self.limits.upstream_head;
        match tokio::time::timeout(patience, response).await {
            Err(_) => Err((
                ProxyError::UpstreamTimeout {
                    name: name.clone(),
                    addr,
                    after: patience,
                },
                None,
            )),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) if caused_by::<BodyStalled>(&*e.source) => {
                Err((ProxyError::BodyStalled(self.limits.body_idle), None))
            }
            Ok(Err(e)) if caused_by::<ClientBodyError>(&*e.source) => {
                Err((ProxyError::ClientBody(e.source), None))
            }
            Ok(Err(mut e)) => {
                let unsent = e.unsent.take();
                Err((upstream_error(name, addr, e), unsent))
            }
        }
    }
}

/// A response body that keeps its request counted among its member's outstanding ones until
/// it ends (or the client goes away).
struct Holding {
    body: ProxyBody,
    _member: Busy,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// An instance's failure to answer, `e`, as the lane tells the same failure: hyper's client's
/// errors read into the lane's kinds and words. An instance that closed before a response head
/// is `Unreachable` (the retry rules read it), one whose head hyper could not read is
/// `BadResponse`, and why; hyper tells fewer kinds of invalid head than the lane, and both say
/// only what both can tell (`errors::invalid`). Where hyper has no accessor for a kind, its
/// message (the kind's description) tells it.
fn upstream_error(name: &Name, addr: SocketAddr, e: SendError) -> ProxyError {
    let SendError {
        reused,
        answered,
        source,
        ..
    } = e;
    let Some(hyper) = cause::<hyper::Error>(&*source) else {
        return ProxyError::unreachable(name, addr, reused, answered, source);
    };
    let why = if hyper.is_incomplete_message() {
        let closed = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, CLOSED_UNANSWERED);
        return ProxyError::unreachable(name, addr, reused, answered, Box::new(closed));
    } else if !hyper.is_parse() {
        return ProxyError::unreachable(name, addr, reused, answered, source);
    } else if hyper.is_parse_status() {
        invalid::STATUS
    } else if hyper.is_parse_too_large() {
        invalid::TOO_LARGE
    } else {
        match hyper.to_string().as_str() {
            "invalid content-length parsed" => invalid::CONTENT_LENGTH,
            // hyper's client refuses Transfer-Encoding only in an HTTP/1.0 response.
            "unexpected transfer-encoding parsed" => {
                rules::transfer_encoding_fault(true, b"").unwrap_or(invalid::MALFORMED)
            }
            _ => invalid::MALFORMED,
        }
    };
    ProxyError::BadResponse {
        name: name.clone(),
        addr,
        why,
    }
}

fn empty_body() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn build(
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: ProxyBody,
) -> Request<ProxyBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    req
}

fn upstream_uri(authority: &Authority, path: PathAndQuery) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(path);
    Uri::from_parts(parts).expect("scheme, authority and path make a URI")
}

/// The request's Host: exactly one Host header, which an absolute-form URI must agree with.
/// HTTP/1.0 requests may carry only the URI's authority, and HTTP/2 ones usually do
/// (`:authority`).
/// The request's Host: the header, or an absolute URI's authority (whose scheme must be the
/// connection's: `https` over TLS, else `http`).
fn request_host<B>(req: &Request<B>, tls: bool) -> Result<HeaderValue, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    let authority = req.uri().authority();
    let scheme = if tls { &Scheme::HTTPS } else { &Scheme::HTTP };
    if authority.is_some() && req.uri().scheme() != Some(scheme) {
        return Err(ProxyError::BadScheme);
    }
    match (header, authority) {
        (Some(h), Some(a)) => {
            let same = h.to_str().ok().map(host::parse) == Some(host::parse(a.as_str()));
            if same {
                Ok(h)
            } else {
                Err(ProxyError::HostMismatch)
            }
        }
        (Some(h), None) => Ok(h),
        (None, Some(a)) if req.version() != Version::HTTP_11 => {
            HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::NoHost)
        }
        (None, _) => Err(ProxyError::NoHost),
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The `Connection` header values of a message, and what they say.
fn connection_of(headers: &HeaderMap) -> (Vec<&[u8]>, rules::Connection) {
    let values: Vec<&[u8]> = headers
        .get_all(header::CONNECTION)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let mut connection = rules::Connection::default();
    for value in &values {
        connection.read(value);
    }
    (values, connection)
}

/// Remove the headers that stay on their hop (`rules::stays_on_hop`): a response's.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let (values, connection) = connection_of(headers);
    let named = |name: &[u8]| {
        connection.names_headers && rules::named_by_connection(values.iter().copied(), name)
    };
    let gone: Vec<HeaderName> = headers
        .keys()
        .filter(|n| rules::stays_on_hop(n.as_str().as_bytes(), named))
        .cloned()
        .collect();
    for name in gone {
        headers.remove(name);
    }
}

/// Apply `rules::request_header` to a request's headers: remove every header whose fate is
/// not `Keep`, and give the `X-Forwarded-For` value the proxy writes, from the prior hops kept
/// and the client's address.
fn forward_request_headers(headers: &mut HeaderMap, peer: SocketAddr) -> HeaderValue {
    let (values, connection) = connection_of(headers);
    let named = |name: &[u8]| {
        connection.names_headers && rules::named_by_connection(values.iter().copied(), name)
    };
    let mut gone: Vec<HeaderName> = Vec::new();
    let mut prior: Vec<&[u8]> = Vec::new();
    for name in headers.keys() {
        match rules::request_header(name.as_str().as_bytes(), named) {
            Fate::Keep => {}
            Fate::PriorHops => {
                prior.extend(headers.get_all(name).iter().map(HeaderValue::as_bytes));
                gone.push(name.clone());
            }
            Fate::Dropped => gone.push(name.clone()),
        }
    }
    let forwarded_for = forwarded_for(&prior, peer);
    drop(values);
    for name in gone {
        headers.remove(name);
    }
    forwarded_for
}

/// The `X-Forwarded-For` value (`rules::forwarded_for`) for these prior hops and `peer`.
fn forwarded_for(prior: &[&[u8]], peer: SocketAddr) -> HeaderValue {
    let peer = rules::peer_text(peer.ip());
    if prior.is_empty()
        && let std::borrow::Cow::Borrowed(peer) = peer
    {
        return HeaderValue::from_static(peer);
    }
    let mut value = Vec::new();
    rules::forwarded_for(prior.iter().copied(), peer.as_bytes(), &mut value);
    // The prior hops were header values, and an address is text.
    HeaderValue::from_bytes(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Where `[proxy] redirect` sends a plain-HTTP request: the same host, HTTPS's port, the same
/// path and query.
fn https_location(host: &HeaderValue, port: u16, uri: &Uri) -> String {
    let host = host.to_str().unwrap_or_default();
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    match port {
        443 => format!("https://{name}{path}"),
        port => format!("https://{name}:{port}{path}"),
    }
}

/// A WebSocket opened over HTTP/2: `CONNECT` with `:protocol websocket` (RFC 8441).
fn is_extended_connect<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1).
fn websocket_key() -> HeaderValue {
    use base64::Engine as _;
    let mut nonce = [0u8; 16];
    if graviola::random::fill(&mut nonce).is_err() {
        // Not a secret, only a nonce the server echoes: the time will do.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        nonce = now.as_nanos().to_le_bytes();
    }
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::from_str(&key).unwrap_or(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

fn is_websocket(headers: &HeaderMap) -> bool {
    let has = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| rules::tokens(v.as_bytes()))
            .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// The request's headers as the instance gets them, and the version to speak to it: HTTP/1.1,
/// or HTTP/2 for gRPC. `upgrade`: a WebSocket's `Upgrade`, the only one that passes.
fn upstream_headers(
    mut headers: HeaderMap,
    client_version: Version,
    grpc: bool,
    upgrade: Option<HeaderValue>,
    host: &HeaderValue,
    peer: Peer,
) -> (HeaderMap, Version) {
    let te_trailers = grpc && headers.get(header::TE).is_some_and(|v| v == "trailers");
    let forwarded_for = forward_request_headers(&mut headers, peer.addr);
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
    add_forwarded(&mut headers, forwarded_for, host, peer.tls);
    if !grpc {
        if client_version == Version::HTTP_2 {
            join_cookies(&mut headers);
        }
        return (headers, Version::HTTP_11);
    }
    // The authority goes as :authority (the instance's address, from the URI); a Host naming
    // something else would contradict it. gRPC servers want `te: trailers`.
    headers.remove(header::HOST);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    (headers, Version::HTTP_2)
}

/// HTTP/2 may split `cookie` into several fields; HTTP/1.1 servers expect one, joined with
/// "; " (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let cookies: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if cookies.len() < 2 {
        return;
    }
    if let Ok(joined) = HeaderValue::from_bytes(&cookies.join(&b"; "[..])) {
        headers.insert(header::COOKIE, joined);
    }
}

/// A gRPC request (not gRPC-Web, which HTTP/1.1 carries): it needs HTTP/2 end to end, for
/// its trailers. Only an HTTP/2 client can have sent one.
fn is_grpc<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_2
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.strip_prefix("application/grpc")
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
            })
}

/// Write the proxy's forwarding headers (`rules::forwarded_headers`) and the request's Host.
fn add_forwarded(
    headers: &mut HeaderMap,
    forwarded_for: HeaderValue,
    host: &HeaderValue,
    tls: bool,
) {
    headers.append(X_FORWARDED_FOR, forwarded_for);
    for (name, value) in rules::forwarded_headers(host.as_bytes(), tls) {
        // Names and values known here (no parsing per request); any other is checked.
        let (name, value) = match name {
            "x-forwarded-proto" => (
                X_FORWARDED_PROTO,
                HeaderValue::from_static(rules::scheme(tls)),
            ),
            "x-forwarded-host" => (X_FORWARDED_HOST, host.clone()),
            "via" => (header::VIA, HeaderValue::from_static(rules::VIA)),
            other => match (
                HeaderName::from_bytes(other.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                (Ok(name), Ok(value)) => (name, value),
                _ => continue,
            },
        };
        headers.append(name, value);
    }
    headers.insert(header::HOST, host.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, hosts: &[&str], version: Version) -> Request<()> {
        let mut b = Request::builder().uri(uri).version(version);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    /// What hyper's path says of an instance that answers `answer` (then closes) to a GET:
    /// the lane's words for the same answer (`lane::response`).
    #[tokio::test]
    async fn hyper_failures_read_as_the_lanes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cases: &[(&[u8], &str)] = &[
            (
                b"",
                "is not answering: closed the connection without answering",
            ),
            (
                b"HTTP/1.1 200 OK\r\nX-A",
                "is not answering: closed the connection without answering",
            ),
            (
                b"HELLO THERE\r\n\r\n",
                "sent an invalid response: malformed response head",
            ),
            (
                b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
                "sent an invalid response: malformed response head",
            ),
            (
                b"HTTP/1.1 000 Zero\r\n\r\n",
                "sent an invalid response: invalid status code",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                "sent an invalid response: invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "sent an invalid response: invalid Content-Length",
            ),
            (
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "sent an invalid response: Transfer-Encoding in an HTTP/1.0 response",
            ),
        ];
        let name: Name = "api".parse().unwrap();
        let limits = Limits::default();
        let lane = Arc::new(idle::Pool::new(8));
        let pool = Arc::new(http1::Pool::new(Budget::new(64), &limits, lane));
        for (answer, says) in cases {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut buf = [0; 1024];
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(answer).await.unwrap();
            });
            let req = build(
                Method::GET,
                Uri::from_static("/"),
                Version::HTTP_11,
                HeaderMap::new(),
                empty_body(),
            );
            let Err(e) = pool.send(addr, req, Connection::Any).await else {
                panic!("{answer:?} was taken for an answer");
            };
            server.await.unwrap();
            let e = upstream_error(&name, addr, e);
            let text = e.to_string();
            assert!(text.ends_with(says), "{answer:?}: {text}");
            assert_eq!(StatusCode::from(&e), StatusCode::BAD_GATEWAY, "{answer:?}");
        }
    }

    #[test]
    fn host_rules() {
        let v11 = Version::HTTP_11;
        assert_eq!(
            request_host(&req("/", &["a.localhost"], v11), false).unwrap(),
            "a.localhost"
        );
        assert!(matches!(
            request_host(&req("/", &["a.localhost", "b.localhost"], v11), false),
            Err(ProxyError::DuplicateHost)
        ));
        assert!(matches!(
            request_host(&req("/", &[], v11), false),
            Err(ProxyError::NoHost)
        ));
        let abs = "http://a.localhost:7080/x";
        assert!(request_host(&req(abs, &["A.localhost:7080"], v11), false).is_ok());
        assert!(matches!(
            request_host(&req(abs, &["b.localhost"], v11), false),
            Err(ProxyError::HostMismatch)
        ));
        assert!(matches!(
            request_host(&req(abs, &[], v11), false),
            Err(ProxyError::NoHost)
        ));
        assert_eq!(
            request_host(&req(abs, &[], Version::HTTP_10), false).unwrap(),
            "a.localhost:7080"
        );
        let h2 = Version::HTTP_2;
        assert_eq!(
            request_host(&req(abs, &[], h2), false).unwrap(),
            "a.localhost:7080"
        );
        assert!(matches!(
            request_host(&req(abs, &["b.localhost"], h2), false),
            Err(ProxyError::HostMismatch)
        ));
        assert!(matches!(
            request_host(&req("https://a.localhost/", &["a.localhost"], v11), false),
            Err(ProxyError::BadScheme)
        ));
        // Over TLS the scheme is https, and http is the wrong one.
        let https = "https://a.localhost/";
        assert!(request_host(&req(https, &[], h2), true).is_ok());
        assert!(matches!(
            request_host(&req(abs, &[], h2), true),
            Err(ProxyError::BadScheme)
        ));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go_websocket_detected() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, Upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(is_websocket(&h));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        // Without a Connection header too, each hop-by-hop one is found.
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-kept", HeaderValue::from_static("1"));
            h.insert(name, HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"], "{name}");
        }
        let mut h2c = HeaderMap::new();
        h2c.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h2c.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_websocket(&h2c));
    }

    #[test]
    fn grpc_is_told_by_its_content_type_over_http2_only() {
        let grpc = |version, content_type: &str| {
            let req = Request::builder()
                .version(version)
                .header(header::CONTENT_TYPE, content_type)
                .body(())
                .unwrap();
            is_grpc(&req)
        };
        let h2 = Version::HTTP_2;
        assert!(grpc(h2, "application/grpc"));
        assert!(grpc(h2, "application/grpc+proto"));
        assert!(grpc(h2, "application/grpc;charset=utf-8"));
        assert!(!grpc(h2, "application/grpc-web"), "gRPC-Web is HTTP/1.1's");
        assert!(!grpc(h2, "application/json"));
        assert!(!grpc(Version::HTTP_11, "application/grpc"));
    }

    #[test]
    fn forwarded_headers_append_and_preserve_host() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.2.2.2"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("via", HeaderValue::from_static("1.0 fred"));
        let host = HeaderValue::from_static("api.localhost:7080");
        let forwarded_for =
            forward_request_headers(&mut h, "[::ffff:127.0.0.1]:5000".parse().unwrap());
        add_forwarded(&mut h, forwarded_for, &host, false);
        assert_eq!(h["x-forwarded-for"], "10.1.1.1, 10.2.2.2, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.localhost:7080");
        assert_eq!(h[header::HOST], "api.localhost:7080");
        let via: Vec<_> = h.get_all(header::VIA).iter().collect();
        assert_eq!(via, ["1.0 fred", rules::VIA]);
    }

    #[test]
    fn a_prior_hop_named_by_connection_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-forwarded-for, close"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let forwarded_for = forward_request_headers(&mut h, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(forwarded_for, "127.0.0.1");
        assert!(h.is_empty(), "{h:?}");
    }
}
