//! wharf's block in the hosts file, on disk: read the file, compute it with the block for the
//! given names (or without it), and write it back when that changes it. `wharf hosts` and the
//! proxy keeping the block in step (`[hosts] sync`) both go through here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::model::hosts::{self, BlockError};
use crate::sys::sysfile::{self, SysFileError};

/// The hosts file wharf edits unless `$WHARF_HOSTS_FILE` names another.
pub(crate) const DEFAULT_PATH: &str = "/etc/hosts";

#[derive(Debug, thiserror::Error)]
pub(crate) enum HostsError {
    #[error("{path}: {source}")]
    Block { path: String, source: BlockError },
    #[error(transparent)]
    File(#[from] SysFileError),
}

/// A change to the hosts file, computed and not yet written.
#[derive(Debug)]
pub(crate) struct Edit {
    /// What to write (the symlink's target when the file is a symlink).
    pub(crate) target: PathBuf,
    pub(crate) old: Vec<u8>,
    pub(crate) new: Vec<u8>,
}

impl Edit {
    pub(crate) fn changes(&self) -> bool {
        self.old != self.new
    }

    /// Write it (nothing when it changes nothing).
    pub(crate) fn apply(&self) -> Result<(), HostsError> {
        if self.changes() {
            sysfile::replace(&self.target, &self.old, &self.new)?;
        }
        Ok(())
    }

    /// The block as it is and as it will be: `-` and `+` lines (nothing when unchanged).
    pub(crate) fn diff(&self) -> String {
        let lines = |b: &[u8]| hosts::block_lines(b).ok().flatten().unwrap_or_default();
        let mut out = String::new();
        for l in lines(&self.old) {
            out.push_str(&format!("-{l}\n"));
        }
        for l in lines(&self.new) {
            out.push_str(&format!("+{l}\n"));
        }
        out
    }
}

/// The file at `path` with wharf's block listing `names` (`None`: without the block).
pub(crate) fn plan(path: &Path, names: Option<&BTreeSet<String>>) -> Result<Edit, HostsError> {
    let (target, old) = sysfile::read(path)?;
    let block = |source| HostsError::Block {
        path: path.display().to_string(),
        source,
    };
    let new = match names {
        Some(names) => hosts::with_block(&old, names).map_err(block)?,
        None => hosts::without_block(&old).map_err(block)?,
    };
    Ok(Edit { target, old, new })
}

/// Plan and apply, again if the file changed in between (another editor, or a second wharf):
/// whether the file changed.
pub(crate) fn write(path: &Path, names: Option<&BTreeSet<String>>) -> Result<bool, HostsError> {
    let mut attempts = 0;
    loop {
        let edit = plan(path, names)?;
        match edit.apply() {
            Ok(()) => return Ok(edit.changes()),
            Err(HostsError::File(SysFileError::Changed { .. })) if attempts < 3 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_apply_and_diff() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "127.0.0.1 localhost").unwrap();
        let names: BTreeSet<String> = ["a.localhost".to_string()].into();
        let edit = plan(&path, Some(&names)).unwrap();
        assert!(edit.diff().contains("+127.0.0.1 a.localhost\n"));
        edit.apply().unwrap();
        assert!(!plan(&path, Some(&names)).unwrap().changes());
        let edit = plan(&path, None).unwrap();
        assert!(edit.diff().starts_with("-# BEGIN wharf"));
        edit.apply().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"127.0.0.1 localhost");
    }
}
