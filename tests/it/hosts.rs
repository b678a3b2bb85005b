//! `wharf hosts sync|clean`, the proxy keeping the block in step (`[hosts] sync = true`), and
//! `doctor --fix` on nsswitch.conf: each on the sandbox's own files, never /etc's.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use super::util::*;

/// A hosts file with comments, tabs, CRLF line endings and no final newline.
const ORIGINAL: &[u8] =
    b"# The static table lookup for hostnames\r\n127.0.0.1\tlocalhost\r\n\r\n::1     localhost ip6-localhost";

fn block(names: &[&str], eol: &str) -> String {
    let mut lines = vec![
        "# BEGIN wharf: names of wharf's instances (`wharf hosts clean` removes this block)"
            .to_string(),
    ];
    for n in names {
        lines.push(format!("127.0.0.1 {n}"));
        lines.push(format!("::1 {n}"));
    }
    lines.push("# END wharf".into());
    lines.join(eol)
}

fn run(sb: &Sandbox, args: &[&str]) -> (bool, String, String) {
    let out = sb.wharf(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sync_writes_exactly_the_block_and_clean_gives_back_every_byte() {
    let sb = Sandbox::new();
    let hosts = sb.hosts_file();
    std::fs::write(&hosts, ORIGINAL).unwrap();
    std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o640)).unwrap();

    let (py, script) = (python(), server_py());
    let api = sb.spawn(&[
        "run",
        "--name",
        "api",
        "--fd",
        "--port",
        "0",
        "--socket",
        "admin",
        "--",
        path_str(&py),
        path_str(&script),
    ]);
    let web = sb.serve("web", &[]);
    api.url_port();
    web.url_port();
    let (ok, _, err) = run(&sb, &["alias", "db", "127.0.0.1:5432"]);
    assert!(ok, "{err}");

    let (ok, out, err) = run(&sb, &["hosts", "sync", "--dry-run"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("+127.0.0.1 admin.api.localhost\n") && out.contains("+::1 db.localhost\n"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&hosts).unwrap(),
        ORIGINAL,
        "--dry-run writes nothing"
    );

    let (ok, _, err) = run(&sb, &["hosts", "sync"]);
    assert!(ok, "{err}");
    let names = [
        "admin.api.localhost",
        "api.localhost",
        "db.localhost",
        "web.localhost",
    ];
    let expected = [ORIGINAL, b"\r\n", block(&names, "\r\n").as_bytes()].concat();
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(&hosts).unwrap()),
        String::from_utf8_lossy(&expected)
    );
    let meta = std::fs::metadata(&hosts).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640, "the file's mode is kept");

    let (ok, out, err) = run(&sb, &["hosts", "sync"]);
    assert!(ok && out.contains("already lists"), "{out}{err}");
    let again = std::fs::metadata(&hosts).unwrap();
    assert_eq!(
        (again.ino(), again.mtime_nsec()),
        (meta.ino(), meta.mtime_nsec()),
        "a second sync does not write"
    );

    let (ok, out, _) = run(&sb, &["hosts", "clean", "--dry-run"]);
    assert!(ok && out.contains("-::1 web.localhost\n"), "{out}");
    assert_eq!(
        std::fs::read(&hosts).unwrap(),
        expected,
        "--dry-run writes nothing"
    );
    let (ok, _, err) = run(&sb, &["hosts", "clean"]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(&hosts).unwrap(),
        ORIGINAL,
        "clean gives back every byte"
    );
    let (ok, out, err) = run(&sb, &["hosts", "clean"]);
    assert!(ok && out.contains("no wharf block"), "{out}{err}");
}

#[test]
fn a_block_without_its_end_is_refused_and_left_alone() {
    let sb = Sandbox::new();
    let hosts = sb.hosts_file();
    let corrupt = b"127.0.0.1 localhost\n# BEGIN wharf: half a block\n127.0.0.1 x.localhost\n";
    std::fs::write(&hosts, corrupt).unwrap();
    for args in [
        &["hosts", "sync"][..],
        &["hosts", "clean"],
        &["hosts", "sync", "--dry-run"],
    ] {
        let (ok, _, err) = run(&sb, args);
        assert!(!ok, "{args:?} must fail");
        assert!(
            err.contains("line 2 begins wharf's block") && err.contains("no \"# END wharf\""),
            "{args:?}: {err}"
        );
        assert_eq!(std::fs::read(&hosts).unwrap(), corrupt, "{args:?}");
    }
}

#[test]
fn the_proxy_keeps_the_block_in_step_when_opted_in() {
    let sb = Sandbox::new();
    sb.config("[hosts]\nsync = true\n");
    let hosts = sb.hosts_file();
    let original = "# mine\n127.0.0.1 localhost\n";
    std::fs::write(&hosts, original).unwrap();
    let read = || std::fs::read_to_string(&hosts).unwrap();
    let limit = Duration::from_secs(10);

    let one = sb.serve("one", &[]);
    one.url_port();
    eventually("one.localhost in the hosts file", limit, || {
        read().contains("127.0.0.1 one.localhost\n")
    });
    let mut two = sb.serve("two", &[]);
    two.url_port();
    eventually("two.localhost in the hosts file", limit, || {
        read().contains("::1 two.localhost\n")
    });
    let (ok, _, err) = run(&sb, &["stop", "two"]);
    assert!(ok, "{err}");
    two.wait(limit);
    eventually("two.localhost gone from the hosts file", limit, || {
        !read().contains("two.localhost")
    });
    let text = read();
    assert!(text.starts_with(original), "{text}");
    assert_eq!(
        text,
        format!("{original}{}\n", block(&["one.localhost"], "\n"))
    );
    let log = std::fs::read_to_string(sb.runtime_dir().join("proxy.log")).unwrap_or_default();
    assert!(log.contains("keeping wharf's block in"), "{log}");
}

#[test]
fn doctor_fix_edits_only_the_nsswitch_conf_it_is_pointed_at() {
    let sb = Sandbox::new();
    let nss = sb.nsswitch_file();
    let original = "passwd: files\nhosts:          files mdns4_minimal [NOTFOUND=return] dns\n";
    std::fs::write(&nss, original).unwrap();
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(sb.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("nsswitch"))
            .collect();
        names.sort();
        names
    };

    let (_, out, _) = run(&sb, &["doctor"]);
    assert_eq!(
        std::fs::read_to_string(&nss).unwrap(),
        original,
        "doctor alone writes nothing"
    );
    if out.contains("the system resolver maps *.localhost to loopback") {
        eprintln!("skipped: this machine resolves *.localhost already; --fix has nothing to do");
        return;
    }
    let (_, out, err) = run(&sb, &["doctor", "--fix", "--dry-run"]);
    assert_eq!(
        std::fs::read_to_string(&nss).unwrap(),
        original,
        "--dry-run: {out}{err}"
    );
    assert_eq!(files(), ["nsswitch.conf"]);

    let library = ["/lib", "/usr/lib", "/lib64", "/usr/lib64"]
        .iter()
        .any(|d| {
            std::path::Path::new(d)
                .join("libnss_myhostname.so.2")
                .exists()
                || std::fs::read_dir(d)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|e| e.path().join("libnss_myhostname.so.2").exists())
        });
    let (_, out, err) = run(&sb, &["doctor", "--fix"]);
    if library {
        assert!(out.contains("added `myhostname`"), "{out}{err}");
        let now = std::fs::read_to_string(&nss).unwrap();
        assert_eq!(now, original.replace("] dns", "] myhostname dns"));
        let backups = files();
        assert_eq!(backups.len(), 2, "{backups:?}");
        assert_eq!(
            std::fs::read_to_string(sb.dir.path().join(&backups[1])).unwrap(),
            original
        );
        assert!(out.contains("to undo: cp "), "{out}{err}");
    } else {
        assert!(
            out.contains("install the myhostname module") && out.contains("wharf hosts sync"),
            "{out}"
        );
        assert!(
            out.contains("nothing here that wharf can fix itself"),
            "{out}{err}"
        );
        assert_eq!(std::fs::read_to_string(&nss).unwrap(), original);
        assert_eq!(files(), ["nsswitch.conf"]);
    }
}

/// `/etc/hosts` in a container is a bind mount, which cannot be renamed over: the block is
/// written through the file itself. Needs root (mount); skipped elsewhere.
#[test]
fn a_bind_mounted_hosts_file_is_rewritten_in_place() {
    let sb = Sandbox::new();
    let under = sb.dir.path().join("hosts.real");
    std::fs::write(&under, "127.0.0.1 localhost\n").unwrap();
    std::fs::write(sb.hosts_file(), "").unwrap();
    let mounted = std::process::Command::new("mount")
        .arg("--bind")
        .args([&under, &sb.hosts_file()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot bind-mount here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _mount = Unmount(sb.hosts_file());
    let (ok, out, err) = run(&sb, &["hosts", "sync", "--names=a.localhost"]);
    assert!(ok, "{out}{err}");
    let expected = format!("127.0.0.1 localhost\n{}\n", block(&["a.localhost"], "\n"));
    assert_eq!(
        std::fs::read_to_string(&under).unwrap(),
        expected,
        "written through the mount"
    );
    let (ok, out, err) = run(&sb, &["hosts", "clean"]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(&under).unwrap(),
        "127.0.0.1 localhost\n"
    );
    let strays: Vec<_> = std::fs::read_dir(sb.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".wharf-"))
        .collect();
    assert!(strays.is_empty(), "no temporary file left: {strays:?}");
}

/// A hosts file the user may not write: wharf says what it runs through sudo, then runs it
/// (here a stand-in sudo that records its arguments). Run as `nobody` through setpriv; needs
/// root to switch, skipped elsewhere.
#[test]
fn a_file_you_may_not_write_goes_through_sudo_said_first() {
    let Some(setpriv) = need("setpriv") else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run wharf as another user");
        return;
    }
    let sb = Sandbox::new();
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let hosts = sb.hosts_file();
    let original = format!("127.0.0.1 localhost\n{}\n", block(&["old.localhost"], "\n"));
    std::fs::write(&hosts, &original).unwrap();
    let bin = sb.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let recorded = sb.dir.path().join("sudo-args");
    std::fs::write(&recorded, "").unwrap();
    std::fs::set_permissions(&recorded, std::fs::Permissions::from_mode(0o666)).unwrap();
    let sudo = bin.join("sudo");
    std::fs::write(
        &sudo,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\n",
            recorded.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wharf = std::fs::canonicalize(env!("CARGO_BIN_EXE_wharf")).unwrap();
    for (args, expect) in [
        (
            &["hosts", "sync", "--names=new.localhost"][..],
            "hosts\nsync\n--names=new.localhost\n",
        ),
        (&["hosts", "clean"], "hosts\nclean\n"),
    ] {
        let out = std::process::Command::new(&setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&wharf)
            .args(args)
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("HOME", sb.dir.path())
            .env("WHARF_HOSTS_FILE", &hosts)
            .current_dir(sb.dir.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?}: {text}");
        let said = format!(
            "is not writable by you; running: sudo env WHARF_HOSTS_FILE={} {}",
            hosts.display(),
            wharf.display()
        );
        assert!(text.contains(&said), "{args:?}: {text}");
        let ran = std::fs::read_to_string(&recorded).unwrap();
        assert_eq!(
            ran,
            format!(
                "env\nWHARF_HOSTS_FILE={}\n{}\n{expect}",
                hosts.display(),
                wharf.display()
            )
        );
        assert_eq!(
            std::fs::read_to_string(&hosts).unwrap(),
            original,
            "{args:?}"
        );
    }
}
