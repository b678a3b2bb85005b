//! `wharf run`: socket handoff to strict and plain readers, env mode, allocation, restarts,
//! signals and exit codes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::util::*;

fn py_server<'a>(extra: &[&'a str], py: &'a str, script: &'a str) -> Vec<&'a str> {
    let mut v = vec!["--", py, script];
    v.extend_from_slice(extra);
    v
}

#[test]
fn gunicorn_accepts_the_socket_with_its_strict_listen_pid_check() {
    let sb = Sandbox::new();
    let Some(p) = sb.gunicorn("api") else { return };
    p.expect("fd mode: gunicorn takes an inherited socket");
    let port = p.instance_port();
    // gunicorn ignores LISTEN_FDS unless LISTEN_PID is its own pid; it would then bind
    // 127.0.0.1:8000 and nothing would ever accept on our port.
    let body = get_json(port, "api");
    assert_eq!(body["host"], format!("api.localhost:{port}"));
    p.expect("ready (READY=1)");
    let listens = p.expect("Listening at:");
    assert!(listens.contains(&format!("127.0.0.1:{port}")), "{listens}");
}

#[test]
fn fd_mode_child_sees_exactly_stdio_and_its_socket_with_its_own_pid() {
    let sb = Sandbox::new();
    let p = sb.serve("plain", &[]);
    let report = p.report();
    assert_eq!(report["fds"], serde_json::json!([0, 1, 2, 3]));
    let env = &report["env"];
    assert_eq!(env["LISTEN_FDS"], "1");
    assert_eq!(env["LISTEN_FDNAMES"], "http");
    assert_eq!(env["LISTEN_PID"], report["pid"].to_string());
    assert_eq!(env["WHARF_NAME"], "plain");
    assert_eq!(
        env["PORT"],
        p.instance_port().to_string(),
        "fd mode: PORT names the handed socket's port"
    );
    let port = p.url_port();
    assert_eq!(env["WHARF_URL"], format!("http://plain.localhost:{port}"));
    assert_eq!(get_json(port, "plain")["socket"], "http");
}

#[test]
fn inherited_socket_variables_are_scrubbed_and_no_pid_leaves_listen_pid_out() {
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let mut args = vec!["run", "--name", "scrub", "--fd", "--no-pid", "--port", "0"];
    args.extend(py_server(&[], path_str(&py), path_str(&script)));
    let mut cmd = sb.wharf(&args);
    cmd.env("LISTEN_FDS", "4")
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDNAMES", "a:b:c:d");
    cmd.env("NOTIFY_SOCKET", "/nonexistent/notify")
        .env("WATCHDOG_USEC", "100");
    let p = Proc::spawn(cmd, "wharf run with stale socket variables");
    let env = p.report()["env"].clone();
    assert_eq!(env["LISTEN_FDS"], "1");
    assert_eq!(env["LISTEN_FDNAMES"], "http");
    assert!(env.get("LISTEN_PID").is_none(), "{env}");
    assert!(env.get("WATCHDOG_USEC").is_none(), "{env}");
    assert_ne!(env["NOTIFY_SOCKET"], "/nonexistent/notify");
}

#[test]
fn env_mode_python_http_server_gets_its_port() {
    let sb = Sandbox::new();
    let py = python();
    let p = sb.spawn(&[
        "run",
        "--name",
        "docs",
        "--port",
        "0",
        "--",
        path_str(&py),
        "-m",
        "http.server",
        "{port}",
        "--bind",
        "127.0.0.1",
    ]);
    p.expect("env mode: the command has a {port} placeholder");
    let port = p.instance_port();
    p.expect(&format!("listening on 127.0.0.1:{port}"));
    let (status, body) = get(([127, 0, 0, 1], port).into(), "docs.localhost", "/").unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn env_mode_finds_a_server_that_binds_elsewhere() {
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let mut args = vec!["run", "--name", "mover", "--env", "--port", "0"];
    args.extend(py_server(
        &["--bind-elsewhere"],
        path_str(&py),
        path_str(&script),
    ));
    let p = sb.spawn(&args);
    let asked = p.instance_port();
    let env = p.report()["env"].clone();
    assert_eq!(env["PORT"], asked.to_string());
    assert_eq!(env["HOST"], "127.0.0.1");
    let bound: u16 = p
        .expect("BOUND ")
        .trim_start_matches("BOUND ")
        .parse()
        .unwrap();
    assert_ne!(bound, asked);
    p.expect(&format!(
        "listens on 127.0.0.1:{bound}, not on port {asked} as asked; routing there"
    ));
    assert_eq!(get_json(bound, "mover")["socket"], "http");
}

#[test]
fn named_sockets_are_passed_in_order_with_their_names() {
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let mut args = vec![
        "run", "--name", "multi", "--fd", "--port", "0", "--socket", "admin",
    ];
    args.extend(py_server(&[], path_str(&py), path_str(&script)));
    let p = sb.spawn(&args);
    let report = p.report();
    assert_eq!(report["fds"], serde_json::json!([0, 1, 2, 3, 4]));
    assert_eq!(report["env"]["LISTEN_FDNAMES"], "http:admin");
    let admin_line = p.expect("passed as fd 4 (admin)");
    let admin_port: u16 = admin_line
        .split("127.0.0.1:")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(get_json(admin_port, "admin.multi")["socket"], "admin");

    let mut args = vec![
        "run",
        "--name",
        "multi-env",
        "--env",
        "--port",
        "0",
        "--socket",
        "admin-api",
    ];
    args.extend(py_server(&[], path_str(&py), path_str(&script)));
    let p = sb.spawn(&args);
    let env = p.report()["env"].clone();
    assert!(
        env["PORT_ADMIN_API"]
            .as_str()
            .unwrap()
            .parse::<u16>()
            .is_ok(),
        "{env}"
    );
}

#[test]
fn twenty_concurrent_runs_get_twenty_distinct_ports() {
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let (base, _hold) = os_port();
    let range = format!("{}-{}", base + 1, base + 60);
    let procs: Vec<Proc> = (0..20)
        .map(|i| {
            let name = format!("svc{i}");
            let mut args = vec!["run", "--name", &name, "--fd", "--range", &range];
            args.extend(py_server(&[], path_str(&py), path_str(&script)));
            sb.spawn(&args)
        })
        .collect();
    let ports: BTreeSet<u16> = procs.iter().map(|p| p.instance_port()).collect();
    assert_eq!(ports.len(), 20, "{ports:?}");
    assert_eq!(sb.registry()["leases"].as_object().unwrap().len(), 20);
    for (i, p) in procs.iter().enumerate() {
        let port = p.instance_port();
        assert_eq!(get_json(port, &format!("svc{i}"))["socket"], "http");
    }
}

#[test]
fn taken_preferred_port_moves_on_and_says_so_and_the_port_is_sticky() {
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let (taken, _hold) = os_port();
    let range = format!("{taken}-{}", taken + 20);
    let port_arg = taken.to_string();
    let mut args = vec![
        "run", "--name", "sticky", "--fd", "--port", &port_arg, "--range", &range,
    ];
    args.extend(py_server(&[], path_str(&py), path_str(&script)));
    let mut p = sb.spawn(&args);
    // One summary line names the holder (this test process) and what was got instead.
    let summary = p.expect(&format!("port {taken} (--port) is in use by "));
    assert!(
        summary.contains(&format!("(pid {})", std::process::id())),
        "{summary}"
    );
    let got = p.instance_port();
    p.report();
    assert_ne!(got, taken);
    assert!((taken..=taken + 20).contains(&got));
    p.signal(libc::SIGTERM);
    assert!(p.wait(PATIENCE).success());
    assert!(
        sb.registry()["leases"].as_object().unwrap().is_empty(),
        "lease given back"
    );

    // Next time the name gets its last port back, before the rest of the range.
    let range = format!("{}-{}", got - 5, got + 20);
    let mut args = vec!["run", "--name", "sticky", "--fd", "--range", &range];
    args.extend(py_server(&[], path_str(&py), path_str(&script)));
    let p = sb.spawn(&args);
    assert_eq!(p.instance_port(), got);
}

#[test]
fn exhausted_range_is_a_clear_error_that_leaves_nothing_behind() {
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let (a, _hold_a) = os_port();
    let range = format!("{a}-{a}");
    let mut args = vec!["run", "--name", "full", "--fd", "--range", &range];
    args.extend(py_server(&[], path_str(&py), path_str(&script)));
    let (status, log) = sb.output(&args);
    assert!(!status.success());
    assert!(log.contains(&format!("no free port in {range}")), "{log}");
    assert!(log.contains("in use by other processes"), "{log}");
    assert!(log.contains("--port 0"), "says how to fix it: {log}");
    assert!(!log.contains("REPORT"), "the server never started: {log}");
    assert!(
        sb.registry()["leases"]
            .as_object()
            .is_none_or(|l| l.is_empty())
    );

    // A range held by another instance names it.
    let holder = sb.serve("holder", &[]);
    let held = holder.instance_port();
    let range = format!("{held}-{held}");
    let mut args = vec!["run", "--name", "late", "--fd", "--range", &range];
    args.extend(py_server(&[], path_str(&py), path_str(&script)));
    let (status, log) = sb.output(&args);
    assert!(!status.success());
    assert!(log.contains(&format!("'holder' holds {held}")), "{log}");
}

#[test]
fn a_second_run_of_a_name_is_refused_unless_forced() {
    let sb = Sandbox::new();
    let mut first = sb.serve("dup", &[]);
    first.url_port();
    let mut owned = serve_args("dup", &[]);
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (status, log) = sb.output(&args);
    assert!(!status.success());
    assert!(
        log.contains("already running") && log.contains("--force"),
        "{log}"
    );

    owned.insert(3, "--force".to_string());
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let second = sb.spawn(&args);
    second.expect("as --force asks");
    // The first one ends (wait panics if it does not); its status is its server's, and a
    // server that exits 0 on SIGTERM makes it a success, so the status proves nothing.
    first.wait(PATIENCE);
    assert_eq!(get_json(second.url_port(), "dup")["socket"], "http");
}

#[test]
fn bad_names_are_refused_with_the_rule() {
    let sb = Sandbox::new();
    for bad in ["Api", "a_b", "-x", "a..b", "a.-b"] {
        let name = format!("--name={bad}");
        let (status, log) = sb.output(&["run", &name, "--", "true"]);
        assert_eq!(status.code(), Some(2), "{log}");
        assert!(log.contains("lowercase letters, digits and '-'"), "{log}");
    }
    // A dotted instance name is fine; a socket name is one label.
    let (status, log) = sb.output(&["run", "--name=a", "--socket=x.y", "--", "true"]);
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("a socket name is one label"), "{log}");
    let (status, log) = sb.output(&["run", "--name", "ok", "--", "no-such-program-wharf"]);
    assert!(!status.success());
    assert!(log.contains("cannot find `no-such-program-wharf`"), "{log}");
}

#[test]
fn restart_keeps_the_socket_and_refuses_no_connection() {
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let mut args = vec!["run", "--name", "flaky", "--fd", "--restart", "--port", "0"];
    args.extend(py_server(
        &["--exit-after", "1"],
        path_str(&py),
        path_str(&script),
    ));
    let p = sb.spawn(&args);
    let port = p.instance_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut pids = BTreeSet::new();
    for i in 0..15 {
        let (status, body) = get(addr, "flaky.localhost", "/")
            .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", p.log()));
        assert_eq!(status, 200);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        pids.insert(body["pid"].as_i64().unwrap());
    }
    // A well-behaved server finishes a request it accepted while stopping, so not every
    // request gets a new process; most do.
    assert!(
        pids.len() >= 5,
        "new server processes on the same socket: {pids:?}"
    );
    p.expect("restarting on the same socket");
}

#[test]
fn env_restart_holds_a_request_that_comes_while_the_server_is_down() {
    // In env mode wharf holds no socket while the server is down: a request that came after
    // the server stopped listening and before its supervisor saw it exit was answered 502.
    // Each server here answers one request, closes its socket and exits 0.3 s later, so the
    // next request always comes in that gap, through the proxy's express lane and hyper's path.
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let mut args = vec![
        "run",
        "--name",
        "comeback",
        "--env",
        "--restart",
        "--port",
        "0",
    ];
    args.extend(py_server(
        &["--exit-after", "1", "--linger", "0.3", "--quiet"],
        path_str(&py),
        path_str(&script),
    ));
    let p = sb.spawn(&args);
    let addr: SocketAddr = ([127, 0, 0, 1], p.url_port()).into();
    let mut pids = BTreeSet::new();
    for (i, version) in ["1.1", "1.0", "1.1", "1.0"].into_iter().enumerate() {
        // HTTP/1.0 is hyper's to forward; 1.1 the lane's.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let request = format!(
            "GET / HTTP/{version}\r\nHost: comeback.localhost\r\nConnection: close\r\n\r\n"
        );
        std::io::Write::write_all(&mut s, request.as_bytes()).unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
        assert_eq!(
            answer.split(' ').nth(1),
            Some("200"),
            "request {i} (HTTP/{version}): {answer}\n{}",
            p.log()
        );
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        pids.insert(body["pid"].as_i64().unwrap());
    }
    assert_eq!(pids.len(), 4, "a new server for each request: {pids:?}");
}

h1test!(
    a_request_waits_while_an_env_server_opens_its_socket_again,
    |sb: Sandbox| {
        // Django's runserver closes its socket for a second or two after each code change and
        // lives on: a request in that gap waits for the same address (it got a 502 before),
        // through the express lane and through hyper's path alike.
        let (py, script) = (python(), server_py());
        let mut args = vec!["run", "--name", "django", "--env", "--port", "0"];
        args.extend(py_server(
            &["--reload-gap", "1", "--quiet"],
            path_str(&py),
            path_str(&script),
        ));
        let p = sb.spawn(&args);
        p.expect("django: listening on");
        let addr: SocketAddr = ([127, 0, 0, 1], p.url_port()).into();
        let (status, page) = get(addr, "django.localhost", "/reload").unwrap();
        assert_eq!((status, page.as_str()), (200, "reloading"), "{}", p.log());
        p.expect("REOPENING");
        let (status, page) = get(addr, "django.localhost", "/").unwrap();
        assert_eq!(status, 200, "{page}\n{}", p.log());
    }
);

#[test]
fn env_restart_does_not_hold_a_request_for_a_server_that_lives_on_without_listening() {
    // The server closes its socket and lives on (10 s here): its supervisor has nothing to
    // say, so a refused request gets its 502 after a short wait, as it would without restarts.
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let mut args = vec!["run", "--name", "deaf", "--env", "--restart", "--port", "0"];
    args.extend(py_server(
        &["--exit-after", "1", "--linger", "10", "--quiet"],
        path_str(&py),
        path_str(&script),
    ));
    let p = sb.spawn(&args);
    let addr: SocketAddr = ([127, 0, 0, 1], p.url_port()).into();
    let (status, _) = get(addr, "deaf.localhost", "/").unwrap();
    assert_eq!(status, 200, "{}", p.log());
    // The server stops accepting once its poll loop sees the shutdown (up to 0.5 s later):
    // until then it would answer the next request itself.
    let own: SocketAddr = ([127, 0, 0, 1], p.instance_port()).into();
    eventually(
        "the server to close its socket",
        Duration::from_secs(5),
        || std::net::TcpStream::connect(own).is_err(),
    );
    let asked = std::time::Instant::now();
    let (status, page) = get(addr, "deaf.localhost", "/").unwrap();
    assert_eq!(status, 502, "{page}");
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(8),
        "answered after {:?}, not when the server exited",
        asked.elapsed()
    );
}

#[test]
fn an_env_server_that_binds_after_the_glance_ended_is_still_found() {
    // The glance at an env-mode port lasts 10 s; a slower server is found by the looks
    // after it (the supervisor once panicked, polling the glance's finished channel).
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let mut args = vec!["run", "--name", "slow", "--env", "--port", "0"];
    args.extend(py_server(
        &["--bind-delay", "10.5", "--quiet"],
        path_str(&py),
        path_str(&script),
    ));
    let p = sb.spawn(&args);
    let line = |l: &str| l.contains("listening on");
    p.expect_line_within(line, "the server found", Duration::from_secs(40));
    let addr: SocketAddr = ([127, 0, 0, 1], p.url_port()).into();
    let (status, _) = get(addr, "slow.localhost", "/").unwrap();
    assert_eq!(status, 200, "{}", p.log());
}

#[test]
fn the_route_follows_an_env_server_past_the_socket_it_checked_the_port_with() {
    // Vite listens on [::]:PORT a moment to see that the port is free, closes it, then binds
    // 127.0.0.1:PORT. A look that lands in that moment found the check's socket, routed to
    // [::1]:PORT and stayed there: every request failed (a CI run of the Vite browser test).
    // Here the check lasts a second, so the route surely goes there first and must follow.
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let mut args = vec!["run", "--name", "vitelike", "--env", "--port", "0"];
    args.extend(py_server(
        &["--check-port", "1", "--quiet"],
        path_str(&py),
        path_str(&script),
    ));
    let p = sb.spawn(&args);
    p.expect("vitelike: listening on [::]:");
    let moved = |l: &str| {
        l.contains("vitelike: listening on 127.0.0.1:")
            && l.contains("now (it closed the socket on [::]:")
    };
    p.expect_line_within(moved, "the route moved to the real listener", PATIENCE);
    let addr: SocketAddr = ([127, 0, 0, 1], p.url_port()).into();
    let (status, body) = get(addr, "vitelike.localhost", "/").unwrap();
    assert_eq!(status, 200, "{body}\n{}", p.log());
}

#[test]
fn an_env_server_that_opens_its_socket_again_on_the_same_address_is_not_said_to_move() {
    // Django's runserver reloads by closing its socket and listening on the same address
    // again. Within the first 10 s the route follows; the line said it moved
    // ("listening on 127.0.0.1:P now (it closed the socket on 127.0.0.1:P)").
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let mut args = vec!["run", "--name", "reloader", "--env", "--port", "0"];
    args.extend(py_server(
        &["--rebind", "1", "--quiet"],
        path_str(&py),
        path_str(&script),
    ));
    let p = sb.spawn(&args);
    p.expect("reloader: listening on 127.0.0.1:");
    let again = |l: &str| {
        l.contains("reloader: listening on 127.0.0.1:") && l.contains(" again (on a new socket)")
    };
    p.expect_line_within(again, "the same address, said as such", PATIENCE);
    assert!(!p.log().contains("now (it closed"), "{}", p.log());
    let addr: SocketAddr = ([127, 0, 0, 1], p.url_port()).into();
    let (status, body) = get(addr, "reloader.localhost", "/").unwrap();
    assert_eq!(status, 200, "{body}\n{}", p.log());
}

#[test]
fn restart_gives_up_after_fast_crashes_route_first_then_socket() {
    let sb = Sandbox::new();
    let mut p = sb.spawn(&[
        "run",
        "--name",
        "crash",
        "--restart",
        "--port",
        "0",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    let status = p.wait(PATIENCE);
    assert_eq!(status.code(), Some(3));
    assert!(
        p.log().contains("giving up after 5 fast failures"),
        "{}",
        p.log()
    );
}

#[test]
fn exit_codes_and_signals_pass_through() {
    let sb = Sandbox::new();
    let (status, _) = sb.output(&[
        "run", "--name", "seven", "--port", "0", "--", "sh", "-c", "exit 7",
    ]);
    assert_eq!(status.code(), Some(7));
    let (status, _) = sb.output(&[
        "run",
        "--name",
        "killed",
        "--port",
        "0",
        "--",
        "sh",
        "-c",
        "kill -9 $$",
    ]);
    assert_eq!(status.code(), Some(128 + 9));

    let mut p = sb.serve("sig", &[]);
    p.report();
    p.signal(libc::SIGHUP);
    p.expect("got SIGHUP");
    p.signal(libc::SIGTERM);
    p.expect("got SIGTERM");
    assert_eq!(p.wait(PATIENCE).code(), Some(0));

    let mut p = sb.serve("sig", &[]);
    p.report();
    p.signal(libc::SIGINT);
    p.expect("got SIGINT");
    assert_eq!(p.wait(PATIENCE).code(), Some(0));
}

#[test]
fn killing_wharf_kills_the_server() {
    let sb = Sandbox::new();
    let mut p = sb.serve("orphan", &[]);
    let child = p.report()["pid"].as_i64().unwrap() as i32;
    p.signal(libc::SIGKILL);
    p.wait(PATIENCE);
    eventually("the server dies with wharf", PATIENCE, || gone(child));
}

#[test]
fn notify_ready_and_status_are_reported() {
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let mut args = vec!["run", "--name", "ready", "--fd", "--port", "0"];
    args.extend(py_server(
        &["--notify-ready"],
        path_str(&py),
        path_str(&script),
    ));
    let p = sb.spawn(&args);
    p.expect("ready (READY=1)");
    p.expect("status: serving");
}

#[test]
fn a_corrupt_registry_is_moved_aside_and_the_run_goes_on() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.state_dir()).unwrap();
    std::fs::write(sb.state_dir().join("registry.json"), "{ not json").unwrap();
    let p = sb.serve("fresh", &[]);
    p.expect("was unreadable");
    let port = p.instance_port();
    assert_eq!(get_json(port, "fresh")["socket"], "http");
    assert_eq!(sb.registry()["leases"]["fresh"]["ports"]["http"], port);
}

/// A server that reports each SIGINT and SIGTERM it is sent (taken with sigwaitinfo, one line
/// per delivery) and exits on SIGTERM. With `leave`, it first forks a watcher that stays in
/// wharf's process group and reports the terminal's SIGINT there, and moves itself to a group
/// of its own, so that it sees only what wharf sends it.
const COUNTING_SERVER: &str = r#"
import os, signal, sys
wanted = {signal.SIGINT, signal.SIGTERM}
signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
if sys.argv[1:] == ["leave"]:
    if os.fork() == 0:
        if signal.sigtimedwait({signal.SIGINT}, 60):
            print("the group got SIGINT", flush=True)
        os._exit(0)
    os.setpgid(0, 0)
print("armed", flush=True)
while True:
    info = signal.sigwaitinfo(wanted)
    print("got " + signal.Signals(info.si_signo).name, flush=True)
    if info.si_signo == signal.SIGTERM:
        break
"#;

/// `wharf run` as a session leader on a fresh pty (stdin the terminal, or /dev/null) with the
/// counting server: type ^C, wait for the line `seen`, stop it with SIGTERM. Returns how many
/// SIGINTs the server reported, and the output.
fn sigints_for_a_typed_ctrl_c(
    stdin_is_tty: bool,
    server_args: &[&str],
    seen: &str,
) -> (usize, String) {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    let pty = nix::pty::openpty(None, None).unwrap();
    let py = python();
    let args = ["run", "--name", "tty", "--port", "0", "--"];
    let mut cmd = sb.wharf(&args);
    cmd.args([path_str(&py), "-c", COUNTING_SERVER])
        .args(server_args);
    if stdin_is_tty {
        cmd.stdin(pty.slave.try_clone().unwrap());
    }
    let tty = pty.slave.as_raw_fd();
    // SAFETY: setsid and ioctl are async-signal-safe; they make the pty wharf's controlling
    // terminal, with wharf's group in the foreground (where a typed ^C goes).
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if libc::ioctl(tty, libc::TIOCSCTTY as _, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut p = Proc::spawn(cmd, "wharf run on a pty");
    drop(pty.slave);
    p.expect("armed");
    let mut master = std::fs::File::from(pty.master);
    master.write_all(b"\x03").unwrap();
    p.expect(seen);
    // wharf has the SIGINT by now; what it sends for it goes out before what it sends for this
    // SIGTERM, and the server takes the lower-numbered SIGINT first.
    p.signal(libc::SIGTERM);
    p.expect("got SIGTERM");
    p.wait(PATIENCE);
    (p.count_lines(|l| l == "got SIGINT"), p.log())
}

#[test]
fn ctrl_c_at_the_terminal_reaches_a_server_in_its_own_group() {
    // stdin is not the terminal, so the server leads its own group, which the terminal's ^C
    // does not reach: wharf has to pass it on.
    let (sigints, log) = sigints_for_a_typed_ctrl_c(false, &[], "got SIGINT");
    assert_eq!(sigints, 1, "{log}");
}

#[test]
fn ctrl_c_at_the_terminal_is_not_sent_again_to_a_server_in_the_same_group() {
    // stdin is the terminal: the server shares wharf's foreground group and gets the ^C from
    // the terminal itself. (This one steps out of the group to see whether wharf sends more.)
    let (sigints, log) = sigints_for_a_typed_ctrl_c(true, &["leave"], "the group got SIGINT");
    assert_eq!(sigints, 0, "{log}");
}
