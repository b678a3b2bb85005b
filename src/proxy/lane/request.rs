//! Request heads: whether the lane takes a request (`plan`), and its upstream head, written
//! straight from the parsed one under the rulebook.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::model::host::{self, Target};
use crate::model::name::Name;
use crate::proxy::balance::{self, Busy, Choice};
use crate::proxy::forward::Forwarder;
use crate::proxy::lane::lines::{content_length_line, decimal, head_room, header_line};
use crate::proxy::routes::{Members, Resolved, Route};
use crate::proxy::rules::{self, Fate};

/// A request the lane takes, once checked and its upstream head written.
pub(super) struct Plan {
    /// The name's members, and the socket asked for.
    pub(super) members: Arc<Members>,
    pub(super) sub: Option<Name>,
    /// The member it goes to (another if that one refuses the connection).
    pub(super) member: Busy,
    /// That member's socket.
    pub(super) addr: SocketAddr,
    /// The member the request's sticky cookie names, if the name is sticky.
    pub(super) cookie: Option<u32>,
    /// The client did not ask to close after this response.
    pub(super) keep_alive: bool,
    /// Safe to send again if a reused connection failed before answering.
    pub(super) idempotent: bool,
    /// HEAD: the response has no body whatever its headers say.
    pub(super) head: bool,
    /// The request body's length (`Content-Length`; 0 without one).
    pub(super) body: u64,
}

impl Plan {
    pub(super) fn route(&self) -> &Arc<Route> {
        self.member.route()
    }

    /// Go to `member` instead; the last one is out of rotation (`e`: it refused the
    /// connection). False when `member` has no socket by that name.
    pub(super) fn switch(&mut self, member: Busy, e: &crate::proxy::errors::ProxyError) -> bool {
        let Some((addr, _)) = member.route().upstream(self.sub.as_ref()) else {
            return false;
        };
        self.addr = *addr;
        balance::refused(
            std::mem::replace(&mut self.member, member),
            e,
            &self.members,
        );
        true
    }
}

/// Check a request head against everything the lane does not do, and write its upstream head
/// into `request`. None: hyper takes it. `tls`: the request came over HTTPS.
pub(super) fn plan(
    req: &httparse::Request<'_, '_>,
    forwarder: &Forwarder,
    peer: &str,
    tls: bool,
    request: &mut Vec<u8>,
) -> Option<Plan> {
    let (method, path) = (req.method?, req.path?);
    if !forwarder.express
        || (forwarder.redirect.is_some() && !tls)
        || req.version != Some(1)
        || method == "CONNECT"
        || !path.starts_with('/')
        || path.len() > forwarder.limits.max_uri
        || !path.bytes().all(is_plain_uri_byte)
    {
        return None;
    }
    let mut host = None;
    let mut cookies = false;
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
        } else if is("cookie") {
            cookies = true;
        }
    }
    if connection.upgrade {
        return None;
    }
    let keep_alive = !connection.close;
    let host = host?;
    let body = content_length.unwrap_or(0);
    let Ok(Target::Instance { name }) = host::parse(std::str::from_utf8(host).ok()?) else {
        return None;
    };
    let Resolved::Found(members, sub) = forwarder.routes.resolve(&name) else {
        return None;
    };
    let cookie = (cookies && members.sticky())
        .then(|| {
            let values = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("cookie"));
            balance::cookie_member(values.map(|h| h.value), members.name())
        })
        .flatten();
    // Waits and refusals are hyper's to give.
    let Choice::Member(member) = balance::choose(&members, cookie, &[]) else {
        return None;
    };
    let addr = member.route().upstream(sub.as_ref())?.0;

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
    for (name, value) in rules::forwarded_headers(host, tls) {
        header_line(request, name.as_bytes(), value);
    }
    request.extend_from_slice(b"\r\n");
    Some(Plan {
        members,
        sub,
        member,
        addr,
        cookie,
        keep_alive,
        idempotent: rules::repeatable(method.as_bytes(), body > 0),
        head: method == "HEAD",
        body,
    })
}

/// Bytes a request target may hold as it is (RFC 3986 unreserved, reserved but `#`, and `%`).
/// Anything else goes to hyper, whose URI parser decides.
fn is_plain_uri_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:/?[]@!$&'()*+,;=%".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::limits::Limits;
    use crate::proxy::routes::{Owner, Routes, alias_instance};

    /// A forwarder with one instance, `app`, at 127.0.0.1:9.
    fn forwarder() -> Forwarder {
        let routes = Arc::new(Routes::default());
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        routes
            .register(Owner::Alias, alias_instance("app".parse().unwrap(), addr))
            .unwrap();
        Forwarder::new(
            routes,
            Box::new(Vec::new),
            Limits {
                upstream_head: std::time::Duration::from_secs(1),
                tunnel_linger: std::time::Duration::from_secs(1),
                ..Limits::default()
            },
            crate::proxy::budget::Budget::new(64),
        )
    }

    /// What the lane decides for a request head: None (hyper takes it), or the plan's keep-alive,
    /// repeatable, HEAD and body length, and the upstream head it wrote.
    fn decide(head: &str) -> Option<(Decision, String)> {
        let mut headers = [httparse::EMPTY_HEADER; Limits::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(head.as_bytes()).unwrap().is_complete(), "{head}");
        let mut out = Vec::new();
        let plan = plan(&req, &forwarder(), "127.0.0.1", false, &mut out)?;
        let decision = (plan.keep_alive, plan.idempotent, plan.head, plan.body);
        Some((decision, String::from_utf8(out).unwrap()))
    }

    /// A plan's keep-alive, repeatable, HEAD and body length.
    type Decision = (bool, bool, bool, u64);

    const FORWARDED: &str = "x-forwarded-proto: http\r\nx-forwarded-host: app.localhost\r\n\
                             via: 1.1 wharf\r\n\r\n";

    #[test]
    fn requests_the_lane_takes_and_their_upstream_heads() {
        let cases: &[(&str, Decision, &str)] = &[
            // (request head, (keep-alive, repeatable, HEAD, body), upstream head before FORWARDED)
            (
                "GET /a?b HTTP/1.1\r\nHost: app.localhost\r\nAccept: */*\r\n\r\n",
                (true, true, false, 0),
                "GET /a?b HTTP/1.1\r\nHost: app.localhost\r\nAccept: */*\r\n\
                 x-forwarded-for: 127.0.0.1\r\n",
            ),
            (
                "HEAD / HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n",
                (false, true, true, 0),
                "HEAD / HTTP/1.1\r\nHost: app.localhost\r\nx-forwarded-for: 127.0.0.1\r\n",
            ),
            (
                "POST /p HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\n\r\n",
                (true, false, false, 5),
                "POST /p HTTP/1.1\r\nHost: app.localhost\r\ncontent-length: 5\r\n\
                 x-forwarded-for: 127.0.0.1\r\n",
            ),
            (
                // A Connection naming Content-Length leaves the framing alone.
                "PUT / HTTP/1.1\r\nHost: app.localhost\r\nConnection: content-length\r\n\
                 Content-Length: 2\r\n\r\n",
                (true, false, false, 2),
                "PUT / HTTP/1.1\r\nHost: app.localhost\r\ncontent-length: 2\r\n\
                 x-forwarded-for: 127.0.0.1\r\n",
            ),
            (
                // Prior hops lead; one named by Connection is dropped; the proxy's own go.
                "GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Forwarded-For: 10.0.0.1\r\n\
                 X_Forwarded_Host: evil\r\nForwarded: for=6.6.6.6\r\nKeep-Alive: 5\r\n\
                 Via: 1.0 fred\r\n\r\n",
                (true, true, false, 0),
                "GET / HTTP/1.1\r\nHost: app.localhost\r\nVia: 1.0 fred\r\n\
                 x-forwarded-for: 10.0.0.1, 127.0.0.1\r\n",
            ),
            (
                "GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: x-forwarded-for, close\r\n\
                 X-Forwarded-For: 10.0.0.1\r\nX-Kept: 1\r\n\r\n",
                (false, true, false, 0),
                "GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Kept: 1\r\n\
                 x-forwarded-for: 127.0.0.1\r\n",
            ),
        ];
        for (head, decision, upstream) in cases {
            let (got, written) = decide(head).unwrap_or_else(|| panic!("handed over: {head}"));
            assert_eq!(got, *decision, "{head}");
            assert_eq!(written, format!("{upstream}{FORWARDED}"), "{head}");
        }
    }

    #[test]
    fn requests_hyper_takes() {
        let long_line = format!(
            "GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Big: {}\r\n\r\n",
            "a".repeat(Limits::default().max_header_line)
        );
        let cases = [
            "GET / HTTP/1.0\r\nHost: app.localhost\r\n\r\n",
            "CONNECT app.localhost:80 HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
            "GET http://app.localhost/ HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
            "GET /a\"b HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: app.localhost\r\nHost: app.localhost\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: other.localhost\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\n\
             Content-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: app.localhost\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: app.localhost\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: app.localhost\r\nVia: 1.1 Wharf\r\n\r\n",
            &long_line,
        ];
        for head in cases {
            assert!(decide(head).is_none(), "the lane took {head}");
        }
    }
}
