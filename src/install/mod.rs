//! Running the proxy as a service: render the unit and plist templates of `units/` and
//! `plists/` with this binary's path, write them into the user's own directories, remove them
//! again. Writing outside those (for port 80 on Linux) happens only behind an explicit flag.
//! Beside it: `doctor`, and the system files only an explicit command edits (`hosts`: the
//! hosts file through sudo; `nsswitch`: `doctor --fix`).

pub(crate) mod doctor;
pub(crate) mod hosts;
pub(crate) mod nsswitch;
pub(crate) mod stores;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

const SOCKET: &str = include_str!("../../units/wharf.socket");
const CONTROL_SOCKET: &str = include_str!("../../units/wharf-control.socket");
const SERVICE: &str = include_str!("../../units/wharf.service");
const PLIST: &str = include_str!("../../plists/dev.wharf.proxy.plist");
/// First line of every file `wharf install` writes; `uninstall` removes only files that have it.
const MARKER: &str = "Written by `wharf install`; `wharf uninstall` removes it.";
pub(crate) const DEFAULT_PORT: u16 = crate::proxy::listeners::FALLBACK_PORT;
pub(crate) const LAUNCHD_LABEL: &str = "dev.wharf.proxy";

/// A file to write: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct File {
    pub(crate) path: PathBuf,
    pub(crate) content: String,
}

/// What `install` will do: files, and the commands the user runs next.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) files: Vec<File>,
    /// Files outside the user's directories (port 80 on Linux), written only when asked.
    pub(crate) privileged: Vec<File>,
    /// Commands that must run as root, in order, when `privileged` is applied.
    pub(crate) privileged_commands: Vec<Vec<String>>,
    pub(crate) next: Vec<String>,
    pub(crate) notes: Vec<String>,
}

/// How to get port 80 on Linux, where a user manager cannot bind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Port80 {
    /// Lower `net.ipv4.ip_unprivileged_port_start` to 80 (a sysctl.d file).
    Sysctl,
    /// A system socket unit on port 80 that starts the proxy as this user.
    SystemSocket,
}

/// Where the systemd plan writes and what it needs to know.
pub(crate) struct SystemdTarget<'a> {
    pub(crate) binary: &'a Path,
    pub(crate) port: u16,
    /// `~/.config/systemd/user`.
    pub(crate) unit_dir: &'a Path,
    /// The lowest port a user may bind (`ip_unprivileged_port_start`).
    pub(crate) unprivileged_start: u16,
    pub(crate) port80: Option<Port80>,
    pub(crate) user: &'a str,
    pub(crate) uid: u32,
}

/// The unit files for a user manager, and what comes next.
pub(crate) fn plan_systemd(t: &SystemdTarget) -> anyhow::Result<Plan> {
    let exec = systemd_exec_path(t.binary)?;
    let mut plan = Plan::default();
    let needs_privilege = t.port < t.unprivileged_start;
    let system_socket = needs_privilege && t.port80 == Some(Port80::SystemSocket);
    let render = |template: &str| {
        let body = template
            .replace("@PORT@", &t.port.to_string())
            .replace("@WHARF@", &exec);
        format!("# {MARKER}\n{body}")
    };
    let user_units: &[(&str, &str)] = if system_socket {
        // The HTTP socket lives in the system manager; the user keeps only the control socket.
        &[("wharf-control.socket", CONTROL_SOCKET)]
    } else {
        &[
            ("wharf.socket", SOCKET),
            ("wharf-control.socket", CONTROL_SOCKET),
            ("wharf.service", SERVICE),
        ]
    };
    for (name, template) in user_units {
        plan.files.push(File {
            path: t.unit_dir.join(name),
            content: render(template),
        });
    }
    if needs_privilege {
        match t.port80 {
            None => bail!(
                "a user's systemd cannot bind port {port}: ports below {start} need privileges here.\n\
                 Choose one:\n  \
                 wharf install                       # port {DEFAULT_PORT}, no privileges (http://NAME.localhost:{DEFAULT_PORT})\n  \
                 wharf install --port {port} --sysctl        # lets every user bind ports from {port} up (writes /etc/sysctl.d)\n  \
                 wharf install --port {port} --system-socket # a system socket unit on {port} starts the proxy as you\n\
                 Add --dry-run to see exactly what each writes.",
                port = t.port,
                start = t.unprivileged_start
            ),
            Some(Port80::Sysctl) => {
                let path = PathBuf::from("/etc/sysctl.d/60-wharf-unprivileged-port.conf");
                plan.privileged.push(File {
                    content: format!(
                        "# {MARKER}\n# Lets unprivileged processes bind ports from {0} up, for wharf's proxy.\n\
                         net.ipv4.ip_unprivileged_port_start = {0}\n",
                        t.port
                    ),
                    path: path.clone(),
                });
                plan.privileged_commands.push(vec![
                    "sysctl".into(),
                    "-p".into(),
                    path.display().to_string(),
                ]);
                plan.notes.push(format!(
                    "every user on this machine may then bind ports from {} up; `wharf uninstall` puts it back",
                    t.port
                ));
            }
            Some(Port80::SystemSocket) => {
                let name = format!("wharf-{}", t.user);
                let socket = format!(
                    "# {MARKER}\n[Unit]\nDescription=wharf front proxy for {user} (HTTP on loopback port {port})\n\n\
                     [Socket]\nListenStream=127.0.0.1:{port}\nListenStream=[::1]:{port}\nBindIPv6Only=ipv6-only\n\
                     FileDescriptorName=http\nAccept=no\nBacklog=4096\nNoDelay=yes\n\n[Install]\nWantedBy=sockets.target\n",
                    user = t.user,
                    port = t.port
                );
                let service = format!(
                    "# {MARKER}\n[Unit]\nDescription=wharf front proxy for {user}\nRequires={name}.socket\n\
                     After={name}.socket\n\n[Service]\nType=notify\nNotifyAccess=main\nUser={user}\n\
                     Environment=XDG_RUNTIME_DIR=/run/user/{uid}\nExecStart={exec} proxy\nRestart=on-failure\n\
                     RestartSec=1s\nWatchdogSec=30s\nUMask=0077\nNoNewPrivileges=yes\nProtectSystem=strict\n\
                     PrivateTmp=yes\nReadWritePaths=/run/user/{uid}\nRestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n",
                    user = t.user,
                    uid = t.uid
                );
                let dir = PathBuf::from("/etc/systemd/system");
                plan.privileged.push(File {
                    path: dir.join(format!("{name}.socket")),
                    content: socket,
                });
                plan.privileged.push(File {
                    path: dir.join(format!("{name}.service")),
                    content: service,
                });
                plan.privileged_commands
                    .push(vec!["systemctl".into(), "daemon-reload".into()]);
                plan.privileged_commands.push(vec![
                    "systemctl".into(),
                    "enable".into(),
                    "--now".into(),
                    format!("{name}.socket"),
                ]);
                plan.notes.push(format!(
                    "the system manager owns port {} and starts `{exec} proxy` as {}; the proxy reads the state \
                     and control socket of your user (the runtime dir /run/user/{} exists while you are logged \
                     in, or always with `loginctl enable-linger`)",
                    t.port, t.user, t.uid
                ));
            }
        }
    }
    let sockets = if system_socket {
        "wharf-control.socket"
    } else {
        "wharf.socket wharf-control.socket"
    };
    plan.next.push(format!(
        "systemctl --user daemon-reload && systemctl --user enable --now {sockets}"
    ));
    plan.next.push(format!(
        "loginctl enable-linger {}   # optional: keep it running when you are not logged in",
        t.user
    ));
    Ok(plan)
}

/// An instance exported as its own socket-activated unit pair: systemd binds `port` and starts
/// `command` with it (fd mode, `LISTEN_FDS`); no wharf process is in its data path.
pub(crate) struct InstanceTarget<'a> {
    pub(crate) name: &'a crate::model::name::Name,
    pub(crate) port: u16,
    /// Absolute program path, then its arguments.
    pub(crate) command: &'a [String],
    pub(crate) dir: &'a Path,
    pub(crate) unit_dir: &'a Path,
}

pub(crate) fn plan_instance(t: &InstanceTarget) -> anyhow::Result<Plan> {
    let name = t.name;
    let (program, args) = t
        .command
        .split_first()
        .context("a command is needed after --")?;
    let mut exec = systemd_exec_path(Path::new(program))?;
    for arg in args {
        if arg.contains(['"', '\\', '\n']) {
            bail!("the argument {arg:?} has characters a unit file cannot hold");
        }
        let arg = arg.replace('%', "%%").replace('$', "$$");
        exec.push(' ');
        exec.push_str(&if arg.is_empty() || arg.contains(char::is_whitespace) {
            format!("\"{arg}\"")
        } else {
            arg
        });
    }
    let dir = t
        .dir
        .to_str()
        .context("the working directory is not UTF-8")?
        .replace('%', "%%");
    let socket = format!(
        "# {MARKER}\n# The instance '{name}' as plain systemd socket activation.\n[Unit]\n\
         Description=wharf instance {name} (socket)\n\n[Socket]\nListenStream=127.0.0.1:{port}\n\
         FileDescriptorName=http\nAccept=no\nBacklog=4096\n\n[Install]\nWantedBy=sockets.target\n",
        port = t.port
    );
    let service = format!(
        "# {MARKER}\n[Unit]\nDescription=wharf instance {name}\nRequires=wharf-{name}.socket\n\
         After=wharf-{name}.socket\n\n[Service]\nExecStart={exec}\nWorkingDirectory={dir}\n\
         Environment=WHARF_NAME={name} WHARF_URL=http://{name}.localhost:{port}\nRestart=on-failure\n\
         NoNewPrivileges=yes\n",
        port = t.port
    );
    let mut plan = Plan::default();
    plan.files.push(File {
        path: t.unit_dir.join(format!("wharf-{name}.socket")),
        content: socket,
    });
    plan.files.push(File {
        path: t.unit_dir.join(format!("wharf-{name}.service")),
        content: service,
    });
    plan.next.push(format!(
        "systemctl --user daemon-reload && systemctl --user enable --now wharf-{name}.socket"
    ));
    plan.next.push(format!(
        "wharf alias {name} {}   # route http://{name}.localhost through the proxy too",
        t.port
    ));
    Ok(plan)
}

/// Where launchd's plan writes and what it needs to know.
pub(crate) struct LaunchdTarget<'a> {
    pub(crate) binary: &'a Path,
    pub(crate) port: u16,
    /// `~/Library/LaunchAgents`.
    pub(crate) agents_dir: &'a Path,
    pub(crate) runtime_dir: &'a Path,
    pub(crate) state_dir: &'a Path,
    pub(crate) uid: u32,
}

/// The LaunchAgent plist; launchd binds the sockets itself, port 80 included.
pub(crate) fn plan_launchd(t: &LaunchdTarget) -> Plan {
    let esc = |p: &Path| crate::model::text::escape(&p.display().to_string());
    let body = PLIST
        .replace("@WHARF@", &esc(t.binary))
        .replace("@PORT@", &t.port.to_string())
        .replace(
            "@CONTROL@",
            &esc(&crate::control::protocol::socket_path(t.runtime_dir)),
        )
        .replace("@RUNTIME@", &esc(t.runtime_dir))
        .replace("@STATE@", &esc(t.state_dir))
        .replace("@LOG@", &esc(&t.state_dir.join("proxy.log")));
    let body = with_https_sockets(&body, t.port);
    let content = body.replacen(
        "<plist version=\"1.0\">",
        &format!("<!-- {MARKER} -->\n<plist version=\"1.0\">"),
        1,
    );
    let path = t.agents_dir.join(format!("{LAUNCHD_LABEL}.plist"));
    let mut plan = Plan::default();
    plan.next.push(format!(
        "launchctl bootstrap gui/{} {}",
        t.uid,
        path.display()
    ));
    plan.files.push(File { path, content });
    plan
}

/// On port 80, the plist's `http` sockets again as `https` on 443, so that HTTPS URLs need no
/// port either (macOS lets a user's agent bind both). On another port that one serves both.
fn with_https_sockets(plist: &str, port: u16) -> String {
    let start = "\t\t<key>http</key>\n";
    let (Some(from), true) = (plist.find(start), port == 80) else {
        return plist.to_string();
    };
    let Some(len) = plist[from..].find("\t\t</array>\n") else {
        return plist.to_string();
    };
    let http = &plist[from..from + len + "\t\t</array>\n".len()];
    let https = http.replace("<key>http</key>", "<key>https</key>").replace(
        "<string>80</string>",
        &format!("<string>{}</string>", crate::proxy::listeners::HTTPS_PORT),
    );
    plist.replacen(http, &format!("{http}{https}"), 1)
}

/// systemd's ExecStart= spelling of `binary`: absolute, `%` doubled, quoted if it has spaces.
fn systemd_exec_path(binary: &Path) -> anyhow::Result<String> {
    let s = binary
        .to_str()
        .context("the wharf binary's path is not UTF-8")?;
    if !binary.is_absolute() {
        bail!("the wharf binary's path {s} is not absolute");
    }
    if s.contains(['"', '\\', '\n']) {
        bail!(
            "the wharf binary's path {s:?} has characters a unit file cannot hold; move the binary"
        );
    }
    let s = s.replace('%', "%%");
    Ok(if s.contains(char::is_whitespace) {
        format!("\"{s}\"")
    } else {
        s
    })
}

/// What happened to one file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Created,
    Updated,
    Unchanged,
}

/// Write the user's files (0644, their directories created). Refuses to overwrite a file
/// wharf did not write.
pub(crate) fn write(files: &[File]) -> anyhow::Result<Vec<(PathBuf, Outcome)>> {
    let mut done = Vec::new();
    for f in files {
        let outcome = match std::fs::read_to_string(&f.path) {
            Ok(old) if old == f.content => Outcome::Unchanged,
            Ok(old) if !old.contains(MARKER) => bail!(
                "{} exists and was not written by wharf; move it away first",
                f.path.display()
            ),
            Ok(_) => Outcome::Updated,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Created,
            Err(e) => return Err(e).with_context(|| format!("reading {}", f.path.display())),
        };
        if outcome != Outcome::Unchanged {
            if let Some(dir) = f.path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            crate::state::dirs::write_atomic(&f.path, f.content.as_bytes())
                .with_context(|| format!("writing {}", f.path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o644))?;
        }
        done.push((f.path.clone(), outcome));
    }
    Ok(done)
}

/// Remove the files wharf wrote among `paths`; others are left alone and reported.
pub(crate) fn remove(paths: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, bool)>> {
    let mut done = Vec::new();
    for path in paths {
        match std::fs::read_to_string(path) {
            Ok(text) if text.contains(MARKER) => {
                std::fs::remove_file(path)
                    .with_context(|| format!("removing {}", path.display()))?;
                done.push((path.clone(), true));
            }
            Ok(_) => done.push((path.clone(), false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Ok(done)
}

/// Every file `install` may have written for this user, whatever the options were.
pub(crate) fn installed_paths(unit_dir: &Path, user: &str) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let user_files = ["wharf.socket", "wharf-control.socket", "wharf.service"]
        .map(|n| unit_dir.join(n))
        .to_vec();
    let system = vec![
        PathBuf::from("/etc/sysctl.d/60-wharf-unprivileged-port.conf"),
        PathBuf::from(format!("/etc/systemd/system/wharf-{user}.socket")),
        PathBuf::from(format!("/etc/systemd/system/wharf-{user}.service")),
    ];
    (user_files, system)
}

/// The plan as text: every file with its content, then the next commands.
pub(crate) fn describe(plan: &Plan, dry_run: bool) -> String {
    let mut out = String::new();
    let verb = if dry_run { "would write" } else { "writes" };
    for f in plan.files.iter().chain(&plan.privileged) {
        let _ = writeln!(
            out,
            "==> {verb} {}\n{}",
            f.path.display(),
            f.content.trim_end()
        );
    }
    for c in &plan.privileged_commands {
        let _ = writeln!(out, "==> then runs as root: {}", c.join(" "));
    }
    for n in &plan.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(dir: &'a Path, port: u16, port80: Option<Port80>) -> SystemdTarget<'a> {
        SystemdTarget {
            binary: Path::new("/opt/my tools/wharf%1"),
            port,
            unit_dir: dir,
            unprivileged_start: 1024,
            port80,
            user: "ann",
            uid: 1000,
        }
    }

    #[test]
    fn units_get_the_port_and_an_escaped_binary() {
        let plan = plan_systemd(&target(Path::new("/u"), 7080, None)).unwrap();
        let all: String = plan.files.iter().map(|f| f.content.clone()).collect();
        assert!(all.contains("ListenStream=127.0.0.1:7080\nListenStream=[::1]:7080"));
        assert!(all.contains("ExecStart=\"/opt/my tools/wharf%%1\" proxy"));
        assert!(!all.contains('@'), "every placeholder filled");
        assert!(plan.privileged.is_empty());
        assert!(plan.next[0].contains("enable --now wharf.socket wharf-control.socket"));
    }

    #[test]
    fn port_80_needs_a_choice_and_never_writes_etc_by_default() {
        let err = plan_systemd(&target(Path::new("/u"), 80, None))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--sysctl") && err.contains("--system-socket") && err.contains("7080"),
            "{err}"
        );
        let plan = plan_systemd(&target(Path::new("/u"), 80, Some(Port80::Sysctl))).unwrap();
        assert!(
            plan.privileged[0]
                .content
                .contains("ip_unprivileged_port_start = 80")
        );
        let plan = plan_systemd(&target(Path::new("/u"), 80, Some(Port80::SystemSocket))).unwrap();
        assert_eq!(
            plan.files.len(),
            1,
            "only the control socket stays a user unit"
        );
        assert!(plan.privileged[1].content.contains("User=ann"));
        let mut free = target(Path::new("/u"), 80, None);
        free.unprivileged_start = 80;
        assert!(
            plan_systemd(&free).unwrap().privileged.is_empty(),
            "no privilege needed, none asked"
        );
    }

    #[test]
    fn write_is_idempotent_and_remove_leaves_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan_systemd(&target(dir.path(), 7080, None)).unwrap();
        let first = write(&plan.files).unwrap();
        assert!(first.iter().all(|(_, o)| *o == Outcome::Created));
        let again = write(&plan.files).unwrap();
        assert!(again.iter().all(|(_, o)| *o == Outcome::Unchanged));
        let foreign = dir.path().join("other.service");
        std::fs::write(&foreign, "[Service]\n").unwrap();
        let mut paths: Vec<PathBuf> = plan.files.iter().map(|f| f.path.clone()).collect();
        paths.push(foreign.clone());
        let removed = remove(&paths).unwrap();
        assert_eq!(removed.iter().filter(|(_, r)| *r).count(), 3);
        assert!(foreign.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_instance_becomes_a_socket_and_service_pair() {
        let name: crate::model::name::Name = "api".parse().unwrap();
        let command = [
            "/usr/bin/python3".to_string(),
            "-m".into(),
            "http server".into(),
            "100%".into(),
        ];
        let plan = plan_instance(&InstanceTarget {
            name: &name,
            port: 4100,
            command: &command,
            dir: Path::new("/srv/api"),
            unit_dir: Path::new("/u"),
        })
        .unwrap();
        assert_eq!(plan.files[0].path, Path::new("/u/wharf-api.socket"));
        assert!(
            plan.files[0]
                .content
                .contains("ListenStream=127.0.0.1:4100")
        );
        assert!(
            plan.files[1]
                .content
                .contains("ExecStart=/usr/bin/python3 -m \"http server\" 100%%")
        );
        assert!(plan.files[1].content.contains("WorkingDirectory=/srv/api"));
    }

    #[test]
    fn plist_has_every_placeholder_filled_and_escaped() {
        let plan = plan_launchd(&LaunchdTarget {
            binary: Path::new("/Users/a&b/bin/wharf"),
            port: 80,
            agents_dir: Path::new("/Users/a&b/Library/LaunchAgents"),
            runtime_dir: Path::new("/tmp/wharf-501"),
            state_dir: Path::new("/Users/a&b/.local/state/wharf"),
            uid: 501,
        });
        let c = &plan.files[0].content;
        assert!(!c.contains('@'));
        // Port 80 brings HTTPS's 443 beside it, on both loopbacks.
        assert!(c.contains("<key>https</key>"));
        assert_eq!(c.matches("<string>443</string>").count(), 2);
        assert!(c.contains("<string>/Users/a&amp;b/bin/wharf</string>"));
        assert!(c.contains("<string>/tmp/wharf-501/control.sock</string>"));
        assert!(plan.next[0].starts_with("launchctl bootstrap gui/501 "));
    }
}
