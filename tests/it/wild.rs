//! Servers from the wild: puma, gunicorn behind `uv run`, servers that listen elsewhere or on
//! every interface, and the parent's `PORT`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use super::util::*;

const CONFIG_RU: &str = "run ->(env) { [200, {\"content-type\" => \"text/plain\"}, [\"puma saw #{env['HTTP_HOST']}\"]] }\n";

/// GET / through the proxy as NAME.localhost; the body of a 200.
fn through_proxy(port: u16, name: &str) -> String {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (status, body) = get(addr, &format!("{name}.localhost:{port}"), "/")
        .unwrap_or_else(|e| panic!("GET {name}.localhost:{port}: {e}"));
    assert_eq!(status, 200, "{body}");
    body
}

fn puma_app(sb: &Sandbox) {
    std::fs::write(sb.dir.path().join("config.ru"), CONFIG_RU).unwrap();
}

h1test!(
    puma_from_the_readme_serves_on_the_socket_it_is_handed,
    |sb: Sandbox| {
        let Some(puma) = need("puma") else { return };
        puma_app(&sb);
        let p = sb.spawn(&[
            "run",
            "--name",
            "rb",
            "--port",
            "0",
            "--",
            path_str(&puma),
            "config.ru",
        ]);
        // Without `--bind-to-activated-sockets only`, puma closed the socket as unused and bound
        // 0.0.0.0:9292; requests waited 120 s for a 504.
        p.expect("adding --bind-to-activated-sockets only");
        let port = p.instance_port();
        p.expect(&format!("Activated tcp://127.0.0.1:{port}"));
        // Without READY=1 and before any request, `ls` said `starting` for good.
        p.expect("ready (accepted a connection on its socket)");
        assert_eq!(sb.ls()[0]["state"], "ready");
        let body = through_proxy(p.url_port(), "rb");
        assert!(body.starts_with("puma saw rb.localhost"), "{body}");
        assert_eq!(
            p.count_lines(|l| l.contains("Systemd integration failed")),
            0,
            "puma is offered no NOTIFY_SOCKET it can only complain about"
        );
    }
);

h1test!(
    puma_with_a_rails_style_config_reading_port,
    |sb: Sandbox| {
        let Some(puma) = need("puma") else { return };
        puma_app(&sb);
        std::fs::create_dir_all(sb.dir.path().join("config")).unwrap();
        std::fs::write(
            sb.dir.path().join("config/puma.rb"),
            "port ENV.fetch(\"PORT\")\n",
        )
        .unwrap();
        let mut cmd = sb.wharf(&["run", "--name", "rails", "--", path_str(&puma)]);
        // Garbage in wharf's own PORT is said and ignored, and never reaches the server.
        cmd.env("PORT", "not-a-port");
        let p = Proc::spawn(cmd, "wharf run puma with config/puma.rb");
        p.expect("ignoring PORT=\"not-a-port\" in the environment");
        let port = p.instance_port();
        p.expect(&format!("Activated tcp://127.0.0.1:{port}"));
        assert!(through_proxy(p.url_port(), "rails").starts_with("puma saw rails.localhost"));
    }
);

/// `uv run --no-project ARGS…` in the test venv, as `wharf run --name NAME` would start it.
fn uv_run(sb: &Sandbox, name: &str, args: &[&str]) -> Option<Proc> {
    let uv = need("uv")?;
    let gunicorn = need("gunicorn")?;
    let venv = gunicorn.parent().unwrap().parent().unwrap();
    let mut wharf_args = vec!["run", "--name", name, "--port", "0", "--"];
    wharf_args.extend([path_str(&uv), "run", "--no-project"]);
    wharf_args.extend(args);
    let mut cmd = sb.wharf(&wharf_args);
    uv_env(&mut cmd, sb, venv);
    Some(Proc::spawn(
        cmd,
        &format!("wharf run -- uv run {}", args.join(" ")),
    ))
}

/// uv finds the test venv's programs, offline, with its cache in the sandbox.
fn uv_env(cmd: &mut Command, sb: &Sandbox, venv: &Path) {
    let path = std::env::join_paths(std::iter::once(venv.join("bin")).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    cmd.env("VIRTUAL_ENV", venv)
        .env("PATH", path)
        .env("UV_CACHE_DIR", sb.dir.path().join("uv-cache"))
        .env("UV_OFFLINE", "1")
        .env("UV_NO_PROGRESS", "1");
}

h1test!(gunicorn_behind_uv_run_is_told_its_fd, |sb: Sandbox| {
    let servers = repo().join("tests/servers");
    // `--no-project` before the program: wharf no longer recognised gunicorn at all; and
    // since uv forks, gunicorn's strict LISTEN_PID check rejected fd 3 and it bound
    // 127.0.0.1:8000 while saying READY=1.
    let Some(p) = uv_run(
        &sb,
        "uvg",
        &["gunicorn", "--chdir", path_str(&servers), "wsgi:app"],
    ) else {
        return;
    };
    p.expect("fd mode: gunicorn takes an inherited socket; uv run runs it as a child");
    let port = p.instance_port();
    let listens = p.expect("Listening at:");
    assert!(listens.contains(&format!("127.0.0.1:{port} ")), "{listens}");
    let body: serde_json::Value =
        serde_json::from_str(&through_proxy(p.url_port(), "uvg")).unwrap();
    assert_eq!(body["host"], format!("uvg.localhost:{}", p.url_port()));
});

#[test]
fn a_valid_parent_port_is_a_preference_and_reaches_fd_mode_only_as_the_handed_port() {
    let sb = Sandbox::new();
    let (wanted, guard) = os_port();
    drop(guard);
    // Without --port, so that PORT is the only preference.
    let args: Vec<String> = serve_args("pref", &[])
        .into_iter()
        .filter(|a| a != "--port" && a != "0")
        .collect();
    let mut cmd = sb.wharf(&args.iter().map(String::as_str).collect::<Vec<_>>());
    cmd.env("PORT", wanted.to_string());
    let p = Proc::spawn(cmd, "wharf run with PORT set");
    p.expect(&format!(
        "PORT={wanted} in the environment: trying it first"
    ));
    assert_eq!(p.instance_port(), wanted);
    assert_eq!(p.report()["env"]["PORT"], wanted.to_string());
}

/// A Python one-liner server on 127.0.0.1, any port, that prints `BOUND PORT`; `before` runs
/// first (with `os` imported).
fn py_elsewhere(before: &str) -> String {
    format!(
        "import os, http.server as h\n{before}\n\
         s = h.HTTPServer(('127.0.0.1', 0), h.SimpleHTTPRequestHandler)\n\
         print('BOUND', s.server_address[1], flush=True)\n\
         s.serve_forever()"
    )
}

#[test]
fn a_server_that_closes_its_handed_socket_is_followed_where_it_listens() {
    let sb = Sandbox::new();
    let py = python();
    let code = py_elsewhere("os.close(3)");
    let p = sb.spawn(&[
        "run",
        "--name",
        "shut",
        "--fd",
        "--port",
        "0",
        "--",
        path_str(&py),
        "-c",
        &code,
    ]);
    let handed = p.instance_port();
    let bound = port_after(&p.expect("BOUND "), "BOUND ");
    // Before, wharf kept routing to the handed socket, which nobody accepted on: 504s.
    p.expect(&format!(
        "closed the socket it was handed (127.0.0.1:{handed}) and listens on 127.0.0.1:{bound} instead; routing there"
    ));
    let addr: SocketAddr = ([127, 0, 0, 1], p.url_port()).into();
    let (status, _) = get(addr, &format!("shut.localhost:{}", p.url_port()), "/").unwrap();
    assert_eq!(status, 200);
    let listed = sb.ls();
    let me = listed.iter().find(|l| l["name"] == "shut").unwrap();
    assert_eq!(me["sockets"]["http"], format!("127.0.0.1:{bound}"));
}

h1test!(
    gunicorn_that_binds_its_own_address_behind_uv_is_followed_there,
    |sb: Sandbox| {
        let servers = repo().join("tests/servers");
        // The user's own --bind is kept: gunicorn holds fd 3 (inherited through uv) but never
        // accepts on it, and says READY=1 all the same.
        let Some(p) = uv_run(
            &sb,
            "own",
            &[
                "gunicorn",
                "-b",
                "127.0.0.1:0",
                "--chdir",
                path_str(&servers),
                "wsgi:app",
            ],
        ) else {
            return;
        };
        p.expect("keeping the command's own --bind");
        let handed = p.instance_port();
        let listening = p.expect("Listening at: http://127.0.0.1:");
        let bound = port_after(&listening, "http://127.0.0.1:");
        p.expect(&format!(
        "does not accept on the socket it was handed (127.0.0.1:{handed}) and listens on 127.0.0.1:{bound} instead"
    ));
        let body: serde_json::Value =
            serde_json::from_str(&through_proxy(p.url_port(), "own")).unwrap();
        assert_eq!(body["host"], format!("own.localhost:{}", p.url_port()));
    }
);

#[test]
fn a_server_on_every_interface_is_reported_and_warned_about() {
    let sb = Sandbox::new();
    let py = python();
    // http.server without -b binds every interface, as Express's listen(PORT) does.
    let p = sb.spawn(&[
        "run",
        "--name",
        "open",
        "--port",
        "0",
        "--",
        path_str(&py),
        "-m",
        "http.server",
        "{port}",
    ]);
    let port = p.instance_port();
    let line = p.expect("listening on ");
    assert!(
        line.contains(&format!("listening on 0.0.0.0:{port}"))
            || line.contains(&format!("listening on [::]:{port}")),
        "the real address, not loopback: {line}"
    );
    p.expect("warning: ");
    p.expect("other machines on the network can reach this server");
    let listed = sb.ls();
    let me = listed.iter().find(|l| l["name"] == "open").unwrap();
    let exposed = me["exposed"].as_str().unwrap_or_default().to_string();
    assert!(exposed.ends_with(&format!(":{port}")), "{me}");
    let out = sb.wharf(&["ls"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("warning: open: {exposed} is every interface")),
        "{stderr}"
    );
    let (_, dashboard) = get(([127, 0, 0, 1], p.url_port()).into(), "localhost", "/").unwrap();
    assert!(
        dashboard.contains(&format!("<b>open</b>: {exposed} is every interface")),
        "{dashboard}"
    );
}

#[test]
fn wharf_toml_instances_say_where_their_mode_came_from() {
    let sb = Sandbox::new();
    let (py, script) = (python(), server_py());
    let file = sb.dir.path().join("wharf.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[instances.fixed]
command = ["{py}", "{script}"]
mode = "fd"
port = 0

[instances.lazy]
command = ["{py}", "{script}"]
activation = "on-demand"
port = 0
"#,
            py = py.display(),
            script = script.display(),
        ),
    )
    .unwrap();
    let (status, log) = sb.output(&["up"]);
    assert!(status.success(), "{log}");
    let log_of = |name: &str| {
        std::fs::read_to_string(sb.state_dir().join(format!("logs/{name}.log"))).unwrap_or_default()
    };
    eventually("both supervisors said their mode", PATIENCE, || {
        log_of("fixed").contains("fd mode:") && log_of("lazy").contains("fd mode:")
    });
    let (fixed, lazy) = (log_of("fixed"), log_of("lazy"));
    // Before, both said "--fd was given", a switch nobody typed.
    assert!(
        fixed.contains(&format!("fd mode: mode = \"fd\" in {}", file.display())),
        "{fixed}"
    );
    assert!(
        lazy.contains(&format!(
            "fd mode: activation = \"on-demand\" in {} needs it",
            file.display()
        )),
        "{lazy}"
    );
    assert!(
        !fixed.contains("--fd") && !lazy.contains("--fd"),
        "{fixed}\n{lazy}"
    );
}

#[test]
fn on_demand_refuses_a_server_that_cannot_take_its_socket_and_fd_mode_refuses_port() {
    let sb = Sandbox::new();
    // Vite binds for itself: on demand, the request that wakes it would wait on wharf's
    // socket for ever (it used to end in a 504 after upstream_timeout).
    // (A path that does not exist: should the refusal go, the test fails on "cannot find"
    // instead of fetching Vite.)
    let vite = "./node_modules/.bin/vite";
    let (status, log) = sb.output(&["run", "--name", "vod", "--on-demand", "--", vite]);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("cannot take it") && log.contains("drop --on-demand"),
        "{log}"
    );
    // `{port}` in fd mode: the server would try to bind the port wharf holds.
    let (status, log) = sb.output(&[
        "run",
        "--name",
        "pfd",
        "--fd",
        "--",
        "python3",
        "-m",
        "http.server",
        "{port}",
    ]);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("{port} asks the server to bind the port itself") && log.contains("--env"),
        "{log}"
    );
}
