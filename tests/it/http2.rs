//! HTTP/2 with prior knowledge on the proxy's HTTP port: real clients (curl, h2load) reach
//! an HTTP/1.1 instance by `:authority`, the routing rules hold, and an idle connection is
//! closed with GOAWAY.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

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

    let (status, _, body) = curl_h2(
        &curl,
        &format!("http://duo.localhost:{port}/upload"),
        &["--data-binary", "hello, h2"],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"received\": 9"), "{body}");

    // The routing rules are the same as for HTTP/1.1, and nothing else reaches the server.
    let before = p.count_lines(|l| l.starts_with("REQ "));
    let cases = [
        (format!("http://nobody.localhost:{port}/"), 404),
        (format!("http://127.0.0.1:{port}/"), 421),
        (format!("http://localhost:{port}/"), 200),
    ];
    for (url, expected) in cases {
        let (status, version, body) = curl_h2(&curl, &url, &[]);
        assert_eq!((status, version.as_str()), (expected, "2"), "{url}: {body}");
    }
    assert_eq!(p.count_lines(|l| l.starts_with("REQ ")), before);
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

const PING: u8 = 6;
const GOAWAY: u8 = 7;

#[test]
fn an_idle_http2_connection_is_closed_with_goaway() {
    let sb = Sandbox::new();
    let p = sb.serve("quiet", &[]);
    let port = p.url_port();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let start = Instant::now();
    // The preface and an empty SETTINGS frame, then nothing but answers to pings.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut goaway = None;
    while let Some((kind, flags, payload)) = read_frame(&mut s) {
        match kind {
            GOAWAY => goaway = goaway.or(Some(start.elapsed())),
            PING if flags & 1 == 0 => {
                let mut ack = vec![0, 0, 8, PING, 1, 0, 0, 0, 0];
                ack.extend_from_slice(&payload);
                let _ = s.write_all(&ack);
            }
            _ => {}
        }
    }
    let closed = start.elapsed();
    let goaway = goaway.expect("a GOAWAY before the close");
    assert!(
        goaway >= Duration::from_secs(14) && closed < Duration::from_secs(35),
        "GOAWAY after {goaway:?}, closed after {closed:?}; expected ~15 s"
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
