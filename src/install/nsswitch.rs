//! glibc resolves `*.localhost` to loopback only through the `myhostname` NSS module (or
//! systemd-resolved's `resolve`); Debian does not list it in `/etc/nsswitch.conf` by default.
//! This reads the `hosts:` line, finds the module's library, and adds `myhostname` to the line
//! (before `dns`), keeping a backup beside the file: what `wharf doctor --fix` does.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The module's library, as glibc loads it.
pub(crate) const LIBRARY: &str = "libnss_myhostname.so.2";

/// What the `hosts:` line says about `*.localhost`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HostsLine {
    /// No file, or no `hosts:` line in it.
    Absent,
    /// It lists a module that resolves `*.localhost` (`myhostname` or `resolve`).
    Resolves(&'static str),
    /// It lists neither.
    Lacks,
}

/// The `hosts:` line's services (its words, `[…]` actions left out), and where it starts.
fn hosts_line(text: &str) -> Option<(usize, &str)> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("hosts:") {
            let start = offset + (line.len() - trimmed.len()) + "hosts:".len();
            let rest = rest.split('#').next().unwrap_or("");
            return Some((start, rest.trim_end_matches(['\n', '\r'])));
        }
        offset += line.len();
    }
    None
}

pub(crate) fn examine(text: Option<&str>) -> HostsLine {
    let Some((_, line)) = text.and_then(hosts_line) else {
        return HostsLine::Absent;
    };
    for module in ["myhostname", "resolve"] {
        if line.split_whitespace().any(|w| w == module) {
            return HostsLine::Resolves(module);
        }
    }
    HostsLine::Lacks
}

/// `text` with `myhostname` in its `hosts:` line, before `dns` (else at the end); `None` when
/// it has no such line or already resolves `*.localhost`.
pub(crate) fn with_myhostname(text: &str) -> Option<String> {
    if examine(Some(text)) != HostsLine::Lacks {
        return None;
    }
    let (start, line) = hosts_line(text)?;
    // The byte offset of the `dns` word in the line, if it has one.
    let mut at = None;
    let mut pos = 0;
    for word in line.split_inclusive(char::is_whitespace) {
        if word.trim_end() == "dns" {
            at = Some(start + pos);
            break;
        }
        pos += word.len();
    }
    let mut out = text.to_string();
    match at {
        Some(at) => out.insert_str(at, "myhostname "),
        None => {
            let end = start + line.trim_end().len();
            out.insert_str(end, " myhostname");
        }
    }
    Some(out)
}

/// Whether the module's library is installed: in a library directory or one of its
/// multiarch subdirectories (`/usr/lib/x86_64-linux-gnu`).
pub(crate) fn library_present() -> bool {
    ["/lib", "/usr/lib", "/lib64", "/usr/lib64"]
        .iter()
        .any(|d| has_library(Path::new(d)))
}

fn has_library(dir: &Path) -> bool {
    dir.join(LIBRARY).exists()
        || std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name().to_string_lossy().contains("-linux-")
                    && e.path().join(LIBRARY).exists()
            })
}

/// The command that installs the library on this system.
pub(crate) fn install_command(path_var: Option<std::ffi::OsString>) -> String {
    let has = |tool: &str| {
        std::env::split_paths(&path_var.clone().unwrap_or_default()).any(|d| d.join(tool).exists())
    };
    if has("apt-get") {
        "sudo apt install libnss-myhostname".into()
    } else if has("dnf") {
        "sudo dnf install systemd-libs".into()
    } else {
        format!("install the package that has {LIBRARY} (libnss-myhostname on Debian and Ubuntu)")
    }
}

/// A change to the file, not yet made.
#[derive(Debug)]
pub(crate) struct Fix {
    pub(crate) path: PathBuf,
    target: PathBuf,
    old: Vec<u8>,
    new: String,
    pub(crate) backup: PathBuf,
}

impl Fix {
    /// The `hosts:` line before and after.
    pub(crate) fn diff(&self) -> String {
        let line = |t: &str| {
            t.lines()
                .find(|l| l.trim_start().starts_with("hosts:"))
                .unwrap_or("")
                .to_string()
        };
        format!(
            "-{}\n+{}\n",
            line(&String::from_utf8_lossy(&self.old)),
            line(&self.new)
        )
    }

    /// Write the backup (same mode and owner), then the file.
    pub(crate) fn apply(&self) -> anyhow::Result<()> {
        if !crate::sys::sysfile::writable(&self.target) {
            bail!(
                "{} is not writable by you; run this as root: sudo wharf doctor --fix",
                self.path.display()
            );
        }
        let meta = std::fs::metadata(&self.target)
            .with_context(|| format!("reading {}", self.target.display()))?;
        let mut backup = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(meta.mode() & 0o777)
            .open(&self.backup)
            .with_context(|| format!("creating the backup {}", self.backup.display()))?;
        backup
            .write_all(&self.old)
            .and_then(|()| backup.sync_all())
            .with_context(|| format!("writing the backup {}", self.backup.display()))?;
        let _ = std::os::unix::fs::fchown(&backup, Some(meta.uid()), Some(meta.gid()));
        crate::sys::sysfile::replace(&self.target, &self.old, self.new.as_bytes())?;
        Ok(())
    }

    /// How to undo it.
    pub(crate) fn undo(&self) -> String {
        format!("cp {} {}", self.backup.display(), self.target.display())
    }
}

/// The fix for the file at `path`: `None` when it needs none (or has no `hosts:` line).
pub(crate) fn plan(path: &Path) -> anyhow::Result<Option<Fix>> {
    let (target, old) = crate::sys::sysfile::read(path)?;
    let text = String::from_utf8(old.clone())
        .with_context(|| format!("{} is not UTF-8 text", target.display()))?;
    let Some(new) = with_myhostname(&text) else {
        return Ok(None);
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let backup = PathBuf::from(format!("{}.before-wharf-{secs}", target.display()));
    Ok(Some(Fix {
        path: path.to_path_buf(),
        target,
        old,
        new,
        backup,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn myhostname_goes_before_dns_and_only_once() {
        let debian = "# comment hosts: x\npasswd: files\nhosts:          files mdns4_minimal [NOTFOUND=return] dns\nnetworks: files\n";
        let out = with_myhostname(debian).unwrap();
        assert_eq!(
            out,
            debian.replace("] dns", "] myhostname dns"),
            "only the hosts: line changes"
        );
        assert_eq!(examine(Some(&out)), HostsLine::Resolves("myhostname"));
        assert!(with_myhostname(&out).is_none());
        assert_eq!(
            with_myhostname("hosts: files\r\n").unwrap(),
            "hosts: files myhostname\r\n"
        );
        assert_eq!(
            with_myhostname("hosts: files # dns later\n").unwrap(),
            "hosts: files myhostname # dns later\n"
        );
        assert_eq!(
            examine(Some("hosts: files resolve [!UNAVAIL=return] dns")),
            HostsLine::Resolves("resolve")
        );
        assert_eq!(examine(Some("passwd: files\n")), HostsLine::Absent);
        assert_eq!(examine(None), HostsLine::Absent);
    }

    #[test]
    fn apply_keeps_a_backup_that_undoes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nsswitch.conf");
        let original = "hosts: files dns\n";
        std::fs::write(&path, original).unwrap();
        let fix = plan(&path).unwrap().unwrap();
        assert_eq!(
            fix.diff(),
            "-hosts: files dns\n+hosts: files myhostname dns\n"
        );
        fix.apply().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "hosts: files myhostname dns\n"
        );
        assert_eq!(std::fs::read_to_string(&fix.backup).unwrap(), original);
        assert!(
            plan(&path).unwrap().is_none(),
            "a second fix has nothing to do"
        );
    }
}
