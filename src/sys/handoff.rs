//! Handing sockets to a child with the `LISTEN_FDS` protocol. Between fork and exec the child
//! moves the sockets to fds 3.., marks every other fd above them close-on-exec, writes its own
//! pid into `LISTEN_PID` and execs the command itself: one exec, nothing between wharf and the
//! server (a self-exec step cost a second exec of wharf's large binary on every start). The
//! child of a multi-threaded process may not allocate, so everything it uses is built before
//! the fork ([`Exec`]).

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Variables that describe *our* service manager, never the child's.
pub(crate) const SCRUBBED: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// Everything needed to start the child once.
pub(crate) struct Handoff<'a> {
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
    /// The child's command: it execs the user's command from the forked child, sockets in
    /// place. A command that cannot be run is said on the child's stderr, which exits 127
    /// (not found) or 126 (found, not runnable), as shells do.
    pub(crate) fn command(&self) -> io::Result<tokio::process::Command> {
        let mut exec = Exec::new(self)?;
        let mut cmd = tokio::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]);
        // SAFETY: runs between fork and exec; `Exec::run` uses only async-signal-safe calls
        // and does not allocate (it was built before the fork).
        unsafe {
            cmd.pre_exec(move || exec.run());
        }
        Ok(cmd)
    }
}

/// `LISTEN_PID=`, followed by room for the pid's digits and the terminating NUL.
const PID_PREFIX: &[u8] = b"LISTEN_PID=";
const PID_ROOM: usize = 21;
/// Errors exec may give, named before the fork (`io::Error`'s text allocates).
const EXEC_ERRORS: &[i32] = &[
    libc::ENOENT,
    libc::EACCES,
    libc::EPERM,
    libc::ENOEXEC,
    libc::ENOTDIR,
    libc::ELOOP,
    libc::ENAMETOOLONG,
    libc::E2BIG,
    libc::ENOMEM,
    libc::ETXTBSY,
    libc::EISDIR,
];
/// Where no `close_range` marks them, fds below this are marked close-on-exec one by one.
const FD_SCAN_LIMIT: libc::rlim_t = 65536;

/// What the forked child needs to exec the server, built before the fork. The pointer arrays
/// point into the strings `Exec` owns, whose buffers never move.
struct Exec {
    /// The program as exec finds it (through the child's PATH); `None`: nowhere.
    program: Option<CString>,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    /// `/bin/sh PROGRAM ARGS…`, for a file without `#!` (what execvp does on `ENOEXEC`).
    sh: CString,
    sh_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    /// `LISTEN_PID=` and room for the digits the child writes; `envp` points at it.
    pid_entry: Option<Vec<u8>>,
    envp: Vec<*const libc::c_char>,
    fds: Vec<RawFd>,
    parked: Vec<RawFd>,
    own_group: bool,
    parent: libc::pid_t,
    /// Above the last fd handed over, every fd is marked close-on-exec up to here where the
    /// system cannot do it in one call.
    scan_limit: RawFd,
    /// `wharf: cannot run PROGRAM: ` and the text of each of `EXEC_ERRORS`.
    failure: Vec<u8>,
    reasons: Vec<(i32, Vec<u8>)>,
}

// SAFETY: the raw pointers point only into buffers `Exec` owns; nothing else aliases them.
unsafe impl Send for Exec {}
// SAFETY: as above; `&Exec` allows no mutation.
unsafe impl Sync for Exec {}

impl Exec {
    fn new(h: &Handoff<'_>) -> io::Result<Exec> {
        let cstring = |b: &[u8]| {
            CString::new(b).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{:?} contains a NUL byte", String::from_utf8_lossy(b)),
                )
            })
        };
        let Some(named) = h.argv.first() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no command to run",
            ));
        };
        // The child's environment: ours without our service manager's variables, then the
        // instance's, then the sockets'.
        let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !SCRUBBED.iter().any(|s| k == s))
            .collect();
        let mut set = |k: &str, v: &str| {
            vars.retain(|(e, _)| e != k);
            vars.push((k.into(), v.into()));
        };
        for (k, v) in h.env {
            set(k, v);
        }
        if !h.fds.is_empty() {
            let names: Vec<&str> = h.fds.iter().map(|(_, n)| n.as_str()).collect();
            set("LISTEN_FDS", &h.fds.len().to_string());
            set("LISTEN_FDNAMES", &names.join(":"));
        }
        let path_var = vars
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone());
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let found = match named.contains('/') {
            // A path is exec's to judge (a missing or unrunnable file gets its own error).
            true => Some(PathBuf::from(named)),
            false => resolve_program(named, path_var, &cwd),
        };
        let env = vars
            .iter()
            .map(|(k, v)| cstring(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<io::Result<Vec<_>>>()?;
        let argv = h
            .argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let program = found
            .map(|p| cstring(p.as_os_str().as_bytes()))
            .transpose()?;
        let sh = cstring(b"/bin/sh")?;
        let pid_entry = (h.set_pid && !h.fds.is_empty()).then(|| {
            let mut e = PID_PREFIX.to_vec();
            e.resize(PID_PREFIX.len() + PID_ROOM, 0);
            e
        });
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.extend(pid_entry.as_ref().map(|e| e.as_ptr().cast()));
        envp.push(std::ptr::null());
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut sh_ptrs = vec![sh.as_ptr()];
        sh_ptrs.extend(program.as_ref().map(|p| p.as_ptr()));
        sh_ptrs.extend(argv.iter().skip(1).map(|a| a.as_ptr()));
        sh_ptrs.push(std::ptr::null());
        let reasons = EXEC_ERRORS
            .iter()
            .map(|&e| {
                (
                    e,
                    format!("{}\n", io::Error::from_raw_os_error(e)).into_bytes(),
                )
            })
            .collect();
        Ok(Exec {
            program,
            _argv: argv,
            argv_ptrs,
            sh,
            sh_ptrs,
            _env: env,
            pid_entry,
            envp,
            fds: h.fds.iter().map(|(fd, _)| *fd).collect(),
            parked: vec![-1; h.fds.len()],
            own_group: h.own_group,
            parent: std::process::id() as libc::pid_t,
            scan_limit: scan_limit(),
            failure: format!("wharf: cannot run {named}: ").into_bytes(),
            reasons,
        })
    }

    /// In the forked child: take a group of its own, die with wharf, place the sockets, and
    /// exec. Returns only on failure before the exec; a failed exec exits 127 or 126.
    fn run(&mut self) -> io::Result<()> {
        // SAFETY: async-signal-safe calls only (setpgid, fcntl, dup2, close_range, getpid,
        // execve, write, _exit), on memory this process owns; no allocation.
        unsafe {
            if self.own_group && libc::setpgid(0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            imp::die_with_parent(self.parent)?;
            if let Some(entry) = self.pid_entry.as_mut() {
                write_decimal(&mut entry[PID_PREFIX.len()..], libc::getpid());
            }
            self.place_fds()?;
            let errno = match &self.program {
                Some(program) => {
                    libc::execve(
                        program.as_ptr(),
                        self.argv_ptrs.as_ptr(),
                        self.envp.as_ptr(),
                    );
                    if errno() == libc::ENOEXEC {
                        libc::execve(self.sh.as_ptr(), self.sh_ptrs.as_ptr(), self.envp.as_ptr());
                    }
                    errno()
                }
                None => libc::ENOENT,
            };
            let reason = self
                .reasons
                .iter()
                .find(|(e, _)| *e == errno)
                .map_or(&b"exec failed\n"[..], |(_, r)| r);
            libc::write(2, self.failure.as_ptr().cast(), self.failure.len());
            libc::write(2, reason.as_ptr().cast(), reason.len());
            libc::_exit(if errno == libc::ENOENT { 127 } else { 126 });
        }
    }

    /// Move the sockets to 3, 4, … (in order) and mark every fd above them close-on-exec:
    /// the server gets the sockets and its stdio, nothing else wharf had open.
    unsafe fn place_fds(&mut self) -> io::Result<()> {
        let first_free = 3 + self.fds.len() as RawFd;
        // Park every source above the targets first, so no move overwrites a source still needed.
        for (i, &fd) in self.fds.iter().enumerate() {
            // SAFETY: plain fcntl on an fd number; the result is a new fd of this process.
            let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, first_free) };
            if new == -1 {
                return Err(io::Error::last_os_error());
            }
            self.parked[i] = new;
        }
        for (i, &fd) in self.parked.iter().enumerate() {
            // SAFETY: dup2 onto 3+i; the duplicate is not close-on-exec, which is the point.
            if unsafe { libc::dup2(fd, 3 + i as RawFd) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: only marks fds close-on-exec.
        unsafe { imp::cloexec_from(first_free, self.scan_limit) };
        Ok(())
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `n` in decimal at the start of `into` (room enough for any pid), without allocating.
fn write_decimal(into: &mut [u8], n: libc::pid_t) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    let mut n = n.unsigned_abs();
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (slot, d) in into.iter_mut().zip(digits[..len].iter().rev()) {
        *slot = *d;
    }
}

/// How far a one-by-one close-on-exec scan goes: the fd limit, capped.
fn scan_limit() -> RawFd {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    let cur = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => limit.rlim_cur,
        _ => FD_SCAN_LIMIT,
    };
    cur.min(FD_SCAN_LIMIT) as RawFd
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

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::fd::RawFd;

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

    /// Mark every fd from `first` on close-on-exec: in one call (Linux 5.11), else one by one
    /// below `limit`.
    pub(crate) unsafe fn cloexec_from(first: RawFd, limit: RawFd) {
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
        let done = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        } == 0;
        if !done {
            // SAFETY: as in the caller.
            unsafe { super::cloexec_each(first, limit) };
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::os::fd::RawFd;

    /// No parent-death signal outside Linux: wharf's own shutdown path stops the child.
    pub(crate) fn die_with_parent(_parent: libc::pid_t) -> io::Result<()> {
        Ok(())
    }

    /// Mark every fd from `first` below `limit` close-on-exec.
    pub(crate) unsafe fn cloexec_from(first: RawFd, limit: RawFd) {
        // SAFETY: as in the caller.
        unsafe { super::cloexec_each(first, limit) };
    }
}

/// Mark each fd from `first` below `limit` close-on-exec (fds not open just fail).
unsafe fn cloexec_each(first: RawFd, limit: RawFd) {
    for fd in first..limit {
        // SAFETY: fcntl on an fd number; only sets its close-on-exec flag.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `argv` as a server is started; its exit status, stdout and stderr.
    async fn run(argv: &[&str], fds: &[(RawFd, String)]) -> std::process::Output {
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        let env = [("WHARF_NAME".to_string(), "api".to_string())];
        let handoff = Handoff {
            argv: &argv,
            env: &env,
            fds,
            set_pid: true,
            own_group: false,
        };
        let mut cmd = handoff.command().unwrap();
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
            .await
            .unwrap()
            .unwrap()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_server_gets_its_sockets_at_3_its_own_pid_and_no_other_fd() {
        use std::os::fd::AsRawFd;
        let socket = crate::sys::socket::bind_loopback(0).unwrap();
        // An fd without close-on-exec, as a parent may leak into wharf: never the server's.
        // SAFETY: dup of an open fd; closed below.
        let leaked = unsafe { libc::dup(socket.as_raw_fd()) };
        assert!(leaked > 3);
        let script = "echo \"$LISTEN_PID $$ $LISTEN_FDS $LISTEN_FDNAMES $WHARF_NAME\"; \
                      readlink /proc/$$/fd/3; ls /proc/$$/fd";
        let fds = [(socket.as_raw_fd(), "http".to_string())];
        let out = run(&["sh", "-c", script], &fds).await;
        // SAFETY: ours, open since the dup.
        unsafe { libc::close(leaked) };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines();
        let first: Vec<&str> = lines.next().unwrap().split(' ').collect();
        assert_eq!(
            first[0], first[1],
            "LISTEN_PID is the server's pid: {stdout}"
        );
        assert_eq!(first[2..], ["1", "http", "api"], "{stdout}");
        assert!(lines.next().unwrap().starts_with("socket:"), "{stdout}");
        let open: Vec<&str> = lines.collect();
        assert!(!open.contains(&leaked.to_string().as_str()), "{stdout}");
        assert!(out.status.success(), "{out:?}");
    }

    #[tokio::test]
    async fn a_command_that_cannot_run_says_why_and_exits_as_a_shell_does() {
        let out = run(&["no-such-program-wharf"], &[]).await;
        assert_eq!(out.status.code(), Some(127));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("wharf: cannot run no-such-program-wharf: No such file"),
            "{stderr}"
        );
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "echo ran by sh\n").unwrap();
        let denied = dir.path().join("denied");
        std::fs::write(&denied, "echo never\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A file without #! runs through /bin/sh, as execvp does.
        let out = run(&[plain.to_str().unwrap()], &[]).await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ran by sh\n",
            "{out:?}"
        );
        let out = run(&[denied.to_str().unwrap()], &[]).await;
        assert_eq!(out.status.code(), Some(126), "{out:?}");
    }

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
