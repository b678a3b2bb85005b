//! The front proxy: routing by name, forwarding rules, WebSockets, auto-start, restarts, and
//! the bad inputs of HARDENING.md.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::util::*;

/// Send raw bytes to the proxy and return the status code of the answer (0 if none).
fn raw(port: u16, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n") && matches!(s.read(&mut byte), Ok(1)) {
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn proxy_get(port: u16, host: &str, path: &str) -> (u16, String) {
    get(SocketAddr::from(([127, 0, 0, 1], port)), host, path).unwrap()
}

h1test!(
    two_instances_answer_by_name_with_host_and_forwarded_headers,
    |sb: Sandbox| {
        let Some(curl) = need("curl") else { return };
        let Some(a) = sb.gunicorn("a") else { return };
        let b = sb.serve("b", &[]);
        let port = a.url_port();
        assert_eq!(b.url_port(), port, "both behind the same proxy");
        let (_, proxy_port) = sb.proxy().expect("a proxy was started");
        assert_eq!(port, proxy_port);

        // curl resolves *.localhost to loopback by itself.
        let out = std::process::Command::new(curl)
            .args([
                "-sS",
                "--max-time",
                "20",
                &format!("http://a.localhost:{port}/"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body["host"], format!("a.localhost:{port}"));
        assert_eq!(body["forwarded_for"], "127.0.0.1");
        assert_eq!(body["forwarded_proto"], "http");
        assert_eq!(body["forwarded_host"], format!("a.localhost:{port}"));

        let (status, body) = proxy_get(port, &format!("B.LOCALHOST.:{port}"), "/x?y=1");
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["path"], "/x?y=1");
        assert_eq!(
            body["headers"]["host"],
            format!("B.LOCALHOST.:{port}"),
            "Host preserved as sent"
        );
        assert!(
            body["headers"]
                .get("connection")
                .is_none_or(|c| c != "keep-alive, x-hop")
        );

        // Absolute form works for local names, so http_proxy= users can reach instances.
        let req = format!(
            "GET http://b.localhost:{port}/abs HTTP/1.1\r\nHost: b.localhost:{port}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(raw(port, req.as_bytes()), 200);

        let listed = sb.ls();
        let names: Vec<&str> = listed.iter().map(|l| l["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(listed[1]["requests"].as_u64().unwrap() >= 2);
    }
);

h1test!(
    dashboard_for_bare_localhost_and_404_lists_known_names,
    |sb: Sandbox| {
        let p = sb.serve("known", &[]);
        let port = p.url_port();
        let (status, page) = proxy_get(port, &format!("localhost:{port}"), "/");
        assert_eq!(status, 200);
        assert!(
            page.contains(&format!("http://known.localhost:{port}")),
            "{page}"
        );
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
        s,
        "GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(json["instances"][0]["name"], "known");
        assert!(
            !text.to_ascii_lowercase().contains("access-control-"),
            "no CORS headers"
        );

        let (status, page) = proxy_get(port, "nope.localhost", "/");
        assert_eq!(status, 404);
        assert!(page.contains("known.localhost"), "{page}");
        // Once it fell back to the main socket: with dotted instance names (a worktree's
        // `fix-ui.shop`), that would serve one checkout under another's name.
        let (status, page) = proxy_get(port, "admin.known.localhost", "/");
        assert_eq!(status, 404, "{page}");
        assert!(
            page.contains("<b>known</b> has no socket named <b>admin</b>"),
            "{page}"
        );
    }
);

h1test!(
    websocket_echo_round_trips_through_the_proxy,
    |sb: Sandbox| {
        let Some(py) = need_venv() else { return };
        let ws = repo().join("tests/servers/ws.py");
        let server = sb.spawn(&[
            "run",
            "--name",
            "ws",
            "--env",
            "--port",
            "0",
            "--",
            path_str(&py),
            path_str(&ws),
            "server",
        ]);
        server.expect("WS ready");
        let port = server.url_port();
        let out = std::process::Command::new(&py)
            .args([
                path_str(&ws),
                "client",
                &port.to_string(),
                &format!("ws.localhost:{port}"),
                "hello through wharf",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("ECHO hello through wharf"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
);

#[test]
fn thirty_cold_runs_start_one_proxy_and_get_thirty_routes() {
    let sb = Sandbox::new();
    let names: Vec<String> = (0..30).map(|i| format!("cold{i}")).collect();
    let procs: Vec<Proc> = names.iter().map(|n| sb.serve(n, &[])).collect();
    let urls: BTreeSet<u16> = procs.iter().map(|p| p.url_port()).collect();
    assert_eq!(urls.len(), 1, "one proxy port for all: {urls:?}");
    let starters = procs
        .iter()
        .filter(|p| p.count_lines(|l| l.contains("started the front proxy")) > 0)
        .count();
    assert_eq!(starters, 1);
    let port = *urls.iter().next().unwrap();
    for p in &procs {
        p.report();
    }
    eventually("30 routes", PATIENCE, || sb.ls().len() == 30);
    let ports: BTreeSet<u64> = sb
        .ls()
        .iter()
        .map(|l| {
            l["sockets"]["http"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(ports.len(), 30);
    for n in &names {
        let (status, body) = proxy_get(port, &format!("{n}.localhost"), "/");
        assert_eq!(status, 200, "{n}: {body}");
    }
}

h1test!(
    a_killed_instance_gives_502_or_404_then_404_within_a_second,
    |sb: Sandbox| {
        let mut p = sb.serve("doomed", &[]);
        let port = p.url_port();
        let child = p.report()["pid"].as_i64().unwrap() as i32;
        assert_eq!(proxy_get(port, "doomed.localhost", "/").0, 200);
        // SAFETY: killing the server this test started.
        unsafe { libc::kill(child, libc::SIGKILL) };
        let killed = Instant::now();
        loop {
            let (status, _) = proxy_get(port, "doomed.localhost", "/");
            if status == 404 {
                break;
            }
            assert!([200, 502].contains(&status), "got {status}");
            assert!(
                killed.elapsed() < Duration::from_secs(1) + SLACK,
                "route still there after 1 s (and {SLACK:?} of slack)"
            );
        }
        assert_eq!(p.wait(PATIENCE).code(), Some(128 + 9));
    }
);

h1test!(
    a_dead_backend_is_a_clear_502_within_two_seconds,
    |sb: Sandbox| {
        let (dead, _dead) = dead_port();
        let (status, log) = sb.output(&["alias", "gone", &dead.to_string()]);
        assert!(status.success(), "{log}");
        let (_, port) = sb.proxy().unwrap();
        let started = Instant::now();
        let (status, page) = proxy_get(port, "gone.localhost", "/");
        assert_eq!(status, 502, "{page}");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2) + SLACK, "{took:?}");
        assert!(page.contains("is not answering"), "{page}");
        let (status, log) = sb.output(&["alias", "--rm", "gone"]);
        assert!(status.success(), "{log}");
        assert_eq!(proxy_get(port, "gone.localhost", "/").0, 404);
    }
);

#[test]
fn a_killed_proxy_comes_back_and_every_instance_is_routed_again() {
    let sb = Sandbox::new();
    let a = sb.serve("first", &[]);
    let b = sb.serve("second", &[]);
    a.url_port();
    b.url_port();
    let (pid, _) = sb.proxy().unwrap();
    // SAFETY: the proxy this sandbox started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed = Instant::now();
    eventually(
        "a new proxy routes both instances",
        Duration::from_secs(3) + SLACK,
        || {
            let Some((new_pid, port)) = sb.proxy() else {
                return false;
            };
            new_pid != pid
                && ["first", "second"].iter().all(|n| {
                    get(
                        SocketAddr::from(([127, 0, 0, 1], port)),
                        &format!("{n}.localhost"),
                        "/",
                    )
                    .is_ok_and(|(s, _)| s == 200)
                })
        },
    );
    assert!(killed.elapsed() < Duration::from_secs(3) + SLACK);
    a.expect("registered again with the front proxy");
}

h1test!(
    bad_requests_get_their_status_and_never_reach_the_backend,
    |sb: Sandbox| {
        let p = sb.serve("api", &[]);
        let port = p.url_port();
        p.report();
        let long_uri = format!("/{}", "a".repeat(9 * 1024));
        let long_header = "x".repeat(17 * 1024);
        let many: String = (0..101).map(|i| format!("X-{i}: 1\r\n")).collect();
        let big_head: String = (0..10)
            .map(|i| format!("X-{i}: {}\r\n", "y".repeat(7 * 1024)))
            .collect();
        let cases: Vec<(String, u16)> = vec![
            (
                "CONNECT api.localhost:80 HTTP/1.1\r\nHost: api.localhost:80\r\n\r\n".into(),
                405,
            ),
            ("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".into(), 421),
            (
                "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n".into(),
                421,
            ),
            (
                "GET http://example.com/ HTTP/1.1\r\nHost: api.localhost\r\n\r\n".into(),
                400,
            ),
            ("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".into(), 421),
            (
                "GET / HTTP/1.1\r\nHost: api.localhost\r\nHost: api.localhost\r\n\r\n".into(),
                400,
            ),
            ("GET / HTTP/1.1\r\n\r\n".into(), 400),
            (
                "GET /?q=<x> HTTP/1.1\r\nHost: api.localhost\r\n\r\n".into(),
                400,
            ),
            (
                "GET / HTTP/1.1\r\nHost: api/b.localhost\r\n\r\n".into(),
                400,
            ),
            ("GET / HTTP/1.1\r\nHost: ..localhost\r\n\r\n".into(), 400),
            // IDN: raw UTF-8 is not a host name; its punycode form is an ordinary label.
            (
                "GET / HTTP/1.1\r\nHost: bücher.localhost\r\n\r\n".into(),
                400,
            ),
            (
                "GET / HTTP/1.1\r\nHost: xn--bcher-kva.localhost\r\n\r\n".into(),
                404,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a.b.api.localhost\r\n\r\n".into(),
                404,
            ),
            (
                format!(
                    "GET / HTTP/1.1\r\nHost: {}.localhost\r\n\r\n",
                    "a".repeat(64)
                ),
                400,
            ),
            (
                format!("GET {long_uri} HTTP/1.1\r\nHost: api.localhost\r\n\r\n"),
                414,
            ),
            (
                format!("GET / HTTP/1.1\r\nHost: api.localhost\r\nX-Long: {long_header}\r\n\r\n"),
                431,
            ),
            (
                format!("GET / HTTP/1.1\r\nHost: api.localhost\r\n{many}\r\n"),
                431,
            ),
            (
                format!("GET / HTTP/1.1\r\nHost: api.localhost\r\n{big_head}\r\n"),
                431,
            ),
            (
                "GET / HTTP/1.1\r\nHost: api.localhost\r\nVia: 1.1 wharf\r\n\r\n".into(),
                508,
            ),
        ];
        for (request, want) in &cases {
            let got = raw(port, request.as_bytes());
            assert_eq!(got, *want, "{}", request.lines().next().unwrap());
        }
        assert_eq!(
            p.count_lines(|l| l.starts_with("REQ ")),
            0,
            "the backend was contacted:\n{}",
            p.log()
        );
        // A good request still goes through afterwards.
        assert_eq!(proxy_get(port, "api.localhost", "/").0, 200);
        p.expect("REQ GET /");
    }
);

h1test!(
    h2c_upgrades_and_hop_by_hop_headers_do_not_reach_the_backend,
    |sb: Sandbox| {
        let p = sb.serve("api", &[]);
        let port = p.url_port();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        write!(
        s,
        "GET / HTTP/1.1\r\nHost: api.localhost\r\nConnection: Upgrade, HTTP2-Settings, X-Hop\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nX-Hop: secret\r\nTE: trailers\r\n\
         Proxy-Authorization: Basic eA==\r\nX-Kept: yes\r\n\r\n"
    )
    .unwrap();
        let (head, body) = read_response(&mut s);
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "served as plain HTTP/1.1: {head}"
        );
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        let headers = body["headers"].as_object().unwrap();
        for gone in [
            "upgrade",
            "http2-settings",
            "x-hop",
            "te",
            "proxy-authorization",
        ] {
            assert!(
                !headers.contains_key(gone),
                "{gone} reached the backend: {headers:?}"
            );
        }
        assert_eq!(headers["x-kept"], "yes");
        assert_eq!(headers["via"], "1.1 wharf");
    }
);

h1test!(
    bodies_stream_both_ways_and_keep_alive_is_reused,
    |sb: Sandbox| {
        let p = sb.serve("up", &[]);
        let port = p.url_port();
        let body = vec![b'z'; 3 * 1024 * 1024];
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        for _ in 0..3 {
            write!(
                s,
                "POST /upload HTTP/1.1\r\nHost: up.localhost\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .unwrap();
            s.write_all(&body).unwrap();
            let (head, answer) = read_response(&mut s);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert_eq!(answer, format!("{{\"received\": {}}}", body.len()));
        }
    }
);

h1test!(
    a_silent_client_is_closed_after_the_first_byte_deadline,
    |sb: Sandbox| {
        let sb = sb.limited("first_byte=3");
        let p = sb.serve("quiet", &[]);
        let port = p.url_port();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 1];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without a word");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(20),
            "{waited:?}"
        );
        // Everyone else was served meanwhile.
        assert_eq!(proxy_get(port, "quiet.localhost", "/").0, 200);
    }
);

#[test]
fn control_socket_refuses_another_user() {
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let (Some(setpriv), true) = (
        which("setpriv"),
        std::path::Path::new("/usr/bin/python3").exists(),
    ) else {
        eprintln!("skipped: setpriv or /usr/bin/python3 not found");
        return;
    };
    let sb = Sandbox::new();
    let p = sb.serve("mine", &[]);
    p.url_port();
    // Open the path to others so that only the peer check stands in the way.
    use std::os::unix::fs::PermissionsExt;
    for dir in [sb.dir.path().to_path_buf(), sb.runtime_dir()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let sock = sb.runtime_dir().join("control.sock");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    // The proxy answers a stranger at once and hangs up, so the request may meet a closed pipe.
    let client = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n\
                  try:\n  s.sendall(b'{\"op\":\"list\"}\\n')\nexcept OSError:\n  pass\n\
                  print(s.makefile().readline())";
    let out = std::process::Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            client,
            path_str(&sock),
        ])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("\"ok\":false") && answer.contains("own user"),
        "{answer}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!answer.contains("mine"));
}

h1test!(
    a_request_for_a_starting_instance_waits_for_it,
    |sb: Sandbox| {
        let (py, script) = (python(), server_py());
        let args = [
            "run",
            "--name",
            "slow",
            "--env",
            "--port",
            "0",
            "--",
            path_str(&py),
            path_str(&script),
            "--bind-delay",
            "0.5",
        ];
        let p = sb.spawn(&args);
        let port = p.url_port();
        let (status, body) = proxy_get(port, "slow.localhost", "/");
        assert_eq!(status, 200, "waited instead of failing: {body}");
        assert!(p.count_lines(|l| l.starts_with("BOUND ")) == 1);
    }
);

h1test!(
    a_half_sent_head_is_closed_after_the_header_deadline,
    |sb: Sandbox| {
        let sb = sb.limited("first_byte=3,header_read=3");
        let p = sb.serve("hr", &[]);
        let port = p.url_port();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: hr.loc").unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(25),
            "{waited:?}"
        );
        assert_eq!(p.count_lines(|l| l.starts_with("REQ ")), 0);
    }
);

h1test!(
    an_idle_keep_alive_connection_is_closed_after_the_header_deadline,
    |sb: Sandbox| {
        let sb = sb.limited("header_read=3");
        let p = sb.serve("idle", &[]);
        let port = p.url_port();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: idle.localhost\r\n\r\n")
            .unwrap();
        let (head, _) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(25),
            "{waited:?}"
        );
    }
);

h1test!(
    connections_over_the_cap_get_503_and_others_still_work,
    |sb: Sandbox| {
        // 64 fds → a budget of 48 (16 in reserve), a cap of 24 connections.
        let (_proxy, port) = proxy_with_fds(&sb, 64);
        let mut held = Vec::new();
        for _ in 0..24 {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
            held.push(s);
        }
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        held.truncate(20);
        eventually("a freed slot serves again", PATIENCE, || {
            raw(port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n") == 200
        });
    }
);

#[test]
fn stop_removes_the_route_and_ends_the_instance() {
    let sb = Sandbox::new();
    let mut a = sb.serve("one", &[]);
    let mut b = sb.serve("two", &[]);
    let port = a.url_port();
    b.report();
    a.report();
    let (status, log) = sb.output(&["stop", "one"]);
    assert!(status.success(), "{log}");
    assert!(log.contains("stopped one"), "{log}");
    assert_eq!(proxy_get(port, "one.localhost", "/").0, 404);
    a.wait(PATIENCE);
    assert_eq!(proxy_get(port, "two.localhost", "/").0, 200);

    let (status, log) = sb.output(&["stop", "nope"]);
    assert!(!status.success());
    assert!(log.contains("no instance named 'nope'"), "{log}");

    let (status, log) = sb.output(&["env"]);
    assert!(status.success());
    assert!(
        log.contains(&format!("export TWO_URL=http://two.localhost:{port}")),
        "{log}"
    );

    let (status, log) = sb.output(&["stop", "--all"]);
    assert!(status.success(), "{log}");
    b.wait(PATIENCE);
    assert!(sb.ls().is_empty());
}

#[test]
fn a_proxy_stopped_on_purpose_is_not_restarted_and_ls_still_answers() {
    let sb = Sandbox::new();
    let a = sb.serve("stays", &[]);
    a.url_port();
    let direct = a.instance_port();
    let (pid, _) = sb.proxy().unwrap();
    let (status, log) = sb.output(&["stop", "--proxy"]);
    assert!(status.success(), "{log}");
    a.expect("the front proxy stopped; waiting for it to come back");
    assert!(gone(pid));
    let (status, log) = sb.output(&["ls"]);
    assert!(status.success());
    assert!(log.contains("no front proxy is running"), "{log}");
    assert!(
        log.contains(&format!("http://stays.localhost:{direct}")),
        "{log}"
    );
    assert_eq!(
        get_json(direct, "stays")["socket"],
        "http",
        "still served directly"
    );
    // The next command that needs a proxy starts one, and the instance joins it.
    let (status, log) = sb.output(&["alias", "other", "1"]);
    assert!(status.success(), "{log}");
    a.expect("registered again with the front proxy");
}

h1test!(
    a_backend_without_an_answer_gets_504_after_the_configured_timeout,
    |sb: Sandbox| {
        sb.config("[proxy]\nupstream_timeout = 1\n");
        let p = sb.serve("hangs", &[]);
        let port = p.url_port();
        let started = Instant::now();
        let (status, page) = proxy_get(port, "hangs.localhost", "/hang");
        assert_eq!(status, 504, "{page}");
        assert!(page.contains("no response head within 1s"), "{page}");
        assert!(
            page.contains("upstream_timeout under [proxy]")
                && page.contains(&format!("href=\"http://localhost:{port}/\"")),
            "the page names the knob and links the dashboard: {page}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
);

/// A POST whose body stops after `sent` of its `length` bytes: a 408 once `body_idle` (shrunk
/// to 3 s from a minute) passes, and the server got what came.
fn a_stalled_body_gets_408(sb: Sandbox, length: usize, sent: usize) {
    let sb = sb.limited("body_idle=3");
    let p = sb.serve("slowpost", &[]);
    let port = p.url_port();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head =
        format!("POST / HTTP/1.1\r\nHost: slowpost.localhost\r\nContent-Length: {length}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&vec![b'x'; sent]).unwrap();
    let started = Instant::now();
    let (head, _) = read_response(&mut s);
    let waited = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(30),
        "{waited:?}"
    );
    p.expect(&format!("BODY ended early at {sent}"));
}

h1test!(
    a_stalled_request_body_gets_408_after_the_body_deadline,
    |sb: Sandbox| a_stalled_body_gets_408(sb, 100, 10)
);

// Past 64 KiB the lane splices the body through a pipe: the same deadline holds.
h1test!(
    a_long_request_body_that_stalls_gets_408_and_what_came_reaches_the_server,
    |sb: Sandbox| a_stalled_body_gets_408(sb, 1024 * 1024, 200 * 1024)
);

h1test!(
    a_client_that_stops_reading_is_dropped_after_the_write_deadline,
    |sb: Sandbox| {
        // A minute by default; shrunk to 4 s here.
        let sb = sb.limited("write_stall=4");
        let p = sb.serve("stall", &[]);
        let port = p.url_port();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /big/512 HTTP/1.1\r\nHost: stall.localhost\r\n\r\n")
            .unwrap();
        // Read nothing; the proxy gives up on us and aborts the upstream response.
        let started = Instant::now();
        p.expect_line_within(
            |l| l == "BIG aborted",
            "BIG aborted",
            Duration::from_secs(60),
        );
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(3), "{waited:?}");
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            total += n;
        }
        assert!(total < 512 << 20, "the response was cut short");
        assert_eq!(
            proxy_get(port, "stall.localhost", "/").0,
            200,
            "others are still served"
        );
    }
);

#[test]
fn socket_activated_proxy_uses_inherited_sockets_and_notifies() {
    let Some(activate) = need("systemd-socket-activate") else {
        return;
    };
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.runtime_dir()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(sb.runtime_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let notify_path = sb.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    let (port, hold) = os_port();
    drop(hold);
    let control = sb.runtime_dir().join("control.sock");
    // The sandbox's environment, for the activated proxy as for `wharf run`.
    let sandbox_env = sb.wharf(&[]);
    let mut activated = std::process::Command::new(activate);
    activated
        .args([
            "-l",
            &format!("127.0.0.1:{port}"),
            "-l",
            path_str(&control),
            "--fdname=http:control",
        ])
        .args(["-E", &format!("NOTIFY_SOCKET={}", notify_path.display())])
        .args([
            "-E",
            &format!("WHARF_RUNTIME_DIR={}", sb.runtime_dir().display()),
        ])
        .args([
            "-E",
            &format!("WHARF_STATE_DIR={}", sb.state_dir().display()),
        ])
        .arg(sandbox_env.get_program())
        .arg("proxy");
    for (k, v) in sandbox_env.get_envs() {
        if let Some(v) = v {
            activated.env(k, v);
        }
    }
    let mut proxy = Proc::spawn(activated, "systemd-socket-activate wharf proxy");
    proxy.expect("Listening on");
    // The first connection starts the proxy; a `wharf run` makes it.
    let inst = sb.serve("act", &[]);
    assert_eq!(
        inst.url_port(),
        port,
        "the inherited port, not WHARF_LISTEN's"
    );
    assert_eq!(
        inst.count_lines(|l| l.contains("started the front proxy")),
        0
    );
    let mut buf = [0u8; 4096];
    let n = notify.recv(&mut buf).unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(first.contains("READY=1"), "{first}");
    assert_eq!(proxy_get(port, "act.localhost", "/").0, 200);
    proxy.signal(libc::SIGTERM);
    let mut saw_stopping = false;
    while let Ok(n) = notify.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            saw_stopping = true;
            break;
        }
    }
    assert!(saw_stopping, "STOPPING=1 after SIGTERM");
    assert!(proxy.wait(PATIENCE).success());
    assert!(
        proxy
            .log()
            .contains(&format!("serving http://127.0.0.1:{port}")),
        "{}",
        proxy.log()
    );
}
