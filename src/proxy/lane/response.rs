//! Response heads: reading an instance's (`exchange_heads`, `response_head`) and writing the
//! client's copy, and wharf's own error pages as bytes.

use std::io;

use bytes::{Buf, BytesMut};
use http::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::body::ProxyBody;
use crate::proxy::errors::{CLOSED_UNANSWERED, invalid};
use crate::proxy::lane::HEAD_BUF;
use crate::proxy::lane::lines::{
    content_length_line, date_line, decimal, head_room, header_line, status_line,
};
use crate::proxy::lane::request::Plan;
use crate::proxy::limits::Limits;
use crate::proxy::rules::{self, tokens};
use crate::proxy::upstream::Upstream;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the instance closes the connection.
    UntilClose,
}

/// What the response head said, once its downstream copy is in `out`.
pub(super) struct Answer {
    pub(super) framing: Framing,
    /// The instance keeps the connection open after this response.
    pub(super) reusable: bool,
}

/// Why an exchange with the instance failed before a response head arrived.
pub(super) enum Failure {
    /// Nothing was received: on a reused connection, the server had closed it.
    Silent(io::Error),
    Io(io::Error),
    Invalid(&'static str),
}

/// Send the request head and read the response head, writing its downstream copy into `out`.
pub(super) async fn exchange_heads(
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
                        return Err(Failure::Invalid(invalid::STATUS));
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
                    return Err(Failure::Invalid(invalid::TOO_LARGE));
                }
                Err(_) => return Err(Failure::Invalid(invalid::MALFORMED)),
            }
        }
        upbuf.reserve(HEAD_BUF);
        if !upbuf.is_empty() {
            up.ack_now();
        }
        match up.stream.read_buf(upbuf).await {
            Ok(0) => {
                let e = io::Error::new(io::ErrorKind::UnexpectedEof, CLOSED_UNANSWERED);
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

/// Read the response head's framing and write its downstream copy into `out`: the answer to
/// a HEAD request if `head`, on a client connection that stays open if `keep_alive`.
pub(super) fn response_head(
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
                let n = decimal(token).ok_or(Failure::Invalid(invalid::CONTENT_LENGTH))?;
                if length.replace(n).is_some_and(|prior| prior != n) {
                    return Err(Failure::Invalid(invalid::CONTENT_LENGTH));
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

/// Write wharf's own page, `page`, into `out` as the client gets it: the answer to a HEAD
/// request if `head` (no body), on a connection that stays open if `keep_alive`. hyper's
/// response becomes bytes here, and only here.
pub(super) async fn page_bytes(
    page: Response<ProxyBody>,
    head: bool,
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    let (parts, body) = page.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    out.clear();
    status_line(out, parts.status.as_u16(), parts.status.canonical_reason());
    for (name, value) in &parts.headers {
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    content_length_line(out, body.len() as u64);
    date_line(out);
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(&body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane's reading of a response head to a request (HEAD if `head`) on a connection
    /// that stays open if `keep_alive`: its framing, whether the upstream connection may be
    /// reused, and the head the client gets (the Date line the lane adds left out).
    fn read(
        response: &str,
        head: bool,
        keep_alive: bool,
    ) -> Result<(Framing, bool, String), String> {
        let mut headers = [httparse::EMPTY_HEADER; Limits::MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        assert!(res.parse(response.as_bytes()).unwrap().is_complete());
        let mut out = Vec::new();
        match response_head(&res, head, keep_alive, &mut out) {
            Ok(answer) => {
                let text = String::from_utf8(out).unwrap();
                let text: String = text
                    .split_inclusive("\r\n")
                    .filter(|l| !l.starts_with("date: "))
                    .collect();
                Ok((answer.framing, answer.reusable, text))
            }
            Err(Failure::Invalid(why)) => Err(why.to_string()),
            Err(_) => Err("i/o".to_string()),
        }
    }

    #[test]
    fn response_heads_and_what_the_client_gets() {
        use Framing::*;
        let cases: &[(&str, bool, bool, Framing, bool, &str)] = &[
            // (response head, HEAD, keep-alive, framing, reusable, client's head)
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\n\r\n",
                false,
                true,
                Length(2),
                true,
                "HTTP/1.1 200 OK\r\nDate: x\r\ncontent-length: 2\r\n\r\n",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
                false,
                true,
                Chunked,
                true,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nX-Kept: 1\r\n\
                 Keep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
                false,
                false,
                Length(0),
                false,
                "HTTP/1.1 200 OK\r\nX-Kept: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            ),
            (
                "HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n",
                false,
                true,
                UntilClose,
                false,
                "HTTP/1.1 200 OK\r\nX-A: 1\r\nconnection: close\r\n\r\n",
            ),
            (
                // HEAD keeps the length a GET would have had; the announced body may still come.
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                true,
                true,
                Empty,
                false,
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n",
                false,
                true,
                Empty,
                true,
                "HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n",
            ),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
                false,
                true,
                Empty,
                true,
                "HTTP/1.1 204 No Content\r\n\r\n",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
                false,
                true,
                Length(3),
                true,
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n",
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
                false,
                true,
                Length(2),
                false,
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n",
            ),
        ];
        for (response, head, keep_alive, framing, reusable, client) in cases {
            assert_eq!(
                read(response, *head, *keep_alive),
                Ok((*framing, *reusable, client.to_string())),
                "{response}"
            );
        }
    }

    #[test]
    fn response_heads_refused() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 2,\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding in an HTTP/1.0 response",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n",
                "Transfer-Encoding with an empty element",
            ),
        ];
        for (response, why) in cases {
            assert_eq!(
                read(response, false, true),
                Err(why.to_string()),
                "{response}"
            );
        }
    }
}
