//! Port choice as a user sees it: ranges and their order, the last port, exclusions, one
//! summary line instead of scan noise; and state files that went bad (registry, aliases).

use std::net::TcpListener;

use super::util::*;

/// `n` consecutive loopback ports, all bound (and so taken) by this test until dropped.
fn hold_run(n: u16) -> (u16, Vec<TcpListener>) {
    'search: loop {
        let (base, first) = os_port();
        if base.checked_add(n).is_none() {
            continue;
        }
        let mut held = vec![first];
        for p in base + 1..base + n {
            match TcpListener::bind(("127.0.0.1", p)) {
                Ok(l) => held.push(l),
                Err(_) => continue 'search,
            }
        }
        return (base, held);
    }
}

/// `run --name NAME --fd EXTRA… -- python3 server.py`.
fn run_args(name: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--name", name, "--fd"].map(String::from).to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.push(path_str(&python()).to_string());
    args.push(path_str(&server_py()).to_string());
    args
}

fn spawn(sb: &Sandbox, args: &[String]) -> Proc {
    sb.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn output(sb: &Sandbox, args: &[String]) -> (std::process::ExitStatus, String) {
    sb.output(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn write_config(sb: &Sandbox, text: &str) {
    let dir = sb.dir.path().join("config/wharf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), text).unwrap();
}

#[test]
fn an_explicit_range_beats_the_last_port_of_another_range() {
    let sb = Sandbox::new();
    let (base, held) = hold_run(6);
    drop(held);
    let a = format!("{base}-{}", base + 2);
    let b = format!("{}-{}", base + 3, base + 5);
    let mut first = spawn(&sb, &run_args("web", &["--range", &a]));
    let old = first.instance_port();
    assert!((base..=base + 2).contains(&old), "{old} not in {a}");
    first.signal(libc::SIGTERM);
    first.wait(PATIENCE);

    let second = spawn(&sb, &run_args("web", &["--range", &b]));
    let new = second.instance_port();
    assert!(
        (base + 3..=base + 5).contains(&new),
        "--range {b} asked, got the last port {new}"
    );
}

#[test]
fn a_busy_range_is_one_summary_line_and_verbose_lists_each_port() {
    let sb = Sandbox::new();
    let (base, mut held) = hold_run(8);
    // The instance may have the last two; the six before are taken by this test.
    held.truncate(6);
    let range = format!("{base}-{}", base + 7);
    let port = base.to_string();
    let args = run_args(
        "busy",
        &["--range", &range, "--port", &port, "--socket", "admin"],
    );
    let mut p = spawn(&sb, &args);
    assert_eq!(p.instance_port(), base + 6);
    let summary = p.expect("(--port) is in use by");
    let me = format!("(pid {})", std::process::id());
    assert!(
        summary.contains(&format!("port {base} (--port)")),
        "{summary}"
    );
    assert!(summary.contains(&me), "names who holds it: {summary}");
    assert!(summary.contains("5 taken"), "{summary}");
    assert!(summary.contains("got "), "{summary}");
    p.report();
    let noise = p.count_lines(|l| l.contains(" is in use by") || l.contains("taken"));
    assert_eq!(
        noise,
        1,
        "one line for the scan, none for --socket:\n{}",
        p.log()
    );
    p.signal(libc::SIGTERM);
    p.wait(PATIENCE);

    let mut verbose = args.clone();
    verbose.insert(4, "-v".into());
    let p = spawn(&sb, &verbose);
    p.report();
    for q in base..base + 6 {
        p.expect(&format!("port {q} "));
    }
    assert_eq!(
        p.count_lines(|l| l.contains(" is in use by ")),
        7,
        "{}",
        p.log()
    );
}

#[test]
fn an_exhausted_range_is_one_short_error() {
    let sb = Sandbox::new();
    let (base, _held) = hold_run(40);
    let range = format!("{base}-{}", base + 39);
    let (status, log) = output(&sb, &run_args("late", &["--range", &range]));
    assert!(!status.success());
    let error: Vec<&str> = log.lines().filter(|l| l.contains("no free port")).collect();
    assert_eq!(error.len(), 1, "{log}");
    assert!(error[0].contains("all 40 taken"), "{log}");
    assert!(error[0].contains("40 in use by other processes"), "{log}");
    assert!(error[0].len() < 400, "{} characters: {log}", error[0].len());
    assert!(log.lines().count() < 5, "{log}");
}

#[test]
fn an_exhausted_list_of_ranges_names_the_wharf_instances_holding_it() {
    let sb = Sandbox::new();
    let holder = sb.serve("holder", &[]);
    let held_by_wharf = holder.instance_port();
    let (base, _held) = hold_run(3);
    let range = format!("{base}-{},{held_by_wharf}-{held_by_wharf}", base + 2);
    let (status, log) = output(&sb, &run_args("late", &["--range", &range]));
    assert!(!status.success());
    assert!(log.contains("all 4 taken"), "{log}");
    assert!(
        log.contains(&format!("'holder' holds {held_by_wharf}")),
        "{log}"
    );
    assert!(log.contains("3 in use by other processes"), "{log}");
}

#[test]
fn ranges_fall_back_in_order_and_excluded_ports_are_never_given() {
    let sb = Sandbox::new();
    let (a, held_a) = hold_run(1);
    let (b, held_b) = hold_run(3);
    drop(held_b);
    write_config(
        &sb,
        &format!(
            "[defaults]\nrange = \"{a}-{a},{b}-{}\"\nexclude = [{b}, \"{}-{}\"]\n",
            b + 2,
            b + 2,
            b + 2
        ),
    );
    let p = spawn(&sb, &run_args("fallback", &[]));
    assert_eq!(p.instance_port(), b + 1, "{a} is taken, {b} excluded");
    drop(held_a);

    // An excluded --port is refused, with the reason, and the range is used instead.
    let port = b.to_string();
    let q = spawn(&sb, &run_args("asked", &["--port", &port]));
    assert_eq!(q.instance_port(), a);
    q.expect(&format!("port {b} (--port) is excluded"));
}

#[test]
fn a_corrupt_alias_file_is_moved_aside_and_the_alias_still_saved() {
    let sb = Sandbox::new();
    let (port, _listener) = os_port();
    std::fs::create_dir_all(sb.state_dir()).unwrap();
    let file = sb.state_dir().join("aliases.json");
    // First with no proxy running (it finds the file when it starts), then with one running:
    // either way the file is moved aside, rebuilt from what the proxy routes, and the new
    // alias saved and routed.
    for (n, (name, garbage)) in [("db", "{\"db\": oops"), ("db2", "[")].iter().enumerate() {
        std::fs::write(&file, garbage).unwrap();
        let (status, log) = sb.output(&["alias", name, &port.to_string()]);
        assert!(status.success(), "{log}");
        assert!(log.contains("moved it to"), "{log}");
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(saved[name], format!("127.0.0.1:{port}"));
        if n == 1 {
            // The corrupt file lost db; the running proxy still routed it, so it is kept.
            assert_eq!(saved["db"], format!("127.0.0.1:{port}"), "{saved}");
            assert!(log.contains("kept what the proxy routes: db"), "{log}");
        }
        let aside = std::fs::read_dir(sb.state_dir())
            .unwrap()
            .flatten()
            .filter(|e| {
                let file_name = e.file_name();
                file_name
                    .to_string_lossy()
                    .starts_with("aliases.json.corrupt-")
            })
            .count();
        assert_eq!(aside, n + 1, "every corrupt copy is kept");
        assert!(
            sb.ls()
                .iter()
                .any(|l| l["name"] == *name && l["alias"] == true)
        );
    }

    // doctor tells of the file moved aside.
    let out = sb.wharf(&["doctor"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("aliases.json.corrupt-"), "{text}");
}

#[test]
fn alias_says_when_there_is_nothing_to_remove_or_nothing_listening() {
    let sb = Sandbox::new();
    let (status, log) = sb.output(&["alias", "--rm", "nosuch"]);
    assert!(!status.success(), "{log}");
    assert!(log.contains("no alias named 'nosuch'"), "{log}");
    assert!(!log.contains("removed"), "{log}");

    let (port, _dead) = dead_port();
    let (status, log) = sb.output(&["alias", "later", &port.to_string()]);
    assert!(
        status.success(),
        "an alias may come before its server: {log}"
    );
    assert!(
        log.contains(&format!("nothing accepts connections on 127.0.0.1:{port}")),
        "{log}"
    );
    let (status, log) = sb.output(&["alias", "--rm", "later"]);
    assert!(
        status.success() && log.contains("removed the alias later"),
        "{log}"
    );
}

#[test]
fn a_corrupt_registry_is_rebuilt_with_the_running_instances() {
    let sb = Sandbox::new();
    let (port, listener) = os_port();
    drop(listener);
    let held = port.to_string();
    let keep = spawn(
        &sb,
        &run_args("keep", &["--range", &format!("{held}-{held}")]),
    );
    assert_eq!(keep.instance_port(), port);
    keep.report();
    std::fs::write(sb.state_dir().join("registry.json"), b"{\"leases\": [oops").unwrap();

    let (status, log) = output(
        &sb,
        &run_args("late", &["--range", &format!("{held}-{held}")]),
    );
    assert!(!status.success());
    assert!(log.contains("kept the running keep"), "{log}");
    assert!(
        log.contains(&format!("'keep' holds {port}")),
        "not 'another process': {log}"
    );
    let reg = sb.registry();
    assert_eq!(reg["leases"]["keep"]["ports"]["http"], port, "{reg}");
    assert_eq!(reg["sticky"]["keep"]["http"], port, "{reg}");
}

#[test]
fn a_declared_list_of_ranges_falls_back_in_order() {
    let sb = Sandbox::new();
    let (a, _held) = hold_run(1);
    let (b, free) = hold_run(1);
    drop(free);
    std::fs::write(
        sb.dir.path().join("wharf.toml"),
        format!(
            "[instances.web]\ncommand = [\"{}\", \"{}\"]\nmode = \"fd\"\nrange = \"{a}-{a},{b}-{b}\"\n",
            python().display(),
            server_py().display()
        ),
    )
    .unwrap();
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    let web = sb
        .ls()
        .into_iter()
        .find(|l| l["name"] == "web")
        .expect("web runs");
    assert_eq!(web["sockets"]["http"], format!("127.0.0.1:{b}"), "{web}");
}
