//! Rewriting a system file wharf was asked to change (`/etc/hosts`, `/etc/nsswitch.conf`):
//! through a symlink only to a file root owns, keeping its mode and owner, and atomically (a
//! temporary file beside it, renamed over it) unless the file cannot be replaced (a bind mount,
//! as `/etc/hosts` is in containers), when it is rewritten in place. Either way it is written
//! only if it still holds the bytes the change was computed from.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub(crate) enum SysFileError {
    #[error(
        "{path} is a symlink to {target}, which uid {uid} owns, not root: wharf does not write \
         through it (point the symlink at a root-owned file, or replace it with the file)"
    )]
    Symlink {
        path: String,
        target: String,
        uid: u32,
    },
    #[error("{path} is not writable by uid {uid}")]
    NotWritable { path: String, uid: u32 },
    #[error("{path} changed while wharf was editing it; run the command again")]
    Changed { path: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SysFileError {
    let path = path.display().to_string();
    move |source| SysFileError::Io { what, path, source }
}

/// The file `path` names, read: the path to write (the symlink's target when `path` is a
/// symlink to a root-owned file) and its bytes. A missing file reads as empty.
pub(crate) fn read(path: &Path) -> Result<(PathBuf, Vec<u8>), SysFileError> {
    let target = resolve(path)?;
    match std::fs::read(&target) {
        Ok(bytes) => Ok((target, bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((target, Vec::new())),
        Err(e) => Err(io("reading", &target)(e)),
    }
}

/// `path`, or where its symlink points if root owns that.
fn resolve(path: &Path) -> Result<PathBuf, SysFileError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(io("reading", path)(e)),
    };
    if !meta.file_type().is_symlink() {
        return Ok(path.to_path_buf());
    }
    let target = std::fs::canonicalize(path).map_err(io("following the symlink", path))?;
    let uid = std::fs::metadata(&target)
        .map_err(io("reading", &target))?
        .uid();
    if uid != 0 {
        return Err(SysFileError::Symlink {
            path: path.display().to_string(),
            target: target.display().to_string(),
            uid,
        });
    }
    Ok(target)
}

/// Whether this process may write `target` (false: it needs root).
pub(crate) fn writable(target: &Path) -> bool {
    use nix::unistd::{AccessFlags, access};
    if target.exists() {
        access(target, AccessFlags::W_OK).is_ok()
    } else {
        target
            .parent()
            .is_some_and(|d| access(d, AccessFlags::W_OK).is_ok())
    }
}

/// Replace `target`'s bytes `old` (as `read` gave them) with `new`.
pub(crate) fn replace(target: &Path, old: &[u8], new: &[u8]) -> Result<(), SysFileError> {
    if !writable(target) {
        return Err(SysFileError::NotWritable {
            path: target.display().to_string(),
            uid: nix::unistd::geteuid().as_raw(),
        });
    }
    let meta = match std::fs::metadata(target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("reading", target)(e)),
    };
    let Some(meta) = meta else {
        return create(target, new);
    };
    match by_rename(target, &meta, old, new) {
        Ok(()) => Ok(()),
        Err(Fallback::InPlace) => in_place(target, old, new),
        Err(Fallback::Fail(e)) => Err(e),
    }
}

enum Fallback {
    /// The file cannot be replaced, only rewritten.
    InPlace,
    Fail(SysFileError),
}

/// Errors that mean "this file cannot be swapped for another": rewrite it in place.
fn cannot_replace(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EBUSY | Errno::EXDEV | Errno::EACCES | Errno::EPERM | Errno::EROFS)
    )
}

fn by_rename(
    target: &Path,
    meta: &std::fs::Metadata,
    old: &[u8],
    new: &[u8],
) -> Result<(), Fallback> {
    let dir = target.parent().unwrap_or(Path::new("/"));
    let file_name = target
        .file_name()
        .map_or("file".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{file_name}.wharf-{}", std::process::id()));
    let fail = |what, path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| {
            if cannot_replace(&e) {
                Fallback::InPlace
            } else {
                Fallback::Fail(io(what, &path)(e))
            }
        }
    };
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail("creating", &tmp))?;
        // Owner first: chown clears set-id bits, chmod then sets the mode as it was.
        std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))
            .map_err(fail("setting the owner of", &tmp))?;
        f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(fail("setting the mode of", &tmp))?;
        f.write_all(new).map_err(fail("writing", &tmp))?;
        f.sync_all().map_err(fail("writing", &tmp))?;
        if std::fs::read(target).map_err(fail("reading", target))? != old {
            return Err(Fallback::Fail(SysFileError::Changed {
                path: target.display().to_string(),
            }));
        }
        std::fs::rename(&tmp, target).map_err(fail("replacing", target))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Rewrite the file's contents through its own inode (a bind-mounted file cannot be renamed
/// over): under an exclusive lock, checked to still hold `old`, written from the start, cut to
/// length and synced.
fn in_place(target: &Path, old: &[u8], new: &[u8]) -> Result<(), SysFileError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .map_err(io("opening", target))?;
    let _lock = nix::fcntl::Flock::lock(
        f.try_clone().map_err(io("opening", target))?,
        nix::fcntl::FlockArg::LockExclusive,
    )
    .map_err(|(_, e)| io("locking", target)(e.into()))?;
    let mut current = Vec::new();
    f.read_to_end(&mut current).map_err(io("reading", target))?;
    if current != old {
        return Err(SysFileError::Changed {
            path: target.display().to_string(),
        });
    }
    f.rewind().map_err(io("writing", target))?;
    f.write_all(new).map_err(io("writing", target))?;
    f.set_len(new.len() as u64).map_err(io("writing", target))?;
    f.sync_all().map_err(io("writing", target))
}

fn create(target: &Path, new: &[u8]) -> Result<(), SysFileError> {
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(target)
        .map_err(io("creating", target))?;
    f.write_all(new).map_err(io("writing", target))?;
    f.sync_all().map_err(io("writing", target))
}

/// Force the in-place path (what a bind-mounted file gets), for tests.
#[cfg(test)]
pub(crate) fn replace_in_place(target: &Path, old: &[u8], new: &[u8]) -> Result<(), SysFileError> {
    in_place(target, old, new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_keeps_mode_and_refuses_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, b"one\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let (target, old) = read(&path).unwrap();
        replace(&target, &old, b"two\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        assert!(matches!(
            replace(&target, &old, b"three\n"),
            Err(SysFileError::Changed { .. })
        ));
        replace_in_place(&target, b"two\n", b"3\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"3\n");
        assert!(matches!(
            replace_in_place(&target, b"two\n", b"x"),
            Err(SysFileError::Changed { .. })
        ));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_symlink_to_a_file_root_does_not_own_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, b"x\n").unwrap();
        let link = dir.path().join("hosts");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mine = nix::unistd::geteuid().as_raw();
        if mine == 0 {
            // Root: give the file away to see the refusal (skipped where chown is not allowed).
            if std::os::unix::fs::chown(&real, Some(65534), None).is_err() {
                return;
            }
        }
        let err = read(&link).unwrap_err().to_string();
        assert!(err.contains("symlink") && err.contains("not root"), "{err}");
        if mine == 0 {
            std::os::unix::fs::chown(&real, Some(0), None).unwrap();
            let (target, old) = read(&link).unwrap();
            assert_eq!(target, real.canonicalize().unwrap());
            replace(&target, &old, b"y\n").unwrap();
            assert!(
                std::fs::symlink_metadata(&link)
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
            assert_eq!(std::fs::read(&real).unwrap(), b"y\n");
        }
    }
}
