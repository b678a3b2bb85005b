//! Service-manager integration: units that systemd accepts, a plist launchd would, install and
//! uninstall that are each other's inverse, and doctor.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use super::util::*;

/// `==> would write PATH` blocks of a dry run: path → content.
fn dry_run_files(out: &str) -> BTreeMap<PathBuf, String> {
    let mut files = BTreeMap::new();
    let mut current: Option<(PathBuf, Vec<&str>)> = None;
    for line in out.lines() {
        if let Some(path) = line.strip_prefix("==> would write ") {
            if let Some((p, lines)) = current.take() {
                files.insert(p, lines.join("\n"));
            }
            current = Some((PathBuf::from(path), Vec::new()));
        } else if line.starts_with("==> ") || line == "next:" || line.starts_with("note: ") {
            if let Some((p, lines)) = current.take() {
                files.insert(p, lines.join("\n"));
            }
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line);
        }
    }
    if let Some((p, lines)) = current {
        files.insert(p, lines.join("\n"));
    }
    files
}

fn run_ok(sb: &Sandbox, args: &[&str]) -> String {
    let out = sb.wharf(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "wharf {args:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn unit_dir(sb: &Sandbox) -> PathBuf {
    sb.dir.path().join("config/systemd/user")
}

/// `systemd-analyze verify` on installed units: no error and no warning at all.
fn verify(sb: &Sandbox, files: &[PathBuf]) {
    let Some(analyze) = need("systemd-analyze") else {
        return;
    };
    std::fs::create_dir_all(sb.runtime_dir()).unwrap();
    let out = Command::new(analyze)
        .args(["--user", "verify", "--man=no"])
        .args(files)
        .env("XDG_RUNTIME_DIR", sb.runtime_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

#[test]
fn installed_units_pass_systemd_analyze_verify_with_the_real_binary() {
    let sb = Sandbox::new();
    let out = run_ok(&sb, &["install"]);
    assert!(out.contains("systemctl --user daemon-reload && systemctl --user enable --now wharf.socket wharf-control.socket"), "{out}");
    let dir = unit_dir(&sb);
    let files: Vec<PathBuf> = ["wharf.socket", "wharf-control.socket", "wharf.service"]
        .iter()
        .map(|n| dir.join(n))
        .collect();
    let service = std::fs::read_to_string(&files[2]).unwrap();
    let bin = std::fs::canonicalize(env!("CARGO_BIN_EXE_wharf")).unwrap();
    assert!(
        service.contains(&format!("ExecStart={} proxy", bin.display())),
        "{service}"
    );
    let socket = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        socket.contains("ListenStream=127.0.0.1:7080")
            && socket.contains("ListenStream=[::1]:7080")
    );
    verify(&sb, &files);

    let py = which("python3").unwrap();
    run_ok(
        &sb,
        &[
            "install",
            "--instance",
            "api",
            "--port",
            "4100",
            "--",
            path_str(&py),
            "-m",
            "http.server",
        ],
    );
    verify(
        &sb,
        &[dir.join("wharf-api.socket"), dir.join("wharf-api.service")],
    );
}

#[test]
fn dry_run_shows_exactly_what_install_writes() {
    let sb = Sandbox::new();
    let planned = dry_run_files(&run_ok(&sb, &["install", "--port", "7181", "--dry-run"]));
    assert_eq!(planned.len(), 3, "{planned:?}");
    assert!(!unit_dir(&sb).exists(), "a dry run writes nothing");
    let out = run_ok(&sb, &["install", "--port", "7181"]);
    for (path, content) in &planned {
        assert!(out.contains(&format!("wrote {}", path.display())), "{out}");
        assert_eq!(
            std::fs::read_to_string(path).unwrap().trim_end(),
            content.trim_end()
        );
    }
    let again = run_ok(&sb, &["install", "--port", "7181"]);
    assert_eq!(
        again.matches("unchanged ").count(),
        3,
        "idempotent: {again}"
    );
}

#[test]
fn install_then_uninstall_leaves_nothing_behind() {
    let sb = Sandbox::new();
    let config = sb.dir.path().join("config");
    assert!(!config.exists());
    run_ok(&sb, &["install"]);
    let out = run_ok(&sb, &["uninstall"]);
    assert_eq!(out.matches("removed ").count(), 3, "{out}");
    assert!(
        !config.join("systemd").exists(),
        "left behind: {:?}",
        std::fs::read_dir(&config).map(|d| d.count())
    );
    let out = run_ok(&sb, &["uninstall"]);
    assert!(out.contains("nothing to remove"), "{out}");
}

#[test]
fn uninstall_leaves_units_wharf_did_not_write() {
    let sb = Sandbox::new();
    let dir = unit_dir(&sb);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("wharf.service"),
        "[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    let out = sb.wharf(&["install"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("was not written by wharf"));
    let out = run_ok(&sb, &["uninstall"]);
    assert!(
        out.contains("left") && out.contains("wharf did not write it"),
        "{out}"
    );
    assert!(dir.join("wharf.service").exists());
}

#[test]
fn the_launch_agent_plist_parses_and_has_the_keys_launchd_expects() {
    let sb = Sandbox::new();
    let files = dry_run_files(&run_ok(
        &sb,
        &["install", "--launchd", "--port", "80", "--dry-run"],
    ));
    let (path, plist) = files.into_iter().next().expect("one plist");
    assert!(
        path.ends_with("Library/LaunchAgents/dev.wharf.proxy.plist"),
        "{path:?}"
    );
    let check = r#"
import plistlib, sys
for text in sys.argv[1:]:
    p = plistlib.loads(text.encode())
    assert sorted(p) == ["EnvironmentVariables", "Label", "ProcessType", "ProgramArguments", "Sockets", "StandardErrorPath"], sorted(p)
    assert p["Label"] == "dev.wharf.proxy"
    assert p["ProgramArguments"][1:] == ["proxy"]
    http = p["Sockets"]["http"]
    assert [s["SockFamily"] for s in http] == ["IPv4", "IPv6"]
    assert [s["SockNodeName"] for s in http] == ["127.0.0.1", "::1"]
    for s in http:
        assert sorted(s) == ["SockFamily", "SockNodeName", "SockPassive", "SockServiceName", "SockType"], sorted(s)
        assert s["SockType"] == "stream" and s["SockPassive"] is True and isinstance(s["SockServiceName"], str)
    control = p["Sockets"]["control"]
    assert sorted(control) == ["SockPassive", "SockPathMode", "SockPathName", "SockType"], sorted(control)
    assert control["SockPathMode"] == 0o600
    assert "KeepAlive" not in p, "on demand"
print("ok")
"#;
    let template = std::fs::read_to_string(repo().join("plists/dev.wharf.proxy.plist")).unwrap();
    let out = Command::new(python())
        .args(["-c", check, &plist, &template])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(plist.contains("<string>80</string>"));
    assert!(plist.contains(&format!(
        "<string>{}</string>",
        sb.runtime_dir().join("control.sock").display()
    )));
}

#[test]
fn doctor_checks_everything_and_flags_a_loose_runtime_dir() {
    let sb = Sandbox::new();
    let p = sb.serve("doc", &[]);
    let port = p.url_port();
    let out = sb.wharf(&["doctor"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("the front proxy runs (pid") && text.contains(&format!("127.0.0.1:{port}")),
        "{text}"
    );
    assert!(
        text.contains("localhost"),
        "name resolution is checked: {text}"
    );
    assert!(
        !text.contains("127.0.0.1:PORT"),
        "the http_proxy way round names the running proxy's port: {text}"
    );
    assert!(text.contains("port 80"), "{text}");
    assert!(text.contains("are private"), "{text}");
    assert!(
        out.status.success(),
        "no problem on a fresh sandbox:\n{text}"
    );

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(sb.runtime_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = sb.wharf(&["doctor"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("PROBLEM not private") && text.contains("mode 755"),
        "{text}"
    );
    assert!(text.contains("fix: chmod go-rwx"), "{text}");
    let mode = std::fs::metadata(sb.runtime_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "doctor changes nothing");
}
