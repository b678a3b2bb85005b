//! One name, several members (issue 18), the proxy's side: requests spread over the members,
//! a member that stops listening leaves rotation without a failed request, a name with none
//! left answers a 503 naming each, a sticky cookie keeps a client on its member, and `ls`
//! lists members. The members are real test servers (env mode, each on its own port),
//! registered by the test itself over the control socket, one connection per member, as
//! their `wharf run` would.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::Command;

use super::util::*;

/// `wharf proxy` in the foreground, and the port it serves.
fn start_proxy(sb: &Sandbox) -> (Proc, u16) {
    let proxy = sb.spawn(&["proxy"]);
    let line = proxy.expect(" serving http://127.0.0.1:");
    let port = port_after(&line, "http://127.0.0.1:");
    (proxy, port)
}

/// A test server on a port of its own, and its pid.
struct Server {
    proc: Proc,
    port: u16,
    pid: i32,
}

fn server() -> Server {
    let mut cmd = Command::new(python());
    cmd.arg(server_py())
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env_remove("LISTEN_FDS");
    let proc = Proc::spawn(cmd, "server.py");
    let port = port_after(&proc.expect("BOUND "), "BOUND ");
    let pid = proc.report()["pid"].as_i64().unwrap() as i32;
    Server { proc, port, pid }
}

/// A registration connection, as a member's `wharf run` holds it: the route lives while it
/// is open.
struct Registration {
    _control: UnixStream,
    /// The `register` answer.
    answer: serde_json::Value,
}

/// Register `server` as member `member` of `name` (`None`: a plain registration), ready.
fn register(
    sb: &Sandbox,
    name: &str,
    member: Option<u32>,
    s: &Server,
    sticky: bool,
) -> Registration {
    register_as(sb, name, member, s, sticky, "ready")
}

/// The same, in `state`.
fn register_as(
    sb: &Sandbox,
    name: &str,
    member: Option<u32>,
    s: &Server,
    sticky: bool,
    state: &str,
) -> Registration {
    let control = UnixStream::connect(sb.runtime_dir().join("control.sock")).unwrap();
    control.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut instance = serde_json::json!({
        "name": name,
        "pid": std::process::id(),
        "server_pid": s.pid,
        "mode": "env",
        "state": state,
        "sockets": { "http": format!("127.0.0.1:{}", s.port) },
    });
    if let Some(k) = member {
        instance["member"] = k.into();
    }
    if sticky {
        instance["sticky"] = true.into();
    }
    let request = serde_json::json!({ "op": "register", "instance": instance });
    (&control)
        .write_all(format!("{request}\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(control.try_clone().unwrap());
    let answer = loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the proxy closed");
        let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
        if answer.get("event").is_none() {
            break answer;
        }
    };
    Registration {
        _control: control,
        answer,
    }
}

/// One request through the proxy on a new connection: status, headers, body.
fn request(port: u16, name: &str, cookie: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {name}.localhost:{port}\r\n{cookie}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// The pid of the server that answered `body`.
fn pid_of(body: &str) -> i32 {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    json["pid"].as_i64().unwrap() as i32
}

/// Three members of `api` behind a fresh proxy.
fn three(sb: &Sandbox, sticky: bool) -> (Proc, u16, Vec<Server>, Vec<Registration>) {
    let (proxy, port) = start_proxy(sb);
    let servers: Vec<Server> = (0..3).map(|_| server()).collect();
    let registrations = servers
        .iter()
        .map(|s| register(sb, "api", Some(0), s, sticky))
        .collect();
    (proxy, port, servers, registrations)
}

h1test!(
    requests_spread_over_members_and_a_dead_one_fails_none,
    |sb: Sandbox| {
        let (_proxy, port, mut servers, regs) = three(&sb, false);
        let numbers: Vec<u64> = regs
            .iter()
            .map(|r| r.answer["member"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, [1, 2, 3], "a join gets the smallest free number");

        // 150 requests on new connections, 150 on one kept-alive connection.
        let mut served: BTreeMap<i32, usize> = BTreeMap::new();
        for _ in 0..150 {
            let (status, _, body) = request(port, "api", None);
            assert_eq!(status, 200, "{body}");
            *served.entry(pid_of(&body)).or_default() += 1;
        }
        let mut kept = TcpStream::connect(("127.0.0.1", port)).unwrap();
        kept.set_read_timeout(Some(PATIENCE)).unwrap();
        for _ in 0..150 {
            write!(kept, "GET / HTTP/1.1\r\nHost: api.localhost:{port}\r\n\r\n").unwrap();
            let (head, body) = read_response(&mut kept);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}{body}");
            *served.entry(pid_of(&body)).or_default() += 1;
        }
        assert_eq!(served.len(), 3, "{served:?}");
        for (pid, n) in &served {
            assert!(*n >= 60, "server {pid} got {n} of 300: {served:?}");
        }

        // `ls` lists each member with its count.
        let listed = sb.ls();
        let members: Vec<(u64, u64)> = listed
            .iter()
            .map(|l| {
                (
                    l["member"].as_u64().unwrap(),
                    l["requests"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(members.len(), 3, "{listed:?}");
        assert_eq!(members.iter().map(|m| m.1).sum::<u64>(), 300, "{listed:?}");
        let (_, table) = sb.output(&["ls"]);
        for k in 1..=3 {
            assert!(table.contains(&format!("api#{k}")), "{table}");
        }

        // Member 2's server dies: not one request fails, on new or kept connections.
        let dead = servers[1].pid;
        servers[1].proc.signal(libc::SIGKILL);
        servers[1].proc.wait(PATIENCE);
        let mut after: BTreeMap<i32, usize> = BTreeMap::new();
        for i in 0..100 {
            let body = if i % 2 == 0 {
                let (status, _, body) = request(port, "api", None);
                assert_eq!(status, 200, "request {i} after the kill: {body}");
                body
            } else {
                write!(kept, "GET / HTTP/1.1\r\nHost: api.localhost:{port}\r\n\r\n").unwrap();
                let (head, body) = read_response(&mut kept);
                assert!(
                    head.starts_with("HTTP/1.1 200"),
                    "request {i}: {head}{body}"
                );
                body
            };
            *after.entry(pid_of(&body)).or_default() += 1;
        }
        assert!(!after.contains_key(&dead), "{after:?}");
        assert_eq!(after.len(), 2, "{after:?}");
    }
);

h1test!(
    with_every_member_down_a_503_names_each_and_its_last_error,
    |sb: Sandbox| {
        let (_proxy, port, mut servers, _regs) = three(&sb, false);
        for s in &mut servers {
            s.proc.signal(libc::SIGKILL);
            s.proc.wait(PATIENCE);
        }
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let (status, _, body) = request(port, "api", None);
            assert_eq!(status, 503, "{body}");
            assert!(
                started.elapsed() < SLACK,
                "no hang: {:?}",
                started.elapsed()
            );
            for k in 1..=3 {
                assert!(body.contains(&format!("member {k} ")), "{body}");
            }
            assert!(body.contains("refused"), "{body}");
        }
    }
);

h1test!(
    a_sticky_cookie_keeps_a_client_on_its_member_while_it_serves,
    |sb: Sandbox| {
        let (_proxy, port, mut servers, _regs) = three(&sb, true);
        let (status, head, body) = request(port, "api", None);
        assert_eq!(status, 200, "{body}");
        let set = head
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .unwrap_or_else(|| panic!("no cookie set: {head}"));
        assert!(set.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{set}");
        let cookie = set.split(';').next().unwrap().to_string();
        assert!(cookie.starts_with("wharf-member-api="), "{cookie}");
        let first = pid_of(&body);
        for _ in 0..20 {
            let (status, head, body) = request(port, "api", Some(&format!("a=1; {cookie}")));
            assert_eq!(status, 200, "{body}");
            assert_eq!(pid_of(&body), first, "the cookie's member answers");
            assert!(
                !head.contains("set-cookie"),
                "a valid cookie is kept: {head}"
            );
            // Passed on as it came.
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["headers"]["cookie"], format!("a=1; {cookie}"));
        }
        // Its member's server dies: another answers, and the cookie moves with it.
        let s = servers.iter_mut().find(|s| s.pid == first).unwrap();
        s.proc.signal(libc::SIGKILL);
        s.proc.wait(PATIENCE);
        let (status, head, body) = request(port, "api", Some(&cookie));
        assert_eq!(status, 200, "{body}");
        assert_ne!(pid_of(&body), first);
        let moved = head
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .unwrap_or_else(|| panic!("no new cookie: {head}"));
        assert_ne!(moved.split(';').next().unwrap(), cookie);
        // An invalid cookie is replaced too.
        let (_, head, _) = request(port, "api", Some("wharf-member-api=nine"));
        assert!(head.contains("set-cookie: wharf-member-api="), "{head}");
    }
);

#[test]
fn members_join_and_leave_by_the_rules() {
    let sb = Sandbox::new();
    let (_proxy, port) = start_proxy(&sb);
    let (a, b, c) = (server(), server(), server());
    // A plain registration holds the name alone...
    let plain = register(&sb, "web", None, &a, false);
    assert_eq!(plain.answer["ok"], true, "{}", plain.answer);
    let refused = register(&sb, "web", None, &b, false);
    assert_eq!(refused.answer["ok"], false, "{}", refused.answer);
    assert!(
        refused.answer["error"].as_str().unwrap().contains("--join"),
        "{}",
        refused.answer
    );
    // ...but members join it, counting it as member 1.
    let joined = register(&sb, "web", Some(0), &b, false);
    assert_eq!(joined.answer["member"], 2, "{}", joined.answer);
    let taken = register(&sb, "web", Some(2), &c, false);
    assert_eq!(taken.answer["ok"], false, "{}", taken.answer);
    assert!(
        taken.answer["error"].as_str().unwrap().contains("member 2"),
        "{}",
        taken.answer
    );
    let five = register(&sb, "web", Some(5), &c, false);
    assert_eq!(five.answer["member"], 5, "{}", five.answer);
    let members = |sb: &Sandbox| -> Vec<u64> {
        sb.ls()
            .iter()
            .map(|l| l["member"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(members(&sb), [1, 2, 5]);
    // A member's connection closing takes only that member away.
    drop(joined);
    eventually("member 2 gone", PATIENCE, || members(&sb) == [1, 5]);
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (status, _, body) = request(port, "web", None);
        assert_eq!(status, 200, "{body}");
        pids.insert(pid_of(&body));
    }
    assert_eq!(pids, [a.pid, c.pid].into(), "both remaining members serve");
    // `stop` takes the whole name.
    let control = UnixStream::connect(sb.runtime_dir().join("control.sock")).unwrap();
    (&control)
        .write_all(b"{\"op\":\"stop\",\"name\":\"web\"}\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(&control).read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");
    assert!(sb.ls().is_empty());
}

/// HTTP/2 requests take hyper's path whatever the engine: 60 streams on one connection
/// (nghttp, from nghttp2-client beside h2load) spread over the members too.
#[test]
fn http2_requests_spread_over_members() {
    let Some(nghttp) = need("nghttp") else { return };
    let sb = Sandbox::new();
    let (_proxy, port, _servers, _regs) = three(&sb, false);
    let out = Command::new(nghttp)
        .args([
            "-t",
            "20",
            "-H",
            &format!(":authority: api.localhost:{port}"),
        ])
        .args((0..60).map(|i| format!("http://127.0.0.1:{port}/{i}")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bodies = String::from_utf8(out.stdout).unwrap();
    let mut served: BTreeMap<i32, usize> = BTreeMap::new();
    for piece in bodies.split("\"pid\": ").skip(1) {
        let pid: String = piece.chars().take_while(char::is_ascii_digit).collect();
        *served.entry(pid.parse().unwrap()).or_default() += 1;
    }
    assert_eq!(served.values().sum::<usize>(), 60, "{bodies}");
    assert_eq!(served.len(), 3, "{served:?}");
    assert!(served.values().all(|n| *n >= 12), "{served:?}");
}

h1test!(
    unhealthy_members_get_no_requests_and_an_unhealthy_server_gets_a_503,
    |sb: Sandbox| {
        let (_proxy, port) = start_proxy(&sb);
        let (a, b) = (server(), server());
        let _sick = register_as(&sb, "api", Some(1), &a, false, "unhealthy");
        let _well = register(&sb, "api", Some(2), &b, false);
        for _ in 0..10 {
            let (status, _, body) = request(port, "api", None);
            assert_eq!(status, 200, "{body}");
            assert_eq!(pid_of(&body), b.pid, "the healthy member answers");
        }
        // A single server failing its health check: a 503 that says so, not a try.
        let c = server();
        let _alone = register_as(&sb, "web", None, &c, false, "unhealthy");
        let (status, _, body) = request(port, "web", None);
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("web (wharf pid"), "{body}");
        assert!(
            body.contains("unhealthy, failing its health check"),
            "{body}"
        );
        assert_eq!(c.proc.count_lines(|l| l.starts_with("REQ ")), 0);
    }
);

h1test!(
    websockets_open_through_a_name_with_members,
    |sb: Sandbox| {
        let Some(py) = need_venv() else { return };
        let (_proxy, port) = start_proxy(&sb);
        let ws = repo().join("tests/servers/ws.py");
        let members: Vec<Server> = (0..2)
            .map(|_| {
                let (free, hold) = os_port();
                drop(hold);
                let mut cmd = Command::new(&py);
                cmd.arg(&ws).arg("server").env("PORT", free.to_string());
                let proc = Proc::spawn(cmd, "ws.py server");
                proc.expect("WS ready");
                Server {
                    pid: proc.pid(),
                    proc,
                    port: free,
                }
            })
            .collect();
        let _regs: Vec<Registration> = members
            .iter()
            .map(|s| register(&sb, "ws", Some(0), s, false))
            .collect();
        // Each WebSocket is one upstream connection: it stays on the member it opened on.
        for i in 0..4 {
            let out = Command::new(&py)
                .args([
                    path_str(&ws),
                    "client",
                    &port.to_string(),
                    &format!("ws.localhost:{port}"),
                    &format!("hello {i}"),
                ])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains(&format!("ECHO hello {i}")),
                "{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let listed = sb.ls();
        let counts: Vec<u64> = listed
            .iter()
            .map(|l| l["requests"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, [2, 2], "the handshakes took turns: {listed:?}");
    }
);
