//! The HTTP/1.1 forwarding rulebook. Every forwarding decision is made here, once, on header
//! name/value pairs as bytes, and both HTTP/1.1 paths call it — the express lane on the bytes
//! it parsed, hyper's path on its header maps — so that a request reaches an instance the same
//! whichever path carried it: which headers are hop-by-hop (and which `Connection` names),
//! which client headers are the proxy's own and what it writes instead (`X-Forwarded-*`,
//! `Via`), what marks a loop, which requests may be sent twice, which answers are refused
//! (an unasked 101, a broken `Transfer-Encoding`), which heads are over the limits, and which
//! responses leave their connection unfit for another request. Each path keeps its own
//! framing code. The limits themselves are the callers' to pass in.

/// Marks requests that went through wharf, to catch routes that point back at the proxy.
pub(crate) const VIA: &str = "1.1 wharf";

/// Hop-by-hop by definition (RFC 9110 §7.6.1, RFC 9112 §6.1, and the long-deprecated
/// `Keep-Alive` and `Proxy-Connection`), plus `Upgrade`: re-added for WebSockets only, so
/// that `h2c` and other upgrades never reach an instance.
const HOP_BY_HOP: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// What a request header the client sent becomes on its way to the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Passed on as the client wrote it.
    Keep,
    /// `X-Forwarded-For`: its hops (a tunnel in front of wharf) lead the one the proxy writes
    /// (`forwarded_for`).
    PriorHops,
    /// Hop-by-hop, named by `Connection`, or the proxy's own (`X-Forwarded-*`, `Forwarded`,
    /// `X-Real-IP`, and any of them spelled with `_`): dropped; the proxy writes the
    /// forwarding headers it vouches for (`forwarded_headers`).
    Dropped,
}

/// What a message's `Connection` headers say about its connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Connection {
    /// `close`: no other message follows on this connection.
    pub(crate) close: bool,
    /// `upgrade`: the sender asks to switch protocols.
    pub(crate) upgrade: bool,
    /// It names other headers, which are then hop-by-hop (`named_by_connection`).
    pub(crate) names_headers: bool,
}

impl Connection {
    /// Take in one `Connection` header's value.
    pub(crate) fn read(&mut self, value: &[u8]) {
        for token in tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                self.names_headers = true;
            }
        }
    }
}

/// The comma-separated elements of a header value, trimmed, empty ones skipped. Bytes, not
/// text: an element with a byte outside visible ASCII still counts (it names no header and no
/// coding), and its neighbours still apply.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a header is hop-by-hop by its name alone (any case).
#[inline]
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether the `Connection` header values `connection` name `name` (any case) as a header
/// that stays on its hop — never `Host`, which is the request's, not the hop's.
pub(crate) fn named_by_connection<'a>(
    connection: impl IntoIterator<Item = &'a [u8]>,
    name: &[u8],
) -> bool {
    !name.eq_ignore_ascii_case(b"host")
        && connection
            .into_iter()
            .flat_map(tokens)
            .any(|t| t.eq_ignore_ascii_case(name))
}

/// Whether a header (of a request or a response) stays on its hop: hop-by-hop by name, or
/// named by its message's `Connection` (`named`: `named_by_connection`, asked only when the
/// message's `Connection` names headers at all).
#[inline]
pub(crate) fn stays_on_hop(name: &[u8], named: impl FnOnce(&[u8]) -> bool) -> bool {
    is_hop_by_hop(name) || named(name)
}

/// The fate of a client's request header, by its name (any case) and whether the request's
/// `Connection` names it (`named`, asked only when that is not decided already). A prior
/// `X-Forwarded-For` named by `Connection` is hop-by-hop like any other (RFC 9110 §7.6.1):
/// dropped, and only the proxy's hop is written.
#[inline]
pub(crate) fn request_header(name: &[u8], named: impl FnOnce(&[u8]) -> bool) -> Fate {
    let fate = forwarding_header(name);
    if fate == Fate::Dropped || stays_on_hop(name, named) {
        Fate::Dropped
    } else {
        fate
    }
}

/// The fate of a request header by its name alone: whether it is one of the forwarding
/// headers the proxy writes itself.
#[inline]
fn forwarding_header(name: &[u8]) -> Fate {
    // Most names start with another letter: one comparison, on the lane's every header.
    if !matches!(name.first(), Some(b'x' | b'X' | b'f' | b'F')) {
        return Fate::Keep;
    }
    if !proxy_owned(name) {
        Fate::Keep
    } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
        Fate::PriorHops
    } else {
        Fate::Dropped
    }
}

fn proxy_owned(name: &[u8]) -> bool {
    // `_` reads as `-`: wsgiref, older puma and other CGI-style servers map both to one
    // variable, so `X_Forwarded_Host` would join the proxy's `X-Forwarded-Host`.
    let fold = |b: &u8| {
        if *b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        }
    };
    let folded_eq = |part: &[u8], word: &[u8]| part.iter().map(fold).eq(word.iter().copied());
    let prefix = b"x-forwarded-";
    (name.len() > prefix.len() && folded_eq(&name[..prefix.len()], prefix))
        || folded_eq(name, b"forwarded")
        || folded_eq(name, b"x-real-ip")
}

/// Write the `X-Forwarded-For` value into `out`: the prior hops the request kept (each
/// `X-Forwarded-For` line whose fate is `PriorHops`, as the client wrote it; blank ones
/// skipped), then the client's address, `peer`.
pub(crate) fn forwarded_for<'a>(
    prior: impl IntoIterator<Item = &'a [u8]>,
    peer: &[u8],
    out: &mut Vec<u8>,
) {
    for hops in prior {
        if !hops.trim_ascii().is_empty() {
            out.extend_from_slice(hops);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(peer);
}

/// A client's address as `X-Forwarded-For` gives it (IPv4-mapped IPv6 as IPv4). Every client
/// is local: the two usual addresses cost no formatting and no allocation, which on a new
/// connection's first request was about 5 % of its instructions.
pub(crate) fn peer_text(ip: std::net::IpAddr) -> std::borrow::Cow<'static, str> {
    let ip = ip.to_canonical();
    if ip == std::net::Ipv4Addr::LOCALHOST {
        "127.0.0.1".into()
    } else if ip == std::net::Ipv6Addr::LOCALHOST {
        "::1".into()
    } else {
        ip.to_string().into()
    }
}

/// Who sent a request: its address, and whether it came over TLS (then
/// `X-Forwarded-Proto: https`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) tls: bool,
}

/// `X-Forwarded-Proto`'s value.
pub(crate) fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

/// The forwarding headers the proxy writes on every request after its `X-Forwarded-For`
/// (`forwarded_for`), in order: `X-Forwarded-Proto` (`scheme`), `X-Forwarded-Host` (the
/// request's Host), and its `Via`, after any the client sent.
pub(crate) fn forwarded_headers(host: &[u8], tls: bool) -> [(&'static str, &[u8]); 3] {
    [
        ("x-forwarded-proto", scheme(tls).as_bytes()),
        ("x-forwarded-host", host),
        ("via", VIA.as_bytes()),
    ]
}

/// Whether a `Via` value names wharf as one of its hops' receivers, in any case: the request
/// has come round to the proxy again (508).
pub(crate) fn via_is_loop(value: &[u8]) -> bool {
    let ours = VIA.rsplit(' ').next().unwrap_or(VIA).as_bytes();
    value.split(|&b| b == b',').any(|hop| {
        // `received-protocol received-by [comment]`
        hop.split(u8::is_ascii_whitespace)
            .filter(|t| !t.is_empty())
            .nth(1)
            .is_some_and(|by| by.eq_ignore_ascii_case(ours))
    })
}

/// Whether one header line, `name: value`, is longer than `max_line` (431).
#[inline]
pub(crate) fn line_too_long(name: &[u8], value: &[u8], max_line: usize) -> bool {
    name.len() + value.len() + 2 > max_line
}

/// Whether a head of `count` header lines has more than `max_headers` (431).
#[inline]
pub(crate) fn too_many_headers(count: usize, max_headers: usize) -> bool {
    count > max_headers
}

/// Whether a request may be sent a second time, as far as it is concerned: its method is
/// idempotent (RFC 9110 §9.2.2) and it has no body (a body is read once).
pub(crate) fn repeatable(method: &[u8], has_body: bool) -> bool {
    !has_body
        && matches!(
            method,
            b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
        )
}

/// Whether a request that failed may go once more, on a new connection: only one that can be
/// repeated safely (`repeatable`), and only if it failed on a pooled (`reused`) connection
/// before any byte of an answer arrived (`answered`): the server had closed that connection
/// as it idled. Once anything came back the server has the request, and a malformed answer is
/// the instance's error (502), not a reason to ask it twice.
pub(crate) fn may_send_again(repeatable: bool, reused: bool, answered: bool) -> bool {
    repeatable && reused && !answered
}

/// Whether a client connection stays open after the proxy's own error answer (a 502, say)
/// to a request it would otherwise keep open (`keep_alive`): not if the request's body was not
/// all read (`body_unread`), for what follows on the connection is the rest of that body, never
/// a request. The answer then says `connection: close`.
pub(crate) fn open_after_error(keep_alive: bool, body_unread: bool) -> bool {
    keep_alive && !body_unread
}

/// Why a response with `status` is refused (502), if it is: a 101 to a request that did not
/// ask for an upgrade (`asked`: a WebSocket's), which would leave the connection speaking
/// something else.
pub(crate) fn unasked_switch(status: u16, asked: bool) -> Option<&'static str> {
    (status == 101 && !asked).then_some("101 Switching Protocols unasked")
}

/// Why a response's `Transfer-Encoding` value cannot frame its body, if it cannot; `http10`:
/// the response is HTTP/1.0. Both paths refuse such a response (502) rather than frame it two
/// ways: hyper's client refuses HTTP/1.0 ones itself (RFC 9112 §6.1: their framing is
/// faulty), and takes a value it cannot read as text, or whose last element is empty, for
/// "not chunked", reading the body until close and passing the chunk framing on as the body.
/// Codings are tokens (RFC 9110 §10.1.4); an empty element is refused wherever it is.
pub(crate) fn transfer_encoding_fault(http10: bool, value: &[u8]) -> Option<&'static str> {
    if http10 {
        Some("Transfer-Encoding in an HTTP/1.0 response")
    } else if !value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        Some("Transfer-Encoding with a byte outside visible ASCII")
    } else if value
        .split(|&b| b == b',')
        .any(|e| e.trim_ascii().is_empty())
    {
        Some("Transfer-Encoding with an empty element")
    } else {
        None
    }
}

/// Whether a connection may carry another request after this response, as far as its body
/// is concerned: a response that has no body by rule (to HEAD, a 204, a 304) but announced
/// one (`announced`: a non-zero `Content-Length`, or `Transfer-Encoding`) comes from a server
/// that may send that body anyway, later, where the next request's answer would be read.
#[inline]
pub(crate) fn reusable_after(head: bool, status: u16, announced: bool) -> bool {
    !((head || status == 204 || status == 304) && announced)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fate of each header of a request whose `Connection` header is `connection`.
    fn fates(connection: &str, names: &[&str]) -> Vec<Fate> {
        let mut options = Connection::default();
        options.read(connection.as_bytes());
        let named = |name: &[u8]| {
            options.names_headers && named_by_connection([connection.as_bytes()], name)
        };
        names
            .iter()
            .map(|name| request_header(name.as_bytes(), named))
            .collect()
    }

    #[test]
    fn request_headers_by_name_and_connection() {
        use Fate::*;
        let cases: &[(&str, &str, Fate)] = &[
            // (Connection, header, fate)
            ("", "Accept", Keep),
            ("", "Host", Keep),
            ("", "Via", Keep),
            ("", "X-Forwarded-For", PriorHops),
            ("", "x-forwarded-for", PriorHops),
            // The proxy's own, in any spelling.
            ("", "X-Forwarded-Host", Dropped),
            ("", "x_forwarded_host", Dropped),
            ("", "X_Forwarded-Proto", Dropped),
            ("", "x-forwarded_for", Dropped),
            ("", "X-Forwarded-Prefix", Dropped),
            ("", "Forwarded", Dropped),
            ("", "FORWARDED", Dropped),
            ("", "X-Real-IP", Dropped),
            ("", "x_real_ip", Dropped),
            // Near misses are the client's.
            ("", "x-forwarded-", Keep),
            ("", "X-Forwardedx", Keep),
            ("", "Forwarded-For", Keep),
            ("", "X-Real", Keep),
            ("", "x", Keep),
            // Hop-by-hop by name.
            ("", "Connection", Dropped),
            ("", "Keep-Alive", Dropped),
            ("", "Proxy-Connection", Dropped),
            ("", "Proxy-Authorization", Dropped),
            ("", "TE", Dropped),
            ("", "Trailer", Dropped),
            ("", "Transfer-Encoding", Dropped),
            ("", "Upgrade", Dropped),
            // Named by Connection: hop-by-hop, a prior hop too (RFC 9110 §7.6.1); Host never.
            ("X-Secret", "x-secret", Dropped),
            ("x-forwarded-for, close", "X-Forwarded-For", Dropped),
            ("close", "X-Forwarded-For", PriorHops),
            ("keep-alive, X-Secret", "X-Other", Keep),
            ("Via", "Via", Dropped),
            ("Host", "Host", Keep),
            ("\u{ff}close, X-Drop", "x-drop", Dropped),
        ];
        for (connection, name, fate) in cases {
            assert_eq!(
                fates(connection, &[name]),
                [*fate],
                "Connection: {connection:?}, {name}"
            );
        }
    }

    #[test]
    fn connection_options() {
        let cases: &[(&str, Connection)] = &[
            ("", Connection::default()),
            ("keep-alive", Connection::default()),
            (
                "Close",
                Connection {
                    close: true,
                    ..Connection::default()
                },
            ),
            (
                "Upgrade, HTTP2-Settings",
                Connection {
                    upgrade: true,
                    names_headers: true,
                    ..Connection::default()
                },
            ),
            (
                "x-forwarded-for, close",
                Connection {
                    close: true,
                    names_headers: true,
                    ..Connection::default()
                },
            ),
        ];
        for (value, expected) in cases {
            let mut read = Connection::default();
            read.read(value.as_bytes());
            assert_eq!(read, *expected, "{value:?}");
        }
    }

    #[test]
    fn a_peer_is_written_as_its_ip_v4_mapped_ones_as_v4() {
        for (ip, text) in [
            ("127.0.0.1", "127.0.0.1"),
            ("::1", "::1"),
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("::ffff:10.1.2.3", "10.1.2.3"),
            ("127.0.0.2", "127.0.0.2"),
            ("fe80::1", "fe80::1"),
        ] {
            assert_eq!(peer_text(ip.parse().unwrap()), text, "{ip}");
        }
    }

    #[test]
    fn forwarded_for_puts_prior_hops_first() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "127.0.0.1"),
            (&["10.0.0.1"], "10.0.0.1, 127.0.0.1"),
            (
                &["10.0.0.1, 10.0.0.2", "10.0.0.3"],
                "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1",
            ),
            (&["  ", "10.0.0.1"], "10.0.0.1, 127.0.0.1"),
        ];
        for (prior, expected) in cases {
            let mut out = Vec::new();
            forwarded_for(prior.iter().map(|p| p.as_bytes()), b"127.0.0.1", &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), *expected, "{prior:?}");
        }
        let names: Vec<&str> = forwarded_headers(b"a.localhost", false)
            .iter()
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(names, ["x-forwarded-proto", "x-forwarded-host", "via"]);
    }

    #[test]
    fn a_via_naming_wharf_in_any_case_is_a_loop() {
        let cases = [
            (VIA, true),
            ("1.1 WHARF", true),
            ("1.0 fred, 1.1 Wharf", true),
            ("HTTP/1.1  wharf (x)", true),
            ("1.1 fred", false),
            ("1.1 wharfs", false),
            ("wharf", false),
            ("1.1 fred (wharf)", false),
            ("", false),
        ];
        for (via, is_loop) in cases {
            assert_eq!(via_is_loop(via.as_bytes()), is_loop, "{via}");
        }
    }

    #[test]
    fn retries_and_switches() {
        let cases: &[(&str, bool, bool)] = &[
            // (method, has a body, repeatable)
            ("GET", false, true),
            ("HEAD", false, true),
            ("OPTIONS", false, true),
            ("PUT", false, true),
            ("DELETE", false, true),
            ("TRACE", false, true),
            ("PUT", true, false),
            ("POST", false, false),
            ("PATCH", false, false),
            ("get", false, false),
        ];
        for (method, body, repeatable_) in cases {
            assert_eq!(
                repeatable(method.as_bytes(), *body),
                *repeatable_,
                "{method} {body}"
            );
        }
        assert!(may_send_again(true, true, false));
        assert!(!may_send_again(true, true, true));
        assert!(!may_send_again(true, false, false));
        assert!(!may_send_again(false, true, false));
        assert!(open_after_error(true, false));
        assert!(!open_after_error(true, true));
        assert!(!open_after_error(false, false));
        assert!(unasked_switch(101, false).is_some());
        assert!(unasked_switch(101, true).is_none());
        assert!(unasked_switch(200, false).is_none());
    }

    #[test]
    fn limits() {
        assert!(!line_too_long(b"a", b"bc", 5));
        assert!(line_too_long(b"a", b"bcd", 5));
        assert!(!too_many_headers(100, 100));
        assert!(too_many_headers(101, 100));
    }

    #[test]
    fn elements_are_read_as_bytes_and_codings_as_tokens() {
        let list: Vec<&[u8]> = tokens(b"\xffclose, X-Drop,, ").collect();
        assert_eq!(list, [&b"\xffclose"[..], b"X-Drop"]);
        let cases: &[(bool, &[u8], bool)] = &[
            // (HTTP/1.0, Transfer-Encoding, refused)
            (false, b"gzip,\tchunked", false),
            (false, b"chunked", false),
            (false, b"\xffgzip, chunked", true),
            (false, b"chunked\x00", true),
            (false, b"chunked,", true),
            (false, b"", true),
            (false, b"a, ,b", true),
            (true, b"chunked", true),
        ];
        for (http10, value, refused) in cases {
            assert_eq!(
                transfer_encoding_fault(*http10, value).is_some(),
                *refused,
                "{value:?}"
            );
        }
    }

    #[test]
    fn bodiless_responses_that_announced_a_body_end_their_connection() {
        let cases = [
            // (HEAD, status, announced, reusable)
            (true, 200, true, false),
            (false, 304, true, false),
            (false, 204, true, false),
            (true, 200, false, true),
            (false, 200, true, true),
        ];
        for (head, status, announced, reusable) in cases {
            assert_eq!(reusable_after(head, status, announced), reusable);
        }
    }
}
