//! A started server, as the supervisor follows it: its pid and its exit, whether wharf
//! started it itself (`handoff`'s spawn, Linux: followed through a pidfd) or through tokio
//! (elsewhere, and where the kernel has no pidfds).

use std::io;
use std::process::ExitStatus;

/// A child process to wait for. Dropped before it was waited for, it is still reaped once it
/// exits (as tokio's children are).
pub(crate) struct Child {
    inner: Inner,
}

enum Inner {
    Tokio(tokio::process::Child),
    #[cfg(target_os = "linux")]
    Pidfd(pidfd::Waiter),
}

impl Child {
    pub(crate) fn from_tokio(child: tokio::process::Child) -> Child {
        Child {
            inner: Inner::Tokio(child),
        }
    }

    #[cfg(target_os = "linux")]
    pub(crate) fn from_pidfd(pid: libc::pid_t, fd: std::os::fd::OwnedFd) -> io::Result<Child> {
        Ok(Child {
            inner: Inner::Pidfd(pidfd::Waiter::new(pid, fd)?),
        })
    }

    /// Its pid, until it has been waited for.
    pub(crate) fn id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Tokio(child) => child.id(),
            #[cfg(target_os = "linux")]
            Inner::Pidfd(w) => w.id(),
        }
    }

    /// Wait for it to exit (cancel-safe; once it has, the same status again).
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        match &mut self.inner {
            Inner::Tokio(child) => child.wait().await,
            #[cfg(target_os = "linux")]
            Inner::Pidfd(w) => w.wait().await,
        }
    }
}

#[cfg(target_os = "linux")]
mod pidfd {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    /// A child followed through its pidfd, which turns readable when it exits.
    pub(super) struct Waiter {
        pid: libc::pid_t,
        fd: Option<AsyncFd<OwnedFd>>,
        status: Option<ExitStatus>,
    }

    impl Waiter {
        pub(super) fn new(pid: libc::pid_t, fd: OwnedFd) -> io::Result<Waiter> {
            // SAFETY: the AsyncFd owns the pidfd, so it stays open and the same for its life.
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
            Ok(Waiter {
                pid,
                fd: Some(fd),
                status: None,
            })
        }

        pub(super) fn id(&self) -> Option<u32> {
            self.status.is_none().then_some(self.pid as u32)
        }

        pub(super) async fn wait(&mut self) -> io::Result<ExitStatus> {
            loop {
                if let Some(status) = self.status {
                    return Ok(status);
                }
                let Some(fd) = self.fd.as_ref() else {
                    return Err(io::Error::other("the child's pidfd is gone"));
                };
                let mut ready = fd.readable().await?;
                match reap(self.pid)? {
                    Some(status) => {
                        self.status = Some(status);
                        self.fd = None;
                    }
                    None => ready.clear_ready(),
                }
            }
        }
    }

    impl Drop for Waiter {
        fn drop(&mut self) {
            if self.status.is_some() || matches!(reap(self.pid), Ok(Some(_)) | Err(_)) {
                return;
            }
            // Still running: reap it when it exits, as tokio does with the children it drops.
            let (Some(fd), Ok(runtime)) = (self.fd.take(), tokio::runtime::Handle::try_current())
            else {
                return;
            };
            let pid = self.pid;
            runtime.spawn(async move {
                while let Ok(mut ready) = fd.readable().await {
                    match reap(pid) {
                        Ok(None) => ready.clear_ready(),
                        _ => return,
                    }
                }
            });
        }
    }

    /// `waitpid` without blocking: the status once `pid` has exited. Holding its pidfd,
    /// nobody else reaps it (`process::orphans` leaves our servers alone), so the pid cannot
    /// have been reused.
    fn reap(pid: libc::pid_t) -> io::Result<Option<ExitStatus>> {
        let mut status = 0;
        loop {
            // SAFETY: waitpid writes the status it is given a pointer to.
            match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
                0 => return Ok(None),
                -1 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                _ => return Ok(Some(ExitStatus::from_raw(status))),
            }
        }
    }
}
