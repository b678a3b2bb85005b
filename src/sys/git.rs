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

    /// A repository and a linked worktree of it, as git makes them.
    #[test]
    fn main_and_linked_worktrees() {
        if git(Path::new("/"), &["--version"]).is_none() {
            eprintln!("skipped: no git");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let repo = root.join("shop");
        std::fs::create_dir(&repo).unwrap();
        let run = |dir: &Path, args: &[&str]| {
            let mut all = vec!["-c", "user.email=t@example.com", "-c", "user.name=t"];
            all.extend(args);
            git(dir, &all).unwrap_or_else(|| panic!("git {args:?} failed"));
        };
        run(&repo, &["init", "-q", "-b", "main"]);
        run(&repo, &["commit", "-q", "--allow-empty", "-m", "init"]);
        let wt = root.join("wt");
        run(
            &repo,
            &[
                "worktree",
                "add",
                "-q",
                wt.to_str().unwrap(),
                "-b",
                "fix/ui",
            ],
        );
        std::fs::create_dir(repo.join("sub")).unwrap();
        assert_eq!(
            checkout(&repo.join("sub")),
            Some(Checkout {
                top: repo.clone(),
                repo: repo.clone(),
                linked: false,
                branch: Some("main".into()),
            })
        );
        assert_eq!(
            checkout(&wt),
            Some(Checkout {
                top: wt.clone(),
                repo: repo.clone(),
                linked: true,
                branch: Some("fix/ui".into()),
            })
        );
        run(&wt, &["checkout", "-q", "--detach"]);
        assert_eq!(checkout(&wt).unwrap().branch, None);
    }
}
