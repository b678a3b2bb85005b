//! Handing sockets to a child with the `LISTEN_FDS` protocol. The child is spawned as a tiny
//! self-exec step of wharf (`wharf __exec`), which, single-threaded and with its final pid,
//! moves the sockets to fds 3.., closes every other fd, sets `LISTEN_PID` and execs the command.

use std::ffi::OsString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// argv[1] that makes `wharf` act as the exec step. Not a user command.
pub(crate) const HELPER_ARG: &str = "__exec";
/// Fds (comma-separated, in order) the exec step must move to 3, 4, …
const FDS_VAR: &str = "WHARF_EXEC_FDS";
/// Set when the exec step must write `LISTEN_PID`.
const SET_PID_VAR: &str = "WHARF_EXEC_SET_PID";
/// Variables that describe *our* service manager, never the child's.
pub(crate) const SCRUBBED: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    FDS_VAR,
    SET_PID_VAR,
];

/// Everything needed to start the child once.
pub(crate) struct Handoff<'a> {
    /// This binary, to run the exec step.
    pub(crate) self_exe: &'a Path,
    /// The command, placeholders filled in.
    pub(crate) argv: &'a [String],
    /// Extra environment (`WHARF_NAME`, `PORT`, `NOTIFY_SOCKET`, …).
    pub(crate) env: &'a [(String, String)],
    /// fd mode: the sockets in order (fd 3, 4, …) with their `LISTEN_FDNAMES`; empty in env mode.
    pub(crate) fds: &'a [(RawFd, String)],
    /// Write `LISTEN_PID` (off with `--no-pid`, for servers behind wrapper chains).
    pub(crate) set_pid: bool,
    /// Start the server in a process group of its own, so that signals reach everything it
    /// starts (`sh -c` leaves the server a grandchild). Only without a terminal: a background
    /// group could not read one.
    pub(crate) own_group: bool,
}

impl Handoff<'_> {
    /// The child's command: wharf's exec step, which ends in the user's command.
    pub(crate) fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.self_exe);
        cmd.arg(HELPER_ARG).arg("--").args(self.argv);
        for var in SCRUBBED {
            cmd.env_remove(var);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if !self.fds.is_empty() {
            let list: Vec<String> = self.fds.iter().map(|(fd, _)| fd.to_string()).collect();
            let names: Vec<&str> = self.fds.iter().map(|(_, n)| n.as_str()).collect();
            cmd.env(FDS_VAR, list.join(","))
                .env("LISTEN_FDS", self.fds.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
            if self.set_pid {
                cmd.env(SET_PID_VAR, "1");
            }
        }
        let fds: Vec<RawFd> = self.fds.iter().map(|(fd, _)| *fd).collect();
        let parent = std::process::id() as libc::pid_t;
        let own_group = self.own_group;
        // SAFETY: runs between fork and exec; uses only async-signal-safe calls (setpgid, fcntl,
        // prctl, getppid) and does not allocate (`fds` was built before the fork).
        unsafe {
            cmd.pre_exec(move || {
                if own_group && libc::setpgid(0, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                for &fd in &fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                imp::die_with_parent(parent)
            });
        }
        cmd
    }
}

/// Find `program` the way exec will: a path as is, a bare name through `path_var`.
/// `None` if there is nothing executable there.
pub(crate) fn resolve_program(
    program: &str,
    path_var: Option<OsString>,
    cwd: &Path,
) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = cwd.join(program);
        return runnable(&p).then_some(p);
    }
    std::env::split_paths(&path_var.unwrap_or_default())
        .map(|dir| cwd.join(dir).join(program))
        .find(|p| runnable(p))
}

/// The exec step (`wharf __exec -- CMD ARGS…`). Must run before any thread exists: it edits
/// the environment. Returns only on failure, with the exit code to use (126/127 like shells).
pub(crate) fn exec_step(argv: &[OsString]) -> i32 {
    let fds: Vec<RawFd> = std::env::var(FDS_VAR)
        .ok()
        .map(|s| s.split(',').filter_map(|f| f.parse().ok()).collect())
        .unwrap_or_default();
    let set_pid = std::env::var_os(SET_PID_VAR).is_some();
    // SAFETY: the exec step is single-threaded (called first thing in main).
    unsafe {
        std::env::remove_var(FDS_VAR);
        std::env::remove_var(SET_PID_VAR);
        if set_pid {
            std::env::set_var("LISTEN_PID", std::process::id().to_string());
        }
    }
    if let Err(e) = place_fds(&fds) {
        eprintln!("wharf: cannot pass the sockets on: {e}");
        return 71;
    }
    let Some((program, args)) = argv.split_first() else {
        eprintln!("wharf: {HELPER_ARG} needs a command");
        return 2;
    };
    let err = std::process::Command::new(program).args(args).exec();
    eprintln!("wharf: cannot run {}: {err}", program.to_string_lossy());
    if err.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// Move `fds` to 3, 4, … (in that order) and close every other fd above 2.
fn place_fds(fds: &[RawFd]) -> io::Result<()> {
    let first_free = 3 + fds.len() as RawFd;
    // Park every source above the targets first, so no move overwrites a source still needed.
    let mut parked = Vec::with_capacity(fds.len());
    for &fd in fds {
        // SAFETY: plain fcntl on an fd number; the result is a new fd we own.
        let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, first_free) };
        if new == -1 {
            return Err(io::Error::last_os_error());
        }
        parked.push(new);
    }
    for (i, &fd) in parked.iter().enumerate() {
        // SAFETY: dup2 onto 3+i; the duplicate is not close-on-exec, which is the point.
        if unsafe { libc::dup2(fd, 3 + i as RawFd) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    let open: Vec<RawFd> = std::fs::read_dir(imp::FD_DIR)?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd >= first_free)
        .collect();
    for fd in open {
        // SAFETY: closing fds nobody in this process uses any more (the directory handle of
        // the listing above is already closed; closing its stale number is harmless).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;

    pub(crate) const FD_DIR: &str = "/proc/self/fd";

    /// Ask the kernel to SIGKILL us when wharf dies; if wharf already died, stop here.
    ///
    /// SIGKILL, not SIGTERM: every way wharf ends on purpose already stops the server politely
    /// and then firmly. The death signal only fires when wharf itself was killed outright
    /// (SIGKILL, the OOM killer, a crash), and then nobody is left to follow up a polite signal
    /// the server ignores: it would live on, re-parented, holding the port.
    pub(crate) fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
        // SAFETY: prctl and getppid are async-signal-safe.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;

    pub(crate) const FD_DIR: &str = "/dev/fd";

    /// No parent-death signal outside Linux: wharf's own shutdown path stops the child.
    pub(crate) fn die_with_parent(_parent: libc::pid_t) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_programs_like_exec_does() {
        let path = Some(OsString::from("/nonexistent:/bin:/usr/bin"));
        let cwd = Path::new("/");
        assert!(resolve_program("sh", path.clone(), cwd).is_some());
        assert!(resolve_program("no-such-program-wharf", path.clone(), cwd).is_none());
        assert_eq!(
            resolve_program("/bin/sh", None, cwd),
            Some(PathBuf::from("/bin/sh"))
        );
        assert!(
            resolve_program("./etc/passwd", None, cwd).is_none(),
            "not executable"
        );
    }
}
