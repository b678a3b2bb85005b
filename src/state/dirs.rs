//! Where wharf keeps its files, and the private-file rules for them: directories 0700 and ours,
//! files 0600, never through a symlink, replaced atomically. It does not decide what goes in them.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The two directories wharf owns: `state` survives reboots (sticky ports), `runtime` does not
/// (sockets, the control socket, locks of live processes).
#[derive(Clone, Debug)]
pub(crate) struct Dirs {
    pub(crate) state: PathBuf,
    pub(crate) runtime: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DirError {
    #[error("cannot find a home for wharf's state: neither $XDG_STATE_HOME nor $HOME is set")]
    NoHome,
    #[error(
        "{0} is a symlink; wharf keeps its files only in a real directory of its own (remove it)"
    )]
    Symlink(PathBuf),
    #[error(
        "{path} belongs to uid {owner}, not to you (uid {me}); remove it or set $XDG_RUNTIME_DIR"
    )]
    NotOurs { path: PathBuf, owner: u32, me: u32 },
    #[error("{0} exists but is not a directory")]
    NotADir(PathBuf),
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Dirs {
    /// Resolve the directories from environment variables, read through `var` (main passes
    /// `std::env::var_os`). `WHARF_STATE_DIR`/`WHARF_RUNTIME_DIR` override the XDG defaults.
    pub(crate) fn from_env(var: impl Fn(&str) -> Option<OsString>) -> Result<Dirs, DirError> {
        let nonempty = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let state = match nonempty("WHARF_STATE_DIR") {
            Some(dir) => dir,
            None => match (nonempty("XDG_STATE_HOME"), nonempty("HOME")) {
                (Some(xdg), _) => xdg.join("wharf"),
                (None, Some(home)) => home.join(".local/state/wharf"),
                (None, None) => return Err(DirError::NoHome),
            },
        };
        let runtime = match nonempty("WHARF_RUNTIME_DIR") {
            Some(dir) => dir,
            None => match nonempty("XDG_RUNTIME_DIR") {
                Some(xdg) => xdg.join("wharf"),
                None => {
                    let tmp = nonempty("TMPDIR").unwrap_or_else(|| PathBuf::from("/tmp"));
                    tmp.join(format!("wharf-{}", nix::unistd::getuid()))
                }
            },
        };
        Ok(Dirs { state, runtime })
    }

    /// The state directory, created private if missing.
    pub(crate) fn state(&self) -> Result<&Path, DirError> {
        ensure_private_dir(&self.state)?;
        Ok(&self.state)
    }

    /// The runtime directory, created private if missing.
    pub(crate) fn runtime(&self) -> Result<&Path, DirError> {
        ensure_private_dir(&self.runtime)?;
        Ok(&self.runtime)
    }
}

/// Create `dir` (and its parents) if needed; then insist it is a real directory owned by us,
/// and tighten it to 0700 if it was looser.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), DirError> {
    let create = |source| DirError::Create {
        path: dir.to_path_buf(),
        source,
    };
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(create)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(create(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(create)?;
    if meta.file_type().is_symlink() {
        return Err(DirError::Symlink(dir.to_path_buf()));
    }
    if !meta.is_dir() {
        return Err(DirError::NotADir(dir.to_path_buf()));
    }
    let me = nix::unistd::getuid().as_raw();
    if meta.uid() != me {
        return Err(DirError::NotOurs {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(create)?;
    }
    Ok(())
}

/// Open (creating if needed) a private file for locking or appending; refuses symlinks.
pub(crate) fn open_private(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Replace `path` with `bytes` so that readers see the old or the new content, never a mix:
/// a fresh 0600 temp file beside it (`O_EXCL`, no symlinks), fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Move a file that cannot be used to `NAME.corrupt-UNIXTIME[-N]` beside it, so the user can
/// look at it and wharf can start afresh; returns the new path. Never replaces an earlier one.
pub(crate) fn move_aside(path: &Path) -> io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for n in 0..100 {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!("{CORRUPT_MARK}{secs}"));
        if n > 0 {
            name.push(format!("-{n}"));
        }
        let aside = path.with_file_name(name);
        // A link fails where rename would overwrite.
        match fs::hard_link(path, &aside) {
            Ok(()) => {
                fs::remove_file(path)?;
                return Ok(aside);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "too many corrupt copies of {} already; delete some",
        path.display()
    )))
}

/// What `move_aside` puts between a file's name and the time: how `doctor` finds them.
pub(crate) const CORRUPT_MARK: &str = ".corrupt-";

/// Read a private file, refusing to follow a symlink. `Ok(None)` when it does not exist.
pub(crate) fn read_private(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    match file {
        Ok(mut f) => {
            let mut buf = Vec::new();
            io::Read::read_to_end(&mut f, &mut buf)?;
            Ok(Some(buf))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dir_is_0700_even_if_it_was_looser() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_private_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn symlinked_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            ensure_private_dir(&link),
            Err(DirError::Symlink(_))
        ));
    }

    #[test]
    fn atomic_write_is_0600_and_refuses_symlinked_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(read_private(&path).unwrap().unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let link = tmp.path().join("l.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_private(&link).is_err());
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            2,
            "no temp file left"
        );
    }

    #[test]
    fn moving_aside_twice_keeps_both_copies() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.json");
        fs::write(&path, b"one").unwrap();
        let first = move_aside(&path).unwrap();
        fs::write(&path, b"two").unwrap();
        let second = move_aside(&path).unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read(&first).unwrap(), b"one");
        assert_eq!(fs::read(&second).unwrap(), b"two");
        assert!(!path.exists());
    }

    #[test]
    fn overrides_and_fallbacks() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let d = Dirs::from_env(env(&[("HOME", "/h"), ("XDG_RUNTIME_DIR", "/run/u")])).unwrap();
        assert_eq!(d.state, Path::new("/h/.local/state/wharf"));
        assert_eq!(d.runtime, Path::new("/run/u/wharf"));
        let d = Dirs::from_env(env(&[("WHARF_STATE_DIR", "/s"), ("HOME", "/h")])).unwrap();
        assert_eq!(d.state, Path::new("/s"));
        assert!(d.runtime.to_string_lossy().starts_with("/tmp/wharf-"));
        assert!(Dirs::from_env(env(&[])).is_err());
    }
}
