//! The express lane (plain bodyless HTTP/1.1 requests forwarded on bytes): every response
//! framing, connection reuse and its retry, invalid answers, and the hand-over to hyper in the
//! middle of a connection. The backend here is scripted byte for byte, so each case is exact.
//! Each case also runs with the lane off (`h1test!`): hyper's path must pass it alike.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use super::util::*;

/// What the scripted backend does with one request.
pub(super) enum Reply {
    Send(&'static [u8]),
    SendAndClose(&'static [u8]),
    /// Close the connection without a word.
    Close,
    /// Never answer; log "EOF" when the proxy closes the connection.
    Hang,
}

/// A backend that answers with exactly the bytes its script gives, and records which
/// connection carried which request line, and "EOF" when the proxy closes one.
pub(super) struct Scripted {
    pub(super) port: u16,
    seen: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Scripted {
    /// `script(request line, requests before it on this connection)`.
    pub(super) fn start(script: fn(&str, usize) -> Reply) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (conn, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let log = log.clone();
                std::thread::spawn(move || serve_scripted(stream, conn, script, &log));
            }
        });
        Scripted { port, seen }
    }

    pub(super) fn seen(&self) -> Vec<(usize, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// How many connections carried something.
    pub(super) fn connections(&self) -> usize {
        self.seen().iter().map(|(c, _)| c + 1).max().unwrap_or(0)
    }

    /// How many logged lines contain `what`.
    pub(super) fn count(&self, what: &str) -> usize {
        self.seen().iter().filter(|(_, l)| l.contains(what)).count()
    }
}

fn serve_scripted(
    stream: TcpStream,
    conn: usize,
    script: fn(&str, usize) -> Reply,
    log: &Mutex<Vec<(usize, String)>>,
) {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    for nth in 0.. {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            log.lock().unwrap().push((conn, "EOF".into()));
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                break;
            }
        }
        let line = line.trim_end().to_string();
        log.lock().unwrap().push((conn, line.clone()));
        match script(&line, nth) {
            Reply::Send(bytes) => writer.write_all(bytes).unwrap(),
            Reply::SendAndClose(bytes) => {
                let _ = writer.write_all(bytes);
                return;
            }
            Reply::Close => return,
            Reply::Hang => {
                let mut rest = Vec::new();
                let _ = reader.read_to_end(&mut rest);
                log.lock().unwrap().push((conn, "EOF".into()));
                return;
            }
        }
    }
}

/// Route `name` to `backend_port` with an alias; the proxy's port.
pub(super) fn alias(sb: &Sandbox, name: &str, backend_port: u16) -> u16 {
    let (status, log) = sb.output(&["alias", name, &backend_port.to_string()]);
    assert!(status.success(), "{log}");
    sb.proxy().expect("alias started the proxy").1
}

pub(super) fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Read up to and including `end`; the connection must not close before it.
fn read_until(s: &mut impl Read, end: &[u8]) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(end) {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed early: {buf:?}");
        buf.push(byte[0]);
    }
    String::from_utf8(buf).unwrap()
}

pub(super) fn read_head(s: &mut impl Read) -> String {
    read_until(s, b"\r\n\r\n")
}

fn read_line(s: &mut impl Read) -> String {
    read_until(s, b"\r\n")
}

/// A chunked body as the client sees it: the data, and the lines after the last chunk.
fn read_chunked(s: &mut impl Read) -> (String, String) {
    let mut body = Vec::new();
    loop {
        let size = read_line(s);
        let size = usize::from_str_radix(size.trim_end(), 16)
            .unwrap_or_else(|_| panic!("a bare chunk size, not {size:?}"));
        if size == 0 {
            break;
        }
        let mut data = vec![0u8; size + 2];
        s.read_exact(&mut data).unwrap();
        assert!(data.ends_with(b"\r\n"));
        body.extend_from_slice(&data[..size]);
    }
    let mut after = String::new();
    loop {
        let line = read_line(s);
        after.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    (String::from_utf8(body).unwrap(), after)
}

fn has_header(head: &str, name: &str) -> bool {
    head.lines()
        .any(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
}

fn framings(line: &str, _: usize) -> Reply {
    match line.split(' ').nth(1).unwrap_or_default() {
        "/chunked" => Reply::Send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\
              X-Kept: 1\r\nConnection: X-Secret\r\nX-Secret: 1\r\n\r\n\
              5;ext=\"a\"\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        ),
        "/early" => Reply::Send(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        ),
        "/head" => Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
        "/cached" => Reply::Send(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"),
        "/nocontent" => Reply::Send(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"),
        "/named" => Reply::Send(
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nnamed",
        ),
        "/close" => Reply::SendAndClose(b"HTTP/1.0 200 OK\r\nX-Old: 1\r\n\r\nuntil close"),
        _ => Reply::Send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    }
}

h1test!(
    every_response_framing_reaches_the_client_reframed,
    hyper: #[ignore = "issue 15: hyper answers an HTTP/1.0 response as HTTP/1.0 without \
                       `connection: close` (engines::response_http10_until_close says why)"],
    |sb: Sandbox| {
        let backend = Scripted::start(framings);
        let port = alias(&sb, "framed", backend.port);
        let mut s = connect(port);
        let ask = |s: &mut TcpStream, method: &str, path: &str| {
            write!(
                s,
                "{method} {path} HTTP/1.1\r\nHost: framed.localhost\r\n\r\n"
            )
            .unwrap();
        };

        ask(&mut s, "GET", "/chunked");
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(has_header(&head, "x-kept"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
        );
        assert!(!has_header(&head, "content-length"), "TE wins: {head}");
        assert!(
            !has_header(&head, "x-secret"),
            "named by Connection: {head}"
        );
        assert!(!has_header(&head, "connection"), "{head}");
        assert!(has_header(&head, "date"), "a proxy adds the Date: {head}");
        let (body, after) = read_chunked(&mut s);
        assert_eq!(body, "hello world");
        assert_eq!(after, "\r\n", "extensions and trailers are not passed on");

        ask(&mut s, "GET", "/early");
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "103 dropped: {head}");
        let mut body = [0u8; 5];
        s.read_exact(&mut body).unwrap();
        assert_eq!(&body, b"final");

        ask(&mut s, "HEAD", "/head");
        let head = read_head(&mut s);
        assert!(
            head.to_ascii_lowercase().contains("content-length: 10"),
            "{head}"
        );
        ask(&mut s, "GET", "/cached");
        let head = read_head(&mut s);
        assert!(
            head.starts_with("HTTP/1.1 304"),
            "no body after HEAD: {head}"
        );
        ask(&mut s, "DELETE", "/nocontent");
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 204"), "{head}");
        assert!(
            !has_header(&head, "content-length"),
            "never on a 204: {head}"
        );

        // Framing headers are rebuilt, even when the server's Connection names them.
        ask(&mut s, "GET", "/named");
        let (head, body) = read_response(&mut s);
        assert!(
            head.to_ascii_lowercase().contains("content-length: 5"),
            "{head}"
        );
        assert_eq!(body, "named");

        ask(&mut s, "GET", "/close");
        let head = read_head(&mut s);
        assert!(
            head.starts_with("HTTP/1.1 200") && has_header(&head, "x-old"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(
            rest, "until close",
            "a body that runs until close, then the end"
        );

        // The answer to HEAD announced a body (Content-Length: 10), which a server that gets HEAD
        // wrong would send later, where the next answer is read: its connection ends there.
        let seen: Vec<(usize, String)> = backend
            .seen()
            .into_iter()
            .filter(|(_, line)| line != "EOF")
            .collect();
        let conns: Vec<usize> = seen.iter().map(|(conn, _)| *conn).collect();
        assert_eq!(
            conns,
            [0, 0, 0, 1, 1, 1, 1],
            "one upstream connection up to HEAD, one after it: {seen:?}"
        );
    }
);

pub(super) fn closes_idle_connections(line: &str, nth: usize) -> Reply {
    match (line.starts_with("POST"), nth) {
        // A server whose keep-alive timer fired just as the next request arrived.
        (_, 1..) => Reply::Close,
        (true, 0) => Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npost"),
        (false, 0) => Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nget"),
    }
}

h1test!(
    a_reused_connection_closed_by_the_server_is_retried_once_for_idempotent_requests,
    |sb: Sandbox| {
        let backend = Scripted::start(closes_idle_connections);
        let port = alias(&sb, "flaky", backend.port);
        let mut s = connect(port);
        for _ in 0..3 {
            write!(s, "GET / HTTP/1.1\r\nHost: flaky.localhost\r\n\r\n").unwrap();
            let (head, body) = read_response(&mut s);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert_eq!(body, "get");
        }
        // Each GET after the first went out on the kept connection, met a close, and was sent
        // again on a new one.
        assert_eq!(backend.connections(), 3, "{:?}", backend.seen());

        // A POST is never sent twice: the client gets the 502.
        write!(s, "POST /once HTTP/1.1\r\nHost: flaky.localhost\r\n\r\n").unwrap();
        let (head, body) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        assert!(body.contains("flaky"), "{body}");
        assert_eq!(backend.count("POST"), 1, "{:?}", backend.seen());
    }
);

/// A server that sends `103 Early Hints` for a DELETE on a kept connection, then closes.
fn hints_then_closes(line: &str, nth: usize) -> Reply {
    match (line.starts_with("DELETE"), nth) {
        (true, 1..) => Reply::SendAndClose(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"),
        _ => Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    }
}

h1test!(
    a_request_the_server_began_to_answer_is_never_sent_again,
    |sb: Sandbox| {
        let backend = Scripted::start(hints_then_closes);
        let port = alias(&sb, "hints", backend.port);
        let mut s = connect(port);
        write!(s, "GET / HTTP/1.1\r\nHost: hints.localhost\r\n\r\n").unwrap();
        let (head, _) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // Idempotent, on a reused connection, but the server had already answered with a 103.
        write!(s, "DELETE /item HTTP/1.1\r\nHost: hints.localhost\r\n\r\n").unwrap();
        let (head, _) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        assert_eq!(backend.count("DELETE"), 1, "{:?}", backend.seen());
    }
);

fn invalid_answers(line: &str, _: usize) -> Reply {
    match line.split(' ').nth(1).unwrap_or_default() {
        "/garbage" => Reply::SendAndClose(b"HELLO THERE\r\n\r\n"),
        "/conflict" => {
            Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
        }
        "/upgrade" => Reply::Send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
        "/zero" => {
            Reply::Send(b"HTTP/1.1 000 Zero\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        }
        "/short" => Reply::SendAndClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
        "/badchunk" => {
            Reply::SendAndClose(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        }
        _ => Reply::Close,
    }
}

h1test!(
    invalid_or_truncated_answers_give_502_or_a_closed_connection,
    |sb: Sandbox| {
        let backend = Scripted::start(invalid_answers);
        let port = alias(&sb, "odd", backend.port);
        for path in ["/garbage", "/conflict", "/upgrade", "/zero"] {
            let mut s = connect(port);
            write!(s, "GET {path} HTTP/1.1\r\nHost: odd.localhost\r\n\r\n").unwrap();
            let (head, body) = read_response(&mut s);
            assert!(head.starts_with("HTTP/1.1 502"), "{path}: {head}");
            assert!(body.contains("invalid response"), "{path}: {body}");
        }
        // Once the head went out, a short body can only be shown by closing the connection.
        for path in ["/short", "/badchunk"] {
            let mut s = connect(port);
            write!(s, "GET {path} HTTP/1.1\r\nHost: odd.localhost\r\n\r\n").unwrap();
            let head = read_head(&mut s);
            assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert!(rest.len() < 10, "{path}: {rest:?}");
        }
    }
);

h1test!(
    a_connection_goes_to_hyper_mid_stream_and_pipelined_requests_are_all_answered,
    |sb: Sandbox| {
        let p = sb.serve("mixed", &[]);
        let port = p.url_port();
        let mut s = connect(port);
        // All in one write: a GET and a POST with a body (the lane's), then an absolute-form GET
        // (hyper's, and hyper keeps the connection), a POST and a GET.
        s.write_all(
            b"GET /one HTTP/1.1\r\nHost: mixed.localhost\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: mixed.localhost\r\nContent-Length: 5\r\n\r\nhello\
          GET http://mixed.localhost/three HTTP/1.1\r\nHost: mixed.localhost\r\n\r\n\
          POST /four HTTP/1.1\r\nHost: mixed.localhost\r\nContent-Length: 3\r\n\r\nabc\
          GET /five HTTP/1.1\r\nHost: mixed.localhost\r\n\r\n",
        )
        .unwrap();
        let answers = [
            "/one",
            "\"received\": 5",
            "/three",
            "\"received\": 3",
            "/five",
        ];
        for expected in answers {
            let (head, body) = read_response(&mut s);
            assert!(head.starts_with("HTTP/1.1 200"), "{expected}: {head}");
            assert!(body.contains(expected), "{expected}: {body}");
        }
        // The server's log lines arrive through a pipe, maybe after its answers.
        eventually("the server logged exactly five requests", PATIENCE, || {
            p.count_lines(|l| l.starts_with("REQ ")) == 5
        });
    }
);

h1test!(
    a_client_that_leaves_ends_its_request_upstream,
    |sb: Sandbox| {
        let backend = Scripted::start(|line, _| match line.split(' ').nth(1) {
            Some("/stream") => {
                Reply::Send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
            }
            Some("/after") => Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter"),
            _ => Reply::Hang,
        });
        let port = alias(&sb, "slow", backend.port);
        let has = |what: &str| backend.count(what);

        // Waiting for a response head, and in the middle of a body that has paused.
        let mut s = connect(port);
        write!(s, "GET /compile HTTP/1.1\r\nHost: slow.localhost\r\n\r\n").unwrap();
        eventually("the backend has the request", PATIENCE, || {
            has("/compile") == 1
        });
        drop(s);
        eventually("the proxy closed it upstream", PATIENCE, || has("EOF") == 1);

        let mut s = connect(port);
        write!(s, "GET /stream HTTP/1.1\r\nHost: slow.localhost\r\n\r\n").unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(read_line(&mut s), "1\r\n");
        drop(s);
        // Its connection, mid-body, must not serve anyone else.
        let mut s = connect(port);
        write!(s, "GET /after HTTP/1.1\r\nHost: slow.localhost\r\n\r\n").unwrap();
        let (head, body) = read_response(&mut s);
        assert!(
            head.starts_with("HTTP/1.1 200") && body == "after",
            "{head}{body}"
        );
        let conn_of = |what: &str| {
            backend
                .seen()
                .into_iter()
                .find(|(_, l)| l.contains(what))
                .unwrap()
                .0
        };
        assert_ne!(
            conn_of("/after"),
            conn_of("/stream"),
            "{:?}",
            backend.seen()
        );
        eventually("the proxy closed the stream upstream", PATIENCE, || {
            has("EOF") == 2
        });
    }
);

h1test!(
    a_large_body_arrives_whole_and_the_connection_serves_the_next_request,
    |sb: Sandbox| {
        let p = sb.serve("large", &[]);
        let port = p.url_port();
        let mut s = connect(port);
        for _ in 0..2 {
            write!(s, "GET /big/3 HTTP/1.1\r\nHost: large.localhost\r\n\r\n").unwrap();
            let head = read_head(&mut s);
            assert!(
                head.to_ascii_lowercase()
                    .contains("content-length: 3145728"),
                "{head}"
            );
            let mut body = vec![0u8; 3 << 20];
            s.read_exact(&mut body).unwrap();
            assert!(body.iter().all(|&b| b == b'b'));
        }
        write!(s, "GET /after HTTP/1.1\r\nHost: large.localhost\r\n\r\n").unwrap();
        let (head, body) = read_response(&mut s);
        assert!(
            head.starts_with("HTTP/1.1 200") && body.contains("/after"),
            "{head}"
        );
    }
);

h1test!(
    an_error_page_for_head_has_no_body_and_the_connection_stays_in_step,
    |sb: Sandbox| {
        let (dead, _dead) = dead_port();
        let port = alias(&sb, "down", dead);
        let mut s = connect(port);
        write!(s, "HEAD / HTTP/1.1\r\nHost: down.localhost\r\n\r\n").unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        write!(s, "GET / HTTP/1.1\r\nHost: down.localhost\r\n\r\n").unwrap();
        let (head, body) = read_response(&mut s);
        assert!(
            head.starts_with("HTTP/1.1 502"),
            "the next answer starts cleanly: {head}"
        );
        assert!(body.contains("down"), "{body}");
    }
);

h1test!(
    connection_named_headers_are_dropped_but_host_always_reaches_the_server,
    |sb: Sandbox| {
        let p = sb.serve("named", &[]);
        let port = p.url_port();
        let mut s = connect(port);
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: named.localhost\r\nConnection: host, x-private\r\n\
         X-Private: 1\r\nX-Public: 1\r\nX-Forwarded-For: 10.0.0.1\r\n\
         X-Forwarded-For: 10.0.0.2\r\n\r\n"
        )
        .unwrap();
        let (head, body) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
        let headers = &seen["headers"];
        assert_eq!(headers["host"], "named.localhost", "{headers}");
        assert_eq!(headers["x-public"], "1");
        assert_eq!(
            headers["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1",
            "every prior hop, then the client"
        );
        assert!(headers.get("x-private").is_none(), "{headers}");
        assert!(headers.get("connection").is_none(), "{headers}");
    }
);

h1test!(
    a_request_body_never_reaches_anyone_as_a_request,
    |sb: Sandbox| {
        let p = sb.serve("inner", &[]);
        let port = p.url_port();
        let hidden = "GET /hidden HTTP/1.1\r\nHost: inner.localhost\r\n\r\n";

        // A Connection header naming Content-Length: the body still goes up as a body.
        let mut s = connect(port);
        write!(
            s,
            "POST /form HTTP/1.1\r\nHost: inner.localhost\r\nConnection: content-length\r\n\
         Content-Length: {}\r\n\r\n{hidden}GET /next HTTP/1.1\r\nHost: inner.localhost\r\n\r\n",
            hidden.len()
        )
        .unwrap();
        let (head, body) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            body.contains(&format!("\"received\": {}", hidden.len())),
            "{body}"
        );
        let (_, body) = read_response(&mut s);
        assert!(
            body.contains("/next"),
            "the next answer is the next request's: {body}"
        );

        // An instance that is down answers before the body is read: the connection closes
        // rather than read the body as a request to another instance.
        let (dead, _dead) = dead_port();
        alias(&sb, "down", dead);
        let mut s = connect(port);
        write!(
            s,
            "POST /upload HTTP/1.1\r\nHost: down.localhost\r\nContent-Length: {}\r\n\r\n{hidden}",
            hidden.len()
        )
        .unwrap();
        let (head, _) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "nothing after the 502: {rest:?}");

        eventually("the server logged both requests", PATIENCE, || {
            p.count_lines(|l| l.starts_with("REQ ")) == 2
        });
        assert_eq!(p.count_lines(|l| l.contains("/hidden")), 0, "{}", p.log());
    }
);

/// A client's view of its exchanges: for `Connection: close` requests, the TCP segments it
/// took in (Linux's `tcpi_segs_in`); for requests whose body it writes after the head with
/// Nagle's algorithm on, the time each took, in ms.
const CLIENT_VIEW: &str = r#"
import socket, struct, sys, time
port, quick, slow, kept = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1"
def connect():
    # Nagle's algorithm stays on: a write waits for the ACK of the one before.
    return socket.create_connection(("127.0.0.1", port), timeout=20)
def answer(s):
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = [l for l in head.lower().split(b"\r\n") if l.startswith(b"content-length:")]
    while len(body) < int(length[0].split(b":")[1]):
        chunk = s.recv(65536)
        assert chunk, body
        body += chunk
def segments_in():
    s = connect()
    s.sendall(f"GET / HTTP/1.1\r\nHost: {quick}\r\nConnection: close\r\n\r\n".encode())
    answer(s)
    assert s.recv(1) == b""
    # struct tcp_info's tcpi_segs_in (Linux 4.2 on), at byte 140.
    n = struct.unpack_from("I", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), 140)[0]
    s.close()
    return n
def split(s, chunked):
    start = time.monotonic()
    if chunked:
        s.sendall(f"POST / HTTP/1.1\r\nHost: {slow}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        s.sendall(b"2\r\nhi\r\n0\r\n\r\n")
    else:
        s.sendall(f"POST / HTTP/1.1\r\nHost: {slow}\r\nContent-Length: 2\r\n\r\n".encode())
        s.sendall(b"hi")
    answer(s)
    return (time.monotonic() - start) * 1000
took = {"length": [], "chunked": [], "kept": []}
for _ in range(3):
    s = connect()
    took["length"].append(split(s, False))
    if kept:
        took["kept"].append(split(s, False))
    s.close()
    s = connect()
    took["chunked"].append(split(s, True))
    s.close()
print(min(segments_in() for _ in range(3)))
print(" ".join(f"{k}={round(min(v))}" for k, v in took.items() if v))
"#;

h1test!(
    a_new_connection_acks_with_its_answer_yet_keeps_no_client_waiting_for_an_ack,
    |sb: Sandbox| {
        // The proxy's side of a new connection delays its ACKs, for the answer to carry them
        // (as HAProxy does): a `Connection: close` client takes in the SYN-ACK, the answer and
        // the FIN, no bare ACK of its request (4 segments otherwise); on the lane the FIN
        // comes in the answer's segment (2). Where the rest of a
        // request must be waited for, what came is ACKed at once: a client with Nagle's
        // algorithm on sends a body written after the head only once the head is ACKed, and
        // must not wait for a delayed ACK (40 ms). On the lane that holds for a kept
        // connection's next request too; hyper's path, once a request and answer have gone
        // by, delays that ACK (Linux's ping-pong mode), as it always has.
        if !cfg!(target_os = "linux") {
            eprintln!("skipped: counts with Linux's TCP_INFO");
            return;
        }
        let backend =
            Scripted::start(|_, _| Reply::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
        let port = alias(&sb, "quick", backend.port);
        let server = sb.serve("slow", &[]);
        assert_eq!(server.url_port(), port);
        let kept = if sb.engine() == Engine::Lane {
            "1"
        } else {
            "0"
        };
        let out = std::process::Command::new(python())
            .args([
                "-c",
                CLIENT_VIEW,
                &port.to_string(),
                "quick.localhost",
                "slow.localhost",
                kept,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines();
        let segments = if sb.engine() == Engine::Lane {
            "2"
        } else {
            "3"
        };
        assert_eq!(
            lines.next(),
            Some(segments),
            "SYN-ACK, answer, FIN: {stdout}"
        );
        for took in lines.next().unwrap_or_default().split(' ') {
            let (what, ms) = took.split_once('=').unwrap();
            let ms: u32 = ms.parse().unwrap();
            // The quickest of three, in ms: no delayed ACK's 40 ms in it.
            assert!(ms < 30, "{what}: {stdout}");
        }
    }
);
