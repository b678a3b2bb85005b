//! `wharf hosts` through sudo: when the hosts file is root's and wharf runs as someone else,
//! the same change is made by wharf re-run as root, with the names it computed (the root
//! process asks no proxy and reads none of the user's files; it checks each name).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::model::text::shell_words;
use crate::state::context::HOSTS_ENV;
use crate::state::hosts::DEFAULT_PATH;

/// The command that makes the change as root: `names` for a sync, `None` for a clean.
pub(crate) fn root_command(
    wharf: &Path,
    hosts_file: &Path,
    names: Option<&BTreeSet<String>>,
) -> Vec<String> {
    let mut cmd = Vec::new();
    if hosts_file != Path::new(DEFAULT_PATH) {
        cmd.push("env".to_string());
        cmd.push(format!("{HOSTS_ENV}={}", hosts_file.display()));
    }
    cmd.push(wharf.display().to_string());
    cmd.push("hosts".into());
    match names {
        Some(names) => {
            cmd.push("sync".into());
            cmd.push(format!(
                "--names={}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            ));
        }
        None => cmd.push("clean".into()),
    }
    cmd
}

/// Run `cmd` through `sudo` (found on PATH), saying so first; without sudo, say what to run.
pub(crate) fn run_as_root(
    hosts_file: &Path,
    cmd: &[String],
    sudo: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let shown = shell_words(cmd);
    let Some(sudo) = sudo else {
        bail!(
            "{} is not writable by you and sudo is not installed; run as root: {shown}",
            hosts_file.display()
        );
    };
    crate::progressln!(
        "{} is not writable by you; running: sudo {shown}",
        hosts_file.display()
    );
    let status = Command::new(sudo)
        .args(cmd)
        .status()
        .context("running sudo")?;
    if !status.success() {
        bail!("`sudo {shown}` failed ({status})");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_command_carries_the_names_and_a_custom_file() {
        let names: BTreeSet<String> = ["a.localhost".into(), "b.a.localhost".into()].into();
        let cmd = root_command(
            Path::new("/bin/wharf"),
            Path::new(DEFAULT_PATH),
            Some(&names),
        );
        assert_eq!(
            shell_words(&cmd),
            "/bin/wharf hosts sync --names=a.localhost,b.a.localhost"
        );
        let cmd = root_command(Path::new("/bin/wharf"), Path::new("/tmp/my hosts"), None);
        assert_eq!(
            shell_words(&cmd),
            "env 'WHARF_HOSTS_FILE=/tmp/my hosts' /bin/wharf hosts clean"
        );
        let err = run_as_root(Path::new("/etc/hosts"), &cmd, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("run as root: env"), "{err}");
    }
}
