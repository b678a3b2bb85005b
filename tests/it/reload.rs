//! Reloads with nothing refused (issue 18): the supervisor's half driven by a stand-in for the
//! proxy's control socket (it relays `reload` events and hears `reloaded`, as the proxy's relay
//! does), and `wharf reload` end to end through the real proxy.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::util::*;

/// What the stand-in proxy heard.
#[derive(Default)]
struct Heard {
    /// Every `register`ed instance, in order.
    registered: Vec<serde_json::Value>,
    /// `reloaded` reports: (reload number, error).
    reloaded: Vec<(u64, Option<String>)>,
    /// The registration connections, to send events on.
    connections: Vec<UnixStream>,
}

/// The proxy's control socket as a supervisor sees it: answers every request `ok`, relays
/// reloads, and records what it hears. It routes nothing: tests send requests where the
/// latest registration points, as the proxy would.
struct FakeProxy {
    heard: Arc<(Mutex<Heard>, Condvar)>,
}

impl FakeProxy {
    fn start(runtime: &Path) -> FakeProxy {
        std::fs::create_dir_all(runtime).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o700);
        std::fs::set_permissions(runtime, mode).unwrap();
        let listener = UnixListener::bind(runtime.join("control.sock")).unwrap();
        let heard: Arc<(Mutex<Heard>, Condvar)> = Arc::default();
        let shared = heard.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let shared = shared.clone();
                std::thread::spawn(move || serve_control(stream, shared));
            }
        });
        FakeProxy { heard }
    }

    /// Send `reload` event `id` on every registration connection.
    fn reload(&self, id: u64) {
        let line = format!("{{\"ok\":true,\"event\":\"reload\",\"reload\":{id}}}\n");
        let heard = self.heard.0.lock().unwrap();
        for mut c in &heard.connections {
            let _ = c.write_all(line.as_bytes());
        }
    }

    /// The report on reload `id` (bounded wait).
    fn reloaded(&self, id: u64, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        let (lock, cv) = &*self.heard;
        let mut heard = lock.lock().unwrap();
        loop {
            if let Some((_, error)) = heard.reloaded.iter().find(|(n, _)| *n == id) {
                return error.clone();
            }
            let now = Instant::now();
            assert!(now < deadline, "no report on reload {id} within {limit:?}");
            heard = cv.wait_timeout(heard, deadline - now).unwrap().0;
        }
    }

    /// Where the route points now (the latest registration's main socket).
    fn route(&self) -> SocketAddr {
        let heard = self.heard.0.lock().unwrap();
        let last = heard.registered.last().expect("registered");
        last["sockets"]["http"].as_str().unwrap().parse().unwrap()
    }

    /// Wait (bounded) until the latest registration says `state`.
    fn wait_state(&self, state: &str) {
        eventually(&format!("registered as {state}"), PATIENCE, || {
            let heard = self.heard.0.lock().unwrap();
            heard.registered.last().is_some_and(|i| i["state"] == state)
        });
    }
}

fn serve_control(stream: UnixStream, shared: Arc<(Mutex<Heard>, Condvar)>) {
    let mut writer = stream.try_clone().unwrap();
    let answer = format!(
        "{{\"ok\":true,\"http_port\":9,\"pid\":{}}}\n",
        std::process::id()
    );
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let request: serde_json::Value = serde_json::from_str(&line).unwrap();
        {
            let mut heard = shared.0.lock().unwrap();
            match request["op"].as_str() {
                Some("register") => {
                    if heard.registered.is_empty() {
                        heard.connections.push(writer.try_clone().unwrap());
                    }
                    heard.registered.push(request["instance"].clone());
                }
                Some("reloaded") => {
                    let id = request["reload"].as_u64().unwrap();
                    let error = request["error"].as_str().map(str::to_string);
                    heard.reloaded.push((id, error));
                }
                _ => {}
            }
            shared.1.notify_all();
        }
        if writer.write_all(answer.as_bytes()).is_err() {
            break;
        }
    }
}

/// A file the test server reads its version from at start (`--version-file`).
fn version_file(sb: &Sandbox, text: &str) -> PathBuf {
    let path = sb.dir.path().join("version");
    std::fs::write(&path, text).unwrap();
    path
}

/// What a client loop saw: versions in the order they answered, and every failure.
#[derive(Default)]
struct Seen {
    requests: u64,
    versions: Vec<String>,
    failures: Vec<String>,
}

/// Requests after `stop`: enough to see the last version answer.
const AFTER_STOP: u64 = 20;

/// Requests in a loop until `stop` (and `AFTER_STOP` more) and at least `at_least` were sent: every third on a new
/// connection, the rest on a kept-alive one. A kept-alive connection that the server closed
/// before answering is opened again and the request sent once more, as the proxy does for a
/// pooled connection; anything else that is not a 200 is a failure. `route` says where to send.
fn client_loop(
    name: &str,
    route: impl Fn() -> SocketAddr,
    stop: &AtomicBool,
    at_least: u64,
) -> Seen {
    let mut seen = Seen::default();
    let mut kept: Option<(SocketAddr, TcpStream)> = None;
    let host = format!("{name}.localhost");
    let mut after_stop = 0;
    while after_stop < AFTER_STOP || seen.requests < at_least {
        if stop.load(Ordering::Relaxed) {
            after_stop += 1;
        }
        seen.requests += 1;
        let addr = route();
        let fresh = seen.requests % 3 == 0;
        let reused = !fresh && kept.as_ref().is_some_and(|(a, _)| *a == addr);
        let mut attempt = |reuse: bool| -> Result<String, (bool, String)> {
            if !reuse {
                let s = TcpStream::connect(addr)
                    .map_err(|e| (false, format!("connect {addr}: {e}")))?;
                s.set_read_timeout(Some(PATIENCE)).unwrap();
                kept = Some((addr, s));
            }
            let (_, s) = kept.as_mut().unwrap();
            let close = if fresh { "close" } else { "keep-alive" };
            let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: {close}\r\n\r\n");
            s.write_all(request.as_bytes())
                .map_err(|e| (true, format!("write: {e}")))?;
            let mut first = [0u8; 1];
            match s.read(&mut first) {
                Ok(1) => {}
                Ok(_) => return Err((true, "closed before answering".into())),
                Err(e) => return Err((true, format!("read: {e}"))),
            }
            let (head, body) = read_response(s);
            let head = format!("{}{head}", first[0] as char);
            if !head.starts_with("HTTP/1.1 200") {
                return Err((false, head.lines().next().unwrap_or("").to_string()));
            }
            Ok(body)
        };
        let result = match attempt(reused) {
            Err((true, _)) if reused => attempt(false),
            other => other,
        };
        match result {
            Ok(body) => {
                let body: serde_json::Value = serde_json::from_str(&body).unwrap();
                let version = body["version"].as_str().unwrap().to_string();
                if seen.versions.last() != Some(&version) {
                    seen.versions.push(version);
                }
            }
            Err((_, why)) => seen
                .failures
                .push(format!("request {}: {why}", seen.requests)),
        }
        if fresh {
            kept = None;
        }
    }
    seen
}

/// Five reloads of a server that takes a second to start, under a client loop: nothing
/// refused or failed, and the answers move to each new version in turn. `mode_args` picks the
/// way (`--fd` with READY=1: the same socket; `--env`: fresh ports).
fn five_reloads_refuse_nothing(mode_args: &[&str], notifies: bool, same_socket: bool) {
    let sb = Sandbox::new();
    let proxy = FakeProxy::start(&sb.runtime_dir());
    let file = version_file(&sb, "v0");
    let (py, script) = (python(), server_py());
    let mut args = vec!["run", "--name", "api", "--port", "0"];
    args.extend(mode_args);
    args.extend([
        "--",
        path_str(&py),
        path_str(&script),
        "--graceful",
        "--quiet",
    ]);
    args.extend(["--start-delay", "1", "--version-file", path_str(&file)]);
    if notifies {
        args.push("--notify-ready");
    }
    let p = sb.spawn(&args);
    proxy.wait_state("ready");
    if notifies {
        p.expect("ready (READY=1)");
    }
    let first = proxy.route();
    let stop = AtomicBool::new(false);
    let seen = std::thread::scope(|s| {
        let client = s.spawn(|| client_loop("api", || proxy.route(), &stop, 2000));
        for id in 1..=5u64 {
            std::fs::write(&file, format!("v{id}")).unwrap();
            proxy.reload(id);
            if let Some(error) = proxy.reloaded(id, PATIENCE) {
                stop.store(true, Ordering::Relaxed);
                panic!("reload {id} failed: {error}\n{}", p.log());
            }
        }
        stop.store(true, Ordering::Relaxed);
        client.join().unwrap()
    });
    assert!(
        seen.failures.is_empty(),
        "{} of {} requests failed: {:?}\n{}",
        seen.failures.len(),
        seen.requests,
        seen.failures,
        p.log()
    );
    assert!(seen.requests >= 2000);
    eprintln!(
        "{} requests, none failed; versions: {:?}",
        seen.requests, seen.versions
    );
    // Each version answered in turn, and only after the one before (v0 first, v5 last).
    let expected: Vec<String> = (0..=5).map(|v| format!("v{v}")).collect();
    assert_eq!(
        seen.versions.last(),
        expected.last(),
        "{:?}\n{}",
        seen.versions,
        p.log()
    );
    // While both run (the new one ready, the old finishing), a kept-alive connection may
    // still reach the old one; each version first answered after the one before.
    let mut order: Vec<&String> = Vec::new();
    for v in &seen.versions {
        if !order.contains(&v) {
            order.push(v);
        }
    }
    assert_eq!(
        order,
        expected.iter().collect::<Vec<_>>(),
        "{:?}",
        seen.versions
    );
    assert_eq!(proxy.route() == first, same_socket, "{}", p.log());
    // Only the newest version runs: the old ones were stopped (and reaped).
    assert_eq!(
        p.count_lines(|l| l.contains("the old version (pid")),
        5,
        "{}",
        p.log()
    );
}

/// Fd mode, and the server sent READY=1 at its first start: the new one shares the socket.
#[test]
fn five_reloads_on_the_same_socket_refuse_nothing() {
    five_reloads_refuse_nothing(&["--fd"], true, true);
}

/// Fd mode, a server that does not notify (as most do not): fresh sockets, each version
/// ready once it accepts on its own.
#[test]
fn five_reloads_of_a_server_that_does_not_notify_refuse_nothing() {
    five_reloads_refuse_nothing(&["--fd"], false, false);
}

#[test]
fn five_reloads_in_env_mode_refuse_nothing() {
    five_reloads_refuse_nothing(&["--env"], false, false);
}

/// A new version that exits at once: the old one keeps serving, the report carries the new
/// version's last output, and a later reload works.
fn a_failed_reload_keeps_the_old_version(mode_args: &[&str]) {
    let sb = Sandbox::new();
    let proxy = FakeProxy::start(&sb.runtime_dir());
    let file = version_file(&sb, "v0");
    let (py, script) = (python(), server_py());
    let mut args = vec!["run", "--name", "api", "--port", "0"];
    args.extend(mode_args);
    args.extend(["--", path_str(&py), path_str(&script), "--notify-ready"]);
    args.extend(["--version-file", path_str(&file)]);
    let p = sb.spawn(&args);
    proxy.wait_state("ready");
    let route = proxy.route();
    let old = get_json(route.port(), "api");
    assert_eq!(old["version"], "v0");
    let ports_before = sb.registry()["leases"]["api"]["ports"].clone();

    std::fs::write(&file, "fail-now").unwrap();
    proxy.reload(1);
    let error = proxy.reloaded(1, PATIENCE).expect("the reload fails");
    assert!(error.contains("exited with code 3"), "{error}");
    assert!(
        error.contains("cannot start: the version file says 'fail-now'"),
        "{error}"
    );
    assert!(error.contains("keeps serving"), "{error}");
    assert_eq!(proxy.route(), route);
    let still = get_json(route.port(), "api");
    assert_eq!(still["pid"], old["pid"], "the old version serves on");
    assert_eq!(sb.registry()["leases"]["api"]["ports"], ports_before);

    std::fs::write(&file, "v2").unwrap();
    proxy.reload(2);
    assert_eq!(proxy.reloaded(2, PATIENCE), None, "{}", p.log());
    let new = get_json(proxy.route().port(), "api");
    assert_eq!(new["version"], "v2");
}

#[test]
fn a_reload_that_exits_at_once_keeps_the_old_version_on_the_same_socket() {
    a_failed_reload_keeps_the_old_version(&["--fd", "--ready", "notify"]);
}

#[test]
fn a_reload_that_exits_at_once_keeps_the_old_version_on_fresh_ports() {
    a_failed_reload_keeps_the_old_version(&["--env"]);
}

/// A new version not ready within `$WHARF_RELOAD_TIMEOUT` is stopped and said so; the old
/// one serves on.
#[test]
fn a_reload_not_ready_in_time_is_given_up() {
    let sb = Sandbox::new();
    let proxy = FakeProxy::start(&sb.runtime_dir());
    let file = version_file(&sb, "v0");
    let (py, script) = (python(), server_py());
    // The server reads its start delay from the file's neighbour: the first starts at once.
    let delay = sb.dir.path().join("delay");
    std::fs::write(&delay, "0").unwrap();
    let wrapper = format!(
        "exec {} {} --graceful --notify-ready --version-file {} --start-delay $(cat {})",
        path_str(&py),
        path_str(&script),
        path_str(&file),
        path_str(&delay)
    );
    let mut cmd = sb.wharf(&[
        "run", "--name", "api", "--port", "0", "--fd", "--ready", "notify", "--", "sh", "-c",
        &wrapper,
    ]);
    cmd.env("WHARF_RELOAD_TIMEOUT", "1s");
    let p = Proc::spawn(cmd, "wharf run");
    proxy.wait_state("ready");
    let old = get_json(proxy.route().port(), "api");
    std::fs::write(&delay, "30").unwrap();
    let asked = Instant::now();
    proxy.reload(1);
    let error = proxy.reloaded(1, PATIENCE).expect("the reload fails");
    assert!(asked.elapsed() >= Duration::from_secs(1));
    assert!(
        error.contains("not ready within 1.0s (no READY=1)"),
        "{error}"
    );
    assert!(
        error.contains("REPORT"),
        "the new version's output: {error}"
    );
    let still = get_json(proxy.route().port(), "api");
    assert_eq!(still["pid"], old["pid"], "{}", p.log());
    p.expect("the new version (pid");
}

/// A second reload while one is under way is refused; a stop during a reload stops both
/// versions (and whatever it left), and wharf exits.
#[test]
fn a_stop_during_a_reload_stops_both_versions() {
    let sb = Sandbox::new();
    let proxy = FakeProxy::start(&sb.runtime_dir());
    let (py, script) = (python(), server_py());
    let delay = sb.dir.path().join("delay");
    std::fs::write(&delay, "0").unwrap();
    let wrapper = format!(
        "exec {} {} --notify-ready --start-delay $(cat {})",
        path_str(&py),
        path_str(&script),
        path_str(&delay)
    );
    let mut p = sb.spawn(&[
        "run", "--name", "api", "--port", "0", "--fd", "--ready", "notify", "--", "sh", "-c",
        &wrapper,
    ]);
    proxy.wait_state("ready");
    let old = p.report()["pid"].as_i64().unwrap() as i32;
    std::fs::write(&delay, "30").unwrap();
    proxy.reload(1);
    eventually("the new version started", PATIENCE, || {
        p.count_lines(|l| l.starts_with("REPORT ")) == 2
    });
    proxy.reload(2);
    let refused = proxy.reloaded(2, PATIENCE).expect("refused");
    assert!(
        refused.contains("a reload is under way already"),
        "{refused}"
    );
    let new: i32 = p
        .lines()
        .iter()
        .filter_map(|l| l.strip_prefix("REPORT "))
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(r).unwrap()["pid"]
                .as_i64()
                .unwrap() as i32
        })
        .find(|pid| *pid != old)
        .unwrap();
    p.signal(libc::SIGTERM);
    let status = p.wait(PATIENCE);
    assert!(status.success(), "{status:?}\n{}", p.log());
    assert!(gone(old) && gone(new), "{}", p.log());
}

/// On demand and idle, there is nothing to replace: the reload is done, and the next
/// connection starts the new version.
#[test]
fn a_reload_of_an_idle_instance_is_its_next_start() {
    let sb = Sandbox::new();
    let proxy = FakeProxy::start(&sb.runtime_dir());
    let args = serve_args("api", &[]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.insert(1, "--on-demand");
    let p = sb.spawn(&args);
    proxy.wait_state("idle");
    proxy.reload(1);
    assert_eq!(proxy.reloaded(1, PATIENCE), None, "{}", p.log());
    p.expect("the next connection starts the new version");
}

/// The acceptance: 2,000 requests through the proxy (kept-alive and new connections)
/// across five `wharf reload`s of a server that takes a second to start: none refused, no
/// 5xx, and the answers move to the new version. With `--replicas` among `mode_args` the
/// members reload one after another (both versions answer meanwhile).
fn reload_through_the_proxy(mode_args: &[&str]) {
    let replicated = mode_args.contains(&"--replicas");
    let sb = Sandbox::new();
    let file = version_file(&sb, "v0");
    let (py, script) = (python(), server_py());
    let mut args = vec!["run", "--name", "api", "--port", "0"];
    args.extend(mode_args);
    args.extend([
        "--",
        path_str(&py),
        path_str(&script),
        "--graceful",
        "--quiet",
    ]);
    args.extend(["--start-delay", "1", "--notify-ready", "--version-file"]);
    args.push(path_str(&file));
    let p = sb.spawn(&args);
    let port = p.url_port();
    p.expect("ready");
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    let stop = AtomicBool::new(false);
    let seen = std::thread::scope(|s| {
        let client = s.spawn(|| client_loop("api", || proxy, &stop, 2000));
        for id in 1..=5u64 {
            std::fs::write(&file, format!("v{id}")).unwrap();
            let (status, log) = sb.output(&["reload", "api"]);
            assert!(status.success(), "reload {id}: {log}\n{}", p.log());
        }
        stop.store(true, Ordering::Relaxed);
        client.join().unwrap()
    });
    eprintln!(
        "{} requests, {} failed; versions: {:?}",
        seen.requests,
        seen.failures.len(),
        seen.versions
    );
    assert!(
        seen.failures.is_empty(),
        "{} of {} requests failed: {:?}\n{}",
        seen.failures.len(),
        seen.requests,
        seen.failures,
        p.log()
    );
    assert_eq!(seen.versions.last().map(String::as_str), Some("v5"));
    let distinct: BTreeSet<_> = seen.versions.iter().collect();
    if replicated {
        // Rolling: a member on the old version answers beside one on the new, so versions
        // interleave; every one of them answered, and both members serve at the end.
        let all: BTreeSet<String> = (0..=5).map(|v| format!("v{v}")).collect();
        assert_eq!(distinct, all.iter().collect(), "{:?}", seen.versions);
        let listed = sb.ls();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(listed.iter().all(|m| m["state"] == "ready"), "{listed:?}");
    } else {
        assert_eq!(distinct.len(), seen.versions.len(), "{:?}", seen.versions);
    }
}

#[test]
fn wharf_reload_through_the_proxy_on_the_same_socket_refuses_nothing() {
    reload_through_the_proxy(&["--fd", "--ready", "notify"]);
}

#[test]
fn wharf_reload_through_the_proxy_on_fresh_ports_refuses_nothing() {
    reload_through_the_proxy(&["--env"]);
}

/// Two members reload in turn, each on its own socket: nothing refused meanwhile.
#[test]
fn wharf_reload_of_replicas_rolls_member_by_member_and_refuses_nothing() {
    reload_through_the_proxy(&["--fd", "--ready", "notify", "--replicas", "2"]);
}

/// `wharf reload` to a version that exits at once: exit 1 with its last output; the old one
/// serves on.
#[test]
fn wharf_reload_of_a_version_that_exits_says_why_and_keeps_the_old() {
    let sb = Sandbox::new();
    let file = version_file(&sb, "v0");
    let args = serve_args(
        "api",
        &["--notify-ready", "--version-file", path_str(&file)],
    );
    let p = sb.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let port = p.url_port();
    p.expect("ready");
    let before = get_json(port, "api");
    std::fs::write(&file, "fail-now").unwrap();
    let (status, log) = sb.output(&["reload", "api"]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("cannot start: the version file says 'fail-now'"),
        "{log}"
    );
    let after = get_json(port, "api");
    assert_eq!(after["pid"], before["pid"], "{}", p.log());
}

#[test]
fn wharf_reload_without_a_proxy_says_so() {
    let sb = Sandbox::new();
    let (status, log) = sb.output(&["reload", "api"]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("no front proxy is running"), "{log}");
}
