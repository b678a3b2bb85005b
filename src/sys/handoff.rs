//! Handing sockets to a child with the `LISTEN_FDS` protocol. Between fork and exec the child
//! moves the sockets to fds 3.., marks every other fd above them close-on-exec, writes its own
//! pid into `LISTEN_PID` and execs the command itself: one exec, nothing between wharf and the
//! server (a self-exec step cost a second exec of wharf's large binary on every start). The
//! child of a multi-threaded process may not allocate, so everything it uses is built before
//! the fork ([`Exec`]). On Linux the "fork" is a vfork ([`Start::spawn`]).

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::child::Child;

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
    /// Everything a start needs but the fork, built ahead: [`Start::spawn`] then forks at once.
    pub(crate) fn start(&self, stdout: Out, stderr: Out) -> io::Result<Start> {
        Ok(Start {
            exec: Exec::new(self)?,
            stdout,
            stderr,
        })
    }
}

/// Where a child's stdout or stderr goes.
pub(crate) enum Out {
    /// Where wharf's goes.
    Inherit,
    /// To a pipe wharf reads ([`Spawned`]).
    Pipe,
    /// To this file.
    Fd(OwnedFd),
}

/// One start of a child, built ahead ([`Handoff::start`]).
pub(crate) struct Start {
    exec: Exec,
    stdout: Out,
    stderr: Out,
}

/// What reads a child's output from its pipe.
pub(crate) type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// A started child and, where its output goes to pipes, their reading ends.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) stdout: Option<Reader>,
    pub(crate) stderr: Option<Reader>,
}

impl Start {
    /// Start the child. On Linux the child shares wharf's memory until it execs (a vfork,
    /// as `posix_spawn` does): a fork would copy the page tables of wharf's whole address
    /// space only for the exec to throw them away, which on this path costs more than the
    /// rest of the start together. Elsewhere, or without pidfds (Linux before 5.2), a fork.
    pub(crate) fn spawn(self) -> io::Result<Spawned> {
        #[cfg(target_os = "linux")]
        let mut this = self;
        #[cfg(target_os = "linux")]
        if let Some(spawned) = vfork::spawn(&mut this) {
            return spawned;
        }
        #[cfg(not(target_os = "linux"))]
        let this = self;
        this.spawn_forked()
    }

    /// Through tokio's `Command`: a fork, the exec from `Exec::run`.
    fn spawn_forked(self) -> io::Result<Spawned> {
        let Start {
            mut exec,
            stdout,
            stderr,
        } = self;
        let named = exec.argv_ptrs[0];
        // SAFETY: argv[0] points into `exec._argv`, a NUL-terminated string it owns.
        let named = unsafe { std::ffi::CStr::from_ptr(named) };
        let mut cmd = tokio::process::Command::new(std::ffi::OsStr::from_bytes(named.to_bytes()));
        let stdio = |out: Out| match out {
            Out::Inherit => std::process::Stdio::inherit(),
            Out::Pipe => std::process::Stdio::piped(),
            Out::Fd(fd) => std::process::Stdio::from(fd),
        };
        cmd.stdout(stdio(stdout)).stderr(stdio(stderr));
        // SAFETY: runs between fork and exec; `Exec::run` uses only async-signal-safe calls
        // and does not allocate (it was built before the fork).
        unsafe {
            cmd.pre_exec(move || exec.run());
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().map(|r| Box::new(r) as Reader);
        let stderr = child.stderr.take().map(|r| Box::new(r) as Reader);
        Ok(Spawned {
            child: Child::from_tokio(child),
            stdout,
            stderr,
        })
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

/// Linux: the child runs in wharf's memory, wharf's thread waiting, until it execs or exits
/// (`CLONE_VM | CLONE_VFORK`, as glibc's `posix_spawn`), and comes with a pidfd to follow it.
#[cfg(target_os = "linux")]
mod vfork {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    use super::{Exec, Out, Reader, Spawned, Start};
    use crate::sys::child::Child;

    /// The child's stack: `Exec::run` and the libc calls it makes need a few KiB.
    const STACK: usize = 64 * 1024;

    /// What the child gets, on the stack of the thread that waits for it.
    struct Job<'a> {
        exec: &'a mut Exec,
        /// fds for the child's stdout and stderr, -1: wharf's.
        stdio: [RawFd; 2],
        /// Why the child could not reach its exec (errno), 0 if it did.
        failed: i32,
    }

    /// Start `start`'s child; `None` if this kernel cannot (no `CLONE_PIDFD`), for the
    /// caller to fork instead.
    pub(super) fn spawn(start: &mut Start) -> Option<io::Result<Spawned>> {
        let mut out = [None, None];
        let mut stdio = [-1; 2];
        for (i, how) in [&mut start.stdout, &mut start.stderr]
            .into_iter()
            .enumerate()
        {
            match how {
                Out::Inherit => {}
                Out::Fd(fd) => stdio[i] = fd.as_raw_fd(),
                Out::Pipe => match pipe() {
                    Ok((read, write)) => {
                        stdio[i] = write.as_raw_fd();
                        out[i] = Some((read, write));
                    }
                    Err(e) => return Some(Err(e)),
                },
            }
        }
        let mut job = Job {
            exec: &mut start.exec,
            stdio,
            failed: 0,
        };
        // Not zeroed: the child writes before it reads, and only the pages it uses are touched.
        let mut stack: Vec<u128> = Vec::with_capacity(STACK / 16);
        // SAFETY: one past the end of `stack`'s buffer, 16-byte aligned; the stack grows down.
        let top = unsafe { stack.as_mut_ptr().add(STACK / 16) }.cast::<libc::c_void>();
        let mut pidfd: libc::c_int = -1;
        // SAFETY: every signal blocked for this thread while the child shares it memory (no
        // handler of wharf's may run in the child); the old mask is restored below.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        }
        // SAFETY: with CLONE_VFORK this thread waits until the child has exec'd or exited, so
        // `job` and `stack` outlive its use of them; `child` only makes async-signal-safe
        // calls and does not allocate. The pidfd is written to `pidfd`.
        let pid = unsafe {
            libc::clone(
                child,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                (&raw mut job).cast(),
                &raw mut pidfd,
            )
        };
        let clone_error = io::Error::last_os_error();
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        drop(stack);
        let failed = job.failed;
        if pid == -1 {
            return match clone_error.raw_os_error() {
                // Before Linux 5.2 (no CLONE_PIDFD), or a sandbox that refuses it.
                Some(libc::EINVAL | libc::ENOSYS | libc::EPERM) => None,
                _ => Some(Err(clone_error)),
            };
        }
        // SAFETY: the kernel put a new pidfd there, ours alone.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        if failed != 0 {
            // It exited before its exec: reap it, say why.
            let mut status = 0;
            // SAFETY: waitpid on our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            return Some(Err(io::Error::from_raw_os_error(failed)));
        }
        let reader = |pair: Option<(OwnedFd, OwnedFd)>| -> io::Result<Option<Reader>> {
            let Some((read, _write)) = pair else {
                return Ok(None);
            };
            let read = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
            Ok(Some(Box::new(read) as Reader))
        };
        let [stdout, stderr] = out;
        Some((|| {
            Ok(Spawned {
                child: Child::from_pidfd(pid, pidfd)?,
                stdout: reader(stdout)?,
                stderr: reader(stderr)?,
            })
        })())
    }

    /// A pipe, both ends close-on-exec (the child's end is moved to 1 or 2 by `dup2`).
    fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [-1; 2];
        // SAFETY: pipe2 fills the two fds it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: two new fds, ours alone.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    }

    /// The child, in wharf's memory on its own stack: the signal state a new process starts
    /// with (as std's spawn leaves it: default handlers, SIGPIPE too, nothing blocked), its
    /// stdout and stderr, then `Exec::run`, which execs. Only async-signal-safe calls.
    extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `Job` the waiting parent thread keeps alive.
        let job = unsafe { &mut *arg.cast::<Job<'_>>() };
        // SAFETY: sigaction, dup2, fcntl, sigprocmask on this process's own state.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            for signal in 1..=libc::SIGRTMAX() {
                let mut was: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, std::ptr::null(), &mut was) == 0
                    && (was.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE)
                    && was.sa_sigaction != libc::SIG_DFL
                {
                    libc::sigaction(signal, &dfl, std::ptr::null_mut());
                }
            }
            for (i, &fd) in job.stdio.iter().enumerate() {
                let target = 1 + i as RawFd;
                if fd == target {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                } else if fd >= 0 && libc::dup2(fd, target) == -1 {
                    job.failed = super::errno();
                    libc::_exit(127);
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if let Err(e) = job.exec.run() {
                job.failed = e.raw_os_error().unwrap_or(libc::EINVAL);
            }
            libc::_exit(127)
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
        let start = handoff.start(Out::Pipe, Out::Pipe).unwrap();
        let forked = run_start(start.spawn_forked().unwrap()).await;
        let start = handoff.start(Out::Pipe, Out::Pipe).unwrap();
        let spawned = run_start(start.spawn().unwrap()).await;
        assert_eq!(
            (spawned.status, &spawned.stderr),
            (forked.status, &forked.stderr),
            "a fork and a spawn start the same"
        );
        spawned
    }

    /// Everything the child wrote, once it exited.
    async fn run_start(spawned: Spawned) -> std::process::Output {
        use tokio::io::AsyncReadExt;
        let Spawned {
            mut child,
            stdout,
            stderr,
        } = spawned;
        let read = |r: Option<Reader>| async move {
            let mut all = Vec::new();
            r.unwrap().read_to_end(&mut all).await.unwrap();
            all
        };
        let all = async { tokio::join!(child.wait(), read(stdout), read(stderr)) };
        let (status, stdout, stderr) =
            tokio::time::timeout(std::time::Duration::from_secs(20), all)
                .await
                .unwrap();
        std::process::Output {
            status: status.unwrap(),
            stdout,
            stderr,
        }
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

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_server_starts_with_no_signal_blocked_and_sigpipe_not_ignored() {
        // wharf ignores SIGPIPE (as every Rust program) and blocks every signal while it
        // starts a child: neither may reach the server.
        let out = run(&["cat", "/proc/self/status"], &[]).await;
        let status = String::from_utf8_lossy(&out.stdout);
        let mask = |field: &str| {
            let line = status.lines().find(|l| l.starts_with(field)).unwrap();
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        assert_eq!(mask("SigBlk:"), 0, "{status}");
        assert_eq!(mask("SigIgn:") & (1 << (libc::SIGPIPE - 1)), 0, "{status}");
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
