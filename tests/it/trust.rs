//! `wharf trust`, `untrust` and the trust part of `doctor`, with the real `certutil` and the
//! real `update-ca-certificates` on stores in temporary directories: `HOME` is the sandbox's
//! (Chrome's `~/.pki/nssdb`, a Firefox profile) and `$WHARF_SYSTEM_TRUST_ROOT` a Debian
//! layout under it. This machine's own stores are never touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use super::util::*;

/// The stores of one test.
struct Stores {
    sb: Sandbox,
    home: PathBuf,
    root: PathBuf,
    chrome: PathBuf,
    profile: PathBuf,
}

fn run_tool(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let mut p = Proc::spawn(std::mem::replace(cmd, Command::new("true")), &what);
    let status = p.wait(PATIENCE);
    assert!(status.success(), "{what} failed:\n{}", p.log());
    p.log()
}

/// A sandbox with a Firefox profile and a Debian system store (one root certificate, its
/// bundle generated), or `None` when `certutil` or `update-ca-certificates` is missing.
fn stores() -> Option<Stores> {
    need("certutil")?;
    let update = need("update-ca-certificates")?;
    let mozilla = Path::new("/usr/share/ca-certificates/mozilla");
    let some_root = std::fs::read_dir(mozilla).ok().and_then(|d| {
        d.flatten()
            .map(|e| e.file_name())
            .find(|n| n.to_string_lossy().ends_with(".crt"))
    });
    let Some(some_root) = some_root else {
        eprintln!("skipped: no root certificate in {}", mozilla.display());
        return None;
    };
    let sb = Sandbox::new();
    let home = sb.dir.path().join("home");
    let root = sb.dir.path().join("root");
    let profile = home.join(".mozilla/firefox/abcd.default-release");
    for dir in [
        profile.as_path(),
        &root.join("usr/local/share/ca-certificates"),
        &root.join("usr/share/ca-certificates/mozilla"),
        &root.join("etc/ssl/certs"),
        &root.join("etc/ca-certificates/update.d"),
    ] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::copy(
        mozilla.join(&some_root),
        root.join("usr/share/ca-certificates/mozilla")
            .join(&some_root),
    )
    .unwrap();
    std::fs::write(
        root.join("etc/ca-certificates.conf"),
        format!("mozilla/{}\n", some_root.to_string_lossy()),
    )
    .unwrap();
    // A hook as Java's keystore has one: it logs what update-ca-certificates tells it.
    let hook = root.join("etc/ca-certificates/update.d/log");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat >> {}\n",
            sb.dir.path().join("hook.log").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sub = |p: &str| root.join(p).display().to_string();
    run_tool(Command::new(update).args([
        "--certsconf",
        &sub("etc/ca-certificates.conf"),
        "--certsdir",
        &sub("usr/share/ca-certificates"),
        "--localcertsdir",
        &sub("usr/local/share/ca-certificates"),
        "--etccertsdir",
        &sub("etc/ssl/certs"),
        "--hooksdir",
        &sub("etc/ca-certificates/update.d"),
    ]));
    run_tool(Command::new("certutil").args([
        "-N",
        "-d",
        &format!("sql:{}", profile.display()),
        "--empty-password",
    ]));
    Some(Stores {
        chrome: home.join(".pki/nssdb"),
        home,
        root,
        profile,
        sb,
    })
}

impl Stores {
    /// `wharf ARGS` with this test's stores: its output and exit status.
    fn wharf(&self, args: &[&str]) -> (ExitStatus, String) {
        self.wharf_home(&self.home, args)
    }

    fn wharf_home(&self, home: &Path, args: &[&str]) -> (ExitStatus, String) {
        let mut cmd = self.sb.wharf(args);
        cmd.env("HOME", home)
            .env("WHARF_SYSTEM_TRUST_ROOT", &self.root);
        let mut p = Proc::spawn(cmd, &format!("wharf {}", args.join(" ")));
        let status = p.wait(PATIENCE);
        (status, p.log())
    }

    fn ok(&self, args: &[&str]) -> String {
        let (status, out) = self.wharf(args);
        assert!(status.success(), "wharf {args:?} failed:\n{out}");
        out
    }

    /// `certutil -L` of an NSS database ("" when it does not exist).
    fn nss(&self, db: &Path) -> String {
        if !db.join("cert9.db").exists() {
            return String::new();
        }
        run_tool(Command::new("certutil").args(["-L", "-d", &format!("sql:{}", db.display())]))
    }

    fn bundle(&self) -> String {
        std::fs::read_to_string(self.root.join("etc/ssl/certs/ca-certificates.crt")).unwrap()
    }

    /// The CA certificate's base64 lines (as the bundle holds them).
    fn ca_body(&self) -> String {
        let pem = self.ok(&["ca", "--pem"]);
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn marker(&self) -> Option<String> {
        std::fs::read_to_string(self.sb.state_dir().join("ca/trusted")).ok()
    }

    /// Every file and link under the system root and the home, with its contents or target
    /// (NSS databases by their listing).
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        walk(&self.root, &mut out);
        for db in [&self.chrome, &self.profile] {
            out.insert(db.clone(), self.nss(db));
        }
        out
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            out.insert(path, format!("-> {}", target.display()));
        } else if meta.is_dir() {
            walk(&path, out);
        } else {
            let bytes = std::fs::read(&path).unwrap();
            out.insert(path, String::from_utf8_lossy(&bytes).into_owned());
        }
    }
}

/// The line of `out` about the store whose description contains `store`.
fn line_for<'a>(out: &'a str, store: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| !l.starts_with(' ') && l.contains(store))
        .collect()
}

#[test]
fn trust_adds_to_every_store_once_and_untrust_leaves_nothing_behind() {
    let Some(s) = stores() else { return };
    let before = s.snapshot();
    let bundle_before = s.bundle();
    let body = s.ca_body();
    assert!(!bundle_before.contains(&body));

    let out = s.ok(&["trust"]);
    for store in ["system store", "Chrome/Chromium", "Firefox profile"] {
        assert_eq!(
            line_for(&out, store).last().map(|l| l.ends_with(": added")),
            Some(true),
            "{store}:\n{out}"
        );
    }
    for db in [&s.chrome, &s.profile] {
        let list = s.nss(db);
        let line = list
            .lines()
            .find(|l| l.starts_with("wharf local CA "))
            .unwrap_or_else(|| panic!("no wharf CA in {}:\n{list}", db.display()));
        assert!(line.split_whitespace().any(|w| w == "C,,"), "{line}");
    }
    assert!(
        s.bundle().contains(&body),
        "the generated bundle has the CA"
    );
    let wharf_files: Vec<_> = std::fs::read_dir(s.root.join("usr/local/share/ca-certificates"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        wharf_files.len() == 1 && wharf_files[0].starts_with("wharf-"),
        "{wharf_files:?}"
    );
    let hook_log = || std::fs::read_to_string(s.sb.dir.path().join("hook.log")).unwrap_or_default();
    let added = format!("+{}/etc/ssl/certs/wharf-", s.root.display());
    assert!(
        hook_log().contains(&added),
        "the hooks hear of it:\n{}",
        hook_log()
    );
    let marker = s.marker().expect("trust writes the marker");
    assert_eq!(marker.lines().count(), 3, "{marker}");

    // Again: nothing to do, nothing doubled.
    let again = s.ok(&["trust"]);
    assert_eq!(again.matches(": already there").count(), 6, "{again}");
    assert!(!again.contains("certutil -A"), "{again}");
    let list = s.nss(&s.chrome);
    assert_eq!(list.matches("wharf local CA").count(), 1, "{list}");
    assert_eq!(s.bundle().matches(&body).count(), 1);

    let out = s.ok(&["untrust"]);
    for store in ["system store", "Chrome/Chromium", "Firefox profile"] {
        assert_eq!(
            line_for(&out, store)
                .last()
                .map(|l| l.ends_with(": removed")),
            Some(true),
            "{store}:\n{out}"
        );
    }
    assert_eq!(s.marker(), None, "untrust clears the marker");
    let removed = added.replacen('+', "-", 1);
    assert!(
        hook_log().contains(&removed),
        "the hooks hear of the removal too (Java's keystore):\n{}",
        hook_log()
    );
    assert_eq!(
        s.bundle(),
        bundle_before,
        "the bundle is as it was, byte for byte"
    );
    let mut after = s.snapshot();
    // trust made Chrome's database, which Chrome would have made itself: it stays, empty.
    assert!(!after[&s.chrome].contains("wharf"));
    after.insert(s.chrome.clone(), String::new());
    assert_eq!(after, before, "the stores are as they were");

    let again = s.ok(&["untrust"]);
    assert_eq!(again.matches(": already absent").count(), 3, "{again}");
}

#[test]
fn dry_run_prints_the_commands_and_changes_nothing() {
    let Some(s) = stores() else { return };
    let before = s.snapshot();
    let out = s.ok(&["trust", "--dry-run"]);
    for cmd in [
        "install -m 0644 ",
        "update-ca-certificates --certsconf ",
        "certutil -N -d sql:",
        "certutil -A -d sql:",
        "-t C,, -n 'wharf local CA ",
    ] {
        assert!(out.contains(cmd), "{cmd}:\n{out}");
    }
    assert!(out.contains("Nothing was changed (--dry-run)"), "{out}");
    assert_eq!(s.snapshot(), before);
    assert!(!s.chrome.exists(), "not even Chrome's database is made");
    assert_eq!(s.marker(), None);

    s.ok(&["trust"]);
    let trusted = s.snapshot();
    let out = s.ok(&["untrust", "--dry-run"]);
    assert!(out.contains("certutil -D -d sql:"), "{out}");
    assert!(out.contains("update-ca-certificates --fresh"), "{out}");
    assert_eq!(s.snapshot(), trusted);
    assert!(s.marker().is_some());
    s.ok(&["untrust"]);
}

#[test]
fn untrust_also_cleans_stores_only_a_previous_trust_knew() {
    let Some(s) = stores() else { return };
    s.ok(&["trust"]);
    // Another HOME now (another login, a moved profile): the recorded stores are still visited.
    let elsewhere = s.sb.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let (status, out) = s.wharf_home(&elsewhere, &["untrust"]);
    assert!(status.success(), "{out}");
    assert!(!s.nss(&s.chrome).contains("wharf"), "{out}");
    assert!(!s.nss(&s.profile).contains("wharf"), "{out}");
    assert!(!s.bundle().contains(&s.ca_body()));
    assert_eq!(s.marker(), None);
}

#[test]
fn doctor_reports_each_store() {
    let Some(s) = stores() else { return };
    s.ok(&["ca"]);
    let (_, out) = s.wharf(&["doctor"]);
    for store in ["system store", "Chrome/Chromium", "Firefox profile"] {
        let lines = line_for(&out, store);
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("note") && l.contains("lacks wharf's CA")),
            "{store}:\n{out}"
        );
    }
    assert!(out.contains("fix: wharf trust"), "{out}");
    assert!(out.contains("NODE_EXTRA_CA_CERTS"), "{out}");

    s.ok(&["trust"]);
    let (_, out) = s.wharf(&["doctor"]);
    assert_eq!(out.matches("has wharf's CA").count(), 3, "{out}");

    // Taken out behind wharf's back, after `trust`: a problem, with who fails and the fix.
    let list = s.nss(&s.profile);
    let nick = list
        .lines()
        .find(|l| l.starts_with("wharf local CA "))
        .unwrap()
        .split("  ")
        .next()
        .unwrap()
        .to_string();
    run_tool(Command::new("certutil").args([
        "-D",
        "-d",
        &format!("sql:{}", s.profile.display()),
        "-n",
        &nick,
    ]));
    let (status, out) = s.wharf(&["doctor"]);
    let line = line_for(&out, "Firefox profile");
    assert!(
        line.iter()
            .any(|l| l.starts_with("PROBLEM") && l.contains("Firefox with this profile")),
        "{out}"
    );
    assert_eq!(status.code(), Some(1), "{out}");
    s.ok(&["untrust"]);
}

/// With `[proxy] https` unset, URLs say `https://` once the CA is trusted, and `http://`
/// again after `untrust`: a browser would show a warning before.
#[test]
fn urls_switch_to_https_once_the_ca_is_trusted() {
    let Some(s) = stores() else { return };
    let before = s.sb.serve("before", &[]);
    before.expect(" is at http://before.localhost:");
    s.ok(&["trust"]);
    let trusted = s.sb.serve("after", &[]);
    trusted.expect(" is at https://after.localhost:");
    assert!(s.sb.ls().iter().any(|i| {
        i["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://before.localhost:"))
    }));
    s.ok(&["untrust"]);
    let again = s.sb.serve("again", &[]);
    again.expect(" is at http://again.localhost:");
}
