//! `wharf mcp`: a small client speaking JSON-RPC over the pipe (the MCP stdio transport: one
//! JSON message a line) initializes, lists the tools, ensures a server twice (one server),
//! reaches it through the proxy, reads its output, stops it; closing the pipe stops what the
//! session leased.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::util::*;

/// One `wharf mcp` and the client's end of its pipes.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    next: u64,
}

impl Client {
    fn start(sb: &Sandbox) -> Client {
        let mut child = sb
            .wharf(&["mcp"])
            // `--port 0`'s meaning for every instance it starts: ports from the OS.
            .env("PORT", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (err, seen) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                seen.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Client {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            next: 1,
        }
    }

    fn send(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().expect("the pipe is open");
        writeln!(stdin, "{message}").unwrap();
        stdin.flush().unwrap();
    }

    /// A request and its answer's `result` (bounded by `PATIENCE`); notifications and
    /// requests from the server on the way are passed over.
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer to {method} within {PATIENCE:?}: {e}"));
            let message: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("not one JSON message a line ({e}): {line}");
            });
            if message["id"] == json!(id) && message.get("method").is_none() {
                assert!(message.get("error").is_none(), "{method}: {message}");
                return message["result"].clone();
            }
        }
    }

    /// `tools/call`: the tool's result (`isError` and all).
    fn call(&mut self, tool: &str, arguments: Value) -> Value {
        self.request("tools/call", json!({"name": tool, "arguments": arguments}))
    }

    /// A call that must succeed: its structured content, else its text.
    fn ok(&mut self, tool: &str, arguments: Value) -> Value {
        let result = self.call(tool, arguments);
        assert_ne!(result["isError"], json!(true), "{tool}: {result}");
        match result.get("structuredContent") {
            Some(v) => v.clone(),
            None => result["content"][0]["text"].clone(),
        }
    }

    /// Close the pipe: the client went away.
    fn close(&mut self) {
        self.stdin = None;
    }

    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stdin = None;
        if self.wait(PATIENCE).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- stderr of wharf mcp ----\n{}----",
                self.stderr.lock().unwrap()
            );
        }
    }
}

fn listed(sb: &Sandbox, name: &str) -> bool {
    sb.ls().iter().any(|l| l["name"] == name)
}

#[test]
fn an_agent_ensures_one_server_reads_it_stops_it_and_its_lease_ends_with_the_session() {
    let sb = Sandbox::new();
    let app = sb.dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    let command = json!([path_str(&python()), path_str(&server_py())]);
    let mut c = Client::start(&sb);

    let init = c.request(
        "initialize",
        json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "wharf-test", "version": "0"},
        }),
    );
    assert_eq!(init["serverInfo"]["name"], "wharf", "{init}");
    assert!(init["capabilities"]["tools"].is_object(), "{init}");
    c.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));

    let tools = c.request("tools/list", json!({}));
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for tool in [
        "list_instances",
        "ensure_instance",
        "instance_logs",
        "stop_instance",
    ] {
        assert!(names.contains(&tool), "{tool} missing from {names:?}");
    }

    // Twice the same command in the same directory: one server.
    let args = json!({"command": command, "dir": path_str(&app), "name": "mcpapp"});
    let first = c.ok("ensure_instance", args.clone());
    assert_eq!(first["reused"], false, "{first}");
    assert_eq!(first["leased"], true, "{first}");
    let second = c.ok("ensure_instance", args);
    assert_eq!(second["reused"], true, "{second}");
    assert_eq!(second["pid"], first["pid"], "one server: {second}");
    assert_eq!(second["url"], first["url"], "{second}");
    let url = first["url"].as_str().unwrap();
    let port = port_after(url, "mcpapp.localhost:");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (status, body) = get(addr, &format!("mcpapp.localhost:{port}"), "/").unwrap();
    assert_eq!(status, 200, "{body}");

    let listed_now = c.ok("list_instances", json!({}));
    let instances = listed_now["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{listed_now}");
    assert_eq!(instances[0]["name"], "mcpapp");
    assert_eq!(instances[0]["pid"], first["pid"]);

    let logs = c.ok("instance_logs", json!({"name": "mcpapp"}));
    let logs = logs.as_str().unwrap();
    assert!(logs.contains("REPORT "), "the server's own output: {logs}");
    assert!(logs.lines().count() > 1, "{logs}");
    let one = c.ok("instance_logs", json!({"name": "mcpapp", "lines": 1}));
    assert_eq!(one.as_str().unwrap().lines().count(), 1, "{one}");

    let stopped = c.ok("stop_instance", json!({"name": "mcpapp"}));
    assert!(
        stopped.as_str().unwrap().contains("stopped mcpapp"),
        "{stopped}"
    );
    assert!(!listed(&sb, "mcpapp"), "stopped, yet listed");
    let again = c.call("stop_instance", json!({"name": "mcpapp"}));
    assert_eq!(again["isError"], true, "{again}");

    // A server that fails says why, as a tool error.
    let failing = c.call(
        "ensure_instance",
        json!({
            "command": [path_str(&python()), "-c", "print('bad config'); raise SystemExit(3)"],
            "dir": path_str(&app),
            "name": "broken",
            "timeout_secs": 15,
        }),
    );
    assert_eq!(failing["isError"], true, "{failing}");
    let why = failing["content"][0]["text"].as_str().unwrap();
    assert!(why.contains("bad config"), "{why}");

    // Named by the project, leased to this session: closing the pipe stops it.
    let shop = sb.dir.path().join("shop");
    std::fs::create_dir(&shop).unwrap();
    std::fs::write(shop.join("package.json"), r#"{"name": "@acme/shop"}"#).unwrap();
    let leased = c.ok(
        "ensure_instance",
        json!({"command": command, "dir": path_str(&shop)}),
    );
    assert_eq!(leased["name"], "shop", "{leased}");
    assert_eq!(leased["leased"], true, "{leased}");
    let pid = leased["pid"].as_i64().unwrap() as i32;
    assert!(listed(&sb, "shop"));
    c.close();
    assert!(
        c.wait(PATIENCE).is_some(),
        "wharf mcp did not end when its stdin closed"
    );
    eventually("the leased instance stopped", PATIENCE, || {
        !listed(&sb, "shop") && gone(pid)
    });
}

/// Two sessions ensuring one server share it: the first to leave leaves it running, the
/// last stops it; an instance a session only reused from outside is never stopped by it.
#[test]
fn two_sessions_share_a_lease_and_the_last_to_leave_stops_it() {
    let sb = Sandbox::new();
    let command = json!([path_str(&python()), path_str(&server_py())]);
    let init = |c: &mut Client| {
        c.request(
            "initialize",
            json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "wharf-test", "version": "0"},
            }),
        );
        c.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    };
    let dir = path_str(sb.dir.path()).to_string();
    let args = json!({"command": command, "dir": dir, "name": "shared"});
    let (mut a, mut b) = (Client::start(&sb), Client::start(&sb));
    init(&mut a);
    init(&mut b);
    let started = a.ok("ensure_instance", args.clone());
    let joined = b.ok("ensure_instance", args);
    assert_eq!(joined["reused"], true, "{joined}");
    assert_eq!(joined["leased"], true, "it joins the lease: {joined}");
    a.close();
    assert!(a.wait(PATIENCE).is_some());
    assert!(listed(&sb, "shared"), "b still holds it");
    b.close();
    assert!(b.wait(PATIENCE).is_some());
    let pid = started["pid"].as_i64().unwrap() as i32;
    eventually("the last holder stopped it", PATIENCE, || {
        !listed(&sb, "shared") && gone(pid)
    });

    // SIGTERM ends a session as closing its pipe does.
    let mut d = Client::start(&sb);
    init(&mut d);
    let termed = d.ok(
        "ensure_instance",
        json!({"command": command, "dir": dir, "name": "termed"}),
    );
    // SAFETY: kill with a pid of our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    assert!(
        d.wait(PATIENCE).is_some(),
        "wharf mcp did not end on SIGTERM"
    );
    let pid = termed["pid"].as_i64().unwrap() as i32;
    eventually("the SIGTERMed session's instance stopped", PATIENCE, || {
        !listed(&sb, "termed") && gone(pid)
    });

    // Started by hand: reused, never leased, never stopped by the session.
    let mut by_hand = sb.serve("manual", &[]);
    by_hand.expect(" is at http://");
    let mut c = Client::start(&sb);
    init(&mut c);
    let mut serve = serve_args("manual", &[]);
    let argv: Vec<String> = serve.split_off(serve.iter().position(|a| a == "--").unwrap() + 1);
    let reused = c.ok(
        "ensure_instance",
        json!({"command": argv, "dir": path_str(sb.dir.path()), "name": "manual"}),
    );
    assert_eq!(reused["reused"], true, "{reused}");
    assert_eq!(reused["leased"], false, "{reused}");
    let no_log = c.call("instance_logs", json!({"name": "manual"}));
    assert_eq!(no_log["isError"], true, "{no_log}");
    let why = no_log["content"][0]["text"].as_str().unwrap();
    assert!(why.contains("keeps no log"), "{why}");
    c.close();
    assert!(c.wait(PATIENCE).is_some());
    assert!(
        listed(&sb, "manual"),
        "a session stopped what it did not start"
    );
    by_hand.signal(libc::SIGTERM);
    by_hand.wait(PATIENCE);
}

/// Only a name: that instance of the project's wharf.toml, run as `wharf up` runs it (so `up`
/// finds it unchanged), and the session's like any other.
#[test]
fn a_name_alone_ensures_the_declared_instance() {
    let sb = Sandbox::new();
    std::fs::write(
        sb.dir.path().join("wharf.toml"),
        format!(
            "[instances.api]\ncommand = [{:?}, {:?}]\nport = 0\n\n[instances.other]\ncommand = \"false\"\n",
            path_str(&python()),
            path_str(&server_py())
        ),
    )
    .unwrap();
    let mut c = Client::start(&sb);
    c.request(
        "initialize",
        json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "wharf-test", "version": "0"},
        }),
    );
    c.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let dir = path_str(sb.dir.path());
    let api = c.ok("ensure_instance", json!({"name": "api", "dir": dir}));
    assert_eq!(api["reused"], false, "{api}");
    let listed = sb.ls();
    let declared = &listed.iter().find(|l| l["name"] == "api").unwrap()["declared"];
    assert!(
        declared["file"].as_str().unwrap().ends_with("wharf.toml"),
        "{listed:?}"
    );
    let (status, log) = sb.output(&["up", "api"]);
    assert!(status.success() && log.contains("unchanged"), "{log}");
    let unknown = c.call("ensure_instance", json!({"name": "nope", "dir": dir}));
    assert_eq!(unknown["isError"], true, "{unknown}");
    let why = unknown["content"][0]["text"].as_str().unwrap();
    assert!(why.contains("declares no instance 'nope'"), "{why}");
    c.close();
    let pid = api["pid"].as_i64().unwrap() as i32;
    eventually(
        "the declared instance stopped with the session",
        PATIENCE,
        || !sb.ls().iter().any(|l| l["name"] == "api") && gone(pid),
    );
}
