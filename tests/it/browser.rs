//! HTTPS with real peers: headless Chromium trusting wharf's CA the way Chrome on Linux does
//! (the user's NSS database) loads an instance's page over HTTP/2, and a Vite dev server's page
//! whose HMR WebSocket connects through the proxy; `openssl` shows the chain and the CA's name
//! constraints; a certificate for a real site signed with the CA's own key is refused by NSS
//! and by Chromium, while one for a local name made the same way is accepted.

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

/// `openssl ARGS` (stdin closed); its exit status and everything it printed.
fn openssl(openssl: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(openssl)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn openssl_shows_the_chain_and_the_cas_name_constraints() {
    let Some(tool) = need("openssl") else { return };
    let sb = Sandbox::new();
    let app = sb.serve("app", &[]);
    let port = app.url_port();
    let ca = ca(&sb);

    // The CA: a CA that may vouch for localhost and names under it, for no IP address at all.
    let (ok, text) = openssl(&tool, &["x509", "-in", &ca, "-noout", "-text"]);
    assert!(ok, "{text}");
    let constraints = text
        .split("X509v3 Name Constraints: critical")
        .nth(1)
        .unwrap_or_else(|| panic!("no critical name constraints:\n{text}"));
    let constraints: Vec<&str> = constraints.lines().map(str::trim).take(6).collect();
    assert_eq!(
        constraints[..6],
        [
            "",
            "Permitted:",
            "DNS:localhost",
            "Excluded:",
            "IP:0.0.0.0/0.0.0.0",
            "IP:0:0:0:0:0:0:0:0/0:0:0:0:0:0:0:0",
        ],
        "{text}"
    );
    assert!(text.contains("CA:TRUE"), "{text}");
    let (_, subject) = openssl(&tool, &["x509", "-in", &ca, "-noout", "-subject"]);
    let subject = subject.trim().strip_prefix("subject=").unwrap().to_string();

    // The chain the proxy sends for app.localhost: its leaf, issued by that CA, which verifies.
    let connect = format!("127.0.0.1:{port}");
    let (ok, text) = openssl(
        &tool,
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "app.localhost",
            "-showcerts",
            "-CAfile",
            &ca,
            "-verify_hostname",
            "app.localhost",
            "-verify_return_error",
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains(" 0 s:CN = app.localhost\n"), "{text}");
    assert!(text.contains(&format!("   i:{subject}\n")), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    // The leaf names the instance and every name under it, nothing else.
    let leaf = text
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
        .unwrap_or_else(|| panic!("no certificate shown:\n{text}"));
    let pem = sb.dir.path().join("leaf.pem");
    std::fs::write(
        &pem,
        format!("-----BEGIN CERTIFICATE-----{leaf}-----END CERTIFICATE-----\n"),
    )
    .unwrap();
    let (ok, san) = openssl(
        &tool,
        &[
            "x509",
            "-in",
            path_str(&pem),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(ok, "{san}");
    assert_eq!(
        san.lines().nth(1).map(str::trim),
        Some("DNS:app.localhost, DNS:*.app.localhost"),
        "{san}"
    );
}

/// A server certificate for `name` signed with the CA's own key, as whoever stole that key
/// could make one: (certificate, key) files in `dir`.
fn sign_with_the_cas_key(tool: &Path, sb: &Sandbox, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let ca_dir = sb.state_dir().join("ca");
    let (key, csr, cert, ext) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.ext")),
    );
    std::fs::write(
        &ext,
        format!(
            "subjectAltName = DNS:{name}\n\
             extendedKeyUsage = serverAuth\n\
             basicConstraints = CA:FALSE\n"
        ),
    )
    .unwrap();
    let subject = format!("/CN={name}");
    for args in [
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &subject,
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&csr),
        ][..],
        &[
            "x509",
            "-req",
            "-in",
            path_str(&csr),
            "-days",
            "7",
            "-CA",
            path_str(&ca_dir.join("wharf-ca.pem")),
            "-CAkey",
            path_str(&ca_dir.join("wharf-ca-key.pem")),
            "-extfile",
            path_str(&ext),
            "-out",
            path_str(&cert),
        ][..],
    ] {
        let (ok, text) = openssl(tool, args);
        assert!(ok, "openssl {args:?}: {text}");
    }
    (cert, key)
}

/// `openssl s_server -www` with `cert`, on a port from the OS; the port once it accepts.
fn s_server(tool: &Path, cert: &Path, key: &Path) -> (Proc, u16) {
    let mut cmd = Command::new(tool);
    cmd.args(["s_server", "-www", "-accept", "127.0.0.1:0", "-cert"])
        .args([cert, Path::new("-key"), key]);
    let server = Proc::spawn(cmd, "openssl s_server");
    let line = server.expect("ACCEPT 127.0.0.1:");
    (server, port_after(&line, "ACCEPT 127.0.0.1:"))
}

/// The name constraints at work: a stolen CA key can sign `example.com`, but neither NSS nor
/// Chromium (with the CA trusted) accepts the result; the same recipe for `app.localhost` is
/// accepted by both, so it is the name that is refused, not the recipe.
#[test]
fn a_certificate_for_a_real_site_signed_with_the_cas_key_is_refused_by_nss_and_chromium() {
    let (Some(tool), Some(vfychain), Some(chromium), Some(nss)) = (
        need("openssl"),
        need("vfychain"),
        need("chromium"),
        Nss::new(),
    ) else {
        return;
    };
    let sb = Sandbox::new();
    nss.trust(Path::new(&ca(&sb)));
    let dir = sb.dir.path();
    let (forged, forged_key) = sign_with_the_cas_key(&tool, &sb, dir, "example.com");
    let (local, local_key) = sign_with_the_cas_key(&tool, &sb, dir, "app.localhost");

    // NSS's classic verifier names the reason; its libpkix one (-pp) refuses as well.
    let verify = |cert: &Path, pkix: bool| {
        let mut cmd = Command::new(&vfychain);
        cmd.args(["-d", &nss.db_arg(), "-u", "1", "-v"]);
        if pkix {
            cmd.arg("-pp");
        }
        cmd.args(["-a", path_str(cert)]);
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = verify(&forged, false);
    assert!(!ok && text.contains("Chain is bad!"), "{text}");
    assert!(
        text.contains("ERROR -8080:")
            && text.contains("not permitted to issue a certificate with this name"),
        "not SEC_ERROR_CERT_NOT_IN_NAME_SPACE:\n{text}"
    );
    let (ok, text) = verify(&forged, true);
    assert!(!ok && text.contains("Chain is bad!"), "{text}");
    for pkix in [false, true] {
        let (ok, text) = verify(&local, pkix);
        assert!(ok && text.contains("Chain is good!"), "{text}");
    }

    // Chromium, its host resolver pointing example.com at the forger's server: refused as an
    // invalid certificate (an untrusted issuer would be ERR_CERT_AUTHORITY_INVALID).
    let (_forger, port) = s_server(&tool, &forged, &forged_key);
    let rule = format!("--host-resolver-rules=MAP example.com 127.0.0.1:{port}");
    let refused = visit(&chromium, &nss, "https://example.com/", &[&rule]);
    assert!(refused.log.contains("net::ERR_CERT_INVALID"), "{refused}");
    assert!(!refused.dom.contains("s_server"), "{refused}");
    let (_server, port) = s_server(&tool, &local, &local_key);
    let loaded = visit(
        &chromium,
        &nss,
        &format!("https://app.localhost:{port}/"),
        &[],
    );
    assert!(loaded.dom.contains("s_server -www"), "{loaded}");
}
