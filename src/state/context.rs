//! What the process around the library knows: wharf's directories, this binary, the working
//! directory, PATH, the user's home, and the system files wharf edits when asked
//! (`$WHARF_HOSTS_FILE`, `$WHARF_NSSWITCH_FILE`, for tests). `main` builds it once from the
//! real environment and every command takes it; `main` also reads `WHARF_LISTEN`,
//! `WHARF_STOP_TIMEOUT` and `PORT` itself, and `cli::https::places` the test seam
//! `WHARF_SYSTEM_TRUST_ROOT`. Below `main`, only the service-manager protocols
//! read the environment, where they are spoken: `sys::handoff` (the server's environment is
//! ours with its variables set), `proxy::listeners::inherited` (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`, then unset), and the proxy's `sd_notify` calls (`NOTIFY_SOCKET`,
//! `WATCHDOG_USEC`, `WATCHDOG_PID`).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::state::dirs::{DirError, Dirs};
use crate::sys::trust::Trust;

/// The variable that points `wharf hosts` (and a re-run of it through sudo) at another file.
pub(crate) const HOSTS_ENV: &str = "WHARF_HOSTS_FILE";

#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) dirs: Dirs,
    /// This binary, to run the background proxy and supervisors.
    pub(crate) self_exe: PathBuf,
    pub(crate) cwd: PathBuf,
    pub(crate) path_var: Option<OsString>,
    /// `$HOME`, if set.
    pub(crate) home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`, else `~/.config`.
    pub(crate) config_home: Option<PathBuf>,
    /// Paths allowed by `$WHARF_TRUST` though another user could have written them.
    pub(crate) trust: Trust,
    /// `$WHARF_HOSTS_FILE`, else `/etc/hosts`: where `wharf hosts` writes its block.
    pub(crate) hosts_file: PathBuf,
    /// `$WHARF_NSSWITCH_FILE`, else `/etc/nsswitch.conf`: what `doctor --fix` edits.
    pub(crate) nsswitch_file: PathBuf,
}

impl Context {
    /// Read everything through `var` (main passes `std::env::var_os`).
    pub(crate) fn new(
        var: impl Fn(&str) -> Option<OsString>,
        self_exe: PathBuf,
        cwd: PathBuf,
    ) -> Result<Context, DirError> {
        let nonempty = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home = nonempty("HOME");
        let config_home =
            nonempty("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")));
        Ok(Context {
            dirs: Dirs::from_env(&var)?,
            self_exe,
            cwd,
            path_var: var("PATH"),
            home,
            config_home,
            trust: Trust::from_env(var(crate::sys::trust::ENV).as_deref()),
            hosts_file: nonempty(HOSTS_ENV)
                .unwrap_or_else(|| PathBuf::from(crate::state::hosts::DEFAULT_PATH)),
            nsswitch_file: nonempty("WHARF_NSSWITCH_FILE")
                .unwrap_or_else(|| PathBuf::from("/etc/nsswitch.conf")),
        })
    }

    /// `~/.config/wharf/config.toml`.
    pub(crate) fn config_file(&self) -> Option<PathBuf> {
        self.config_home
            .as_ref()
            .map(|d| d.join("wharf/config.toml"))
    }

    /// `~/.config/systemd/user`.
    pub(crate) fn systemd_user_dir(&self) -> Option<PathBuf> {
        self.config_home.as_ref().map(|d| d.join("systemd/user"))
    }

    /// `~/Library/LaunchAgents`.
    pub(crate) fn launch_agents_dir(&self) -> Option<PathBuf> {
        self.home.as_ref().map(|h| h.join("Library/LaunchAgents"))
    }
}
