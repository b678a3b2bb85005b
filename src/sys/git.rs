//! The git checkout a directory is in, as `git` itself reports it: where its work tree starts,
//! the repository's own directory, whether it is a linked worktree (`git worktree add`), and
//! its branch. Asked of the `git` program, so whatever git understands (worktrees, `.git`
//! files, `GIT_DIR`) is understood here too. No git, or no repository: `None`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A git checkout, as seen from a directory inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Checkout {
    /// The top of this work tree.
    pub(crate) top: PathBuf,
    /// The repository's directory: the main work tree's top (or a bare repository's
    /// directory), the same from every worktree.
    pub(crate) repo: PathBuf,
    /// A linked worktree (`git rev-parse --git-dir` is not `--git-common-dir`).
    pub(crate) linked: bool,
    /// The branch checked out; `None` on a detached HEAD.
    pub(crate) branch: Option<String>,
}

/// The checkout `dir` is in, if any.
pub(crate) fn checkout(dir: &Path) -> Option<Checkout> {
    let out = git(
        dir,
        &[
            "rev-parse",
            "--path-format=absolute",
            "--show-toplevel",
            "--git-dir",
            "--git-common-dir",
        ],
    )?;
    let mut lines = out.lines().map(PathBuf::from);
    let (top, git_dir, common) = (lines.next()?, lines.next()?, lines.next()?);
    let branch = git(dir, &["symbolic-ref", "--short", "-q", "HEAD"])
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty());
    Some(Checkout {
        repo: repository_dir(&common),
        linked: same_file(&git_dir) != same_file(&common),
        top,
        branch,
    })
}

/// `/src/shop/.git` → `/src/shop`; a bare `/srv/shop.git` stays itself.
fn repository_dir(common: &Path) -> PathBuf {
    match common.file_name() {
        Some(n) if n == ".git" => common.parent().unwrap_or(common).to_path_buf(),
        _ => common.to_path_buf(),
    }
}

fn same_file(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// `git -C DIR ARGS`'s output when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_ordinary_repository_dirs() {
        assert_eq!(
            repository_dir(Path::new("/src/shop/.git")),
            Path::new("/src/shop")
        );
        assert_eq!(
            repository_dir(Path::new("/srv/shop.git")),
            Path::new("/srv/shop.git")
        );
    }

    #[test]
    fn no_repository_is_none() {
        let dir = tempfile::tempdir().unwrap();
        // GIT_CEILING_DIRECTORIES is not ours to set; a temp dir under a repository is rare.
        if let Some(c) = checkout(dir.path()) {
            assert_ne!(c.top, dir.path());
        }
    }
}
