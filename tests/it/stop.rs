//! Stopping and ending instances: `wharf stop` against servers that ignore SIGTERM and leave
//! processes behind, the death signal when wharf itself is killed, what wharf says when a
//! server exits, `ls` after a proxy restart, and commands writing into closed pipes.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::util::*;

/// A server that ignores SIGTERM, takes fd 3, forks a helper that ignores it too and keeps
/// the socket, prints `PIDS server helper`, and answers every connection with 200.
const STUBBORN: &str = r#"
import os, signal, socket, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
s = socket.socket(fileno=3)
helper = os.fork()
if helper == 0:
    time.sleep(999)
    os._exit(0)
print(f"PIDS {os.getpid()} {helper}", flush=True)
while True:
    conn, _ = s.accept()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    conn.close()
"#;

/// `wharf run --name NAME --fd --port 0 -- python3 -c STUBBORN`, with a one-second stop grace.
fn stubborn(sb: &Sandbox, name: &str) -> Proc {
    let py = python();
    let args = [
        "run",
        "--name",
        name,
        "--fd",
        "--port",
        "0",
        "--",
        path_str(&py),
        "-c",
        STUBBORN,
    ];
    let mut cmd = sb.wharf(&args);
    cmd.env("WHARF_STOP_TIMEOUT", "1");
    Proc::spawn(cmd, &format!("wharf run --name {name} (stubborn)"))
}

/// The server's and its helper's pids, from the `PIDS` line.
fn pids(p: &Proc) -> (i32, i32) {
    let line = p.expect("PIDS ");
    let mut it = line.split_whitespace().skip(1).map(|s| s.parse().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// `wharf stop NAME` with a one-second grace: whether it succeeded, and what it said.
fn stop_quickly(sb: &Sandbox, name: &str) -> (bool, String) {
    let mut stop = sb.wharf(&["stop", name]);
    stop.env("WHARF_STOP_TIMEOUT", "1");
    let out = stop.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The server and its helper are gone, and nothing holds `port` any more.
fn all_gone(server: i32, helper: i32, port: u16) {
    eventually("server and helper gone", PATIENCE, || {
        gone(server) && gone(helper)
    });
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "nothing holds port {port} any more"
    );
}

#[test]
fn stop_ends_a_server_that_ignores_sigterm_and_what_it_started() {
    let sb = Sandbox::new();
    let mut p = stubborn(&sb, "deaf");
    let port = p.instance_port();
    let (server, helper) = pids(&p);

    let started = Instant::now();
    let (stopped, log) = stop_quickly(&sb, "deaf");
    assert!(stopped, "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the one-second grace was used"
    );
    p.wait(PATIENCE);
    all_gone(server, helper, port);
    p.expect("did not stop within 1.0s of SIGTERM; killing it and everything it started");
    p.expect("route removed");
    assert_eq!(
        p.count_lines(|l| l.contains("killed by SIGKILL")),
        0,
        "a kill wharf made is said as such:\n{}",
        p.log()
    );
}

#[test]
fn stop_kills_a_stuck_supervisor_and_everything_its_server_started() {
    let sb = Sandbox::new();
    let mut p = stubborn(&sb, "stuck");
    let port = p.instance_port();
    let (server, helper) = pids(&p);
    p.expect("is at http://");
    // A supervisor that cannot act: `stop` must finish the job itself.
    p.signal(libc::SIGSTOP);
    let (stopped, log) = stop_quickly(&sb, "stuck");
    assert!(stopped, "{log}");
    assert!(log.contains("were killed"), "{log}");
    p.wait(PATIENCE);
    all_gone(server, helper, port);
}

#[test]
fn a_killed_supervisor_takes_its_server_with_it_even_one_that_ignores_sigterm() {
    let sb = Sandbox::new();
    let p = stubborn(&sb, "orphan");
    let (server, helper) = pids(&p);
    p.signal(libc::SIGKILL);
    eventually("the server died with wharf", PATIENCE, || gone(server));
    // What the server forked has no death signal, and nobody is left to send one: a known
    // limit of `kill -9` on wharf itself (every stop wharf makes ends it, see above).
    // SAFETY: kill with the pid of a process this test started.
    unsafe { libc::kill(helper, libc::SIGKILL) };
}

#[test]
fn stop_takes_several_names_and_reports_the_unknown_ones() {
    let sb = Sandbox::new();
    let mut a = sb.serve("one", &[]);
    let mut b = sb.serve("two", &[]);
    let mut c = sb.serve("three", &[]);
    let port = a.url_port();
    for p in [&a, &b, &c] {
        p.report();
    }
    let (status, log) = sb.output(&["stop", "one", "two"]);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("stopped one") && log.contains("stopped two"),
        "{log}"
    );
    a.wait(PATIENCE);
    b.wait(PATIENCE);

    let (status, log) = sb.output(&["stop", "nosuch", "three"]);
    assert!(!status.success(), "{log}");
    assert!(log.contains("no instance named 'nosuch'"), "{log}");
    assert!(log.contains("stopped three"), "{log}");
    c.wait(PATIENCE);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(addr, "three.localhost", "/").unwrap().0, 404);
}

#[test]
fn an_idle_on_demand_instance_registers_again_when_the_proxy_restarts() {
    let sb = Sandbox::new();
    let args = serve_args("lazy", &[]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.splice(3..3, ["--on-demand", "--idle-timeout", "1"]);
    let p = sb.spawn(&args);
    p.url_port();
    eventually("listed as idle", PATIENCE, || {
        sb.ls()
            .iter()
            .any(|i| i["name"] == "lazy" && i["state"] == "idle")
    });
    let (pid, _) = sb.proxy().unwrap();
    // SAFETY: the proxy this sandbox started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    p.expect("registered again with the front proxy");
    let (new_pid, port) = sb.proxy().unwrap();
    assert_ne!(new_pid, pid);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(
        get(addr, "lazy.localhost", "/").unwrap().0,
        200,
        "the new proxy routes it and the request starts it"
    );
}

#[test]
fn a_server_that_exits_is_reported_and_an_idle_stop_is_not_a_kill() {
    let sb = Sandbox::new();
    let mut p = sb.serve("once", &["--exit-after", "1", "--exit-code", "3"]);
    let port = p.url_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(addr, "once.localhost", "/").unwrap().0, 200);
    assert_eq!(p.wait(PATIENCE).code(), Some(3));
    p.expect_line(
        |l| l.contains("server exited with code 3 (ran ") && l.ends_with("; route removed"),
        "saying the server exited, how long it ran and that the route is gone",
    );

    let args = serve_args("nap", &[]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.splice(3..3, ["--on-demand", "--idle-timeout", "1"]);
    let lazy = sb.spawn(&args);
    lazy.url_port();
    assert_eq!(get(addr, "nap.localhost", "/").unwrap().0, 200);
    lazy.expect("starting again on the next connection");
    let listed = sb.ls();
    let nap = listed.iter().find(|i| i["name"] == "nap").unwrap();
    assert_eq!(nap["last_exit"], "stopped when idle", "{nap}");
}

#[test]
fn ls_shows_both_pids_and_keeps_uptime_and_requests_across_a_proxy_restart() {
    let sb = Sandbox::new();
    let p = sb.serve("count", &[]);
    let port = p.url_port();
    let server = p.report()["pid"].as_i64().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..3 {
        assert_eq!(get(addr, "count.localhost", "/").unwrap().0, 200);
    }
    let (status, table) = sb.output(&["ls"]);
    assert!(status.success(), "{table}");
    let header = table.lines().find(|l| l.starts_with("NAME")).unwrap();
    let row = table.lines().find(|l| l.starts_with("count")).unwrap();
    let cell = |h: &str| {
        let at = header.find(h).unwrap();
        row[at..].split_whitespace().next().unwrap().to_string()
    };
    let json = sb.ls();
    assert_eq!(cell("PID"), json[0]["pid"].to_string(), "{table}");
    assert_eq!(cell("SERVER PID"), server.to_string(), "{table}");
    assert_eq!(json[0]["server_pid"], server, "{}", json[0]);
    assert_eq!(cell("STATE"), json[0]["state"].as_str().unwrap(), "{table}");

    // The proxy tells an instance its count within a second; an uptime of 3s (counted from a
    // start time in whole seconds: at least 2 s) means it has.
    eventually("three seconds up", PATIENCE, || {
        sb.ls()[0]["uptime_secs"].as_u64().unwrap() >= 3
    });
    let (pid, _) = sb.proxy().unwrap();
    // SAFETY: the proxy this sandbox started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    p.expect("registered again with the front proxy");
    let after = sb.ls();
    assert_eq!(after[0]["requests"], 3, "{}", after[0]);
    assert!(
        after[0]["uptime_secs"].as_u64().unwrap() >= 2,
        "{}",
        after[0]
    );
}

#[test]
fn without_a_proxy_ls_and_its_json_name_the_state_alike() {
    let sb = Sandbox::new();
    let a = sb.serve("alone", &[]);
    a.url_port();
    let (status, log) = sb.output(&["stop", "--proxy"]);
    assert!(status.success(), "{log}");
    a.expect("the front proxy stopped");
    let json = sb.ls();
    assert_eq!(json[0]["state"], "running", "{}", json[0]);
    let (_, table) = sb.output(&["ls"]);
    let row = table.lines().find(|l| l.starts_with("alone")).unwrap();
    assert!(row.contains(" running "), "{table}");
}

#[test]
fn a_proxy_that_goes_away_mid_list_leaves_ls_the_registry() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.runtime_dir()).unwrap();
    std::fs::set_permissions(sb.runtime_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // A proxy that answers hello, then closes instead of answering the next request.
    let listener =
        std::os::unix::net::UnixListener::bind(sb.runtime_dir().join("control.sock")).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) > 0 {
                let _ = conn.write_all(b"{\"ok\":true,\"http_port\":7080,\"pid\":1}\n");
                line.clear();
                let _ = reader.read_line(&mut line);
            }
        }
    });
    for args in [&["ls"][..], &["ls", "--json"]] {
        let (status, log) = sb.output(args);
        assert!(
            status.success() && !log.contains("error"),
            "{args:?}: {log}"
        );
    }
}

#[test]
fn idle_timeout_without_on_demand_is_an_error() {
    let sb = Sandbox::new();
    let (status, log) = sb.output(&["run", "--name", "x", "--idle-timeout", "5", "--", "true"]);
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("--on-demand"), "{log}");
}

#[test]
fn commands_end_quietly_on_a_closed_pipe_and_fail_clearly_on_a_full_disk() {
    let sb = Sandbox::new();
    let p = sb.serve("piped", &[]);
    p.url_port();
    for args in [
        &["ls"][..],
        &["ls", "--json"],
        &["env"],
        &["env", "--format", "json"],
        &["doctor"],
        &["install", "--dry-run"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = sb.wharf(args).stdout(writer).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?} into a closed pipe: {err}");

        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = sb
            .wharf(args)
            .stdout(full)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(1), "{args:?} into /dev/full: {err}");
        assert!(err.contains("No space left on device"), "{args:?}: {err}");
    }
}

/// Python's own file server on fd 3, serving the sandbox directory.
const FILE_SERVER: &str = r#"
import http.server, socket
server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
server.serve_forever()
"#;

#[test]
fn an_http_readiness_probe_wants_2xx_or_3xx_and_closes_politely() {
    let sb = Sandbox::new();
    let py = python();
    let p = sb.spawn(&[
        "run",
        "--name",
        "probed",
        "--fd",
        "--port",
        "0",
        "--ready",
        "http:/health",
        "--",
        path_str(&py),
        "-c",
        FILE_SERVER,
    ]);
    p.expect("GET /health answered 404 Not Found; not ready until it answers 2xx or 3xx");
    assert_eq!(sb.ls()[0]["state"], "starting");
    std::fs::write(sb.dir.path().join("health"), "ok").unwrap();
    p.expect("ready (GET /health answered 200 OK)");
    assert_eq!(sb.ls()[0]["state"], "ready");
    let probes = p.count_lines(|l| l.contains("\"GET /health HTTP/1.1\" 404"));
    assert!(probes >= 1, "{}", p.log());
    assert!(
        !p.log().contains("Traceback") && !p.log().contains("ConnectionResetError"),
        "the probe closes like an ordinary client:\n{}",
        p.log()
    );
}

/// A stop takes the instance out of rotation before its server is signalled: a request that
/// comes while the server finishes the one it has is not sent to it (where it would wait in
/// a socket nobody accepts on until the grace ends) but answered at once.
#[test]
fn a_stopping_instance_is_out_of_rotation_before_its_server_hears_of_it() {
    let sb = Sandbox::new();
    let args = serve_args("api", &["--graceful"]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.insert(1, "--restart");
    let mut cmd = sb.wharf(&args);
    cmd.env("WHARF_STOP_TIMEOUT", "5s");
    let mut p = Proc::spawn(cmd, "wharf run");
    let port = p.url_port();
    p.expect("ready");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // A request in flight that never ends keeps the server in its graceful stop.
    let mut hanging = TcpStream::connect(addr).unwrap();
    write!(hanging, "GET /hang HTTP/1.1\r\nHost: api.localhost\r\n\r\n").unwrap();
    eventually("the hanging request is in flight", PATIENCE, || {
        p.count_lines(|l| l.contains("REQ GET /hang")) == 1
    });
    p.signal(libc::SIGTERM);
    p.expect("got SIGTERM");
    let asked = Instant::now();
    let (status, body) = get(addr, "api.localhost", "/").unwrap();
    assert_ne!(status, 200, "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "answered only after {:?}",
        asked.elapsed()
    );
    p.wait(PATIENCE);
}
