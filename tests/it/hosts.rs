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
