//! HTTP/2 with prior knowledge on the proxy's HTTP port: real clients (curl, h2load) reach
//! an HTTP/1.1 instance by `:authority`, the routing rules hold, and an idle connection is
//! closed with GOAWAY.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use super::express::{Reply, Scripted, alias, closes_idle_connections};
use super::util::*;

/// `curl --http2-prior-knowledge`: (status, HTTP version, body).
fn curl_h2(curl: &std::path::Path, url: &str, extra: &[&str]) -> (u16, String, String) {
    let out = Command::new(curl)
        .args(["-sS", "--http2-prior-knowledge", "--max-time", "20"])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, last) = stdout.rsplit_once('\n').unwrap();
    let (code, version) = last.split_once(' ').unwrap();
    (code.parse().unwrap(), version.into(), body.into())
}

#[test]
fn prior_knowledge_http2_reaches_an_http1_instance_by_authority() {
    let Some(curl) = need("curl") else { return };
    let sb = Sandbox::new();
    let p = sb.serve("duo", &[]);
    let port = p.url_port();

    let (status, version, body) =
        curl_h2(&curl, &format!("http://duo.localhost:{port}/x?y=1"), &[]);
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["path"], "/x?y=1");
    let headers = &seen["headers"];
    assert_eq!(
        headers["host"],
        format!("duo.localhost:{port}"),
        "Host from :authority"
    );
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["via"], "1.1 wharf");

    // Cookies split over several fields arrive as one line, as HTTP/1.1 servers expect.
    let (_, _, body) = curl_h2(
        &curl,
        &format!("http://duo.localhost:{port}/"),
        &["-H", "cookie: a=1", "-H", "cookie: b=2"],
    );
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["cookie"], "a=1; b=2", "{body}");

    let (status, _, body) = curl_h2(
        &curl,
        &format!("http://duo.localhost:{port}/upload"),
        &["--data-binary", "hello, h2"],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"received\": 9"), "{body}");

    // The routing rules are the same as for HTTP/1.1, and nothing else reaches the server.
    // Counted between two sentinel requests, whose log lines show every earlier line is in.
    let sentinel = |path: &str| {
        let (status, _, _) = curl_h2(&curl, &format!("http://duo.localhost:{port}{path}"), &[]);
        assert_eq!(status, 200, "{path}");
        p.expect(&format!("REQ GET {path}"));
    };
    sentinel("/before");
    let before = p.count_lines(|l| l.starts_with("REQ "));
    let many: Vec<String> = (0..101).map(|i| format!("x-h{i}: v")).collect();
    let many: Vec<&str> = many.iter().flat_map(|h| ["-H", h.as_str()]).collect();
    let (status, _, _) = curl_h2(&curl, &format!("http://duo.localhost:{port}/"), &many);
    assert_eq!(status, 431, "101 header fields, as over HTTP/1.1");
    let cases = [
        (format!("http://nobody.localhost:{port}/"), 404),
        (format!("http://127.0.0.1:{port}/"), 421),
        (format!("http://localhost:{port}/"), 200),
    ];
    for (url, expected) in cases {
        let (status, version, body) = curl_h2(&curl, &url, &[]);
        assert_eq!((status, version.as_str()), (expected, "2"), "{url}: {body}");
    }
    sentinel("/after");
    assert_eq!(p.count_lines(|l| l.starts_with("REQ ")), before + 1);

    // HTTP/2 has no 101: one the client did not ask for is the server's error.
    let (status, _, body) = curl_h2(
        &curl,
        &format!("http://duo.localhost:{port}/unasked-101"),
        &[],
    );
    assert_eq!(status, 502, "{body}");
}

#[test]
fn h2load_gets_every_answer_over_multiplexed_streams() {
    let Some(h2load) = need("h2load") else { return };
    let sb = Sandbox::new();
    let p = sb.serve("many", &[]);
    let port = p.url_port();
    let out = Command::new(h2load)
        .args(["-n", "400", "-c", "4", "-m", "10"])
        .args(["-H", ":authority: many.localhost"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("400 succeeded, 0 failed, 0 errored"),
        "{report}"
    );
}

/// One HTTP/2 frame: (type, flags, payload).
fn read_frame(s: &mut TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).ok()?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    Some((head[3], head[4], payload))
}

const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A hand-driven HTTP/2 connection to the proxy on `port`, past the preface and a SETTINGS
/// frame carrying `settings`; and when it opened.
fn open_raw(port: u16, settings: &[u8]) -> (TcpStream, Instant) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let start = Instant::now();
    s.write_all(PREFACE).unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, settings)).unwrap();
    (s, start)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().to_be_bytes();
    let mut f = vec![len[5], len[6], len[7], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Read frames until the connection closes (or `limit` after `start`: the proxy's pings would
/// keep a read timeout from ever firing), answering SETTINGS and PINGs as a live client does:
/// (frame types in order, when the first GOAWAY came, when it closed or the limit passed).
fn read_until_closed(
    s: &mut TcpStream,
    start: Instant,
    limit: Duration,
) -> (Vec<u8>, Option<Duration>, Duration) {
    let (mut kinds, mut goaway) = (Vec::new(), None);
    let left = || limit.checked_sub(start.elapsed()).filter(|d| !d.is_zero());
    while let Some((kind, flags, payload)) = left().and_then(|left| {
        s.set_read_timeout(Some(left)).unwrap();
        read_frame(s)
    }) {
        kinds.push(kind);
        match kind {
            GOAWAY => goaway = goaway.or(Some(start.elapsed())),
            SETTINGS if flags & 1 == 0 => {
                let _ = s.write_all(&frame(SETTINGS, 1, 0, &[]));
            }
            PING if flags & 1 == 0 => {
                let _ = s.write_all(&frame(PING, 1, 0, &payload));
            }
            _ => {}
        }
    }
    (kinds, goaway, start.elapsed())
}

#[test]
fn an_idle_http2_connection_is_closed_with_goaway() {
    // 15 s by default; shrunk to 3 s here (the GOAWAY, then as long again to close).
    let sb = Sandbox::with_limits("header_read=3");
    let p = sb.serve("quiet", &[]);
    let port = p.url_port();
    // The preface and an empty SETTINGS frame, then nothing but answers.
    let (mut s, start) = open_raw(port, &[]);
    let (_, goaway, closed) = read_until_closed(&mut s, start, Duration::from_secs(40));
    let goaway = goaway.expect("a GOAWAY before the close");
    assert!(
        goaway >= Duration::from_secs(2) && closed < Duration::from_secs(30),
        "GOAWAY after {goaway:?}, closed after {closed:?}; expected ~3 s and ~6 s"
    );
}

#[test]
fn a_preface_that_stops_half_way_is_neither_http1_nor_kept() {
    let sb = Sandbox::with_limits("first_byte=3,header_read=3");
    let p = sb.serve("half", &[]);
    let port = p.url_port();
    // Cut where HTTP/1's parser already rejects the version, and where it does not.
    let start = Instant::now();
    let clients: Vec<(usize, TcpStream)> = [13, 20]
        .map(|cut| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
            s.write_all(&PREFACE[..cut]).unwrap();
            (cut, s)
        })
        .into();
    for (cut, mut s) in clients {
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(
            answer.is_empty(),
            "cut at {cut}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "closed after {:?}",
        start.elapsed()
    );
}

#[test]
fn a_client_that_grants_no_window_is_dropped_after_the_write_deadline() {
    // A minute by default; shrunk to 4 s here.
    let sb = Sandbox::with_limits("write_stall=4");
    let p = sb.serve("stall", &[]);
    let port = p.url_port();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no response data may be sent, ever.
    let (mut s, start) = open_raw(port, &[0, 4, 0, 0, 0, 0]);
    // GET /big/50 (50 MiB), in HPACK without Huffman: :method GET, :scheme http (static
    // table), :path and :authority as literals with indexed names.
    let mut block = vec![0x82, 0x86];
    for (index, value) in [(4u8, "/big/50"), (1, "stall.localhost")] {
        block.extend_from_slice(&[index, u8::try_from(value.len()).unwrap()]);
        block.extend_from_slice(value.as_bytes());
    }
    s.write_all(&frame(HEADERS, 0x5, 1, &block)).unwrap();
    let (kinds, _, closed) = read_until_closed(&mut s, start, Duration::from_secs(60));
    assert!(
        kinds.contains(&HEADERS),
        "the response head came: {kinds:?}"
    );
    assert!(
        closed >= Duration::from_secs(3) && closed < Duration::from_secs(45),
        "closed after {closed:?}; expected ~4 s"
    );
}

#[test]
fn grpc_reaches_an_http2_instance_with_its_streams_and_trailers() {
    let Some(python) = need_venv() else { return };
    let servers = repo().join("tests/servers");
    let server = servers.join("grpc_echo.py");
    let sb = Sandbox::new();
    let p = sb.spawn(&[
        "run",
        "--name",
        "rpc",
        "--port",
        "0",
        "--",
        path_str(&python),
        path_str(&server),
        "{port}",
    ]);
    let port = p.url_port();
    p.expect("READY");
    let call = |authority: &str| -> serde_json::Value {
        let out = Command::new(&python)
            .arg(servers.join("grpc_call.py"))
            .args([&port.to_string(), authority])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let got = call("rpc.localhost");
    assert_eq!(got["unary"], "hello via rpc.localhost", "{got}");
    assert_eq!(
        got["count"],
        serde_json::json!(["0", "1", "2", "3", "4"]),
        "a server stream, every message"
    );
    assert_eq!(
        got["fail"],
        serde_json::json!({"code": "NOT_FOUND", "details": "no such thing"}),
        "the status travels in the trailers"
    );

    // Routing rules first: an unknown name is the proxy's 404, which gRPC reads as UNIMPLEMENTED.
    let got = call("nobody.localhost");
    assert_eq!(got["unary"]["code"], "UNIMPLEMENTED", "{got}");
}

/// HTTP/2 requests reach HTTP/1.1 instances through hyper's path and wharf's pool: the
/// upstream connection is kept between requests, and one the server closed as it was reused
/// gets one more try for idempotent requests only.
#[test]
fn http2_requests_keep_their_upstream_connection_and_retry_a_closed_one_once() {
    let Some(curl) = need("curl") else { return };
    let sb = Sandbox::new();
    let keeps =
        Scripted::start(|_, _| Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    let port = alias(&sb, "keep", keeps.port);
    for _ in 0..6 {
        let (status, _, body) = curl_h2(&curl, &format!("http://keep.localhost:{port}/"), &[]);
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    assert_eq!(keeps.connections(), 1, "{:?}", keeps.seen());

    let flaky = Scripted::start(closes_idle_connections);
    let port = alias(&sb, "flaky", flaky.port);
    let url = format!("http://flaky.localhost:{port}/");
    for _ in 0..3 {
        let (status, _, body) = curl_h2(&curl, &url, &[]);
        assert_eq!((status, body.as_str()), (200, "get"));
    }
    // Each GET after the first met a close on the kept connection and went again on a new one.
    assert_eq!(flaky.connections(), 3, "{:?}", flaky.seen());
    // A POST is never sent twice: the client gets the 502.
    let (status, _, body) = curl_h2(&curl, &url, &["-X", "POST"]);
    assert_eq!(status, 502, "{body}");
    assert_eq!(flaky.count("POST"), 1, "{:?}", flaky.seen());
}
