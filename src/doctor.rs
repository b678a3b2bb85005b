//! `wharf doctor`: checks what makes `http://NAME.localhost` work on this machine (name
//! resolution, the proxy, the service units, port 80, private files) and says, for each
//! problem, the command or change that fixes it. It changes nothing.

use std::net::ToSocketAddrs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::dirs::Dirs;
use crate::launch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Works, with a limit worth knowing.
    Note,
    /// Something will not work until fixed.
    Problem,
}

#[derive(Debug)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    pub fix: Option<String>,
}

fn finding(level: Level, what: impl Into<String>, fix: Option<String>) -> Finding {
    Finding {
        level,
        what: what.into(),
        fix,
    }
}

/// Everything `doctor` looks at, for the given directories and unit directory.
pub async fn examine(dirs: &Dirs, unit_dir: Option<&Path>) -> Vec<Finding> {
    let mut out = vec![resolver(), curl()];
    out.push(proxy(dirs).await);
    if let Some(dir) = unit_dir {
        out.push(units(dir));
    }
    out.push(port80());
    out.extend(privacy(dirs));
    out
}

fn resolver() -> Finding {
    let fix = "install libnss-myhostname and add `myhostname` to the hosts: line of /etc/nsswitch.conf \
               (or use systemd-resolved); until then such clients can use http_proxy=http://127.0.0.1:PORT";
    match ("wharf-doctor.localhost", 80).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            if !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()) {
                finding(
                    Level::Ok,
                    "the system resolver maps *.localhost to loopback (Python, Node, Java too)",
                    None,
                )
            } else {
                finding(
                    Level::Problem,
                    format!("the system resolver maps *.localhost to {addrs:?}, not loopback"),
                    Some(fix.into()),
                )
            }
        }
        Err(_) => finding(
            Level::Note,
            "the system resolver (glibc) does not resolve *.localhost: browsers and curl do by themselves, \
             Python, Node and Java here do not",
            Some(fix.into()),
        ),
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

async fn proxy(dirs: &Dirs) -> Finding {
    match launch::connect(&dirs.runtime).await {
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
    }
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

/// Print the findings; the exit code is 1 if any is a problem. Err if stdout fails.
pub fn report(findings: &[Finding]) -> std::io::Result<i32> {
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
