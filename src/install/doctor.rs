//! `wharf doctor`: checks what makes `http://NAME.localhost` work on this machine (name
//! resolution, the proxy, the service units, port 80 and who holds it, private files, corrupt
//! state files, wharf's CA in each trust store) and says, for each problem, the command or
//! change that fixes it. It changes nothing; the few fixes it can make itself (`Repair`) are
//! made by `doctor --fix`.

use std::net::ToSocketAddrs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::control::launch;
use crate::install::nsswitch::{self, HostsLine};
use crate::install::stores::{self, Cert, Places, Store};
use crate::state::dirs::{self, Dirs};
use crate::sys::netstat;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Ok,
    /// Works, with a limit worth knowing.
    Note,
    /// Something will not work until fixed.
    Problem,
}

#[derive(Debug)]
pub(crate) struct Finding {
    pub(crate) level: Level,
    pub(crate) what: String,
    pub(crate) fix: Option<String>,
    /// What `doctor --fix` may change about it.
    pub(crate) repair: Option<Repair>,
}

/// A change `doctor --fix` makes, only when asked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Repair {
    /// Add `myhostname` to the `hosts:` line of this nsswitch.conf (`install::nsswitch`).
    Myhostname(PathBuf),
}

fn finding(level: Level, what: impl Into<String>, fix: Option<String>) -> Finding {
    Finding {
        level,
        what: what.into(),
        fix,
        repair: None,
    }
}

/// Everything `doctor` looks at, for the given directories, unit directory and name
/// resolution facts.
pub(crate) async fn examine(dirs: &Dirs, unit_dir: Option<&Path>, nss: &Nss) -> Vec<Finding> {
    let (found, proxy_pid, proxy_port) = proxy(dirs).await;
    let mut out = vec![resolver(proxy_port, lookup(), nss), curl(), found];
    if let Some(dir) = unit_dir {
        out.push(units(dir));
    }
    out.push(port80());
    out.extend(port_holder(HTTP_PORT, proxy_pid));
    out.extend(privacy(dirs));
    out.extend(state_files(&dirs.state));
    out
}

/// What name resolution depends on besides the resolver's answer: the nsswitch.conf `hosts:`
/// line and whether the `myhostname` module is installed.
pub(crate) struct Nss {
    pub(crate) path: PathBuf,
    pub(crate) line: HostsLine,
    pub(crate) library: bool,
    /// The command that installs the module here.
    pub(crate) install: String,
}

impl Nss {
    /// This machine's facts, with nsswitch.conf at `path`.
    pub(crate) fn examine(path: &Path, path_var: Option<std::ffi::OsString>) -> Nss {
        let text = std::fs::read_to_string(path).ok();
        Nss {
            path: path.to_path_buf(),
            line: nsswitch::examine(text.as_deref()),
            library: nsswitch::library_present(),
            install: nsswitch::install_command(path_var),
        }
    }
}

/// How the system resolver answered for a `*.localhost` name (`None`: not at all).
fn lookup() -> Option<Vec<std::net::SocketAddr>> {
    ("wharf-doctor.localhost", 80)
        .to_socket_addrs()
        .ok()
        .map(Iterator::collect)
}

/// The one place that decides what to say and do about name resolution. `port`: the running
/// proxy's, for the `http_proxy=` way round (`PORT` when none runs).
fn resolver(port: Option<u16>, answer: Option<Vec<std::net::SocketAddr>>, nss: &Nss) -> Finding {
    let port = port.map_or_else(|| "PORT".to_string(), |p| p.to_string());
    let path = nss.path.display();
    let meanwhile = format!(
        "or `wharf hosts sync` lists the current names in /etc/hosts; until then such clients \
         can use http_proxy=http://127.0.0.1:{port}"
    );
    match answer {
        Some(addrs) if !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()) => finding(
            Level::Ok,
            "the system resolver maps *.localhost to loopback (Python, Node, Java too)",
            None,
        ),
        Some(addrs) => finding(
            Level::Problem,
            format!("the system resolver maps *.localhost to {addrs:?}, not loopback"),
            Some(format!(
                "make the hosts: line of {path} list `myhostname` before `dns`; {meanwhile}"
            )),
        ),
        None => {
            let (fix, repair) = match (&nss.line, nss.library) {
                (HostsLine::Lacks, true) => (
                    format!(
                        "`wharf doctor --fix` adds `myhostname` to the hosts: line of {path} \
                         (before dns, keeping a backup); {meanwhile}"
                    ),
                    Some(Repair::Myhostname(nss.path.clone())),
                ),
                (HostsLine::Lacks, false) => (
                    format!(
                        "install the myhostname module: `{}`, then `wharf doctor --fix` adds it \
                         to the hosts: line of {path} if the package did not; {meanwhile}",
                        nss.install
                    ),
                    None,
                ),
                (HostsLine::Resolves("myhostname"), false) => (
                    format!(
                        "{path} lists `myhostname` but {} is missing: `{}`; {meanwhile}",
                        nsswitch::LIBRARY,
                        nss.install
                    ),
                    None,
                ),
                (HostsLine::Resolves(module), _) => (
                    format!(
                        "{path} lists `{module}` yet *.localhost does not resolve (for \
                         `resolve`: is systemd-resolved running?); {meanwhile}"
                    ),
                    None,
                ),
                (HostsLine::Absent, _) => (
                    format!(
                        "{path} is missing or has no hosts: line (not glibc?), so there is no \
                         `myhostname` to add: `wharf hosts sync` lists the current names in \
                         /etc/hosts; until then such clients can use \
                         http_proxy=http://127.0.0.1:{port}"
                    ),
                    None,
                ),
            };
            Finding {
                repair,
                ..finding(
                    Level::Note,
                    "the system resolver (glibc) does not resolve *.localhost: browsers and curl \
                     do by themselves, Python, Node and Java here do not",
                    Some(fix),
                )
            }
        }
    }
}

fn curl() -> Finding {
    let Ok(out) = Command::new("curl").arg("--version").output() else {
        return finding(Level::Note, "curl is not installed", None);
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1).unwrap_or("?").to_string();
    let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    if parts >= vec![7, 85] {
        finding(
            Level::Ok,
            format!("curl {version} resolves *.localhost by itself"),
            None,
        )
    } else {
        finding(
            Level::Note,
            format!(
                "curl {version} is older than 7.85 and needs the system resolver for *.localhost"
            ),
            Some("use `curl --resolve NAME.localhost:PORT:127.0.0.1` or upgrade curl".into()),
        )
    }
}

/// The proxy's health, and its pid when one answers.
async fn proxy(dirs: &Dirs) -> (Finding, Option<i32>, Option<u16>) {
    let connected = launch::connect(&dirs.runtime).await;
    let pid = connected.as_ref().and_then(|c| c.hello.pid);
    let http_port = connected.as_ref().and_then(|c| c.hello.http_port);
    let found = match connected {
        Some(c) => {
            let port = c.hello.http_port.unwrap_or(0);
            let pid = c.hello.pid.unwrap_or(0);
            let http = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if http {
                finding(
                    Level::Ok,
                    format!("the front proxy runs (pid {pid}) on http://127.0.0.1:{port}"),
                    None,
                )
            } else {
                finding(
                    Level::Problem,
                    format!("the front proxy (pid {pid}) answers on its control socket but not on port {port}"),
                    Some("restart it: `wharf stop --proxy`; it starts again with the next `wharf run`".into()),
                )
            }
        }
        None => finding(
            Level::Note,
            "no front proxy is running; the next `wharf run` starts one",
            Some("or run it as a service: `wharf install`".into()),
        ),
    };
    (found, pid, http_port)
}

/// The port `http://NAME.localhost` needs no `:PORT` on.
const HTTP_PORT: u16 = 80;

/// Who listens on `port` when it is not the proxy (`proxy_pid`): `None` when nothing does
/// or the platform cannot tell.
fn port_holder(port: u16, proxy_pid: Option<i32>) -> Option<Finding> {
    if !netstat::is_listened_on(port)? {
        return None;
    }
    let fix = "stop it, or let the proxy use another port (`[proxy] listen` in config.toml); \
               URLs then carry the port"
        .to_string();
    Some(match netstat::holders(&[port]).remove(&port) {
        Some(h) if Some(h.pid) == proxy_pid => finding(
            Level::Ok,
            format!("port {port} is the front proxy's (pid {})", h.pid),
            None,
        ),
        Some(h) => finding(
            Level::Problem,
            format!("port {port} is taken by {h}, not by wharf's proxy"),
            Some(fix.clone()),
        ),
        None => finding(
            Level::Problem,
            format!(
                "port {port} is taken by a process of another user (its owner can tell: `ss -ltnp 'sport = :{port}'`)"
            ),
            Some(fix),
        ),
    })
}

/// State files that do not parse (the next command moves them aside), and files moved aside
/// before, which are the user's to look at and delete.
fn state_files(state: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    /// A file's name, and what is wrong with its contents (`None`: nothing).
    type Check = (&'static str, fn(&[u8]) -> Option<String>);
    let checks: [Check; 2] = [
        ("registry.json", |b| {
            serde_json::from_slice::<crate::state::registry::Registry>(b)
                .err()
                .map(|e| e.to_string())
        }),
        ("aliases.json", |b| {
            serde_json::from_slice::<crate::proxy::routes::AliasMap>(b)
                .err()
                .map(|e| e.to_string())
        }),
    ];
    for (file, check) in checks {
        let path = state.join(file);
        if let Ok(Some(bytes)) = dirs::read_private(&path)
            && let Some(e) = check(&bytes)
        {
            out.push(finding(
                Level::Problem,
                format!("{} is corrupt ({e})", path.display()),
                Some(
                    "the next `wharf run`, `stop` or `alias` moves it aside and rebuilds it; or \
                     delete it"
                        .into(),
                ),
            ));
        }
    }
    let mut aside: Vec<String> = std::fs::read_dir(state)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(dirs::CORRUPT_MARK))
        .map(|e| e.path().display().to_string())
        .collect();
    aside.sort();
    if !aside.is_empty() {
        out.push(finding(
            Level::Note,
            format!("corrupt state files were moved aside: {}", aside.join(", ")),
            Some("look at them if you wish, then delete them".into()),
        ));
    }
    out
}

fn units(dir: &Path) -> Finding {
    let present: Vec<&str> = ["wharf.socket", "wharf-control.socket", "wharf.service"]
        .into_iter()
        .filter(|n| dir.join(n).exists())
        .collect();
    if present.is_empty() {
        return finding(
            Level::Note,
            "the systemd user units are not installed (optional)",
            Some("wharf install".into()),
        );
    }
    let active = Command::new("systemctl")
        .args([
            "--user",
            "is-active",
            "wharf.socket",
            "wharf-control.socket",
        ])
        .output();
    match active {
        Ok(out) => {
            let states = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(", ");
            if states.is_empty() {
                return finding(
                    Level::Problem,
                    format!("the units in {} are installed, but `systemctl --user` cannot reach your user manager", dir.display()),
                    Some("log in through a session that starts it (or `loginctl enable-linger $USER`), then check `systemctl --user status wharf.socket`".into()),
                );
            }
            if out.status.success() {
                finding(
                    Level::Ok,
                    format!("the units in {} are installed and listening", dir.display()),
                    None,
                )
            } else {
                finding(
                    Level::Problem,
                    format!("the units in {} are installed but not active ({states})", dir.display()),
                    Some("systemctl --user daemon-reload && systemctl --user enable --now wharf.socket wharf-control.socket".into()),
                )
            }
        }
        Err(_) => finding(
            Level::Problem,
            format!(
                "the units in {} are installed but systemctl is missing",
                dir.display()
            ),
            None,
        ),
    }
}

fn port80() -> Finding {
    let root = nix::unistd::geteuid().is_root();
    let start: Option<u16> =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok());
    match (root, start) {
        (true, _) => finding(Level::Ok, "port 80 is possible (running as root)", None),
        (false, Some(s)) if s <= 80 => finding(Level::Ok, format!("port 80 is possible (unprivileged ports start at {s})"), None),
        (false, Some(s)) => finding(
            Level::Note,
            format!("port 80 needs privileges here (unprivileged ports start at {s}); the proxy uses 7080"),
            Some("wharf install --port 80 --sysctl   (or --system-socket; add --dry-run to see what it writes)".into()),
        ),
        (false, None) => finding(
            Level::Note,
            "port 80 needs privileges; a LaunchAgent can have it (wharf install --port 80)",
            None,
        ),
    }
}

fn privacy(dirs: &Dirs) -> Vec<Finding> {
    let me = nix::unistd::getuid().as_raw();
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for dir in [&dirs.state, &dirs.runtime] {
        let Ok(meta) = std::fs::symlink_metadata(dir) else {
            continue;
        };
        let mut check = |path: &Path, meta: &std::fs::Metadata| {
            if meta.file_type().is_symlink() {
                bad.push(format!("{} is a symlink", path.display()));
            } else if meta.uid() != me {
                bad.push(format!("{} belongs to uid {}", path.display(), meta.uid()));
            } else if meta.mode() & 0o077 != 0 {
                bad.push(format!(
                    "{} is mode {:o}",
                    path.display(),
                    meta.mode() & 0o777
                ));
            }
        };
        check(dir, &meta);
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if let Ok(m) = std::fs::symlink_metadata(e.path()) {
                    check(&e.path(), &m);
                }
            }
        }
    }
    if bad.is_empty() {
        out.push(finding(
            Level::Ok,
            "wharf's directories and files are private (0700/0600, yours, no symlinks)",
            None,
        ));
    } else {
        out.push(finding(
            Level::Problem,
            format!("not private: {}", bad.join("; ")),
            Some("chmod go-rwx on them (or remove them; wharf recreates what it needs)".into()),
        ));
    }
    out
}

/// Whether each trust store has wharf's CA, and who fails where it is missing. Missing is a
/// problem once `wharf trust` was run (its marker is there), a note before.
pub(crate) fn trust_stores(state: &Path, places: &Places) -> Vec<Finding> {
    let ca = match crate::ca::Authority::open(state) {
        Ok(Some(ca)) => ca,
        Ok(None) => {
            return vec![finding(
                Level::Note,
                "there is no local CA yet, so https://NAME.localhost is not trusted anywhere",
                Some("`wharf trust` makes it and adds it to this machine's trust stores".into()),
            )];
        }
        Err(e) => return vec![finding(Level::Problem, format!("the local CA: {e}"), None)],
    };
    let Some(cert) = Cert::new(ca.cert_path(), ca.cert_pem()) else {
        return vec![finding(
            Level::Problem,
            format!("{} holds no certificate", ca.cert_path().display()),
            None,
        )];
    };
    let missing = if crate::ca::is_trusted(state) {
        Level::Problem
    } else {
        Level::Note
    };
    let mut found = stores::detect(places);
    for store in crate::ca::trusted_stores(state)
        .iter()
        .filter_map(|l| Store::from_id(l))
    {
        if !found.contains(&store) {
            found.push(store);
        }
    }
    let mut out = Vec::new();
    if cfg!(target_os = "linux") && !found.iter().any(|s| matches!(s, Store::System(_))) {
        out.push(finding(
            Level::Note,
            "no system trust store wharf knows (Debian/Ubuntu, Fedora/RHEL, openSUSE, Arch): \
             curl, wget and Go outside instances will reject https://NAME.localhost",
            Some(format!(
                "add {} to your system's trust store by hand",
                cert.path.display()
            )),
        ));
    }
    for store in &found {
        let what = store.describe(places);
        out.push(match store.contains(&cert, places) {
            Ok(true) => finding(Level::Ok, format!("{what} has wharf's CA"), None),
            Ok(false) => finding(
                missing,
                format!(
                    "{what} lacks wharf's CA: {} will reject https://NAME.localhost",
                    store.clients()
                ),
                Some("wharf trust".into()),
            ),
            Err(why) => finding(
                Level::Note,
                format!("{what}: cannot tell whether it has wharf's CA"),
                Some(why),
            ),
        });
    }
    out.push(finding(
        Level::Ok,
        format!(
            "instances wharf starts get {} with wharf's CA: Node, Python and curl in them trust \
             https://NAME.localhost without `wharf trust` (unless `[proxy] https = false`)",
            crate::ca::bundle::VARS.join(", ")
        ),
        None,
    ));
    out
}

/// Print the findings; the exit code is 1 if any is a problem. Err if stdout fails.
pub(crate) fn report(findings: &[Finding]) -> std::io::Result<i32> {
    for f in findings {
        let tag = match f.level {
            Level::Ok => "ok     ",
            Level::Note => "note   ",
            Level::Problem => "PROBLEM",
        };
        crate::outln!("{tag} {}", f.what)?;
        if let (Some(fix), false) = (&f.fix, f.level == Level::Ok) {
            crate::outln!("        fix: {fix}")?;
        }
    }
    Ok(i32::from(
        findings.iter().any(|f| f.level == Level::Problem),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_held_by_another_process_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        let f = port_holder(port, None).expect("the port is listened on");
        assert_eq!(f.level, Level::Problem);
        assert!(f.what.contains(&format!("(pid {me})")), "{}", f.what);
        assert_eq!(port_holder(port, Some(me)).unwrap().level, Level::Ok);
        drop(listener);
        assert!(port_holder(port, None).is_none());
    }

    #[test]
    fn resolution_is_repaired_only_where_the_module_is_installed() {
        let nss = |line, library| Nss {
            path: PathBuf::from("/x/nsswitch.conf"),
            line,
            library,
            install: "sudo apt install libnss-myhostname".into(),
        };
        let f = resolver(None, None, &nss(HostsLine::Lacks, true));
        assert_eq!(
            f.repair,
            Some(Repair::Myhostname("/x/nsswitch.conf".into()))
        );
        assert!(f.fix.unwrap().contains("wharf hosts sync"));
        let f = resolver(Some(7080), None, &nss(HostsLine::Lacks, false));
        assert_eq!(f.repair, None);
        let fix = f.fix.unwrap();
        assert!(
            fix.contains("sudo apt install libnss-myhostname") && fix.contains(":7080"),
            "{fix}"
        );
        let loopback = Some(vec!["127.0.0.1:80".parse().unwrap()]);
        let f = resolver(None, loopback, &nss(HostsLine::Lacks, true));
        assert_eq!((f.level, f.repair), (Level::Ok, None));
        let f = resolver(None, None, &nss(HostsLine::Resolves("myhostname"), false));
        assert!(f.fix.unwrap().contains("libnss_myhostname.so.2 is missing"));
    }

    #[test]
    fn corrupt_and_moved_aside_files_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(state_files(tmp.path()).is_empty());
        std::fs::write(tmp.path().join("aliases.json"), b"{oops").unwrap();
        std::fs::write(tmp.path().join("registry.json"), b"{}").unwrap();
        let found = state_files(tmp.path());
        assert_eq!(found.len(), 1);
        assert!(
            found[0].what.contains("aliases.json is corrupt"),
            "{}",
            found[0].what
        );
        dirs::move_aside(&tmp.path().join("aliases.json")).unwrap();
        let found = state_files(tmp.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].level, Level::Note);
        assert!(
            found[0].what.contains("aliases.json.corrupt-"),
            "{}",
            found[0].what
        );
    }
}
