//! The proxy's listening sockets: taken from a service manager (`LISTEN_FDS`, matched by
//! `LISTEN_FDNAMES`) or bound here on loopback. Hands out std sockets, non-blocking, ready for
//! tokio; serving them is someone else's job.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, SockType, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt,
};
use socket2::{Domain, Socket, Type};

/// The port the proxy prefers, and the one it falls back to without privileges.
pub(crate) const PRIVILEGED_PORT: u16 = 80;
pub(crate) const FALLBACK_PORT: u16 = 7080;
pub(crate) const HTTPS_PORT: u16 = 443;

/// Sockets a service manager passed to us.
#[derive(Debug, Default)]
pub(crate) struct Inherited {
    pub(crate) http: Vec<TcpListener>,
    /// Listeners named `https` (port 443, say): served as `http` ones are (the first byte
    /// tells TLS from HTTP), and HTTPS URLs name their port.
    pub(crate) https: Vec<TcpListener>,
    pub(crate) control: Option<UnixListener>,
    /// Names we did not use, for a warning.
    pub(crate) ignored: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ListenError {
    #[error("LISTEN_FDS is malformed")]
    Env(#[source] io::Error),
    #[error("inherited fd {fd} ({name}) is not a listening stream socket")]
    NotListening { fd: RawFd, name: String },
    #[error("inherited fd {fd} ({name}) should be a {want} socket")]
    WrongFamily {
        fd: RawFd,
        name: String,
        want: &'static str,
    },
    #[error(
        "{0} is not a loopback address; wharf listens on this machine only (use 127.0.0.1 or [::1])"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "another wharf proxy already answers on {0}; stop it first (`wharf stop --proxy`) or use it"
    )]
    ControlBusy(String),
    #[error("cannot create the control socket {path}")]
    Control {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Take the sockets passed with `LISTEN_FDS` (strict `LISTEN_PID` check) and unset the
/// variables. `None` when nothing was passed.
///
/// # Safety
/// Edits the environment: call it before any other thread exists.
pub(crate) unsafe fn inherited() -> Result<Option<Inherited>, ListenError> {
    // SAFETY: forwarded to our caller.
    let fds =
        unsafe { sd_notify::listen_fds_with_names_and_unset_env() }.map_err(ListenError::Env)?;
    let fds: Vec<(RawFd, String)> = fds.collect();
    if fds.is_empty() {
        return Ok(None);
    }
    let mut out = Inherited::default();
    for (fd, name) in fds {
        // SAFETY: LISTEN_FDS hands these fds to us; nothing else in the process owns them.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        adopt(owned, name, &mut out)?;
    }
    Ok(Some(out))
}

/// Check one passed socket (listening, stream, the family its name implies), make it
/// non-blocking and file it under its name.
fn adopt(owned: OwnedFd, name: String, out: &mut Inherited) -> Result<(), ListenError> {
    let fd = owned.as_raw_fd();
    let listening = getsockopt(&owned, sockopt::AcceptConn).unwrap_or(false);
    let stream = getsockopt(&owned, sockopt::SockType).is_ok_and(|t| t == SockType::Stream);
    if !listening || !stream {
        return Err(ListenError::NotListening { fd, name });
    }
    let family = getsockname::<SockaddrStorage>(fd)
        .ok()
        .and_then(|a| a.family());
    let is_ip = matches!(family, Some(AddressFamily::Inet | AddressFamily::Inet6));
    match name.as_str() {
        "http" | "https" | "unknown" | "" => {
            if !is_ip {
                return Err(ListenError::WrongFamily {
                    fd,
                    name,
                    want: "TCP",
                });
            }
            let listener = TcpListener::from(owned);
            listener.set_nonblocking(true).map_err(ListenError::Env)?;
            if name == "https" {
                out.https.push(listener);
            } else {
                out.http.push(listener);
            }
        }
        "control" => {
            if family != Some(AddressFamily::Unix) {
                return Err(ListenError::WrongFamily {
                    fd,
                    name,
                    want: "Unix",
                });
            }
            let listener = UnixListener::from(owned);
            listener.set_nonblocking(true).map_err(ListenError::Env)?;
            out.control = Some(listener);
        }
        _ => out.ignored.push(name),
    }
    Ok(())
}

/// The sockets launchd holds for this job (`http`, `https`, `control`), checked in with
/// `launch_activate_socket`. `None` when not started by launchd, and always outside macOS.
pub(crate) fn launchd() -> Result<Option<Inherited>, ListenError> {
    let mut out = Inherited::default();
    let mut any = false;
    for name in ["http", "https", "control"] {
        for owned in imp::activate(name)
            .map_err(ListenError::Env)?
            .unwrap_or_default()
        {
            any = true;
            adopt(owned, name.to_string(), &mut out)?;
        }
    }
    Ok(any.then_some(out))
}

#[cfg(target_os = "macos")]
mod imp {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd};

    unsafe extern "C" {
        fn launch_activate_socket(
            name: *const libc::c_char,
            fds: *mut *mut libc::c_int,
            cnt: *mut libc::size_t,
        ) -> libc::c_int;
    }

    /// launchd's fds for socket `name`; `None` if we were not started by launchd (ESRCH) or
    /// the job has no such socket (ENOENT).
    pub(crate) fn activate(name: &str) -> io::Result<Option<Vec<OwnedFd>>> {
        let cname = CString::new(name).expect("socket names have no NUL");
        let mut fds: *mut libc::c_int = std::ptr::null_mut();
        let mut cnt: libc::size_t = 0;
        // SAFETY: `cname` is a NUL-terminated string that outlives the call, and `fds` and
        // `cnt` point to valid, writable locals: all launch_activate_socket(3) asks of us.
        // They start as null and 0, so `take` sees no array if launchd wrote none.
        let err = unsafe { launch_activate_socket(cname.as_ptr(), &mut fds, &mut cnt) };
        match err {
            0 => Ok(Some(take(fds, cnt))),
            libc::ESRCH | libc::ENOENT => Ok(None),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Own the `cnt` fds of the array launchd handed us (`fds`, from malloc), and free it.
    fn take(fds: *mut libc::c_int, cnt: libc::size_t) -> Vec<OwnedFd> {
        if fds.is_null() {
            // Nothing to own or free: a null pointer is no slice, not even an empty one.
            return Vec::new();
        }
        let owned = if cnt == 0 {
            Vec::new()
        } else {
            // SAFETY: launchd returned a non-null array of `cnt` ints, aligned (malloc), which
            // nothing else reads or writes; the slice is gone before the array is freed below.
            let raw = unsafe { std::slice::from_raw_parts(fds, cnt) };
            raw.iter()
                .filter(|&&fd| fd >= 0)
                // SAFETY: each fd is open (not -1) and handed to us alone: the caller closes
                // them (launch_activate_socket(3)), which the OwnedFd now does.
                .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect()
        };
        // SAFETY: the array came from malloc and is the caller's to free(3)
        // (launch_activate_socket(3)); it is freed once, and no reference to it remains.
        unsafe { libc::free(fds.cast()) };
        owned
    }
}

#[cfg(not(target_os = "macos"))]
mod imp {
    use std::io;
    use std::os::fd::OwnedFd;

    pub(crate) fn activate(_name: &str) -> io::Result<Option<Vec<OwnedFd>>> {
        Ok(None)
    }
}

/// Bind the HTTP listeners. `addrs` empty means the default: 127.0.0.1 and [::1] on port 80
/// when allowed and free, else 7080 (IPv6 is skipped where the machine has none). A port 0 is chosen
/// once, by the first address, and shared by the rest.
pub(crate) fn bind_http(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, ListenError> {
    if addrs.is_empty() {
        let defaults = |port| {
            [
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            ]
        };
        // Port 80 needs privileges and may belong to a system web server: either way, 7080.
        return match bind_all(&defaults(PRIVILEGED_PORT), true) {
            Err(ListenError::Bind { source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::AddrInUse
                ) =>
            {
                bind_all(&defaults(FALLBACK_PORT), true)
            }
            other => other,
        };
    }
    bind_all(addrs, false)
}

/// Beside HTTP on port 80, HTTPS's own port 443 on both loopbacks, when it may be bound; else
/// none (HTTPS is served on the HTTP listeners all the same).
pub(crate) fn bind_https_beside(http: &[TcpListener]) -> Vec<TcpListener> {
    let on_80 = http
        .first()
        .and_then(|l| l.local_addr().ok())
        .is_some_and(|a| a.port() == PRIVILEGED_PORT);
    if !on_80 {
        return Vec::new();
    }
    let addrs = [
        SocketAddr::from((Ipv4Addr::LOCALHOST, HTTPS_PORT)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, HTTPS_PORT)),
    ];
    bind_all(&addrs, true).unwrap_or_default()
}

fn bind_all(addrs: &[SocketAddr], v6_optional: bool) -> Result<Vec<TcpListener>, ListenError> {
    let mut out: Vec<TcpListener> = Vec::new();
    let mut chosen = 0;
    for addr in addrs {
        if !addr.ip().is_loopback() {
            return Err(ListenError::NotLoopback(*addr));
        }
        let mut addr = *addr;
        if addr.port() == 0 && chosen != 0 {
            addr.set_port(chosen);
        }
        match bind_one(addr) {
            Ok(l) => {
                chosen = l.local_addr().map(|a| a.port()).unwrap_or(0);
                out.push(l);
            }
            Err(e)
                if v6_optional
                    && addr.is_ipv6()
                    && e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
            Err(source) => return Err(ListenError::Bind { addr, source }),
        }
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(crate::sys::socket::backlog())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Bind the control socket at `path` (0600, in a 0700 directory), replacing a stale one. Fails
/// if another proxy answers there.
pub(crate) fn bind_control(path: &Path) -> Result<UnixListener, ListenError> {
    let err = |source| ListenError::Control {
        path: path.display().to_string(),
        source,
    };
    if UnixStream::connect(path).is_ok() {
        return Err(ListenError::ControlBusy(path.display().to_string()));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_shared_and_non_loopback_refused() {
        let addrs: Vec<SocketAddr> =
            vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
        match bind_http(&addrs) {
            Ok(ls) => {
                let ports: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
                assert_eq!(ports[0], ports[1]);
            }
            Err(ListenError::Bind { addr, .. }) if addr.is_ipv6() => {} // no IPv6 here
            Err(e) => panic!("{e}"),
        }
        assert!(matches!(
            bind_http(&["0.0.0.0:0".parse().unwrap()]),
            Err(ListenError::NotLoopback(_))
        ));
    }

    #[test]
    fn control_socket_is_private_and_refuses_to_steal_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let first = bind_control(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            bind_control(&path),
            Err(ListenError::ControlBusy(_))
        ));
        drop(first);
        bind_control(&path).unwrap();
    }
}
