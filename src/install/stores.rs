//! The trust stores clients on this machine read, and wharf's CA in them: the system store
//! (Debian/Ubuntu, Fedora/RHEL, openSUSE, Arch), the NSS databases of Chromium/Chrome
//! (`~/.pki/nssdb`, Linux) and of every Firefox profile, and the macOS login keychain. Each
//! store knows, in one place, how to find out whether the CA is in it and the commands that
//! add or remove it; `wharf trust`, `untrust` and `doctor` only plan, print and run them.
//! Every external command goes through `query` (read-only, also under `--dry-run`) or
//! `change` (printed instead of run under `--dry-run`; stderr kept for the report).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// wharf's CA as the stores see it.
pub(crate) struct Cert {
    pub(crate) path: PathBuf,
    der: Vec<u8>,
    /// The first 8 bytes of its SHA-256, in hex: in file names and nicknames, so that removal
    /// takes exactly this CA.
    short: String,
    #[cfg_attr(
        not(target_os = "macos"),
        allow(dead_code, reason = "the keychain's key")
    )]
    sha256: String,
}

impl Cert {
    /// The CA certificate at `path`, `pem` its contents.
    pub(crate) fn new(path: &Path, pem: &str) -> Option<Cert> {
        let der = crate::ca::pem_body(pem, "CERTIFICATE")?;
        let mut hash = graviola::hashing::sha2::Sha256Context::new();
        hash.update(&der);
        let sha256: String = hash.finish().iter().map(|b| format!("{b:02X}")).collect();
        Some(Cert {
            path: path.to_path_buf(),
            short: sha256[..16].to_ascii_lowercase(),
            sha256,
            der,
        })
    }

    /// Its name in NSS databases.
    pub(crate) fn nickname(&self) -> String {
        format!("wharf local CA {}", self.short)
    }

    /// Its file name in the system store's anchor directory.
    pub(crate) fn file_name(&self) -> String {
        format!("wharf-{}.crt", self.short)
    }

    /// `SHA-256 AB:CD:…` (the first 8 bytes), for people comparing stores.
    pub(crate) fn fingerprint(&self) -> String {
        let pairs: Vec<&str> = (0..16).step_by(2).map(|i| &self.sha256[i..i + 2]).collect();
        format!("SHA-256 {}…", pairs.join(":"))
    }

    /// Whether a PEM file (a bundle of roots) has this certificate.
    fn in_bundle(&self, path: &Path) -> bool {
        std::fs::read(path)
            .ok()
            .and_then(|b| pem::parse_many(b).ok())
            .is_some_and(|all| all.iter().any(|p| p.contents() == self.der.as_slice()))
    }
}

/// Where the stores are.
pub(crate) struct Places {
    /// `$HOME`: the NSS databases and the keychain are under it.
    pub(crate) home: Option<PathBuf>,
    /// `/`, where the system store is; tests point it at a temporary directory
    /// (`$WHARF_SYSTEM_TRUST_ROOT`), under which only the Debian layout is used.
    pub(crate) system_root: PathBuf,
    /// `$PATH`, to tell whether a tool is installed.
    pub(crate) path_var: Option<OsString>,
}

impl Places {
    fn real_root(&self) -> bool {
        self.system_root == Path::new("/")
    }

    fn under_root(&self, path: &str) -> PathBuf {
        self.system_root.join(path.trim_start_matches('/'))
    }

    fn has_tool(&self, tool: &str) -> bool {
        self.path_var
            .as_ref()
            .is_some_and(|p| std::env::split_paths(p).any(|d| d.join(tool).is_file()))
    }
}

/// Which system store layout this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavour {
    Debian,
    Fedora,
    OpenSuse,
    Arch,
}

impl Flavour {
    const ALL: [Flavour; 4] = [
        Flavour::Fedora,
        Flavour::OpenSuse,
        Flavour::Arch,
        Flavour::Debian,
    ];

    fn id(self) -> &'static str {
        match self {
            Flavour::Debian => "debian",
            Flavour::Fedora => "fedora",
            Flavour::OpenSuse => "opensuse",
            Flavour::Arch => "arch",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Flavour::Debian => "Debian/Ubuntu",
            Flavour::Fedora => "Fedora/RHEL",
            Flavour::OpenSuse => "openSUSE",
            Flavour::Arch => "Arch",
        }
    }

    /// The directory whose presence tells the layout, where anchors go (Arch: `trust` keeps
    /// them here itself).
    fn anchors(self) -> &'static str {
        match self {
            Flavour::Debian => "/usr/local/share/ca-certificates",
            Flavour::Fedora => "/etc/pki/ca-trust/source/anchors",
            Flavour::OpenSuse => "/etc/pki/trust/anchors",
            Flavour::Arch => "/etc/ca-certificates/trust-source/anchors",
        }
    }

    /// The PEM bundle the update command generates, which OpenSSL, curl, wget and Go read.
    fn bundle(self) -> &'static str {
        match self {
            Flavour::Debian => "/etc/ssl/certs/ca-certificates.crt",
            Flavour::Fedora => "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
            Flavour::OpenSuse => "/var/lib/ca-certificates/ca-bundle.pem",
            Flavour::Arch => "/etc/ca-certificates/extracted/tls-ca-bundle.pem",
        }
    }

    /// The command that regenerates the bundle (`fresh`: also drop links to removed files).
    fn update(self, places: &Places, fresh: bool) -> Vec<String> {
        let mut argv: Vec<String> = match self {
            Flavour::Fedora => vec!["update-ca-trust".into(), "extract".into()],
            _ => vec!["update-ca-certificates".into()],
        };
        if self == Flavour::Debian {
            if fresh {
                argv.push("--fresh".into());
            }
            if !places.real_root() {
                for (opt, path) in [
                    ("--certsconf", "/etc/ca-certificates.conf"),
                    ("--certsdir", "/usr/share/ca-certificates"),
                    ("--localcertsdir", Flavour::Debian.anchors()),
                    ("--etccertsdir", "/etc/ssl/certs"),
                    ("--hooksdir", "/etc/ca-certificates/update.d"),
                ] {
                    argv.push(opt.into());
                    argv.push(places.under_root(path).display().to_string());
                }
            }
        }
        argv
    }
}

/// One store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Store {
    System(Flavour),
    /// Chromium/Chrome's NSS database on Linux (`~/.pki/nssdb`), made if missing: Chrome
    /// reads it when it starts.
    Chrome(PathBuf),
    /// A Firefox profile (its own NSS database).
    Firefox(PathBuf),
    /// The macOS login keychain (Safari, Chrome, and most programs there).
    #[cfg(target_os = "macos")]
    Keychain(PathBuf),
}

/// A command, and whether it must run as root.
#[derive(Debug, Clone)]
pub(crate) struct Cmd {
    pub(crate) argv: Vec<String>,
    pub(crate) root: bool,
}

impl Cmd {
    fn user(argv: &[&str]) -> Cmd {
        Cmd {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            root: false,
        }
    }

    fn root(argv: Vec<String>) -> Cmd {
        Cmd { argv, root: true }
    }

    /// Whether it goes through sudo here (it needs root and we are not).
    pub(crate) fn sudo(&self) -> bool {
        self.root && !nix::unistd::geteuid().is_root()
    }

    /// The command as run: with `sudo` in front when it needs it.
    fn full(&self) -> Vec<String> {
        let mut argv = Vec::new();
        if self.sudo() {
            argv.push("sudo".to_string());
        }
        argv.extend(self.argv.iter().cloned());
        argv
    }

    /// The command as run, as a shell would take it.
    pub(crate) fn shown(&self) -> String {
        shell(&self.full())
    }

    /// The command without `sudo`, for someone who is root.
    fn shown_as_root(&self) -> String {
        shell(&self.argv)
    }
}

/// `argv` as a shell would take it.
fn shell(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run a command that changes a store; stdout is dropped, stderr comes back when it fails.
pub(crate) fn change(cmd: &Cmd) -> Result<(), String> {
    let argv = cmd.full();
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("`{}` could not start: {e}", argv[0]))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let why = err
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map_or_else(|| out.status.to_string(), str::to_string);
    Err(format!("`{}`: {why}", cmd.shown()))
}

/// Run a command that only reads: its success and stdout, or why it could not run.
fn query(argv: &[&str]) -> Result<(bool, String), String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("`{}` could not start: {e}", argv[0]))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

const CERTUTIL_MISSING: &str = "certutil is not installed (Debian/Ubuntu: `sudo apt-get install libnss3-tools`; \
     Fedora: `sudo dnf install nss-tools`; Arch: `sudo pacman -S nss`; macOS: `brew install nss`)";

/// The stores on this machine, as they are now.
pub(crate) fn detect(places: &Places) -> Vec<Store> {
    let mut out = Vec::new();
    if let Some(f) = Flavour::ALL
        .into_iter()
        .find(|f| places.under_root(f.anchors()).is_dir())
    {
        out.push(Store::System(f));
    }
    let Some(home) = &places.home else {
        return out;
    };
    if cfg!(target_os = "linux") {
        out.push(Store::Chrome(home.join(".pki/nssdb")));
    }
    let profile_dirs = [
        ".mozilla/firefox",
        "snap/firefox/common/.mozilla/firefox",
        ".var/app/org.mozilla.firefox/.mozilla/firefox",
        "Library/Application Support/Firefox/Profiles",
    ];
    let mut profiles: Vec<PathBuf> = profile_dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(home.join(d)).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cert9.db").is_file())
        .collect();
    profiles.sort();
    out.extend(profiles.into_iter().map(Store::Firefox));
    #[cfg(target_os = "macos")]
    out.push(Store::Keychain(
        home.join("Library/Keychains/login.keychain-db"),
    ));
    out
}

impl Store {
    /// How the store is recorded in `STATE/ca/trusted`, a line each.
    pub(crate) fn id(&self) -> String {
        match self {
            Store::System(f) => format!("system {}", f.id()),
            Store::Chrome(p) => format!("nss {}", p.display()),
            Store::Firefox(p) => format!("firefox {}", p.display()),
            #[cfg(target_os = "macos")]
            Store::Keychain(p) => format!("keychain {}", p.display()),
        }
    }

    /// The store a line of `STATE/ca/trusted` names.
    pub(crate) fn from_id(line: &str) -> Option<Store> {
        let (kind, rest) = line.split_once(' ')?;
        let path = PathBuf::from(rest);
        match kind {
            "system" => Flavour::ALL
                .into_iter()
                .find(|f| f.id() == rest)
                .map(Store::System),
            "nss" => Some(Store::Chrome(path)),
            "firefox" => Some(Store::Firefox(path)),
            #[cfg(target_os = "macos")]
            "keychain" => Some(Store::Keychain(path)),
            _ => None,
        }
    }

    /// What the store is, for people.
    pub(crate) fn describe(&self, places: &Places) -> String {
        match self {
            Store::System(f) => format!(
                "system store ({}, {})",
                f.label(),
                places.under_root(f.anchors()).display()
            ),
            Store::Chrome(p) => format!("Chrome/Chromium ({})", p.display()),
            Store::Firefox(p) => format!("Firefox profile ({})", p.display()),
            #[cfg(target_os = "macos")]
            Store::Keychain(p) => format!("macOS login keychain ({})", p.display()),
        }
    }

    /// Who fails to trust `https://NAME.localhost` while the CA is not in this store.
    pub(crate) fn clients(&self) -> &'static str {
        match self {
            Store::System(_) => {
                "curl, wget, Go, Python and OpenSSL programs run outside wharf's instances"
            }
            Store::Chrome(_) => "Chrome/Chromium (and Electron apps) on Linux",
            Store::Firefox(_) => "Firefox with this profile",
            #[cfg(target_os = "macos")]
            Store::Keychain(_) => "Safari, Chrome, curl and Go on macOS",
        }
    }

    /// Whether the CA is in the store; Err: it cannot be told (why, and the fix).
    pub(crate) fn contains(&self, cert: &Cert, places: &Places) -> Result<bool, String> {
        match self {
            Store::System(f) => {
                if *f != Flavour::Debian && !places.real_root() {
                    return Err(test_root_only());
                }
                let file = places.under_root(f.anchors()).join(cert.file_name());
                Ok(file.exists() || cert.in_bundle(&places.under_root(f.bundle())))
            }
            Store::Chrome(dir) | Store::Firefox(dir) => {
                if !dir.join("cert9.db").is_file() {
                    return Ok(false);
                }
                if !places.has_tool("certutil") {
                    return Err(CERTUTIL_MISSING.into());
                }
                let db = nss_db(dir);
                let nick = cert.nickname();
                let (listed, _) = query(&["certutil", "-L", "-d", &db, "-n", &nick])?;
                Ok(listed)
            }
            #[cfg(target_os = "macos")]
            Store::Keychain(kc) => Ok(keychain_sha1(cert, kc)?.is_some()),
        }
    }

    /// The commands that add the CA; Err: they cannot run here (why, and the fix).
    pub(crate) fn add(&self, cert: &Cert, places: &Places) -> Result<Vec<Cmd>, String> {
        let ca = cert.path.display().to_string();
        match self {
            Store::System(Flavour::Arch) if places.real_root() => as_root(
                places,
                vec![Cmd::root(vec![
                    "trust".into(),
                    "anchor".into(),
                    "--store".into(),
                    ca,
                ])],
            ),
            Store::System(f) => {
                if *f != Flavour::Debian && !places.real_root() {
                    return Err(test_root_only());
                }
                let file = places.under_root(f.anchors()).join(cert.file_name());
                as_root(
                    places,
                    vec![
                        Cmd::root(vec![
                            "install".into(),
                            "-m".into(),
                            "0644".into(),
                            ca,
                            file.display().to_string(),
                        ]),
                        Cmd::root(f.update(places, false)),
                    ],
                )
            }
            Store::Chrome(dir) | Store::Firefox(dir) => {
                if !places.has_tool("certutil") {
                    return Err(CERTUTIL_MISSING.into());
                }
                let db = nss_db(dir);
                let mut cmds = Vec::new();
                if !dir.join("cert9.db").is_file() {
                    let d = dir.display().to_string();
                    cmds.push(Cmd::user(&["mkdir", "-p", "-m", "0700", &d]));
                    cmds.push(Cmd::user(&[
                        "certutil",
                        "-N",
                        "-d",
                        &db,
                        "--empty-password",
                    ]));
                }
                let nick = cert.nickname();
                cmds.push(Cmd::user(&[
                    "certutil", "-A", "-d", &db, "-t", "C,,", "-n", &nick, "-i", &ca,
                ]));
                Ok(cmds)
            }
            #[cfg(target_os = "macos")]
            Store::Keychain(kc) => Ok(vec![Cmd::user(&[
                "security",
                "add-trusted-cert",
                "-r",
                "trustRoot",
                "-k",
                &kc.display().to_string(),
                &ca,
            ])]),
        }
    }

    /// The commands that take the CA out again.
    pub(crate) fn remove(&self, cert: &Cert, places: &Places) -> Result<Vec<Cmd>, String> {
        match self {
            Store::System(Flavour::Arch) if places.real_root() => as_root(
                places,
                vec![Cmd::root(vec![
                    "trust".into(),
                    "anchor".into(),
                    "--remove".into(),
                    cert.path.display().to_string(),
                ])],
            ),
            Store::System(f) => {
                if *f != Flavour::Debian && !places.real_root() {
                    return Err(test_root_only());
                }
                let file = places.under_root(f.anchors()).join(cert.file_name());
                let mut cmds = vec![
                    Cmd::root(vec!["rm".into(), "-f".into(), file.display().to_string()]),
                    Cmd::root(f.update(places, true)),
                ];
                // Debian's update-ca-certificates tells its hooks (Java's keystore) only of
                // removals listed in ca-certificates.conf, never of a local file gone: tell
                // them as it would.
                let hooks = places.under_root("/etc/ca-certificates/update.d");
                if *f == Flavour::Debian && hooks.is_dir() {
                    let pem = places
                        .under_root("/etc/ssl/certs")
                        .join(cert.file_name().replace(".crt", ".pem"));
                    cmds.push(Cmd::root(vec![
                        "sh".into(),
                        "-c".into(),
                        HOOKS_SCRIPT.into(),
                        "sh".into(),
                        hooks.display().to_string(),
                        pem.display().to_string(),
                    ]));
                }
                as_root(places, cmds)
            }
            Store::Chrome(dir) | Store::Firefox(dir) => {
                if !places.has_tool("certutil") {
                    return Err(CERTUTIL_MISSING.into());
                }
                let (db, nick) = (nss_db(dir), cert.nickname());
                Ok(vec![Cmd::user(&["certutil", "-D", "-d", &db, "-n", &nick])])
            }
            #[cfg(target_os = "macos")]
            Store::Keychain(kc) => {
                let Some(sha1) = keychain_sha1(cert, kc)? else {
                    return Ok(Vec::new());
                };
                Ok(vec![Cmd::user(&[
                    "security",
                    "delete-certificate",
                    "-Z",
                    &sha1,
                    &kc.display().to_string(),
                ])])
            }
        }
    }

    /// What to try when this store's commands failed.
    pub(crate) fn fix(&self, cmds: &[Cmd]) -> String {
        match self {
            Store::System(_) => {
                let shown: Vec<String> = cmds.iter().map(Cmd::shown_as_root).collect();
                format!(
                    "this needs root; run as root (or with sudo): {}",
                    shown.join(" && ")
                )
            }
            Store::Chrome(dir) | Store::Firefox(dir) => format!(
                "check that {} is yours and writable (close the browser if it keeps it locked), \
                 then run the command again",
                dir.display()
            ),
            #[cfg(target_os = "macos")]
            Store::Keychain(kc) => format!(
                "unlock the keychain (`security unlock-keychain {}`) and confirm the dialog",
                kc.display()
            ),
        }
    }
}

/// `cmds`, when they can run as root here: we are root, or sudo is there to ask.
fn as_root(places: &Places, cmds: Vec<Cmd>) -> Result<Vec<Cmd>, String> {
    if !cmds.iter().any(Cmd::sudo) || places.has_tool("sudo") {
        return Ok(cmds);
    }
    let shown: Vec<String> = cmds.iter().map(Cmd::shown_as_root).collect();
    Err(format!(
        "it needs root and sudo is not installed; run as root: {}",
        shown.join(" && ")
    ))
}

/// Pipe `-PEM` ($2) into each hook of update-ca-certificates in $1, as it does itself.
const HOOKS_SCRIPT: &str =
    r#"for h in $(run-parts --test -- "$1"); do printf -- '-%s\n' "$2" | "$h"; done"#;

fn test_root_only() -> String {
    "under $WHARF_SYSTEM_TRUST_ROOT only the Debian layout is used".into()
}

fn nss_db(dir: &Path) -> String {
    format!("sql:{}", dir.display())
}

/// The SHA-1 the keychain knows this CA by (`security delete-certificate -Z` takes it), if
/// the CA is there.
#[cfg(target_os = "macos")]
fn keychain_sha1(cert: &Cert, kc: &Path) -> Result<Option<String>, String> {
    let kc = kc.display().to_string();
    let (_, out) = query(&[
        "security",
        "find-certificate",
        "-a",
        "-Z",
        "-c",
        "wharf local CA",
        &kc,
    ])?;
    // Each certificate: `SHA-256 hash: …` then `SHA-1 hash: …`.
    let mut ours = false;
    for line in out.lines() {
        if let Some(h) = line.strip_prefix("SHA-256 hash: ") {
            ours = h.trim().eq_ignore_ascii_case(&cert.sha256);
        } else if let Some(h) = line.strip_prefix("SHA-1 hash: ")
            && ours
        {
            return Ok(Some(h.trim().to_string()));
        }
    }
    Ok(None)
}

/// What a run of `trust` or `untrust` does to one store.
pub(crate) enum Step {
    /// Commands to run.
    Run(Vec<Cmd>),
    /// Nothing to do: the CA already is (trust) or is not (untrust) there.
    Done,
    Skipped(String),
}

/// A store and its step.
pub(crate) struct Planned {
    pub(crate) store: Store,
    pub(crate) step: Step,
}

/// What to do to each of `stores` so that the CA is in it (`add`) or not.
pub(crate) fn plan(stores: Vec<Store>, cert: &Cert, places: &Places, add: bool) -> Vec<Planned> {
    stores
        .into_iter()
        .map(|store| {
            let step = match store.contains(cert, places) {
                Err(why) => Step::Skipped(why),
                Ok(there) if there == add => Step::Done,
                Ok(_) => match if add {
                    store.add(cert, places)
                } else {
                    store.remove(cert, places)
                } {
                    Ok(cmds) => Step::Run(cmds),
                    Err(why) => Step::Skipped(why),
                },
            };
            Planned { store, step }
        })
        .collect()
}

/// The plan as text: a line per store, its commands under it.
pub(crate) fn describe(plan: &[Planned], places: &Places, add: bool, dry_run: bool) -> String {
    let mut out = String::new();
    let done = if add { "already there" } else { "not there" };
    let run = if dry_run { "would run" } else { "runs" };
    for p in plan {
        let _ = write!(out, "  {}: ", p.store.describe(places));
        match &p.step {
            Step::Done => {
                let _ = writeln!(out, "{done}");
            }
            Step::Skipped(why) => {
                let _ = writeln!(out, "skipped: {why}");
            }
            Step::Run(cmds) => {
                let _ = writeln!(out, "{run}");
                for c in cmds {
                    let _ = writeln!(out, "      {}", c.shown());
                }
            }
        }
    }
    out
}

/// How a store came out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Changed as asked (added or removed).
    Changed,
    /// Already as asked.
    Unchanged,
    Skipped(String),
    /// Why, and the fix.
    Failed(String, String),
}

/// Run the plan: each store's commands in order, stopping at its first failure, then look
/// again whether the store now is as asked.
pub(crate) fn apply(
    plan: Vec<Planned>,
    cert: &Cert,
    places: &Places,
    add: bool,
) -> Vec<(Store, Outcome)> {
    plan.into_iter()
        .map(|Planned { store, step }| {
            let outcome = match step {
                Step::Done => Outcome::Unchanged,
                Step::Skipped(why) => Outcome::Skipped(why),
                Step::Run(cmds) => match cmds.iter().try_for_each(change) {
                    Err(why) => Outcome::Failed(why, store.fix(&cmds)),
                    Ok(()) => match store.contains(cert, places) {
                        Ok(there) if there == add => Outcome::Changed,
                        Ok(_) => Outcome::Failed(
                            format!(
                                "the commands succeeded but the CA is {} there",
                                if add { "not" } else { "still" }
                            ),
                            store.fix(&cmds),
                        ),
                        Err(why) => Outcome::Failed(why, store.fix(&cmds)),
                    },
                },
            };
            (store, outcome)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(root: &Path) -> Places {
        Places {
            home: Some(root.join("home")),
            system_root: root.to_path_buf(),
            path_var: None,
        }
    }

    #[test]
    fn ids_round_trip_and_name_the_store() {
        for store in [
            Store::System(Flavour::Fedora),
            Store::Chrome("/h/.pki/nssdb".into()),
            Store::Firefox("/h/.mozilla/firefox/a b.default".into()),
        ] {
            assert_eq!(Store::from_id(&store.id()), Some(store));
        }
        assert_eq!(Store::from_id("gibberish"), None);
        assert_eq!(Store::from_id("system beos"), None);
    }

    #[test]
    fn detection_goes_by_what_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let p = places(tmp.path());
        assert!(!detect(&p).iter().any(|s| matches!(s, Store::System(_))));
        std::fs::create_dir_all(tmp.path().join("usr/local/share/ca-certificates")).unwrap();
        let profile = tmp.path().join("home/.mozilla/firefox/x.default");
        std::fs::create_dir_all(&profile).unwrap();
        std::fs::create_dir_all(tmp.path().join("home/.mozilla/firefox/no-db")).unwrap();
        std::fs::write(profile.join("cert9.db"), b"").unwrap();
        let found = detect(&p);
        assert!(found.contains(&Store::System(Flavour::Debian)));
        assert!(found.contains(&Store::Firefox(profile)));
        assert_eq!(
            found
                .iter()
                .filter(|s| matches!(s, Store::Firefox(_)))
                .count(),
            1
        );
    }

    #[test]
    fn a_test_root_points_update_ca_certificates_into_it() {
        let p = places(Path::new("/tmp/r"));
        let argv = Flavour::Debian.update(&p, true).join(" ");
        assert!(
            argv.starts_with("update-ca-certificates --fresh "),
            "{argv}"
        );
        assert!(
            argv.contains("--etccertsdir /tmp/r/etc/ssl/certs"),
            "{argv}"
        );
        assert!(argv.contains("--hooksdir /tmp/r/etc/ca-certificates/update.d"));
        let real = Places {
            system_root: "/".into(),
            ..p
        };
        assert_eq!(
            Flavour::Debian.update(&real, false),
            ["update-ca-certificates"]
        );
    }

    #[test]
    fn shown_commands_quote_what_a_shell_would_split() {
        let c = Cmd::user(&["certutil", "-n", "wharf local CA 1", "-t", "C,,"]);
        assert_eq!(c.shown(), "certutil -n 'wharf local CA 1' -t C,,");
    }
}
