//! wharf's own pages and the messages around names: the dashboard (what runs where, its logs,
//! its last exit, updating by itself), the 404 for unknown names, the 421 for hosts that are
//! not wharf's, a second proxy, and names turned into variables.

use std::net::SocketAddr;
use std::process::Command;

use super::util::*;

fn proxy_get(port: u16, host: &str, path: &str) -> (u16, String) {
    get(SocketAddr::from(([127, 0, 0, 1], port)), host, path).unwrap()
}

/// `wharf proxy` in the foreground, and the port it serves.
fn start_proxy(sb: &Sandbox) -> (Proc, u16) {
    let proxy = sb.spawn(&["proxy"]);
    let line = proxy.expect(" serving http://127.0.0.1:");
    let port = port_after(&line, "http://127.0.0.1:");
    (proxy, port)
}

/// The dashboard, as JSON.
fn dashboard_json(port: u16) -> serde_json::Value {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (head, body) = {
        use std::io::Write;
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: localhost:{port}\r\nAccept: application/json\r\n\r\n"
        )
        .unwrap();
        read_response(&mut s)
    };
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

h1test!(
    a_404_names_the_instance_and_a_421_points_at_the_dashboard,
    |sb: Sandbox| {
        let (_proxy, port) = start_proxy(&sb);
        let dashboard = format!("http://localhost:{port}/");
        for (host, name) in [
            (format!("nope.localhost:{port}"), "nope"),
            ("admin.nope.localhost".into(), "admin.nope"),
            ("a.b.c.localhost".into(), "a.b.c"),
        ] {
            let (status, page) = proxy_get(port, &host, "/");
            assert_eq!(status, 404, "{page}");
            assert!(
                page.contains(&format!("No instance is named <b>{name}</b>."))
                    && page.contains(&format!("wharf run --name {name} -- CMD")),
                "{host}: {page}"
            );
            assert!(page.contains(&format!("href=\"{dashboard}\"")), "{page}");
        }

        for host in [format!("127.0.0.1:{port}"), "example.com".into()] {
            let (status, page) = proxy_get(port, &host, "/");
            assert_eq!(status, 421, "{page}");
            assert!(
                page.contains(&format!("href=\"{dashboard}\"")),
                "{host}: {page}"
            );
        }
    }
);

#[test]
fn a_second_proxy_names_the_one_that_runs() {
    let sb = Sandbox::new();
    let (first, port) = start_proxy(&sb);
    // The same configuration as the first: its port is taken, and its control socket answers.
    let mut second = sb.wharf(&["proxy"]);
    second.env("WHARF_LISTEN", format!("127.0.0.1:{port}"));
    let mut second = Proc::spawn(second, "wharf proxy (second)");
    let status = second.wait(PATIENCE);
    let log = second.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!("pid {}", first.pid()))
            && log.contains(&format!("http://127.0.0.1:{port}"))
            && log.contains("wharf stop --proxy"),
        "{log}"
    );
}

/// A name starting with a digit once gave `export 2WEB_URL=…`, which no shell accepts.
#[test]
fn env_prints_variables_a_shell_accepts() {
    let Some(sh) = need("sh") else { return };
    let sb = Sandbox::new();
    let p = sb.serve("2web", &[]);
    let port = p.url_port();
    let out = sb.wharf(&["env"]).output().unwrap();
    let exports = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{exports}");
    let url = format!("http://2web.localhost:{port}");
    assert_eq!(exports, format!("export _2WEB_URL={url}\n"));
    let echoed = Command::new(sh)
        .arg("-c")
        .arg(format!("set -e\n{exports}echo \"$_2WEB_URL\""))
        .output()
        .unwrap();
    assert!(
        echoed.status.success(),
        "{}",
        String::from_utf8_lossy(&echoed.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&echoed.stdout).trim(), url);

    // `Bad_Name` once suggested `bad_name`, which was refused in turn.
    let (status, log) = sb.output(&["env", "Bad_Name"]);
    assert!(!status.success());
    let suggested = log
        .split("try \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no suggestion: {log}"));
    assert_eq!(suggested, "bad-name");
    let (status, log) = sb.output(&["env", suggested]);
    assert!(
        !status.success() && log.contains("no instance named 'bad-name'"),
        "the suggested name is a name: {log}"
    );
}

#[test]
fn the_dashboard_shows_what_runs_where_its_logs_and_last_exit_and_updates_itself() {
    let sb = Sandbox::new();
    let site = sb.dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    let log = sb.dir.path().join("flaky.log");
    let mut args = vec![
        "run".to_string(),
        "--restart".into(),
        "--log".into(),
        path_str(&log).into(),
    ];
    args.extend(
        serve_args("flaky", &["--exit-after", "1", "--exit-code", "3"])
            .into_iter()
            .skip(1),
    );
    let mut cmd = sb.wharf(&args.iter().map(String::as_str).collect::<Vec<_>>());
    cmd.current_dir(&site);
    let p = Proc::spawn(cmd, "wharf run flaky");
    let port = p.url_port();
    assert_eq!(proxy_get(port, "flaky.localhost", "/").0, 200);
    let mut json = serde_json::Value::Null;
    eventually("the exit is on the dashboard", PATIENCE, || {
        json = dashboard_json(port);
        json["instances"][0]["last_exit"] == "exited with code 3"
    });
    let flaky = &json["instances"][0];
    assert_eq!(flaky["dir"], path_str(&site));
    assert_eq!(flaky["log"], path_str(&log));
    let command: Vec<&str> = flaky["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        command[1..],
        [
            path_str(&server_py()),
            "--exit-after",
            "1",
            "--exit-code",
            "3"
        ]
    );

    let (status, page) = proxy_get(port, &format!("localhost:{port}"), "/");
    assert_eq!(status, 200);
    for shown in [
        format!("http://flaky.localhost:{port}"),
        format!("{} --exit-after 1 --exit-code 3", path_str(&server_py())),
        format!("in {}", path_str(&site)),
        path_str(&log).to_string(),
        "last exit: exited with code 3".to_string(),
    ] {
        assert!(page.contains(&shown), "{shown:?} is not on\n{page}");
    }

    // In a real browser the page fetches itself again and swaps the list in.
    let Some(chromium) = need("chromium") else {
        return;
    };
    let mut browser = Command::new(chromium);
    browser.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=5000",
        "--dump-dom",
        &format!("http://localhost:{port}/"),
    ]);
    let mut browser = Proc::spawn(browser, "chromium --dump-dom");
    browser.wait(PATIENCE);
    let dom = browser.log();
    assert!(
        dom.contains("updated ") && dom.contains("flaky.localhost"),
        "no update in the browser:\n{dom}"
    );
}

/// The command travels with the registration, whose line the proxy caps at 64 KiB: a command
/// longer than that must still register (shortened), not be refused.
#[test]
fn a_command_longer_than_a_control_line_still_registers() {
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let filler: Vec<String> = (0..12_000).map(|i| format!("unused-{i}")).collect();
    let mut args = vec![
        "run",
        "--name",
        "long",
        "--fd",
        "--port",
        "0",
        "--",
        "sh",
        "-c",
        "exec \"$0\" \"$1\"",
        path_str(&py),
        path_str(&script),
    ];
    args.extend(filler.iter().map(String::as_str));
    let p = sb.spawn(&args);
    let port = p.url_port();
    assert_eq!(proxy_get(port, "long.localhost", "/").0, 200);
    let json = dashboard_json(port);
    let command = json["instances"][0]["command"].as_array().unwrap();
    assert_eq!(command[0], "sh");
    assert_eq!(command.last().unwrap(), "…");
}
