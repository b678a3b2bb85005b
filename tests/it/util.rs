//! The test harness: each test gets its own state and runtime directories, runs the real
//! `wharf` binary with a scrubbed environment, reads its output line by line with a deadline,
//! kills what it started on drop, and prints everything it saw when a test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Long enough for a loaded CI machine; every wait in the tests is bounded by it.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Added to a promise about time (a route gone within a second, a 502 within two) where a
/// test checks it: on a loaded 2-core CI machine the proxy, the instance and the test itself
/// may each run this much late without anything being wrong. A deadline's lower bound needs
/// none (a timer never fires early).
pub const SLACK: Duration = Duration::from_secs(3);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn server_py() -> PathBuf {
    repo().join("tests/servers/server.py")
}

/// The test venv (made by tests/run.sh) holds gunicorn and websockets.
pub fn venv_bin(tool: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("WHARF_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/test-venv"));
    let path = dir.join("bin").join(tool);
    path.exists().then_some(path)
}

/// A tool the test needs, or `None` after saying the test is skipped. Under CI nothing may skip.
pub fn need(tool: &str) -> Option<PathBuf> {
    let found = venv_bin(tool).or_else(|| which(tool));
    if found.is_none() {
        let msg = format!("skipped: `{tool}` not found (bash tests/run.sh installs it)");
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; CI must not skip");
        }
        eprintln!("{msg}");
    }
    found
}

/// A program from the npm packages tests/run.sh installs into target/test-node (see
/// tests/node/package.json), or `None` after saying the test is skipped. Under CI nothing may
/// skip.
pub fn need_npm(program: &str) -> Option<PathBuf> {
    let path = repo()
        .join("target/test-node/node_modules/.bin")
        .join(program);
    if path.exists() {
        return Some(path);
    }
    let msg = format!(
        "skipped: no {} (bash tests/run.sh installs it)",
        path.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI must not skip");
    }
    eprintln!("{msg}");
    None
}

/// The test venv's Python (with websockets and grpcio), or `None` after saying the test is
/// skipped. Under CI nothing may skip.
pub fn need_venv() -> Option<PathBuf> {
    let found = venv_bin("python3");
    if found.is_none() {
        let msg = "skipped: no test venv (bash tests/run.sh makes it)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; CI must not skip");
        }
        eprintln!("{msg}");
    }
    found
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

pub fn python() -> PathBuf {
    venv_bin("python3")
        .or_else(|| which("python3"))
        .expect("python3 is needed")
}

/// The proxy's two ways of serving an HTTP/1.1 request: the express lane (the default) and
/// hyper's path (`[proxy] express = false`). `h1test!` runs a case with each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Lane,
    Hyper,
}

impl Engine {
    pub const BOTH: [Engine; 2] = [Engine::Lane, Engine::Hyper];
}

/// Private directories for one test, and the way to run wharf inside them.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    engine: Engine,
    /// `$WHARF_TEST_LIMITS` for every wharf this sandbox runs (see `with_limits`).
    limits: Option<String>,
}

impl Sandbox {
    /// A sandbox whose proxy takes the default (the express lane).
    pub fn new() -> Sandbox {
        Sandbox::with_engine(Engine::Lane)
    }

    /// A sandbox whose proxy, once started, serves HTTP/1.1 with `engine`.
    pub fn with_engine(engine: Engine) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("wharf-test-")
            .tempdir()
            .unwrap();
        let sb = Sandbox {
            dir,
            engine,
            limits: None,
        };
        sb.config("");
        sb
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Write the user's config.toml: `text`, and for hyper's engine `express = false` under
    /// `[proxy]`. Read by the proxy when it starts.
    pub fn config(&self, text: &str) {
        let text = match self.engine {
            Engine::Lane => text.to_string(),
            Engine::Hyper if text.contains("[proxy]\n") => {
                text.replacen("[proxy]\n", "[proxy]\nexpress = false\n", 1)
            }
            Engine::Hyper => format!("{text}\n[proxy]\nexpress = false\n"),
        };
        if text.is_empty() {
            return;
        }
        let dir = self.config_dir().join("wharf");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.toml"), text).unwrap();
    }

    /// `$XDG_CONFIG_HOME` of the commands this sandbox runs.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// This sandbox, its proxy keeping shrunk deadlines so that a test of a one-minute
    /// deadline does not wait a minute: `limits` is `$WHARF_TEST_LIMITS`, a test-only hook
    /// (`Limits::with_test_overrides`), e.g. `"body_idle=3"`.
    pub fn limited(mut self, limits: &str) -> Sandbox {
        self.limits = Some(limits.to_string());
        self
    }

    /// A sandbox (express lane) whose proxy keeps shrunk deadlines: see `limited`.
    pub fn with_limits(limits: &str) -> Sandbox {
        Sandbox::new().limited(limits)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The hosts file `wharf hosts` (and a proxy with `[hosts] sync`) edits: never /etc/hosts.
    pub fn hosts_file(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// The nsswitch.conf `doctor --fix` edits: never /etc/nsswitch.conf.
    pub fn nsswitch_file(&self) -> PathBuf {
        self.dir.path().join("nsswitch.conf")
    }

    /// `wharf ARGS` with this sandbox's directories and none of the caller's socket variables.
    pub fn wharf(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
        cmd.args(args)
            .env("WHARF_STATE_DIR", self.state_dir())
            .env("WHARF_RUNTIME_DIR", self.runtime_dir())
            .env("WHARF_LISTEN", "127.0.0.1:0")
            .env("XDG_CONFIG_HOME", self.config_dir())
            .env("WHARF_HOSTS_FILE", self.hosts_file())
            .env("WHARF_NSSWITCH_FILE", self.nsswitch_file())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        match &self.limits {
            Some(limits) => cmd.env("WHARF_TEST_LIMITS", limits),
            None => cmd.env_remove("WHARF_TEST_LIMITS"),
        };
        for var in [
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Start `wharf ARGS` in the background.
    pub fn spawn(&self, args: &[&str]) -> Proc {
        Proc::spawn(self.wharf(args), &args.join(" "))
    }

    /// `wharf run --name NAME --fd --port 0 -- python3 server.py EXTRA…`: the test server as an
    /// instance, its socket passed as fd 3.
    pub fn serve(&self, name: &str, extra: &[&str]) -> Proc {
        let args = serve_args(name, extra);
        self.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `wharf run --name NAME --port 0 -- gunicorn --chdir tests/servers wsgi:app`, or `None`
    /// (skipped) without gunicorn.
    pub fn gunicorn(&self, name: &str) -> Option<Proc> {
        let gunicorn = need("gunicorn")?;
        let servers = repo().join("tests/servers");
        let args = [
            "run",
            "--name",
            name,
            "--port",
            "0",
            "--",
            path_str(&gunicorn),
            "--chdir",
            path_str(&servers),
            "wsgi:app",
        ];
        Some(self.spawn(&args))
    }

    /// Run `wharf ARGS` to completion (bounded).
    pub fn output(&self, args: &[&str]) -> (ExitStatus, String) {
        let mut p = self.spawn(args);
        let status = p.wait(PATIENCE);
        (status, p.log())
    }

    /// The pid and HTTP port of the newest proxy this sandbox started (from its log).
    pub fn proxy(&self) -> Option<(i32, u16)> {
        let log = std::fs::read_to_string(self.runtime_dir().join("proxy.log")).ok()?;
        let line = log.lines().rev().find(|l| l.contains(" serving http://"))?;
        let pid = line.split("pid ").nth(1)?.split(' ').next()?.parse().ok()?;
        let port = line
            .split("http://127.0.0.1:")
            .nth(1)?
            .split([' ', ','])
            .next()?
            .parse()
            .ok()?;
        Some((pid, port))
    }

    /// `wharf ls --json`.
    pub fn ls(&self) -> Vec<serde_json::Value> {
        let out = self.wharf(&["ls", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn registry(&self) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.state_dir().join("registry.json")).unwrap_or("{}".into());
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.runtime_dir().join("proxy.log")).unwrap_or_default();
            eprintln!("---- proxy.log ----\n{log}\n----");
        }
        if let Some((pid, _)) = self.proxy() {
            // Instances `wharf up` started in the background outlive the test otherwise.
            if !gone(pid)
                && let Ok(mut stop) = self
                    .wharf(&["stop", "--all"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            {
                let deadline = Instant::now() + PATIENCE;
                while matches!(stop.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = stop.kill();
                let _ = stop.wait();
            }
            // SAFETY: kill on a pid this sandbox's proxy wrote; it is ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[derive(Default)]
struct Lines {
    all: Vec<String>,
    open_streams: usize,
}

/// A process under test: its output lines (stdout and stderr interleaved), readable with a
/// deadline. Killed on drop; its output is printed if the test is failing.
pub struct Proc {
    child: Child,
    what: String,
    lines: Arc<(Mutex<Lines>, Condvar)>,
}

impl Proc {
    pub fn spawn(mut cmd: Command, what: &str) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let lines = Arc::new((
            Mutex::new(Lines {
                open_streams: 2,
                ..Default::default()
            }),
            Condvar::new(),
        ));
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for stream in streams {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut l = lines.0.lock().unwrap();
                    l.all.push(line);
                    lines.1.notify_all();
                }
                lines.0.lock().unwrap().open_streams -= 1;
                lines.1.notify_all();
            });
        }
        Proc {
            child,
            what: what.to_string(),
            lines,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The first line so far (or, waiting up to `PATIENCE`, to come) matching `pred`.
    pub fn expect_line(&self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        self.expect_line_within(pred, what, PATIENCE)
    }

    /// `expect_line` for things that take longer than `PATIENCE` by design.
    pub fn expect_line_within(
        &self,
        pred: impl Fn(&str) -> bool,
        what: &str,
        limit: Duration,
    ) -> String {
        let deadline = Instant::now() + limit;
        let (lock, cv) = &*self.lines;
        let mut l = lock.lock().unwrap();
        loop {
            if let Some(line) = l.all.iter().find(|line| pred(line)) {
                return line.clone();
            }
            let now = Instant::now();
            if now >= deadline || l.open_streams == 0 {
                drop(l);
                panic!(
                    "{}: no line {what} within {PATIENCE:?}\n{}",
                    self.what,
                    self.log()
                );
            }
            l = cv.wait_timeout(l, deadline - now).unwrap().0;
        }
    }

    /// Every line so far, in the order they came.
    pub fn lines(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().all.clone()
    }

    /// Lines seen so far matching `pred`.
    pub fn count_lines(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.lines
            .0
            .lock()
            .unwrap()
            .all
            .iter()
            .filter(|l| pred(l))
            .count()
    }

    pub fn expect(&self, needle: &str) -> String {
        self.expect_line(|l| l.contains(needle), &format!("containing {needle:?}"))
    }

    /// Waits for `wharf: NAME is at http://NAME.localhost:PORT` and returns PORT.
    pub fn url_port(&self) -> u16 {
        let line = self.expect(" is at http://");
        line.rsplit(':').next().unwrap().trim().parse().unwrap()
    }

    /// The instance's own (main socket) port, from `127.0.0.1:PORT passed as fd 3` or
    /// `127.0.0.1:PORT given as PORT`.
    pub fn instance_port(&self) -> u16 {
        let line = self.expect_line(
            |l| l.contains("passed as fd 3 (") || l.contains(" given as PORT"),
            "naming the instance's port",
        );
        port_after(&line, "127.0.0.1:")
    }

    /// The server's `REPORT {json}` line.
    pub fn report(&self) -> serde_json::Value {
        let line = self.expect("REPORT ");
        serde_json::from_str(line.split_once("REPORT ").unwrap().1).unwrap()
    }

    pub fn log(&self) -> String {
        self.lines.0.lock().unwrap().all.join("\n")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid of our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Wait for exit, bounded; panics (after killing it) if it does not exit in time.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads drain what is left.
                let (lock, cv) = &*self.lines;
                let mut l = lock.lock().unwrap();
                while l.open_streams > 0 && Instant::now() < deadline + Duration::from_secs(2) {
                    l = cv.wait_timeout(l, Duration::from_millis(100)).unwrap().0;
                }
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {limit:?}\n{}",
                    self.what,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// How long a process the test started gets to stop politely when the test is done.
const POLITE_END: Duration = Duration::from_secs(3);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: a `wharf run` then ends its whole instance. SIGKILL would leave what a
        // forking wrapper started (gunicorn under `uv run`) running after the test.
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + POLITE_END;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- output of {} ----\n{}\n----", self.what, self.log());
        }
    }
}

/// The arguments of `Sandbox::serve`, for tests that change them.
pub fn serve_args(name: &str, extra: &[&str]) -> Vec<String> {
    let (py, script) = (python(), server_py());
    let mut args: Vec<String> = ["run", "--name", name, "--fd", "--port", "0", "--"]
        .map(String::from)
        .to_vec();
    args.extend([path_str(&py).to_string(), path_str(&script).to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A minimal HTTP/1.1 GET with `Connection: close`: (status, body). Bounded by `PATIENCE`.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, PATIENCE)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Read one response with a Content-Length body from a keep-alive stream: (head, body).
pub fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "connection closed mid-head: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, String::from_utf8_lossy(&body).to_string())
}

/// GET http://127.0.0.1:PORT/ as Host NAME.localhost:PORT, expecting 200; the JSON body.
pub fn get_json(port: u16, name: &str) -> serde_json::Value {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (status, body) = get(addr, &format!("{name}.localhost:{port}"), "/")
        .unwrap_or_else(|e| panic!("GET {name} on {port}: {e}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The port number that follows `prefix` in `line`.
pub fn port_after(line: &str, prefix: &str) -> u16 {
    let rest = line
        .split(prefix)
        .nth(1)
        .unwrap_or_else(|| panic!("no {prefix:?} in {line:?}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no port after {prefix:?} in {line:?}"))
}

/// Is a process gone (or a zombie nobody reaped)?
pub fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Wait (bounded) until `cond` holds, polling; panics with `what` otherwise.
pub fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: still not true after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `wharf proxy` on a port of the OS's choosing with an open-file limit of `fds`, which sets
/// its descriptor budget and so its client cap; and the port.
pub fn proxy_with_fds(sb: &Sandbox, fds: u64) -> (Proc, u16) {
    use std::os::unix::process::CommandExt;
    let mut cmd = sb.wharf(&["proxy", "--listen", "127.0.0.1:0"]);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: fds,
                rlim_max: fds,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let proxy = Proc::spawn(cmd, &format!("wharf proxy with {fds} fds"));
    let line = proxy.expect(" serving http://127.0.0.1:");
    let port = port_after(&line, "127.0.0.1:");
    (proxy, port)
}

/// A port nobody listens on right now, from the OS (bind port 0). Held while the guard lives.
pub fn os_port() -> (u16, std::net::TcpListener) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (l.local_addr().unwrap().port(), l)
}

/// A port on 127.0.0.1 where nothing listens, and nothing will while the socket returned is
/// kept: it is bound there but not listening, so connections are refused, and no other test
/// can bind the port or get it from the OS (a listener bound and dropped leaves the port free
/// for the next test that asks the OS for one, which made such tests flaky).
pub fn dead_port() -> (u16, socket2::Socket) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    socket.bind(&loopback.into()).unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    (port, socket)
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
