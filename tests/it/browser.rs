//! HTTPS with real peers: headless Chromium trusting wharf's CA the way Chrome on Linux does
//! (the user's NSS database) loads an instance's page over HTTP/2, and a Vite dev server's page
//! whose HMR WebSocket connects through the proxy.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::https::ca;
use super::util::*;

/// A private `$HOME` with an NSS database at `$HOME/.pki/nssdb`, where Chromium on Linux looks
/// for the certificates its user trusts.
struct Nss {
    home: tempfile::TempDir,
    certutil: PathBuf,
}

impl Nss {
    /// An empty database (no password), or `None` after saying the test is skipped.
    fn new() -> Option<Nss> {
        let certutil = need("certutil")?;
        let home = tempfile::Builder::new()
            .prefix("wharf-nss-")
            .tempdir()
            .unwrap();
        let nss = Nss { home, certutil };
        std::fs::create_dir_all(nss.db()).unwrap();
        nss.certutil(&["-N", "--empty-password"]);
        Some(nss)
    }

    fn db(&self) -> PathBuf {
        self.home.path().join(".pki/nssdb")
    }

    /// `-d sql:DB`, as certutil and vfychain take it.
    fn db_arg(&self) -> String {
        format!("sql:{}", self.db().display())
    }

    /// Trust `ca` as an issuer of web sites' certificates (`C,,`).
    fn trust(&self, ca: &Path) {
        self.certutil(&["-A", "-t", "C,,", "-n", "wharf", "-i", path_str(ca)]);
    }

    fn certutil(&self, args: &[&str]) {
        let out = Command::new(&self.certutil)
            .args(args)
            .args(["-d", &self.db_arg()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "certutil {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What headless Chromium made of a page: its DOM once the load event came (nothing when the
/// page did not load: headless shows no error page) and its own log, which then names the
/// network error (`Page load failed: net::ERR_…`) and has the page's console lines.
struct Visit {
    dom: String,
    log: String,
    took: std::time::Duration,
}

impl std::fmt::Display for Visit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "---- DOM ({:?}) ----\n{}\n---- log ----\n{}",
            self.took, self.dom, self.log
        )
    }
}

/// `chromium --headless --dump-dom URL` as the user whose home is `nss`'s, with a fresh profile
/// and none of the background traffic to Google's hosts (flags as in pages.rs, plus those).
/// Bounded by `PATIENCE`.
fn visit(chromium: &Path, nss: &Nss, url: &str, extra: &[&str]) -> Visit {
    let dir = tempfile::Builder::new()
        .prefix("wharf-chromium-")
        .tempdir()
        .unwrap();
    let (dom, log) = (dir.path().join("dom.html"), dir.path().join("log"));
    let home = nss.home.path();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .args(extra)
        .args(["--dump-dom", url])
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&dom).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let deadline = start + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish {url} within {PATIENCE:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Visit {
        dom: std::fs::read_to_string(dom).unwrap(),
        log: std::fs::read_to_string(log).unwrap(),
        took: start.elapsed(),
    }
}

#[test]
fn chromium_trusting_the_ca_in_its_nss_database_loads_a_page_over_h2() {
    let (Some(chromium), Some(nss)) = (need("chromium"), Nss::new()) else {
        return;
    };
    let sb = Sandbox::new();
    let app = sb.serve("app", &[]);
    let port = app.url_port();
    let url = format!("https://app.localhost:{port}/page");

    // Not trusted yet: a certificate error, and not a byte of the page.
    let refused = visit(&chromium, &nss, &url, &[]);
    assert!(
        refused.log.contains("net::ERR_CERT_AUTHORITY_INVALID"),
        "{refused}"
    );
    assert!(!refused.dom.contains("served by"), "{refused}");

    nss.trust(Path::new(&ca(&sb)));
    let page = visit(&chromium, &nss, &url, &[]);
    assert!(
        page.dom.contains("served by instance app over https"),
        "{page}"
    );
    // The page's own script: the browser's word on the protocol it spoke.
    assert!(page.dom.contains(r#"<p id="protocol">h2</p>"#), "{page}");
}

/// A program from the npm packages tests/run.sh installs into target/test-node (see
/// tests/node/package.json), or `None` after saying the test is skipped. Under CI nothing may
/// skip.
fn need_npm(program: &str) -> Option<PathBuf> {
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

/// A real dev server behind the proxy: Vite's page over HTTP/2, and its HMR WebSocket opened by
/// Chromium on that connection (extended CONNECT, RFC 8441), through the proxy to Vite and back.
#[test]
fn a_vite_dev_server_page_and_its_hmr_websocket_work_through_the_proxy_over_h2() {
    let (Some(chromium), Some(nss), Some(vite)) = (need("chromium"), Nss::new(), need_npm("vite"))
    else {
        return;
    };
    let sb = Sandbox::new();
    nss.trust(Path::new(&ca(&sb)));
    // The project: tests/servers/vite (a page, its script, a plugin), copied where Vite may
    // write its cache.
    let site = sb.dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    for file in ["index.html", "main.js", "vite.config.mjs"] {
        std::fs::copy(
            repo().join("tests/servers/vite").join(file),
            site.join(file),
        )
        .unwrap();
    }
    let mut run = sb.wharf(&["run", "--name", "web", "--port", "0", "--", path_str(&vite)]);
    run.current_dir(&site);
    let web = Proc::spawn(run, "wharf run --name web -- vite");
    let port = web.url_port();
    web.expect("web: listening on");

    let netlog = sb.dir.path().join("netlog.json");
    let page = visit(
        &chromium,
        &nss,
        &format!("https://web.localhost:{port}/"),
        &[&format!("--log-net-log={}", netlog.display())],
    );
    assert!(page.dom.contains("a page from vite"), "{page}");
    assert!(page.dom.contains("protocol=h2"), "{page}");
    // Vite saw the socket's upgrade request as the proxy sent it, and answered over it.
    assert!(
        page.dom.contains(&format!(
            "hmr round trip: host=web.localhost:{port} proto=https"
        )),
        "{page}"
    );
    // Vite's own client says so too (its console, in Chromium's log).
    assert!(page.log.contains("[vite] connected."), "{page}");
    // The browser opened the socket on its HTTP/2 connection, not on one of its own.
    let netlog = std::fs::read_to_string(&netlog).unwrap();
    assert!(
        netlog.contains(":protocol: websocket") && netlog.contains(":method: CONNECT"),
        "no extended CONNECT in Chromium's net log\n{page}"
    );
}
