//! Names without `--name` (issue 17): from the project's files, a linked git worktree's branch
//! in front, dotted names routed beside named sockets, `--reuse`, `wharf url` and `wharf wait`.
//! Real git repositories and worktrees, real npm, the test server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::it::util::*;

/// `git ARGS` in `dir`, which must succeed.
fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A git repository `shop` in the sandbox whose package.json is `@acme/shop` with the test
/// server as `scripts.dev`; `None` (skipped) without git or npm.
fn shop_repo(sb: &Sandbox) -> Option<PathBuf> {
    need("git")?;
    need("npm")?;
    let repo = sb.dir.path().join("shop");
    std::fs::create_dir(&repo).unwrap();
    let dev = format!("{} {}", path_str(&python()), path_str(&server_py()));
    let package = serde_json::json!({"name": "@acme/shop", "scripts": {"dev": dev}});
    std::fs::write(repo.join("package.json"), package.to_string()).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "init"]);
    Some(repo)
}

/// `wharf ARGS` started in `dir`.
fn spawn_in(sb: &Sandbox, dir: &Path, args: &[&str]) -> Proc {
    let mut cmd = sb.wharf(args);
    cmd.current_dir(dir);
    Proc::spawn(
        cmd,
        &format!("wharf {} (in {})", args.join(" "), dir.display()),
    )
}

/// `wharf ARGS` in `dir` to completion (bounded): its exit code and output.
fn run_in(sb: &Sandbox, dir: &Path, args: &[&str]) -> (i32, String) {
    let mut p = spawn_in(sb, dir, args);
    let status = p.wait(PATIENCE);
    (status.code().unwrap_or(-1), p.log())
}

fn via_proxy(port: u16, name: &str) -> (u16, String) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    get(addr, &format!("{name}.localhost:{port}"), "/").unwrap()
}

/// The acceptance: `wharf run` in a repository named by package.json serves
/// shop.localhost; in a linked worktree of branch fix/ui, fix-ui.shop.localhost, at the
/// same time; both reachable.
#[test]
fn a_repository_and_its_worktree_side_by_side() {
    let sb = Sandbox::new();
    let Some(repo) = shop_repo(&sb) else { return };
    // Any free port: in env mode (npm's children get no inherited sockets) wharf lets go of
    // the port for the server to bind, and a test beside this one could take one of the
    // shared range meanwhile.
    let main = spawn_in(&sb, &repo, &["run", "--port", "0"]);
    main.expect("wharf: name shop (from package.json)");
    main.expect("running `npm run dev` (package.json scripts.dev; no lockfile: npm)");
    let port = main.url_port();
    main.expect(&format!("shop is at http://shop.localhost:{port}"));

    let wt = sb.dir.path().join("wt");
    git(
        &repo,
        &["worktree", "add", "-q", path_str(&wt), "-b", "fix/ui"],
    );
    let linked = spawn_in(&sb, &wt, &["run", "--port", "0"]);
    linked.expect("wharf: name fix-ui.shop (from package.json, in the worktree of fix/ui)");
    linked.expect(&format!(
        "fix-ui.shop is at http://fix-ui.shop.localhost:{port}"
    ));

    let shop = get_json(port, "shop");
    let fix = get_json(port, "fix-ui.shop");
    assert_ne!(shop["pid"], fix["pid"], "two servers: {shop} {fix}");
    assert_eq!(main.report()["pid"], shop["pid"]);
    assert_eq!(linked.report()["pid"], fix["pid"]);

    // The shop has no socket `other`: a 404 that says so, never the shop itself.
    let (status, page) = via_proxy(port, "other.shop");
    assert_eq!(status, 404, "{page}");
    assert!(
        page.contains("<b>shop</b> has no socket named <b>other</b>"),
        "{page}"
    );

    // `wharf url` prints what runs, and makes nothing up.
    let (code, log) = run_in(&sb, &wt, &["url", "shop"]);
    assert_eq!(
        (code, log.trim()),
        (0, format!("http://shop.localhost:{port}").as_str())
    );
    let (code, log) = run_in(&sb, &repo, &["url", "fix-ui.shop"]);
    assert_eq!(
        (code, log.trim()),
        (0, format!("http://fix-ui.shop.localhost:{port}").as_str())
    );
    let (code, log) = run_in(&sb, &repo, &["url", "nope"]);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("no instance named 'nope' is running"), "{log}");

    let names: Vec<String> = sb
        .ls()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["fix-ui.shop", "shop"]);

    // `--name` always wins, in a worktree too.
    let named = spawn_in(
        &sb,
        &wt,
        &[
            "run",
            "--name",
            "mine",
            "--",
            path_str(&python()),
            path_str(&server_py()),
        ],
    );
    named.expect(&format!("mine is at http://mine.localhost:{port}"));
    assert_eq!(named.count_lines(|l| l.contains("wharf: name ")), 0);

    // A dotted name is stopped by its name like any other.
    let out = sb.wharf(&["stop", "fix-ui.shop"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut linked = linked;
    linked.wait(PATIENCE);
    let (status, _) = via_proxy(port, "fix-ui.shop");
    assert_eq!(status, 404);
    assert_eq!(get_json(port, "shop")["pid"], shop["pid"]);
}

/// Without a project file or a repository the directory names the instance; a command given
/// beside a package.json without scripts.dev is run as given.
#[test]
fn the_directory_names_what_nothing_else_does() {
    let sb = Sandbox::new();
    let dir = sb.dir.path().join("My_App");
    std::fs::create_dir(&dir).unwrap();
    let p = spawn_in(
        &sb,
        &dir,
        &[
            "run",
            "--fd",
            "--",
            path_str(&python()),
            path_str(&server_py()),
        ],
    );
    // A temp dir may sit inside some repository; then its directory names it instead.
    let line = p.expect("wharf: name ");
    if line.contains("(from the current directory)") {
        assert!(
            line.ends_with("name my-app (from the current directory)"),
            "{line}"
        );
        p.expect("my-app is at http://my-app.localhost:");
    }

    let (code, log) = run_in(&sb, &dir, &["run"]);
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("nothing to run") && log.contains("wharf run -- CMD"),
        "{log}"
    );
}

/// The acceptance: ten `wharf run --reuse -- CMD` at once in one directory make one
/// server; all ten print the same URL; the nine that found it running exit 0 at once, the
/// one that runs it exits 0 when stopped.
#[test]
fn ten_parallel_reuses_make_one_server() {
    let sb = Sandbox::new();
    let dir = sb.dir.path().join("app");
    std::fs::create_dir(&dir).unwrap();
    let (py, server) = (python(), server_py());
    let args = [
        "run",
        "--reuse",
        "--fd",
        "--",
        path_str(&py),
        path_str(&server),
    ];
    let runs: Vec<Proc> = (0..10).map(|_| spawn_in(&sb, &dir, &args)).collect();
    let urls: Vec<String> = runs
        .iter()
        .map(|p| {
            let line = p.expect(" is at http://");
            line.split(" is at ").nth(1).unwrap().to_string()
        })
        .collect();
    assert!(urls.iter().all(|u| *u == urls[0]), "{urls:?}");
    let (mut reused, mut serving): (Vec<Proc>, Vec<Proc>) = runs
        .into_iter()
        .partition(|p| p.count_lines(|l| l.contains("already running this command here")) == 1);
    assert_eq!((reused.len(), serving.len()), (9, 1));
    for p in &mut reused {
        assert_eq!(p.wait(PATIENCE).code(), Some(0), "{}", p.log());
        assert_eq!(
            p.count_lines(|l| l.starts_with("REPORT ")),
            0,
            "{}",
            p.log()
        );
    }
    let server = &mut serving[0];
    let ls = sb.ls();
    assert_eq!(ls.len(), 1, "{ls:?}");
    let name = ls[0]["name"].as_str().unwrap().to_string();
    assert_eq!(ls[0]["url"], urls[0].as_str());
    let port: u16 = urls[0].rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(get_json(port, &name)["pid"], server.report()["pid"]);

    // Another command under the same name is an error that says who holds it and the fixes.
    let mut other = spawn_in(
        &sb,
        &dir,
        &[
            "run",
            "--reuse",
            "--name",
            &name,
            "--",
            path_str(&py),
            path_str(&server_py()),
            "--notify-ready",
        ],
    );
    assert_eq!(other.wait(PATIENCE).code(), Some(1));
    let log = other.log();
    assert!(
        log.contains(&format!(
            "an instance named '{name}' is already running: wharf pid {}",
            server.pid()
        )) && log.contains(&format!(
            "running `{} {}` in {}",
            path_str(&py),
            path_str(&server_py()),
            dir.display()
        )) && log.contains("--name")
            && log.contains("--force"),
        "{log}"
    );
    // The same command without --reuse: the error offers it.
    let mut again = spawn_in(
        &sb,
        &dir,
        &args[..1]
            .iter()
            .chain(&args[2..])
            .copied()
            .collect::<Vec<_>>(),
    );
    assert_eq!(again.wait(PATIENCE).code(), Some(1));
    assert!(
        again.log().contains("pass --reuse to use it"),
        "{}",
        again.log()
    );

    let out = sb.wharf(&["stop", &name]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.wait(PATIENCE).code(), Some(0), "{}", server.log());
}

/// `wharf wait` returns when the proxy lists the instance ready (here: once the server
/// listens, which it does late), waiting for one not yet registered too; a server that keeps
/// failing is exit 1 and why; a name that never runs, exit 1 at the timeout.
#[test]
fn wait_until_ready_or_say_why_not() {
    let sb = Sandbox::new();
    let (py, server) = (python(), server_py());
    let mut waiting = sb.spawn(&["wait", "slow", "--timeout", "20"]);
    let slow = sb.spawn(&[
        "run",
        "--name",
        "slow",
        "--env",
        // Any free port: the server binds it a second late, so one in the shared range
        // could be taken by a test beside this one meanwhile.
        "--port",
        "0",
        "--",
        path_str(&py),
        path_str(&server),
        "--bind-delay",
        "1",
    ]);
    let port = slow.url_port();
    assert_eq!(waiting.wait(PATIENCE).code(), Some(0), "{}", waiting.log());
    assert_eq!(
        waiting.log().trim(),
        format!("http://slow.localhost:{port}")
    );
    // Ready means served: the request needs no waiting of its own.
    slow.expect("listening on 127.0.0.1:");
    get_json(port, "slow");

    let failing = sb.spawn(&[
        "run",
        "--name",
        "bad",
        "--env",
        "--restart=on-failure",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    failing.url_port();
    let (status, log) = sb.output(&["wait", "bad", "--timeout", "20"]);
    assert_eq!(status.code(), Some(1), "{log}");
    // A `wharf run` that gives up ends (one of `wharf up` stays listed as failed, which
    // `wait` says with its last exit: see the unit test).
    assert!(log.contains("'bad' stopped before it was ready"), "{log}");

    let (status, log) = sb.output(&["wait", "never", "--timeout", "1"]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("no instance named 'never' ran within 1s"),
        "{log}"
    );
}

/// `wharf up` in a linked worktree runs the declared instances under the worktree's names,
/// beside the main checkout's; `down` there stops only its own.
#[test]
fn declared_instances_in_a_worktree_get_its_branch() {
    let sb = Sandbox::new();
    if need("git").is_none() {
        return;
    }
    let repo = sb.dir.path().join("proj");
    std::fs::create_dir(&repo).unwrap();
    let toml = format!(
        "[instances.api]\ncommand = [{:?}, {:?}]\nmode = \"fd\"\n",
        path_str(&python()),
        path_str(&server_py())
    );
    std::fs::write(repo.join("wharf.toml"), toml).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "init"]);
    let wt = sb.dir.path().join("proj-fix");
    git(
        &repo,
        &["worktree", "add", "-q", path_str(&wt), "-b", "fix"],
    );

    let (code, log) = run_in(&sb, &repo, &["up"]);
    assert_eq!(code, 0, "{log}");
    // `--json`: stdout is one object per instance; the rest goes to stderr.
    let out = sb
        .wharf(&["up", "--json"])
        .current_dir(&wt)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("in the worktree of fix: instances run as fix.NAME"),
        "{stderr}"
    );
    let port = sb.proxy().unwrap().1;
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert_eq!(events.len(), 1, "{stdout}");
    assert_eq!(
        (&events[0]["name"], &events[0]["status"], &events[0]["url"]),
        (
            &"fix.api".into(),
            &"started".into(),
            &format!("http://fix.api.localhost:{port}").into()
        ),
        "{stdout}"
    );
    let main = get_json(port, "api");
    let fix = get_json(port, "fix.api");
    assert_ne!(main["pid"], fix["pid"]);

    let (code, log) = run_in(&sb, &wt, &["down"]);
    assert_eq!(code, 0, "{log}");
    let names: Vec<String> = sb
        .ls()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["api"]);
}

/// `wharf run --json`: stdout is events only, one JSON object a line (the server's own stdout
/// goes to stderr): mode, port, url, ready, then exited with its status.
#[test]
fn json_events_on_stdout() {
    use std::io::BufRead;
    let sb = Sandbox::new();
    let (py, server) = (python(), server_py());
    let mut cmd = sb.wharf(&[
        "run",
        "--json",
        "--name",
        "ev",
        "--fd",
        "--",
        path_str(&py),
        path_str(&server),
    ]);
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut events = Vec::new();
    let next = |events: &mut Vec<serde_json::Value>| {
        let line = rx.recv_timeout(PATIENCE).expect("an event line");
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_eq!(event["name"], "ev", "{event}");
        events.push(event.clone());
        event
    };
    assert_eq!(next(&mut events)["event"], "mode");
    let port = next(&mut events);
    assert_eq!(
        (&port["event"], &port["socket"]),
        (&"port".into(), &"http".into())
    );
    let url = next(&mut events);
    assert_eq!(url["event"], "url");
    let proxy_port: u16 = url["url"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    get_json(proxy_port, "ev");
    assert_eq!(next(&mut events)["event"], "ready");
    let out = sb.wharf(&["stop", "ev"]).output().unwrap();
    assert!(out.status.success());
    let exited = next(&mut events);
    assert_eq!(exited["event"], "exited", "{events:?}");
    assert_eq!(exited["then"], "stop");
    assert_eq!(exited["status"], "stopped on request");
    assert!(
        exited["code"].is_i64() || exited["signal"].is_i64(),
        "{exited}"
    );
    assert!(child.wait().unwrap().success());
    // Nothing else reached stdout: the server's REPORT went to stderr.
    assert!(rx.recv_timeout(PATIENCE).is_err());
}

/// A bare `wharf run` beside a wharf.toml with one instance runs that instance, with its
/// settings (here its socket and `dir`), under its name.
#[test]
fn a_bare_run_runs_the_one_declared_instance() {
    let sb = Sandbox::new();
    let proj = sb.dir.path().join("proj");
    std::fs::create_dir_all(proj.join("srv")).unwrap();
    let toml = format!(
        "[instances.solo]\ncommand = [{:?}, {:?}]\nmode = \"fd\"\nsockets = [\"admin\"]\n\
         dir = \"srv\"\nenv = {{ SOLO = \"1\" }}\n",
        path_str(&python()),
        path_str(&server_py())
    );
    std::fs::write(proj.join("wharf.toml"), toml).unwrap();
    let p = spawn_in(&sb, &proj, &["run"]);
    p.expect("wharf: name solo (from ");
    p.expect("running instance solo of ");
    let port = p.url_port();
    let report = p.report();
    assert_eq!(report["env"]["LISTEN_FDNAMES"], "http:admin", "{report}");
    let admin = get_json(port, "admin.solo");
    assert_eq!(admin["socket"], "admin", "{admin}");
    let ls = sb.ls();
    let dir = ls[0]["dir"].as_str().unwrap();
    assert!(dir.ends_with("proj/srv"), "{dir}");
}

/// A server that goes to the background (fork, setsid, fork; its first process exits 0)
/// is followed as the instance, served, and ended by `wharf stop` (issue 17, item 6).
#[cfg(target_os = "linux")]
#[test]
fn a_server_gone_to_the_background_is_still_stopped() {
    let sb = Sandbox::new();
    let mut p = sb.serve("bg", &["--daemonize"]);
    let port = p.url_port();
    p.expect("the server went to the background (pid ");
    let daemon = p.report()["pid"].as_i64().unwrap() as i32;
    assert_eq!(get_json(port, "bg")["pid"], daemon);
    // The middle of the double fork may be shown first; then the daemon, once it is alone.
    let deadline = std::time::Instant::now() + PATIENCE;
    while sb.ls()[0]["server_pid"] != daemon {
        assert!(std::time::Instant::now() < deadline, "{:?}", sb.ls());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // Signals other than stops reach it as they would a server in the foreground.
    p.signal(libc::SIGHUP);
    p.expect("got SIGHUP");

    let out = sb.wharf(&["stop", "bg"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.wait(PATIENCE).code(), Some(0), "{}", p.log());
    p.expect("stopping the server's 1 background process(es)");
    let deadline = std::time::Instant::now() + PATIENCE;
    // SAFETY: kill with signal 0 only asks whether the pid exists.
    while unsafe { libc::kill(daemon, 0) } == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon {daemon} lives on"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
