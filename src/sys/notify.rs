//! The supervisor side of sd_notify: wharf offers its child a `NOTIFY_SOCKET` and reads
//! `READY=1`, `STATUS=…`, `STOPPING=1`. Only datagrams from the child's own process tree count.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use tokio::io::Interest;
use tokio::net::UnixDatagram;

/// sd_notify messages are small; anything longer is not one.
const MAX_MESSAGE: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Notice {
    Ready,
    Status(String),
    Stopping,
    Reloading,
}

/// A bound notify socket; the path is removed on drop.
pub(crate) struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Bind a datagram socket at `path` (which must sit in a private directory), replacing a
    /// stale one left by a crashed wharf.
    pub(crate) fn bind(path: &Path) -> io::Result<NotifySocket> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let socket = UnixDatagram::bind(path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        imp::pass_credentials(&socket)?;
        Ok(NotifySocket {
            socket,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The next message's notices, from a sender accepted by `accept(pid)` (pid is `None`
    /// where the platform cannot tell). Oversized and rejected datagrams are dropped; fds
    /// sent along are closed.
    pub(crate) async fn recv(
        &self,
        accept: impl Fn(Option<i32>) -> bool,
    ) -> io::Result<Vec<Notice>> {
        loop {
            let (text, pid) = self
                .socket
                .async_io(Interest::READABLE, || imp::recv(self.socket.as_raw_fd()))
                .await?;
            if let Some(text) = text
                && accept(pid)
            {
                return Ok(parse(&text));
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The notices in one datagram: newline-separated `KEY=VALUE`; unknown keys are ignored.
pub(crate) fn parse(datagram: &str) -> Vec<Notice> {
    datagram
        .lines()
        .filter_map(|line| match line.split_once('=')? {
            ("READY", "1") => Some(Notice::Ready),
            ("STOPPING", "1") => Some(Notice::Stopping),
            ("RELOADING", "1") => Some(Notice::Reloading),
            ("STATUS", status) => Some(Notice::Status(status.to_string())),
            _ => None,
        })
        .collect()
}

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use std::io::IoSliceMut;

    use nix::sys::socket::{
        ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt,
    };

    pub(crate) fn pass_credentials(socket: &UnixDatagram) -> io::Result<()> {
        setsockopt(socket, sockopt::PassCred, &true).map_err(io::Error::from)
    }

    /// One datagram: its text (`None` if oversized, truncated or not UTF-8) and sender pid.
    pub(crate) fn recv(fd: std::os::fd::RawFd) -> io::Result<(Option<String>, Option<i32>)> {
        let mut buf = [0u8; MAX_MESSAGE + 1];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(UnixCredentials, [std::os::fd::RawFd; 16]);
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC;
        let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), flags).map_err(io::Error::from)?;
        let mut pid = None;
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            match cmsg {
                ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                ControlMessageOwned::ScmRights(fds) => {
                    for fd in fds {
                        // SAFETY: the kernel just gave us these fds; nobody else has them.
                        unsafe { libc::close(fd) };
                    }
                }
                _ => {}
            }
        }
        let whole = !msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        let len = msg.bytes;
        let text = (whole && len <= MAX_MESSAGE)
            .then(|| String::from_utf8(buf[..len].to_vec()).ok())
            .flatten();
        Ok((text, pid))
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    pub(crate) fn pass_credentials(_socket: &UnixDatagram) -> io::Result<()> {
        Ok(())
    }

    pub(crate) fn recv(fd: std::os::fd::RawFd) -> io::Result<(Option<String>, Option<i32>)> {
        let mut buf = [0u8; MAX_MESSAGE + 1];
        // SAFETY: reading into a buffer we own, of the length we pass.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let text = (n <= MAX_MESSAGE)
            .then(|| String::from_utf8(buf[..n].to_vec()).ok())
            .flatten();
        Ok((text, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys_and_ignores_the_rest() {
        assert_eq!(
            parse("READY=1\nSTATUS=warming up\nWATCHDOG=1\nMAINPID=4\nnonsense\nSTOPPING=1"),
            vec![
                Notice::Ready,
                Notice::Status("warming up".into()),
                Notice::Stopping
            ]
        );
    }

    #[tokio::test]
    async fn receives_from_our_own_process_and_drops_oversized() {
        let dir = tempfile::tempdir().unwrap();
        let sock = NotifySocket::bind(&dir.path().join("n.sock")).unwrap();
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client
            .send_to(&vec![b'x'; MAX_MESSAGE + 10], sock.path())
            .unwrap();
        client.send_to(b"READY=1", sock.path()).unwrap();
        let me = std::process::id() as i32;
        let got = sock.recv(|pid| pid.is_none_or(|p| p == me)).await.unwrap();
        assert_eq!(got, vec![Notice::Ready]);
        let path = sock.path().to_path_buf();
        drop(sock);
        assert!(!path.exists());
    }
}
