//! Declared instances: wharf.toml, `up`/`down`, on-demand start and idle stop, restarts that
//! refuse nothing, and bad project files that change nothing.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::util::*;

fn write_project(sb: &Sandbox, text: &str) {
    std::fs::write(sb.dir.path().join("wharf.toml"), text).unwrap();
}

fn instance<'a>(list: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    list.iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {list:?}"))
}

fn get_via(port: u16, host: &str) -> (u16, String) {
    get(SocketAddr::from(([127, 0, 0, 1], port)), host, "/")
        .unwrap_or_else(|e| panic!("GET {host}: {e}"))
}

#[test]
fn three_declared_services_with_one_on_demand() {
    let sb = Sandbox::new();
    let Some(gunicorn) = need("gunicorn") else {
        return;
    };
    let (py, script) = (python(), server_py());
    write_project(
        &sb,
        &format!(
            r#"
[instances.api]
command = ["{gunicorn}", "--chdir", "{servers}", "wsgi:app"]
mode = "fd"
port = 0

[instances.docs]
command = "{py} -m http.server $PORT --bind 127.0.0.1"
mode = "env"
port = 0

[instances.multi]
command = ["{py}", "{script}"]
sockets = ["admin"]
activation = "on-demand"
idle_timeout = 1
port = 0
"#,
            gunicorn = gunicorn.display(),
            servers = repo().join("tests/servers").display(),
            py = py.display(),
            script = script.display(),
        ),
    );
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    assert!(log.contains("multi") && log.contains("on demand"), "{log}");
    let (_, port) = sb.proxy().expect("up started the proxy");

    let listed = sb.ls();
    let multi = instance(&listed, "multi");
    assert_eq!(
        multi["state"], "idle",
        "not running before its first request: {multi}"
    );
    assert!(multi["server_pid"].is_null(), "{multi}");
    assert!(
        !std::fs::read_to_string(sb.state_dir().join("logs/multi.log"))
            .unwrap()
            .contains("REPORT")
    );

    for host in [
        "api.localhost",
        "docs.localhost",
        "multi.localhost",
        "admin.multi.localhost",
    ] {
        let (status, body) = get_via(port, host);
        assert_eq!(status, 200, "{host}: {body}");
    }
    let (_, body) = get_via(port, "admin.multi.localhost");
    assert!(body.contains(r#""socket": "admin""#), "{body}");
    let first: serde_json::Value =
        serde_json::from_str(&get_via(port, "multi.localhost").1).unwrap();

    // No connection for a second (the proxy's pooled ones expire after 4 s): stopped, socket kept.
    eventually("multi goes idle again", Duration::from_secs(20), || {
        instance(&sb.ls(), "multi")["state"] == "idle"
    });
    let (status, body) = get_via(port, "multi.localhost");
    assert_eq!(status, 200, "{body}");
    let again: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(
        first["pid"], again["pid"],
        "a new server was started on demand"
    );

    let (status, logs) = sb.output(&["logs", "multi"]);
    assert!(status.success());
    assert!(
        logs.contains("a connection is waiting; starting the server"),
        "{logs}"
    );
    assert!(logs.contains("idle for 1s; stopping the server"), "{logs}");
    assert!(
        logs.contains("REQ GET /"),
        "the server's own output is kept: {logs}"
    );

    let (status, env) = sb.output(&["env", "--format", "dotenv"]);
    assert!(status.success());
    for name in ["API", "DOCS", "MULTI"] {
        assert!(env.contains(&format!("{name}_URL=http://")), "{env}");
    }

    let (status, log) = sb.output(&["down"]);
    assert!(status.success(), "{log}");
    eventually("all declared instances stopped", PATIENCE, || {
        sb.ls().is_empty()
    });
}

#[test]
fn an_on_demand_server_that_exits_every_ten_requests_refuses_nothing() {
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    write_project(
        &sb,
        &format!(
            r#"
[instances.flaky]
command = ["{py}", "{script}", "--exit-after", "10"]
activation = "on-demand"
restart = "always"
port = 0
"#,
            py = py.display(),
            script = script.display(),
        ),
    );
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    let (_, port) = sb.proxy().unwrap();
    let mut pids = BTreeSet::new();
    for i in 0..1000 {
        let (status, body) = get(
            SocketAddr::from(([127, 0, 0, 1], port)),
            "flaky.localhost",
            "/",
        )
        .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(status, 200, "request {i}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        pids.insert(body["pid"].as_i64().unwrap());
    }
    // Each server stops after its tenth answer but finishes connections it had already
    // accepted, so a busy machine may see a few of them answer an eleventh.
    assert!(
        pids.len() >= 50,
        "a new server every ten-odd requests, got {} servers",
        pids.len()
    );
}

#[test]
fn bad_project_files_are_explained_and_change_nothing() {
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let good = format!(
        "[instances.keep]\ncommand = [\"{}\", \"{}\"]\nmode = \"fd\"\nport = 0\n",
        py.display(),
        script.display()
    );
    write_project(&sb, &good);
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    let (_, port) = sb.proxy().unwrap();
    let before = instance(&sb.ls(), "keep")["pid"].clone();

    let cases = [
        ("bogus = 1\n", 5, "unknown field `bogus`"),
        ("\n[instances.keep]\ncommand = \"true\"\n", 6, "duplicate"),
        (
            "\n[instances.Bad_Name]\ncommand = \"true\"\n",
            6,
            "lowercase letters",
        ),
        ("range = \"5000-4000\"\n", 5, "instances.keep.range"),
        (
            "\n[instances.nocmd]\nport = 1\n",
            6,
            "missing field `command`",
        ),
        (
            "replicas = 0\n",
            5,
            "instances.keep.replicas: 0 is not a number of members from 1 to 64",
        ),
        (
            "health = { path = \"/\", failures = -1 }\n",
            5,
            "instances.keep.health.failures: -1 is not a number of failures",
        ),
    ];
    for (extra, line, what) in cases {
        write_project(&sb, &format!("{good}{extra}"));
        let (status, log) = sb.output(&["up"]);
        assert!(!status.success(), "{extra:?} was accepted: {log}");
        let at = format!("wharf.toml:{line}:");
        assert!(
            log.contains(&at) && log.contains(what),
            "{extra:?}: want {at} … {what}, got {log}"
        );
        let after = sb.ls();
        assert_eq!(after.len(), 1, "{after:?}");
        assert_eq!(
            instance(&after, "keep")["pid"],
            before,
            "the running instance was left alone"
        );
    }
    assert_eq!(get_via(port, "keep.localhost").0, 200);
}

#[test]
fn up_again_applies_only_the_difference() {
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let block = |name: &str, extra: &str| {
        format!(
            "[instances.{name}]\ncommand = [\"{}\", \"{}\"{extra}]\nmode = \"fd\"\nport = 0\n\n",
            py.display(),
            script.display()
        )
    };
    write_project(
        &sb,
        &(block("same", "") + &block("edited", "") + &block("dropped", "")),
    );
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    let pid = |list: &[serde_json::Value], name: &str| instance(list, name)["pid"].clone();
    let before = sb.ls();

    write_project(
        &sb,
        &(block("same", "") + &block("edited", ", \"--bind-delay\", \"0\"")),
    );
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    assert!(log.contains("same") && log.contains("unchanged"), "{log}");
    assert!(
        log.contains("edited") && log.contains("changed: starting the new version beside"),
        "{log}"
    );
    assert_eq!(summary_row(&log, "edited")[1], "swapped", "{log}");
    assert_eq!(summary_row(&log, "same")[1], "unchanged", "{log}");
    assert!(log.contains("dropped") && log.contains("removed"), "{log}");
    let after = sb.ls();
    assert_eq!(
        pid(&after, "same"),
        pid(&before, "same"),
        "unchanged instances keep running"
    );
    assert_ne!(
        pid(&after, "edited"),
        pid(&before, "edited"),
        "changed ones are swapped for a new version"
    );
    assert!(after.iter().all(|l| l["name"] != "dropped"), "{after:?}");
}

/// `[instances.NAME]` running the test server on its own free port.
fn server_block(name: &str, extra: &str) -> String {
    format!(
        "[instances.{name}]\ncommand = [\"{}\", \"{}\"]\nmode = \"fd\"\n{extra}\n",
        python().display(),
        server_py().display()
    )
}

/// `wharf ARGS` run in `dir` with `env` added, to completion (bounded).
fn output_in(
    sb: &Sandbox,
    dir: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (std::process::ExitStatus, String) {
    let mut cmd = sb.wharf(args);
    cmd.current_dir(dir).envs(env.iter().copied());
    let mut p = Proc::spawn(cmd, &args.join(" "));
    let status = p.wait(PATIENCE);
    (status, p.log())
}

#[test]
fn up_with_another_file_leaves_the_directory_files_instances_alone() {
    let sb = Sandbox::new();
    write_project(&sb, &server_block("main", "port = 0"));
    std::fs::write(
        sb.dir.path().join("other.toml"),
        server_block("side", "port = 0"),
    )
    .unwrap();
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    let main_pid = instance(&sb.ls(), "main")["pid"].clone();

    let (status, log) = sb.output(&["up", "-f", "other.toml"]);
    assert!(status.success(), "{log}");
    assert!(!log.contains("removed"), "{log}");
    let listed = sb.ls();
    assert_eq!(
        instance(&listed, "main")["pid"],
        main_pid,
        "wharf.toml's instance still runs: {log}"
    );
    let side = instance(&listed, "side");
    let declared_in = side["declared"]["file"].as_str().unwrap();
    assert!(declared_in.ends_with("/other.toml"), "{side}");

    // Each file's `up` and `down` touch only its own instances.
    let (status, log) = sb.output(&["up"]);
    assert!(status.success() && !log.contains("removed"), "{log}");
    assert!(sb.ls().iter().any(|l| l["name"] == "side"), "{log}");
    let (status, log) = sb.output(&["down", "-f", "other.toml"]);
    assert!(status.success(), "{log}");
    eventually("side stopped, main kept", PATIENCE, || {
        let names: Vec<_> = sb.ls().iter().map(|l| l["name"].clone()).collect();
        names == ["main"]
    });
}

#[test]
fn down_stops_a_projects_instances_even_once_its_file_is_no_longer_trusted() {
    use std::os::unix::fs::PermissionsExt as _;
    let sb = Sandbox::new();
    write_project(&sb, &server_block("main", "port = 0"));
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    let file = sb.dir.path().join("wharf.toml");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (status, log) = sb.output(&["up"]);
    assert!(
        !status.success() && log.contains("refusing to read"),
        "{log}"
    );
    // down runs nothing from the file: it stops what was started from it.
    let (status, log) = sb.output(&["down"]);
    assert!(status.success(), "{log}");
    eventually("main stopped", PATIENCE, || sb.ls().is_empty());
}

#[test]
fn up_says_why_an_instance_did_not_start_and_starts_the_others() {
    let sb = Sandbox::new();
    write_project(
        &sb,
        &format!(
            "{}[instances.nx]\ncommand = [\"nx-no-such-program\"]\n\n\
             [instances.nd]\ncommand = \"true\"\ndir = \"nope\"\n",
            server_block("ok", "port = 0")
        ),
    );
    let (status, log) = sb.output(&["up"]);
    assert!(!status.success(), "{log}");
    // The supervisor's own error, from its stderr, and where the instance is declared.
    assert!(
        log.contains("cannot find `nx-no-such-program`") && log.contains("wharf.toml:5)"),
        "{log}"
    );
    let nope = sb.dir.path().join("nope");
    assert!(
        log.contains(&format!(
            "wharf.toml:10: instances.nd.dir: {} does not exist",
            nope.display()
        )),
        "{log}"
    );
    let (status, logs) = sb.output(&["logs", "nx"]);
    assert!(
        status.success() && logs.contains("nx-no-such-program"),
        "{logs}"
    );
    let (_, port) = sb.proxy().unwrap();
    assert_eq!(get_via(port, "ok.localhost").0, 200, "{log}");
}

/// The row of `name` in the table `up` ends with, split into cells.
fn summary_row(log: &str, name: &str) -> Vec<String> {
    let header = log
        .lines()
        .position(|l| l.starts_with("NAME ") && l.contains("CHOSEN"))
        .unwrap_or_else(|| panic!("no summary table: {log}"));
    let line = log
        .lines()
        .skip(header)
        .find(|l| l.starts_with(&format!("{name} ")));
    let line = line.unwrap_or_else(|| panic!("no row for {name}: {log}"));
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn up_ends_with_a_table_of_ports_how_they_were_chosen_and_urls() {
    let sb = Sandbox::new();
    let (taken, _held) = os_port();
    let free = {
        let (p, l) = os_port();
        drop(l);
        p
    };
    write_project(
        &sb,
        &(server_block("fb", &format!("port = {taken}"))
            + &server_block("pref", &format!("port = {free}"))),
    );
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    let (_, http) = sb.proxy().unwrap();
    let fb = summary_row(&log, "fb");
    assert_eq!(fb[1], "started", "{log}");
    assert_ne!(fb[2], taken.to_string(), "{log}");
    assert_eq!(
        fb[3],
        format!("fallback: {taken} (its port) is in use by another process"),
        "{log}"
    );
    assert!(fb[4].parse::<u32>().unwrap() >= 2, "{log}");
    assert_eq!(fb[5], format!("http://fb.localhost:{http}"), "{log}");
    assert_eq!(
        summary_row(&log, "pref")[1..5],
        ["started", &free.to_string(), "preferred (its port)", "1"],
        "{log}"
    );

    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    assert_eq!(
        summary_row(&log, "pref")[1..4],
        ["unchanged", &free.to_string(), "preferred (its port)"]
    );
}

/// `chown` to nobody, or `None` after saying the test is skipped (only root can give files
/// away; CI runs as root).
fn give_away(path: &std::path::Path) -> Option<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::chown(c.as_ptr(), 65534, 65534) } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must not skip: chown needs root"
        );
        eprintln!("skipped: giving a file to another user needs root");
        return None;
    }
    Some(())
}

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_wharf_toml_another_user_could_have_written_is_refused_unless_allowed() {
    let sb = Sandbox::new();
    chmod(sb.dir.path(), 0o755);
    // Someone else's file in a shared directory, found from a project below it.
    let shared = sb.dir.path().join("shared");
    let mine = shared.join("myproject");
    std::fs::create_dir_all(&mine).unwrap();
    chmod(&shared, 0o777);
    let file = shared.join("wharf.toml");
    std::fs::write(&file, server_block("evil", "port = 0")).unwrap();
    let (status, log) = output_in(&sb, &mine, &[], &["up"]);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!("refusing to read {}", file.display()))
            && log.contains(&format!(
                "{} is writable by everyone (mode 0777)",
                shared.display()
            ))
            && log.contains(&format!("WHARF_TRUST={}", file.display()))
            && log.contains("[trust] paths"),
        "{log}"
    );
    assert!(sb.proxy().is_none(), "nothing was started: {log}");

    // A sticky directory above the project (like /tmp) is fine; the project's own is not.
    chmod(&shared, 0o1777);
    let (status, log) = output_in(&sb, &mine, &[], &["up"]);
    assert!(!status.success() && log.contains("mode 1777"), "{log}");
    std::fs::rename(&file, mine.join("wharf.toml")).unwrap();
    let (status, log) = output_in(&sb, &mine, &[], &["up"]);
    assert!(status.success(), "{log}");
    let (status, log) = output_in(&sb, &mine, &[], &["down"]);
    assert!(status.success(), "{log}");

    let Some(()) = give_away(&mine.join("wharf.toml")) else {
        return;
    };
    let (status, log) = output_in(&sb, &mine, &[], &["up"]);
    assert!(
        !status.success() && log.contains("belongs to") && log.contains("uid 65534"),
        "{log}"
    );
    // Allowed explicitly: once, or for good in config.toml.
    let allow = mine.to_str().unwrap();
    let (status, log) = output_in(&sb, &mine, &[("WHARF_TRUST", allow)], &["up"]);
    assert!(status.success(), "{log}");
    let config = sb.dir.path().join("config/wharf");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.toml"),
        format!("[trust]\npaths = [\"{allow}\"]\n"),
    )
    .unwrap();
    let (status, log) = output_in(&sb, &mine, &[], &["down"]);
    assert!(status.success() && log.contains("stopped"), "{log}");
}

#[test]
fn a_config_toml_another_user_could_have_written_is_refused_unless_allowed() {
    let sb = Sandbox::new();
    write_project(&sb, &server_block("app", "port = 0"));
    let config = sb.dir.path().join("config/wharf/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "[defaults]\nrange = \"4000-4999\"\n").unwrap();
    chmod(&config, 0o666);
    for args in [&["up"][..], &["run", "--name", "x", "--", "true"]] {
        let (status, log) = sb.output(args);
        assert!(
            !status.success()
                && log.contains(&format!("refusing to read {}", config.display()))
                && log.contains("writable by everyone (mode 0666)")
                && log.contains(&format!("WHARF_TRUST={}", config.display())),
            "{args:?}: {log}"
        );
    }
    let allow = config.to_str().unwrap();
    let (status, log) = output_in(&sb, sb.dir.path(), &[("WHARF_TRUST", allow)], &["up"]);
    assert!(status.success(), "{log}");
}

/// `[instances.web]`: the test server reporting the version in `version` (a file in the
/// sandbox), taking a second to start, finishing what it took when stopped.
/// Ports of this sandbox's own for its instances, away from the 4000s every other test's
/// instances are given: an env-mode server binds its port itself, a second after wharf chose
/// it (`--start-delay`), and another test choosing the same free port meanwhile made the new
/// version fail with "Address already in use".
fn own_ports(sb: &Sandbox) {
    static TRIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..2000 {
        let k = TRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = 15_000 + u16::try_from(start.wrapping_add(k * 8) % 15_000).unwrap();
        let free = (base..base + 8).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            sb.config(&format!("[defaults]\nrange = \"{base}-{}\"\n", base + 7));
            return;
        }
    }
    panic!("no 8 free ports in a row in 15000-29999");
}

fn versioned_project(sb: &Sandbox, version: &str, extra: &str) {
    let file = sb.dir.path().join(version);
    std::fs::write(&file, version).unwrap();
    write_project(
        sb,
        &format!(
            "[instances.web]\ncommand = [\"{}\", \"{}\", \"--graceful\", \"--quiet\", \
             \"--start-delay\", \"1\", \"--version-file\", \"{}\"]\nmode = \"env\"\n{extra}",
            python().display(),
            server_py().display(),
            file.display()
        ),
    );
}

/// What a client loop through the proxy saw: the versions that answered, in order, and
/// every request that was not a 200.
#[derive(Default)]
struct Loop {
    requests: u64,
    versions: Vec<String>,
    failures: Vec<String>,
}

/// GET web.localhost through the proxy at `port`, each on a new connection, until `stop`.
fn client_loop(port: u16, stop: &std::sync::atomic::AtomicBool) -> Loop {
    let mut seen = Loop::default();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while !stop.load(std::sync::atomic::Ordering::Relaxed) || seen.requests < 20 {
        seen.requests += 1;
        match get(addr, "web.localhost", "/") {
            Ok((200, body)) => {
                let body: serde_json::Value = serde_json::from_str(&body).unwrap();
                let version = body["version"].as_str().unwrap_or("").to_string();
                if seen.versions.last() != Some(&version) {
                    seen.versions.push(version);
                }
            }
            Ok((status, body)) => {
                let title = body
                    .split("<title>")
                    .nth(1)
                    .and_then(|t| t.split('<').next());
                seen.failures
                    .push(format!("{status}: {}", title.unwrap_or("")));
            }
            Err(e) => seen.failures.push(e.to_string()),
        }
    }
    seen
}

/// Issue 18: `up` of a changed instance starts the new version beside the old one
/// (`--join`), and stops the old one only once the new one is ready: a client loop meanwhile
/// sees nothing refused and no 5xx, and `ls` shows the new version alone.
#[test]
fn up_swaps_a_changed_instance_without_refusing() {
    swap_without_refusing("", 1);
}

/// The same with `replicas = 2`: two joined members replace the two old ones.
#[test]
fn up_swaps_changed_replicas_without_refusing() {
    swap_without_refusing("replicas = 2\n", 2);
}

fn swap_without_refusing(extra: &str, members: usize) {
    let sb = Sandbox::new();
    own_ports(&sb);
    versioned_project(&sb, "v1", extra);
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    // `up` returns once the name is registered; the old version must serve before the swap.
    let ready = || {
        let list = sb.ls();
        let web: Vec<_> = list.iter().filter(|l| l["name"] == "web").collect();
        web.len() == members && web.iter().all(|l| l["state"] == "ready")
    };
    eventually(
        "every member of v1 is ready",
        Duration::from_secs(10),
        ready,
    );
    let before: Vec<_> = sb
        .ls()
        .iter()
        .filter(|l| l["name"] == "web")
        .map(|l| l["pid"].clone())
        .collect();
    let (_, port) = sb.proxy().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (log, seen) = std::thread::scope(|s| {
        let client = s.spawn(|| client_loop(port, &stop));
        versioned_project(&sb, "v2", extra);
        let (status, log) = sb.output(&["up"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = client.join().unwrap();
        assert!(status.success(), "{log}");
        (log, seen)
    });
    eprintln!(
        "{} requests during the swap, versions in turn: {:?}",
        seen.requests, seen.versions
    );
    assert!(
        seen.failures.is_empty(),
        "{} of {} requests failed: {:?}\n{log}",
        seen.failures.len(),
        seen.requests,
        seen.failures
    );
    // While both serve the proxy balances between them; then the new one alone answers.
    assert_eq!(
        seen.versions.first().map(String::as_str),
        Some("v1"),
        "{log}"
    );
    assert_eq!(
        seen.versions.last().map(String::as_str),
        Some("v2"),
        "{log}"
    );
    let (_, port) = sb.proxy().unwrap();
    for _ in 0..20 {
        let (status, body) = get_via(port, "web.localhost");
        assert!(status == 200 && body.contains("\"v2\""), "{status} {body}");
    }
    assert_eq!(summary_row(&log, "web")[1], "swapped", "{log}");
    let after = sb.ls();
    let web: Vec<_> = after.iter().filter(|l| l["name"] == "web").collect();
    assert_eq!(web.len(), members, "the old version is gone: {after:?}");
    assert!(
        web.iter().all(|l| !before.contains(&l["pid"])),
        "{before:?} {after:?}"
    );
}

/// A changed instance whose new version fails: it is stopped, the old one serves on, and
/// `up` says why and exits 1.
#[test]
fn up_keeps_the_old_version_when_the_new_one_fails() {
    let sb = Sandbox::new();
    own_ports(&sb);
    versioned_project(&sb, "v1", "restart = \"no\"\n");
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    let before = instance(&sb.ls(), "web")["pid"].clone();
    versioned_project(&sb, "fail", "restart = \"no\"\n");
    let (status, log) = sb.output(&["up"]);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("the old version keeps serving") && log.contains("cannot start"),
        "{log}"
    );
    assert_eq!(summary_row(&log, "web")[1], "kept old", "{log}");
    let (_, port) = sb.proxy().unwrap();
    let (status, body) = get_via(port, "web.localhost");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"v1\""), "{body}");
    let after = sb.ls();
    let web: Vec<_> = after.iter().filter(|l| l["name"] == "web").collect();
    assert_eq!(web.len(), 1, "the new version is gone: {after:?}");
    assert_eq!(web[0]["pid"], before, "{after:?}");
}

/// A server that listens on a port of its own choosing, whatever `$PORT` says (as a
/// hard-coded `app.listen(3000)` does): a second version could not listen beside it, so a
/// changed one is restarted rather than swapped, and `wharf reload` says why it cannot.
#[test]
fn a_server_on_a_port_of_its_own_is_restarted_by_up_and_not_reloaded() {
    let sb = Sandbox::new();
    let code = "import http.server as h\n\
                s = h.HTTPServer(('127.0.0.1', 0), h.SimpleHTTPRequestHandler)\n\
                s.serve_forever()";
    let project = |version: &str| {
        write_project(
            &sb,
            &format!(
                "[instances.own]\ncommand = [\"{}\", \"-c\", \"{}\"]\nmode = \"env\"\n\
                 env = {{ VERSION = \"{version}\" }}\n",
                python().display(),
                code.replace('\n', "\\n")
            ),
        )
    };
    project("1");
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    let ready = |sb: &Sandbox| {
        let list = sb.ls();
        let own = instance(&list, "own");
        (own["state"] == "ready").then(|| own.clone())
    };
    let mut before = None;
    eventually("own ready", PATIENCE, || {
        before = ready(&sb);
        before.is_some()
    });
    let before = before.unwrap();
    assert_eq!(before["own_port"], true, "{before}");

    project("2");
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("changed: restarting (its server listens on 127.0.0.1:")
            && log.contains("a port of its own choosing"),
        "{log}"
    );
    assert_eq!(summary_row(&log, "own")[1], "restarted", "{log}");
    let mut after = None;
    eventually("own ready again", PATIENCE, || {
        after = ready(&sb);
        after.is_some()
    });
    let after = after.unwrap();
    assert_ne!(after["pid"], before["pid"], "{after}");
    let (_, port) = sb.proxy().unwrap();
    assert_eq!(get_via(port, "own.localhost").0, 200);

    let (status, log) = sb.output(&["reload", "own"]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("a port of its own choosing, so a new version cannot listen beside it"),
        "{log}"
    );
    assert_eq!(
        instance(&sb.ls(), "own")["pid"],
        after["pid"],
        "nothing changed"
    );
}
