//! Files another user could have written: `wharf.toml` (whose commands run as you) and
//! `config.toml` are read only when nobody but you or root could have written them or the
//! directories they are reached through, unless you allowed the path (the class of git's
//! `safe.directory`). What the files mean is `project`'s and `config`'s business.

use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Group, Uid, User};

/// The sticky bit (`S_ISVTX`, whose type differs between platforms).
const STICKY: u32 = 0o1000;

/// The environment variable that allows paths for one command (`:`-separated, like `PATH`).
pub(crate) const ENV: &str = "WHARF_TRUST";

/// Paths the user allowed whatever their owner or mode. An entry allows itself and everything
/// below it; `*` allows everything.
#[derive(Clone, Debug, Default)]
pub(crate) struct Trust {
    allowed: Vec<PathBuf>,
    /// Where more paths may be allowed (`[trust] paths`), for the hint; `None` while
    /// config.toml itself is being read.
    config_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TrustError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "refusing to read {path}: {why}, so another user could have written it or what it \
         runs. If you trust it, allow it: {hint}"
    )]
    Untrusted {
        path: PathBuf,
        why: String,
        hint: String,
    },
}

impl TrustError {
    /// The file does not exist (as opposed to existing and being refused or unreadable).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, TrustError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl Trust {
    /// The paths in `$WHARF_TRUST` (`None` or empty: none).
    pub(crate) fn from_env(value: Option<&OsStr>) -> Trust {
        Trust {
            allowed: value
                .map(|v| std::env::split_paths(v).filter(|p| !p.as_os_str().is_empty()))
                .into_iter()
                .flatten()
                .collect(),
            config_file: None,
        }
    }

    /// Everything allowed: for commands that run nothing of what they read (`wharf down` only
    /// stops what was started from the file), where refusing would only keep the user from
    /// stopping their own instances.
    pub(crate) fn anything() -> Trust {
        Trust {
            allowed: vec![PathBuf::from("*")],
            config_file: None,
        }
    }

    /// These paths allowed as well: `[trust] paths` of `config_file`.
    pub(crate) fn with_config(&self, paths: &[PathBuf], config_file: &Path) -> Trust {
        Trust {
            allowed: self.allowed.iter().chain(paths).cloned().collect(),
            config_file: Some(config_file.to_path_buf()),
        }
    }

    /// Read `path` if it may be trusted; returns its real path (symlinks resolved) and text.
    pub(crate) fn read(&self, path: &Path) -> Result<(PathBuf, String), TrustError> {
        let read_err = |source| TrustError::Read {
            path: path.to_path_buf(),
            source,
        };
        let real = path.canonicalize().map_err(read_err)?;
        let checked = fs::metadata(&real).map_err(read_err)?;
        if !self.allows(&real)
            && let Err(why) = judge(&real, &checked, Uid::effective().as_raw())
        {
            return Err(TrustError::Untrusted {
                hint: self.hint(&real),
                path: real,
                why,
            });
        }
        let mut file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&real)
            .map_err(read_err)?;
        let opened = file.metadata().map_err(read_err)?;
        if (opened.dev(), opened.ino()) != (checked.dev(), checked.ino()) {
            return Err(read_err(io::Error::other(
                "it was replaced while wharf was checking it; try again",
            )));
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(read_err)?;
        Ok((real, text))
    }

    fn allows(&self, real: &Path) -> bool {
        self.allowed.iter().any(|a| {
            a.as_os_str() == "*" || real.starts_with(a.canonicalize().as_deref().unwrap_or(a))
        })
    }

    fn hint(&self, real: &Path) -> String {
        let once = format!("{ENV}={} for one command", real.display());
        match &self.config_file {
            Some(config) => format!(
                "{once}, or for good with `[trust] paths = [\"{}\"]` in {} \
                 (a directory allows everything below it)",
                real.display(),
                config.display()
            ),
            None => format!("{ENV}={} in wharf's environment", real.display()),
        }
    }
}

/// Why `file` (a real path whose metadata is `meta`) may not be trusted by uid `me`: it, its
/// directory and every directory above must be owned by `me` or root; neither it nor its
/// directory (where the project's relative paths lead) may be writable by others; a directory
/// further up may be, if it is sticky (like /tmp), since others cannot then move what is ours.
fn judge(file: &Path, meta: &Metadata, me: u32) -> Result<(), String> {
    let dir = file.parent().unwrap_or(Path::new("/"));
    let mut chain = vec![(file, meta.clone(), true)];
    for (i, d) in dir.ancestors().enumerate() {
        let m = fs::metadata(d).map_err(|e| format!("cannot check {}: {e}", d.display()))?;
        chain.push((d, m, i == 0));
    }
    for (path, m, strict) in chain {
        let owner = m.uid();
        if owner != me && owner != 0 {
            return Err(format!(
                "{} belongs to {}, not to you",
                path.display(),
                user_name(owner)
            ));
        }
        let sticky = m.mode() & STICKY != 0;
        if let Some(who) = other_writers(&m, me)
            && (strict || !sticky)
        {
            return Err(format!(
                "{} is writable by {who} (mode {:04o})",
                path.display(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// Who besides the owner may write: everyone, or the members of a group that is not the
/// owner's own private group (named after `me`, with no other members).
fn other_writers(m: &Metadata, me: u32) -> Option<String> {
    if m.mode() & 0o002 != 0 {
        return Some("everyone".into());
    }
    if m.mode() & 0o020 == 0 {
        return None;
    }
    let group = Group::from_gid(m.gid().into()).ok().flatten();
    let my_name = User::from_uid(me.into()).ok().flatten().map(|u| u.name);
    let private = group.as_ref().is_some_and(|g| {
        Some(&g.name) == my_name.as_ref() && g.mem.iter().all(|n| Some(n) == my_name.as_ref())
    });
    (!private).then(|| match group {
        Some(g) => format!("the group {}", g.name),
        None => format!("the group {}", m.gid()),
    })
}

fn user_name(uid: u32) -> String {
    match User::from_uid(uid.into()).ok().flatten() {
        Some(u) => format!("{} (uid {uid})", u.name),
        None => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn loose_modes_are_refused_and_sticky_ancestors_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        chmod(tmp.path(), 0o755);
        let shared = tmp.path().join("shared");
        let project = shared.join("project");
        fs::create_dir_all(&project).unwrap();
        let file = project.join("wharf.toml");
        fs::write(&file, "x").unwrap();
        chmod(&file, 0o644);
        let trust = Trust::from_env(None);
        let read = |t: &Trust| t.read(&file).map(|(_, text)| text);

        chmod(&shared, 0o1777);
        assert_eq!(
            read(&trust).unwrap(),
            "x",
            "a sticky directory above is fine"
        );
        chmod(&shared, 0o777);
        let err = read(&trust).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "{} is writable by everyone (mode 0777)",
                shared.display()
            )),
            "{err}"
        );
        assert!(err.contains("WHARF_TRUST="), "{err}");
        chmod(&shared, 0o755);
        chmod(&project, 0o1777);
        assert!(
            read(&trust).is_err(),
            "the project's own directory, sticky or not"
        );
        chmod(&project, 0o755);
        chmod(&file, 0o666);
        assert!(read(&trust).is_err(), "a file others may write");

        let allowed = Trust::from_env(Some(project.as_os_str()));
        assert_eq!(
            read(&allowed).unwrap(),
            "x",
            "an allowed directory covers its files"
        );
        let all = Trust::from_env(None).with_config(&["*".into()], Path::new("/c.toml"));
        assert_eq!(read(&all).unwrap(), "x");
        let err = Trust::from_env(None)
            .with_config(&[], Path::new("/c.toml"))
            .read(&file)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[trust] paths") && err.contains("/c.toml"),
            "{err}"
        );
        assert!(
            trust
                .read(&project.join("nope"))
                .unwrap_err()
                .is_not_found()
        );
    }
}
