//! The forwarding rulebook both HTTP/1.1 paths follow (the express lane on bytes, hyper's path
//! on header maps), so that a request reaches an instance the same whichever path carried it:
//! which client headers are the proxy's own, what marks a loop, and which responses leave
//! their connection unfit for another request. Each path keeps its own framing code.

/// Marks requests that went through wharf, to catch routes that point back at the proxy.
pub(super) const VIA: &str = "1.1 wharf";

/// What a request header the client sent becomes on its way to the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    /// Passed on (unless hop-by-hop or named by `Connection`).
    Keep,
    /// `X-Forwarded-For`: its hops (a tunnel in front of wharf) lead the one the proxy writes.
    PriorHops,
    /// The proxy's own (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`, and any of them spelled
    /// with `_`): dropped; the proxy writes the `X-Forwarded-*` it vouches for.
    Dropped,
}

/// The comma-separated elements of a header value, trimmed, empty ones skipped. Bytes, not
/// text: an element with a byte outside visible ASCII still counts (it names no header and no
/// coding), and its neighbours still apply.
pub(super) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Why a response's `Transfer-Encoding` value cannot frame its body, if it cannot; `http10`:
/// the response is HTTP/1.0. Both paths refuse such a response (502) rather than frame it two
/// ways: hyper's client refuses HTTP/1.0 ones itself (RFC 9112 §6.1: their framing is
/// faulty), and takes a value it cannot read as text, or whose last element is empty, for
/// "not chunked", reading the body until close and passing the chunk framing on as the body.
/// Codings are tokens (RFC 9110 §10.1.4); an empty element is refused wherever it is.
pub(super) fn transfer_encoding_fault(http10: bool, value: &[u8]) -> Option<&'static str> {
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

/// The fate of a client's request header, by its name (any case).
#[inline]
pub(super) fn request_header(name: &[u8]) -> Fate {
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

/// Whether a `Via` value names wharf as one of its hops' receivers, in any case: the request
/// has come round to the proxy again.
pub(super) fn via_is_loop(value: &[u8]) -> bool {
    let ours = VIA.rsplit(' ').next().unwrap_or(VIA).as_bytes();
    value.split(|&b| b == b',').any(|hop| {
        // `received-protocol received-by [comment]`
        hop.split(u8::is_ascii_whitespace)
            .filter(|t| !t.is_empty())
            .nth(1)
            .is_some_and(|by| by.eq_ignore_ascii_case(ours))
    })
}

/// Whether a request that failed may go once more, on a new connection: only one that can be
/// repeated safely (`idempotent`, without a body), and only if it failed on a pooled
/// (`reused`) connection before any byte of an answer arrived (`answered`): the server had
/// closed that connection as it idled. Once anything came back the server has the request,
/// and a malformed answer is the instance's error (502), not a reason to ask it twice.
pub(super) fn may_send_again(idempotent: bool, reused: bool, answered: bool) -> bool {
    idempotent && reused && !answered
}

/// Whether a connection may carry another request after this response, as far as its body
/// is concerned: a response that has no body by rule (to HEAD, a 204, a 304) but announced
/// one (`announced`: a non-zero `Content-Length`, or `Transfer-Encoding`) comes from a server
/// that may send that body anyway, later, where the next request's answer would be read.
#[inline]
pub(super) fn reusable_after(head: bool, status: u16, announced: bool) -> bool {
    !((head || status == 204 || status == 304) && announced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_headers_are_the_proxys_in_any_spelling() {
        for name in [
            "X-Forwarded-Host",
            "x_forwarded_host",
            "X_Forwarded-Proto",
            "x-forwarded_for",
            "X-Forwarded-Prefix",
            "Forwarded",
            "FORWARDED",
            "X-Real-IP",
            "x_real_ip",
        ] {
            assert_eq!(request_header(name.as_bytes()), Fate::Dropped, "{name}");
        }
        assert_eq!(request_header(b"X-Forwarded-For"), Fate::PriorHops);
        assert_eq!(request_header(b"x-forwarded-for"), Fate::PriorHops);
        for name in [
            "x-forwarded-",
            "X-Forwardedx",
            "Forwarded-For",
            "X-Real",
            "Host",
            "x",
        ] {
            assert_eq!(request_header(name.as_bytes()), Fate::Keep, "{name}");
        }
    }

    #[test]
    fn a_via_naming_wharf_in_any_case_is_a_loop() {
        for via in [
            VIA,
            "1.1 WHARF",
            "1.0 fred, 1.1 Wharf",
            "HTTP/1.1  wharf (x)",
        ] {
            assert!(via_is_loop(via.as_bytes()), "{via}");
        }
        for via in ["1.1 fred", "1.1 wharfs", "wharf", "1.1 fred (wharf)", ""] {
            assert!(!via_is_loop(via.as_bytes()), "{via}");
        }
    }

    #[test]
    fn elements_are_read_as_bytes_and_codings_as_tokens() {
        let list: Vec<&[u8]> = tokens(b"\xffclose, X-Drop,, ").collect();
        assert_eq!(list, [&b"\xffclose"[..], b"X-Drop"]);
        assert!(transfer_encoding_fault(false, b"gzip,\tchunked").is_none());
        for bad in [
            &b"\xffgzip, chunked"[..],
            b"chunked\x00",
            b"chunked,",
            b"",
            b"a, ,b",
        ] {
            assert!(transfer_encoding_fault(false, bad).is_some(), "{bad:?}");
        }
        assert!(transfer_encoding_fault(true, b"chunked").is_some());
    }

    #[test]
    fn bodiless_responses_that_announced_a_body_end_their_connection() {
        assert!(!reusable_after(true, 200, true));
        assert!(!reusable_after(false, 304, true));
        assert!(!reusable_after(false, 204, true));
        assert!(reusable_after(true, 200, false));
        assert!(reusable_after(false, 200, true));
    }
}
