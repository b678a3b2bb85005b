//! One name, several members (issue 18), the supervisor's side: `wharf run --replicas N`
//! supervises N servers, each with a socket, a registration and restarts of its own; `--join`
//! adds one from another `wharf run`; `--health` takes a ready server out of rotation after
//! failed checks and puts it back when one passes. The proxy's side (balancing, ejection,
//! stickiness) is tested in `replicas`.

use std::time::Duration;

use super::util::*;

/// The members of `name` that `wharf ls --json` lists, by member number.
fn members(sb: &Sandbox, name: &str) -> Vec<serde_json::Value> {
    let mut list: Vec<serde_json::Value> =
        sb.ls().into_iter().filter(|l| l["name"] == name).collect();
    list.sort_by_key(|l| l["member"].as_u64());
    list
}

/// `wharf run --name NAME FLAGS… --fd --port 0 -- python3 server.py EXTRA…`.
fn run_args(name: &str, flags: &[&str], extra: &[&str]) -> Vec<String> {
    let mut args = serve_args(name, extra);
    let at = args.iter().position(|a| a == "--").unwrap();
    for (i, f) in flags.iter().enumerate() {
        args.insert(at + i, f.to_string());
    }
    args
}

fn spawn(sb: &Sandbox, args: &[String]) -> Proc {
    sb.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn port_of(listed: &serde_json::Value) -> u16 {
    let addr: std::net::SocketAddr = listed["sockets"]["http"].as_str().unwrap().parse().unwrap();
    addr.port()
}

#[test]
fn three_replicas_each_serve_on_a_port_of_their_own_and_restart_alone() {
    let sb = Sandbox::new();
    let p = spawn(
        &sb,
        // No --restart: a member restarts on failure by default.
        &run_args("api", &["--replicas", "3"], &[]),
    );
    for k in 1..=3 {
        p.expect(&format!("wharf: api#{k}: ready"));
    }
    let listed = members(&sb, "api");
    assert_eq!(listed.len(), 3, "{listed:?}");
    let numbers: Vec<u64> = listed
        .iter()
        .map(|l| l["member"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3]);
    let mut ports: Vec<u16> = listed.iter().map(port_of).collect();
    ports.dedup();
    assert_eq!(ports.len(), 3, "a port each: {listed:?}");
    assert!(
        listed
            .iter()
            .all(|l| l["pid"] == p.pid() && l["server_pid"].is_i64()),
        "one wharf run, a server each: {listed:?}"
    );
    // Each server was told its own port and its member number.
    let reports: Vec<String> = p
        .lines()
        .into_iter()
        .filter(|l| l.contains("REPORT "))
        .collect();
    assert_eq!(reports.len(), 3, "{reports:?}");
    for l in &listed {
        let (k, port) = (l["member"].as_u64().unwrap(), port_of(l));
        assert!(
            reports
                .iter()
                .any(|r| r.contains(&format!("\"PORT\": \"{port}\""))
                    && r.contains(&format!("\"WHARF_MEMBER\": \"{k}\""))),
            "member {k} on {port}: {reports:?}"
        );
    }

    // kill -9 member 2's server: it alone restarts, on the same port, and registers again.
    let victim = listed[1]["server_pid"].as_i64().unwrap() as i32;
    // SAFETY: kill with the pid of a server this test's wharf started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    p.expect("wharf: api#2: server was killed by SIGKILL");
    eventually("member 2 serves again", PATIENCE, || {
        let now = members(&sb, "api");
        now.len() == 3
            && now[1]["state"] == "ready"
            && now[1]["server_pid"]
                .as_i64()
                .is_some_and(|s| s as i32 != victim)
    });
    let now = members(&sb, "api");
    assert_eq!(port_of(&now[1]), ports[1], "the same socket");
    assert_eq!(
        now[0]["server_pid"], listed[0]["server_pid"],
        "member 1 untouched"
    );
    assert_eq!(
        now[2]["server_pid"], listed[2]["server_pid"],
        "member 3 untouched"
    );

    // One SIGTERM stops them all, and wharf exits.
    let mut p = p;
    p.signal(libc::SIGTERM);
    let status = p.wait(PATIENCE);
    assert!(status.success(), "{}", p.log());
    for k in 1..=3 {
        assert_eq!(
            p.count_lines(|l| l.starts_with(&format!("wharf: api#{k}: server stopped on request"))),
            1,
            "{}",
            p.log()
        );
    }
    assert!(members(&sb, "api").is_empty());
    assert!(
        sb.registry()["leases"].get("api").is_none(),
        "{}",
        sb.registry()
    );
}

#[test]
fn a_joined_member_learns_its_number_and_stops_with_the_name() {
    let sb = Sandbox::new();
    let first = sb.serve("api", &[]);
    first.expect("wharf: api: ready");
    let joined = spawn(&sb, &run_args("api", &["--join"], &[]));
    joined.expect("wharf: api#2: joined api as member 2");
    joined.expect("wharf: api#2: ready");
    let listed = members(&sb, "api");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_ne!(port_of(&listed[0]), port_of(&listed[1]));
    assert_eq!(listed[1]["pid"], joined.pid());
    let (status, log) = sb.output(&["stop", "api"]);
    assert!(status.success(), "{log}");
    for p in [&first, &joined] {
        eventually("every member's wharf run ends", PATIENCE, || gone(p.pid()));
    }
}

#[test]
fn a_join_with_nothing_to_join_says_how_to_start_it() {
    let sb = Sandbox::new();
    let mut p = spawn(&sb, &run_args("api", &["--join"], &[]));
    let (status, log) = (p.wait(PATIENCE), p.log());
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(
            "nothing named 'api' is running to join; start it with `wharf run --name api -- CMD`"
        ),
        "{log}"
    );
    assert!(!log.contains("REPORT"), "no server was started: {log}");
}

/// A ready server whose health path fails `--health-failures` times in a row is listed
/// unhealthy (out of rotation), and ready again once a check passes.
#[test]
fn failing_health_checks_take_the_server_out_and_a_pass_puts_it_back() {
    let sb = Sandbox::new();
    let sick = sb.dir.path().join("sick");
    let flags = [
        "--health",
        "/health",
        "--health-interval",
        "50ms",
        "--health-failures",
        "2",
    ];
    let p = spawn(
        &sb,
        &run_args("api", &flags, &["--sick-while", path_str(&sick)]),
    );
    p.expect("wharf: api: ready");
    let state = || sb.ls().first().map(|l| l["state"].clone());
    assert_eq!(state(), Some("ready".into()));
    std::fs::write(&sick, "").unwrap();
    let line = p.expect("wharf: api: unhealthy: GET /health failed 2 time(s) in a row");
    assert!(line.contains("answered 500"), "{line}");
    assert_eq!(
        state(),
        Some("unhealthy".into()),
        "listed before it is said"
    );
    std::fs::remove_file(&sick).unwrap();
    p.expect("wharf: api: healthy again (GET /health answered 200 OK)");
    assert_eq!(state(), Some("ready".into()));
    assert_eq!(
        p.count_lines(|l| l.contains("unhealthy:")),
        1,
        "said once: {}",
        p.log()
    );
}

/// A member failing its health checks gets no requests while the others serve them all, and
/// gets its share again once it passes.
#[test]
fn an_unhealthy_member_is_out_of_rotation_until_it_passes() {
    let sb = Sandbox::new();
    let sick = sb.dir.path().join("sick-2");
    let flags = [
        "--replicas",
        "2",
        "--health",
        "/health",
        "--health-interval",
        "50ms",
        "--health-failures",
        "2",
    ];
    let pattern = sb.dir.path().join("sick-$WHARF_MEMBER");
    let p = spawn(
        &sb,
        &run_args("api", &flags, &["--sick-while", path_str(&pattern)]),
    );
    let url_port = p.url_port();
    for k in 1..=2 {
        p.expect(&format!("wharf: api#{k}: ready"));
    }
    let listed = members(&sb, "api");
    let pid_of = |k: usize| listed[k]["server_pid"].as_i64().unwrap();
    let served_by = |n: usize| -> std::collections::BTreeMap<i64, usize> {
        let mut by = std::collections::BTreeMap::new();
        for _ in 0..n {
            let (status, body) = get(
                std::net::SocketAddr::from(([127, 0, 0, 1], url_port)),
                "api.localhost",
                "/",
            )
            .unwrap();
            assert_eq!(status, 200, "{body}");
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            *by.entry(body["pid"].as_i64().unwrap()).or_default() += 1;
        }
        by
    };
    std::fs::write(&sick, "").unwrap();
    p.expect("wharf: api#2: unhealthy: GET /health failed 2 time(s) in a row");
    let by = served_by(30);
    assert_eq!(by.get(&pid_of(0)), Some(&30), "member 1 served all: {by:?}");
    assert_eq!(
        p.count_lines(|l| l.starts_with("wharf: api#1: unhealthy")),
        0
    );
    std::fs::remove_file(&sick).unwrap();
    p.expect("wharf: api#2: healthy again");
    let by = served_by(30);
    assert!(
        by.get(&pid_of(1)).is_some_and(|n| *n > 0),
        "member 2 is back: {by:?}"
    );
}

/// `replicas`, `sticky` and `health` in wharf.toml reach the `wharf run` that `up` starts.
#[test]
fn up_runs_the_declared_replicas_with_their_health_checks() {
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    std::fs::write(
        sb.dir.path().join("wharf.toml"),
        format!(
            "[instances.api]\ncommand = [\"{}\", \"{}\"]\nmode = \"fd\"\nport = 0\nreplicas = 2\n\
             sticky = true\nhealth = {{ path = \"/\", interval = \"100ms\" }}\n",
            py.display(),
            script.display()
        ),
    )
    .unwrap();
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    eventually("both members ready", PATIENCE, || {
        let listed = members(&sb, "api");
        listed.len() == 2 && listed.iter().all(|l| l["state"] == "ready")
    });
    let listed = members(&sb, "api");
    assert!(listed.iter().all(|l| l["sticky"] == true), "{listed:?}");
    assert_eq!(listed[0]["pid"], listed[1]["pid"], "one supervisor");
    eventually("health checks reach the servers", PATIENCE, || {
        sb.output(&["logs", "api"]).1.contains("REQ GET /")
    });
}

/// A real dev server through the wrapper people use: two Vite replicas by `npm run dev`. Vite 8.4
/// refuses a second dev server of the same project unless given `--bypass-lock`, which wharf
/// adds when the installed release takes it; both members then serve, and a rolling `wharf
/// reload` replaces each with a new server while the name keeps answering.
#[test]
fn two_vite_replicas_through_npm_run_dev_serve_and_reload() {
    let (Some(_npm), Some(vite)) = (need("npm"), need_npm("vite")) else {
        return;
    };
    let sb = Sandbox::new();
    let site = sb.dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(
        site.join("package.json"),
        r#"{"name": "site", "private": true, "scripts": {"dev": "vite"}}"#,
    )
    .unwrap();
    std::fs::write(site.join("index.html"), "<h1>a page from vite</h1>\n").unwrap();
    // node_modules/.bin/vite → the installed packages.
    let modules = vite.parent().unwrap().parent().unwrap();
    std::os::unix::fs::symlink(modules, site.join("node_modules")).unwrap();
    let mut run = sb.wharf(&[
        "run",
        "--name",
        "web",
        "--port",
        "0",
        "--replicas",
        "2",
        "--",
        "npm",
        "run",
        "dev",
    ]);
    run.current_dir(&site);
    let p = Proc::spawn(run, "wharf run --name web --replicas 2 -- npm run dev");
    let port = p.url_port();
    p.expect("--bypass-lock");
    let ready = |sb: &Sandbox| {
        let listed = members(sb, "web");
        listed.len() == 2 && listed.iter().all(|l| l["state"] == "ready")
    };
    eventually("both vite members ready", Duration::from_secs(60), || {
        ready(&sb)
    });
    let before: Vec<_> = members(&sb, "web")
        .iter()
        .map(|l| l["server_pid"].clone())
        .collect();
    for _ in 0..4 {
        let (status, body) = get(([127, 0, 0, 1], port).into(), "web.localhost", "/").unwrap();
        assert_eq!(status, 200, "{body}\n{}", p.log());
        assert!(body.contains("a page from vite"), "{body}");
    }
    let served: Vec<_> = members(&sb, "web")
        .iter()
        .map(|l| l["requests"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        served.iter().all(|&n| n > 0),
        "both members answer: {served:?}"
    );

    let (status, log) = sb.output(&["reload", "web"]);
    assert!(status.success(), "{log}\n{}", p.log());
    assert!(log.contains("reloaded 2 members of web"), "{log}");
    eventually(
        "both new vite members ready",
        Duration::from_secs(60),
        || ready(&sb),
    );
    let after: Vec<_> = members(&sb, "web")
        .iter()
        .map(|l| l["server_pid"].clone())
        .collect();
    assert!(
        after.iter().all(|pid| !before.contains(pid)),
        "new servers: {before:?} → {after:?}"
    );
    let (status, body) = get(([127, 0, 0, 1], port).into(), "web.localhost", "/").unwrap();
    assert_eq!(status, 200, "{body}\n{}", p.log());
}
