//! Finding where a server really listens: a dev server may move to another port than the
//! `PORT` it was given, a server handed a socket may close or ignore it and bind its own, and
//! either may listen on every interface. Linux reads `/proc`; elsewhere only the expected port
//! is probed, and an fd-mode server is taken at its word.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::sys::socket::BoundSocket;

/// A TCP socket a server listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Listener {
    /// Its address as the kernel has it: `0.0.0.0` or `[::]` for every interface.
    pub(crate) bound: SocketAddr,
    /// Where to connect to reach it over loopback.
    pub(crate) connect: SocketAddr,
    /// The kernel's name for the very socket (its inode; 0 where the platform has none): tells
    /// it from a later socket on the same address, such as a port check's that came and went.
    pub(crate) id: u64,
}

impl Listener {
    /// True if it listens on every interface, so other machines can reach it too.
    pub(crate) fn is_exposed(&self) -> bool {
        self.bound.ip().is_unspecified()
    }
}

/// The warning for a server bound to `bound` on every interface.
pub(crate) fn exposed_warning(bound: SocketAddr) -> String {
    format!(
        "{bound} is every interface: other machines on the network can reach this server, not \
         only this one (make it bind 127.0.0.1)"
    )
}

/// Sockets on which `root`'s process tree accepts TCP connections that loopback reaches,
/// lowest port first. `expected` is the port the child was told to use (the only one probed
/// where `/proc` is missing).
pub(crate) fn listening(root: i32, expected: u16) -> Vec<Listener> {
    let mut found = imp::listening(root, expected);
    lowest_first(&mut found);
    found.dedup();
    found
}

/// Lowest port first, IPv4 before IPv6: the order a listener is picked in.
fn lowest_first(listeners: &mut [Listener]) {
    listeners.sort_by_key(|l| (l.connect.port(), l.connect.is_ipv6()));
}

/// Connections waiting in the accept queue of the socket listening on `port` (any process),
/// or `None` where the platform cannot tell or nothing listens there: whether a server about
/// to be stopped still has connections it has not taken.
pub(crate) fn accept_queue(port: u16) -> Option<usize> {
    imp::accept_queue(port)
}

/// Open TCP connections whose local port is one of `ports` (any process), or `None` where
/// the platform cannot tell. Tells an idle on-demand instance from a busy one.
pub(crate) fn established(ports: &[u16]) -> Option<usize> {
    imp::established(ports)
}

/// A process that listens on a TCP port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) pid: i32,
    /// Its command name (`/proc/PID/comm`).
    pub(crate) command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.command, self.pid)
    }
}

/// Who listens on each of `ports` (any address, any process whose descriptors we may read),
/// in one pass over `/proc`. Ports with no listener, or one we cannot see (another user's
/// process when we are not root, or a platform without `/proc`), are absent.
pub(crate) fn holders(ports: &[u16]) -> std::collections::BTreeMap<u16, Holder> {
    imp::holders(ports)
}

/// True if something listens on TCP `port` on any address, as far as the platform tells
/// (`None` where it cannot).
pub(crate) fn is_listened_on(port: u16) -> Option<bool> {
    imp::is_listened_on(port)
}

/// Whether something listens on TCP `port` on any address, where the platform can tell that
/// cheaply (one kernel query, no walk of `/proc`); `None` elsewhere. For asking often.
pub(crate) fn quickly_listened_on(port: u16) -> Option<bool> {
    imp::quickly_listened_on(port)
}

/// A port watched for a listener that loopback reaches, asked often: a kernel socket kept open
/// for the watch, and per look one lookup of `127.0.0.1:PORT` and one of `[::1]:PORT` (each
/// also finds a socket bound to every interface), the way an incoming connection finds its
/// listener, rather than a dump of every listener (`quickly_listened_on` walks the kernel's
/// whole listening table, some 30 µs of CPU here; a lookup takes a few).
pub(crate) struct PortWatch(imp::PortWatch);

impl PortWatch {
    /// `None` where the platform cannot tell cheaply.
    pub(crate) fn new(port: u16) -> Option<PortWatch> {
        let watch = imp::PortWatch::new(port)?;
        watch.listened()?;
        Some(PortWatch(watch))
    }

    /// Whether a socket that loopback reaches listens on the port now; `None` if the kernel
    /// would not say.
    pub(crate) fn listened(&self) -> Option<bool> {
        self.0.listened()
    }
}

/// Whether `listener`, the very socket and not only its address, still listens; `None` where
/// the platform cannot tell cheaply.
pub(crate) fn still_listening(listener: &Listener) -> Option<bool> {
    imp::still_listening(listener)
}

/// How long a server may hold the socket it was handed, listen elsewhere and leave a
/// connection on the handed socket unaccepted, before wharf concludes it serves elsewhere.
/// (Some servers open another listener first: Node's inspector, for one.)
const ELSEWHERE_GRACE: Duration = Duration::from_secs(3);

/// What a server in fd mode does with the socket it was handed, as far as [`Guard`] can tell.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing settled yet.
    Watching,
    /// It accepted a connection on the handed socket: it serves there.
    Serving,
    /// It serves at `listener` instead; `closed` if it closed the handed socket.
    Elsewhere { listener: Listener, closed: bool },
    /// It closed the handed socket and listens on no TCP socket loopback reaches
    /// (`unreachable` lists the ones it does listen on).
    Nowhere { unreachable: Vec<SocketAddr> },
}

/// Watches a server started in fd mode: a connection of its own waits on the main socket, and
/// either the server accepts it (all is well) or the server tree closes the socket or listens
/// elsewhere, which is what it then serves on.
pub(crate) struct Guard {
    /// Inodes of the handed sockets, main first.
    handed: Vec<u64>,
    main: SocketAddr,
    probe: Option<TcpStream>,
    elsewhere_since: Option<Instant>,
    closed_since: Option<Instant>,
}

impl Guard {
    /// `None` where the platform cannot see what a process tree holds (no `/proc`).
    pub(crate) fn new(sockets: &[BoundSocket]) -> Option<Guard> {
        let handed = sockets
            .iter()
            .map(|b| nix::sys::stat::fstat(&b.socket).map(|st| st.st_ino))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        let main = sockets.first()?.addr();
        imp::supported().then(|| Guard {
            handed,
            main,
            probe: connect_probe(main),
            elsewhere_since: None,
            closed_since: None,
        })
    }

    /// Look at `root`'s tree once.
    pub(crate) fn check(&mut self, root: i32) -> Verdict {
        if self.probe.is_none() {
            // The first connect failed (a full accept queue, a loaded machine): without a
            // probe the server could never be seen accepting, and the guard would read /proc
            // for the server's whole life.
            self.probe = connect_probe(self.main);
        }
        if self.probe.as_ref().is_some_and(answered_eof) {
            self.probe = None;
            return Verdict::Serving;
        }
        let main_port = self.main.port();
        let rows = imp::rows(|state, port| state == imp::LISTEN || port == main_port);
        if let Some(probe) = &self.probe
            && imp::accepted(&rows, probe, self.main) == Some(true)
        {
            self.probe = None;
            return Verdict::Serving;
        }
        let tree = imp::survey(&rows, root, &self.handed);
        let now = Instant::now();
        let pick = tree.elsewhere.first().copied();
        let verdict = match (tree.holds_main, pick) {
            (false, Some(listener)) => Verdict::Elsewhere {
                listener,
                closed: true,
            },
            (false, None) => {
                let since = *self.closed_since.get_or_insert(now);
                if now - since < ELSEWHERE_GRACE {
                    return Verdict::Watching;
                }
                Verdict::Nowhere {
                    unreachable: tree.unreachable,
                }
            }
            (true, Some(listener)) => {
                let since = *self.elsewhere_since.get_or_insert(now);
                if now - since < ELSEWHERE_GRACE {
                    return Verdict::Watching;
                }
                Verdict::Elsewhere {
                    listener,
                    closed: false,
                }
            }
            (true, None) => {
                self.elsewhere_since = None;
                return Verdict::Watching;
            }
        };
        self.probe = None;
        verdict
    }
}

/// The guard's own connection to the handed socket (`None` if it could not connect now).
/// The guard's connection to the handed socket, its sending side shut at once: a server that
/// takes connections one at a time and accepts it reads its end at once and goes on to the
/// next, rather than wait for a request until the guard's next look (up to 20 ms, more later)
/// while a client's request waits behind it (as a restart's first one often does).
fn connect_probe(main: SocketAddr) -> Option<TcpStream> {
    let probe = TcpStream::connect_timeout(&main, Duration::from_millis(200)).ok()?;
    probe.shutdown(std::net::Shutdown::Write).ok()?;
    probe.set_nonblocking(true).ok()?;
    Some(probe)
}

/// Whether the server closed the guard's connection: only a server that accepted it does (one
/// still queued gets nothing, or a reset if the socket is closed).
fn answered_eof(probe: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(probe.peek(&mut byte), Ok(0))
}

/// The address to connect to for a socket bound at `addr`, if it is reachable over loopback.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn reachable(addr: SocketAddr) -> Option<SocketAddr> {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip if ip.is_loopback() => ip,
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) if v4.is_loopback() => IpAddr::V4(v4),
            _ => return None,
        },
        IpAddr::V4(_) => return None,
    };
    Some(SocketAddr::new(ip, addr.port()))
}

/// A process tree's TCP listeners besides the handed sockets.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Survey {
    /// It still holds the main handed socket.
    holds_main: bool,
    elsewhere: Vec<Listener>,
    unreachable: Vec<SocketAddr>,
}

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use nix::sys::socket::MsgFlags;
    use std::collections::HashSet;

    pub(crate) const LISTEN: u8 = 0x0A;
    const ESTABLISHED: u8 = 0x01;
    const TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];

    /// One line of `/proc/net/tcp{,6}`.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Row {
        pub(crate) local: SocketAddr,
        pub(crate) remote: SocketAddr,
        pub(crate) state: u8,
        /// Bytes received and not read; for a listener, connections not yet accepted.
        pub(crate) rx_queue: usize,
        /// 0 for a connection still waiting in a listener's accept queue.
        pub(crate) inode: u64,
    }

    pub(crate) fn supported() -> bool {
        true
    }

    /// The rows `keep(state, local port)` selects. The tables can hold tens of thousands of
    /// lines (TIME_WAIT after a benchmark), so only those rows are parsed in full.
    pub(crate) fn rows(keep: impl Fn(u8, u16) -> bool) -> Vec<Row> {
        TABLES
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .flat_map(|table| parse_table(&table, &keep))
            .collect()
    }

    pub(crate) fn established(ports: &[u16]) -> Option<usize> {
        Some(rows(|state, port| state == ESTABLISHED && ports.contains(&port)).len())
    }

    /// For a listener, the receive queue of `/proc/net/tcp` is its accept queue.
    pub(crate) fn accept_queue(port: u16) -> Option<usize> {
        let mut listeners = listener_rows();
        listeners.retain(|r| r.local.port() == port);
        (!listeners.is_empty()).then(|| listeners.iter().map(|r| r.rx_queue).sum())
    }

    pub(crate) fn listening(root: i32, expected: u16) -> Vec<Listener> {
        // The usual case first: the server itself listens on the port it was given. Its own
        // fds and the kernel's lookup of that port answer that without a walk of every
        // process on the machine for its tree, or of every listener; the expected port is
        // what `pick_listener` takes when it is there.
        let own: HashSet<u64> = process_sockets(root).into_iter().collect();
        if let Some(rows) = PortWatch::new(expected).and_then(|w| w.listeners()) {
            let (mine, _) = tree_listeners(&rows, &own, &[]);
            if !mine.is_empty() {
                return mine;
            }
        }
        let rows = listener_rows();
        let (mine, _) = tree_listeners(&rows, &own, &[]);
        if mine.iter().any(|l| l.connect.port() == expected) {
            return mine;
        }
        let inodes = socket_inodes(root);
        if inodes.is_empty() {
            return Vec::new();
        }
        tree_listeners(&rows, &inodes, &[]).0
    }

    pub(crate) fn survey(rows: &[Row], root: i32, handed: &[u64]) -> Survey {
        let inodes = socket_inodes(root);
        let (mut elsewhere, unreachable) = tree_listeners(rows, &inodes, handed);
        lowest_first(&mut elsewhere);
        Survey {
            holds_main: handed.first().is_some_and(|main| inodes.contains(main)),
            elsewhere,
            unreachable,
        }
    }

    /// The listening sockets among `rows` that are the tree's (`inodes`) but not in `skip`:
    /// those loopback reaches, and the addresses of those it does not.
    fn tree_listeners(
        rows: &[Row],
        inodes: &HashSet<u64>,
        skip: &[u64],
    ) -> (Vec<Listener>, Vec<SocketAddr>) {
        let mut reached = Vec::new();
        let mut unreachable = Vec::new();
        for r in rows {
            if r.state != LISTEN || !inodes.contains(&r.inode) || skip.contains(&r.inode) {
                continue;
            }
            match reachable(r.local) {
                Some(connect) => reached.push(Listener {
                    bound: r.local,
                    connect,
                    id: r.inode,
                }),
                None => unreachable.push(r.local),
            }
        }
        (reached, unreachable)
    }

    /// Whether the server side of `probe` (a connection to `server`) was accepted; `None`
    /// while it is not in the tables at all.
    pub(crate) fn accepted(rows: &[Row], probe: &TcpStream, server: SocketAddr) -> Option<bool> {
        let local = probe.local_addr().ok()?;
        rows.iter()
            .find(|r| r.state != LISTEN && r.local == server && r.remote == local)
            .map(|r| r.inode != 0)
    }

    fn socket_inodes(root: i32) -> HashSet<u64> {
        crate::sys::process::tree(root)
            .into_iter()
            .flat_map(process_sockets)
            .collect()
    }

    /// The inodes of the sockets process `pid` has open (none if we may not look).
    fn process_sockets(pid: i32) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let target = std::fs::read_link(entry.path()).ok()?;
                let target = target.to_string_lossy();
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .collect()
    }

    pub(crate) fn is_listened_on(port: u16) -> Option<bool> {
        quickly_listened_on(port)
            .or_else(|| Some(!rows(|state, p| state == LISTEN && p == port).is_empty()))
    }

    /// Whether a TCP socket listens on `port`, asked of the kernel's socket diagnostics
    /// (`sock_diag`): a dump of the listeners alone, no walk of every connection and no text to
    /// parse, cheap enough to ask every fraction of a millisecond. `None` if netlink refuses.
    pub(crate) fn quickly_listened_on(port: u16) -> Option<bool> {
        any_listener(|row| row.local.port() == port)
    }

    pub(crate) fn still_listening(listener: &Listener) -> Option<bool> {
        any_listener(|row| row.inode == listener.id)
    }

    /// A `sock_diag` socket kept for lookups of one port (see `super::PortWatch`).
    pub(crate) struct PortWatch {
        fd: std::os::fd::OwnedFd,
        port: u16,
    }

    impl PortWatch {
        pub(crate) fn new(port: u16) -> Option<PortWatch> {
            Some(PortWatch {
                fd: sock_diag()?,
                port,
            })
        }

        pub(crate) fn listened(&self) -> Option<bool> {
            if self.lookup(IpAddr::V4(Ipv4Addr::LOCALHOST))?.is_some() {
                return Some(true);
            }
            // A machine without IPv6 answers that lookup with an error: nothing listens there.
            Some(matches!(
                self.lookup(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                Some(Some(_))
            ))
        }

        /// The listeners that loopback reaches on the port: the one `127.0.0.1` finds, then
        /// the one `[::1]` finds if it is another. `None` if the kernel would not say.
        pub(crate) fn listeners(&self) -> Option<Vec<Row>> {
            let mut rows: Vec<Row> = self
                .lookup(IpAddr::V4(Ipv4Addr::LOCALHOST))?
                .into_iter()
                .collect();
            if let Some(Some(v6)) = self.lookup(IpAddr::V6(Ipv6Addr::LOCALHOST))
                && !rows.iter().any(|r| r.inode == v6.inode)
            {
                rows.push(v6);
            }
            Some(rows)
        }

        /// One lookup of `ip`:port, as a connection from loopback would find its listener (a
        /// socket on that address or on every interface): the listener, or none. `None` if
        /// the kernel said other than found or not found.
        fn lookup(&self, ip: IpAddr) -> Option<Option<Row>> {
            use std::os::fd::AsRawFd;
            let wanted = Diag::Lookup(SocketAddr::new(ip, self.port));
            if !send_diag_request(&self.fd, wanted) {
                return None;
            }
            // One answer: the socket found (its inet_diag_msg), or an error (ENOENT: none).
            let mut buf = [0u8; 512];
            let got =
                nix::sys::socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()).ok()?;
            if got < HEADER + 4 {
                return None;
            }
            match u16::from_ne_bytes([buf[4], buf[5]]) as libc::c_int {
                libc::NLMSG_ERROR => {
                    let error = i32::from_ne_bytes(buf[HEADER..HEADER + 4].try_into().ok()?);
                    (error == -libc::ENOENT).then_some(None)
                }
                // The lookup finds a listener or a connection's own four addresses; with no
                // remote address given, only a listener.
                _ => {
                    let row = diag_row(buf.get(HEADER..HEADER + DIAG_MSG)?)?;
                    Some((row.state == LISTEN).then_some(row))
                }
            }
        }
    }

    /// The length of an `inet_diag_msg`: family, state, timer, retrans, then the socket id
    /// (source port and destination port, big-endian; source and destination address, 16
    /// bytes each; interface; cookie), then expires, rqueue (a listener's accept queue),
    /// wqueue, uid, inode.
    const DIAG_MSG: usize = 72;

    /// The row an `inet_diag_msg` (`m`, `DIAG_MSG` bytes) describes (no remote address: a
    /// listener's).
    fn diag_row(m: &[u8]) -> Option<Row> {
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(m.get(at..at + 4)?.try_into().ok()?))
        };
        let port = u16::from_be_bytes([*m.get(4)?, *m.get(5)?]);
        let (ip, any): (IpAddr, IpAddr) = match i32::from(*m.first()?) {
            libc::AF_INET => (
                <[u8; 4]>::try_from(m.get(8..12)?).ok()?.into(),
                Ipv4Addr::UNSPECIFIED.into(),
            ),
            _ => (
                <[u8; 16]>::try_from(m.get(8..24)?).ok()?.into(),
                Ipv6Addr::UNSPECIFIED.into(),
            ),
        };
        Some(Row {
            local: SocketAddr::new(ip, port),
            remote: SocketAddr::new(any, 0),
            state: *m.get(1)?,
            rx_queue: word(56)? as usize,
            inode: u64::from(word(68)?),
        })
    }

    /// A netlink message's header (`nlmsghdr`: length, type, flags, sequence, port id).
    const HEADER: usize = 16;

    /// What a `sock_diag` request asks for, of TCP sockets.
    enum Diag {
        /// A dump of every listener of one family.
        Listeners { v6: bool },
        /// The one listener a connection to this address would find (a socket on that
        /// address or on every interface).
        Lookup(SocketAddr),
    }

    /// Send `fd` (a `sock_diag` socket) the request for `wanted`; false if it did not take it.
    fn send_diag_request(fd: &std::os::fd::OwnedFd, wanted: Diag) -> bool {
        use std::os::fd::AsRawFd;
        const SOCK_DIAG_BY_FAMILY: u16 = 20;
        // nlmsghdr, then inet_diag_req_v2: family, protocol, ext, pad, states (a bit per TCP
        // state), then the socket id: source port (big-endian), destination port, source and
        // destination address (16 bytes each), interface, cookie.
        let mut req = [0u8; HEADER + 56];
        req[0..4].copy_from_slice(&((HEADER + 56) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req[HEADER + 1] = libc::IPPROTO_TCP as u8;
        let id = HEADER + 8;
        let (flags, v6) = match wanted {
            // A dump ignores the socket id; the states keep it to listeners.
            Diag::Listeners { v6 } => {
                let states = 1u32 << LISTEN;
                req[HEADER + 4..HEADER + 8].copy_from_slice(&states.to_ne_bytes());
                (libc::NLM_F_REQUEST | libc::NLM_F_DUMP, v6)
            }
            // A lookup in any state: with no remote address given, only a listener matches.
            // The cookie, all ones, is none.
            Diag::Lookup(addr) => {
                req[HEADER + 4..HEADER + 8].copy_from_slice(&u32::MAX.to_ne_bytes());
                req[id..id + 2].copy_from_slice(&addr.port().to_be_bytes());
                match addr.ip() {
                    IpAddr::V4(v4) => req[id + 4..id + 8].copy_from_slice(&v4.octets()),
                    IpAddr::V6(v6) => req[id + 4..id + 20].copy_from_slice(&v6.octets()),
                }
                req[id + 40..id + 48].copy_from_slice(&[0xff; 8]);
                (libc::NLM_F_REQUEST, addr.is_ipv6())
            }
        };
        req[6..8].copy_from_slice(&(flags as u16).to_ne_bytes());
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        req[HEADER] = family as u8;
        let sent = nix::sys::socket::send(fd.as_raw_fd(), &req, MsgFlags::empty());
        sent == Ok(req.len())
    }

    /// A new `sock_diag` netlink socket; `None` if the kernel refuses one.
    fn sock_diag() -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::FromRawFd;
        const NETLINK_SOCK_DIAG: libc::c_int = 4;
        // SAFETY: a plain socket call; the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        // SAFETY: a new fd nothing else owns.
        (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }

    /// Whether any listening TCP socket is `wanted`, from the socket diagnostics (stops at the
    /// first). `None` if netlink refuses.
    fn any_listener(wanted: impl Fn(&Row) -> bool) -> Option<bool> {
        let mut found = false;
        each_listener(|row| {
            found = wanted(&row);
            found
        })?;
        Some(found)
    }

    /// Every listening TCP socket, from the socket diagnostics (as `quickly_listened_on`):
    /// what `/proc/net/tcp{,6}` says of them without reading (the kernel writing) a line for
    /// every connection on the machine. `None` if netlink refuses.
    fn quick_listeners() -> Option<Vec<Row>> {
        let mut rows = Vec::new();
        each_listener(|row| {
            rows.push(row);
            false
        })?;
        Some(rows)
    }

    /// The listening rows: from the socket diagnostics, else from `/proc/net/tcp{,6}`.
    fn listener_rows() -> Vec<Row> {
        quick_listeners().unwrap_or_else(|| rows(|state, _| state == LISTEN))
    }

    /// Each listening TCP socket (IPv4, then IPv6) to `stop`, one `sock_diag` dump per
    /// family, until `stop` says so. `None` if netlink refuses or answers what cannot be read.
    fn each_listener(mut stop: impl FnMut(Row) -> bool) -> Option<()> {
        use std::os::fd::AsRawFd;
        let fd = sock_diag()?;
        let mut buf = vec![0u8; 32 * 1024];
        let word = |b: &[u8], at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
        };
        for v6 in [false, true] {
            if !send_diag_request(&fd, Diag::Listeners { v6 }) {
                return None;
            }
            'dump: loop {
                let got =
                    nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).ok()?;
                let mut at = 0;
                while at + HEADER <= got {
                    let len = word(&buf, at)? as usize;
                    let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().ok()?);
                    if len < HEADER || at + len > got {
                        return None;
                    }
                    match kind as libc::c_int {
                        libc::NLMSG_DONE => break 'dump,
                        libc::NLMSG_ERROR => return None,
                        _ if len >= HEADER + DIAG_MSG => {
                            let row = diag_row(&buf[at + HEADER..at + HEADER + DIAG_MSG])?;
                            if stop(row) {
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    at += (len + 3) & !3;
                }
                if got == 0 {
                    break;
                }
            }
        }
        Some(())
    }

    pub(crate) fn holders(ports: &[u16]) -> std::collections::BTreeMap<u16, Holder> {
        let mut wanted: std::collections::HashMap<u64, u16> = listener_rows()
            .into_iter()
            .filter(|r| ports.contains(&r.local.port()))
            .map(|r| (r.inode, r.local.port()))
            .collect();
        let mut found = std::collections::BTreeMap::new();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return found;
        };
        for entry in procs.flatten() {
            if wanted.is_empty() {
                break;
            }
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            for inode in process_sockets(pid) {
                if let Some(port) = wanted.remove(&inode) {
                    let command = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .map(|c| c.trim_end().to_string())
                        .unwrap_or_else(|_| "?".to_string());
                    found.entry(port).or_insert(Holder { pid, command });
                }
            }
        }
        found
    }

    /// The rows of a `/proc/net/tcp{,6}` table that `keep(state, local port)` selects.
    pub(crate) fn parse_table(table: &str, keep: impl Fn(u8, u16) -> bool) -> Vec<Row> {
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut fields = line.split_ascii_whitespace();
                let (local, remote, state) = (fields.nth(1)?, fields.next()?, fields.next()?);
                let state = u8::from_str_radix(state, 16).ok()?;
                let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
                if !keep(state, port) {
                    return None;
                }
                let (_, rx) = fields.next()?.split_once(':')?;
                Some(Row {
                    local: parse_addr(local)?,
                    remote: parse_addr(remote)?,
                    state,
                    rx_queue: usize::from_str_radix(rx, 16).ok()?,
                    // After tx:rx: tr:when, retransmits, uid, timeout, inode.
                    inode: fields.nth(4)?.parse().ok()?,
                })
            })
            .collect()
    }

    /// `0100007F:0FA1` (IPv4) or 32 hex digits + port (IPv6), each 32-bit word in host order.
    fn parse_addr(field: &str) -> Option<SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let mut bytes = Vec::with_capacity(16);
        for chunk in ip.as_bytes().chunks(8) {
            let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
            bytes.extend_from_slice(&word.to_ne_bytes());
        }
        let ip = match bytes.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
            16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_kernel_tells_quickly_whether_a_port_is_listened_on() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            assert_eq!(super::super::quickly_listened_on(port), Some(true));
            drop(listener);
            assert_eq!(super::super::quickly_listened_on(port), Some(false));
        }

        #[test]
        fn a_port_watch_sees_what_loopback_reaches_on_its_port() {
            use std::net::TcpListener;
            // A port of our own first, then each kind of socket on it in turn.
            let first = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = first.local_addr().unwrap().port();
            let watch = super::super::PortWatch::new(port).expect("sock_diag on Linux");
            assert_eq!(watch.listened(), Some(true), "127.0.0.1");
            drop(first);
            assert_eq!(watch.listened(), Some(false), "closed");
            for addr in ["0.0.0.0", "[::1]", "[::]"] {
                let Ok(l) = TcpListener::bind(format!("{addr}:{port}")) else {
                    // No IPv6 here, or the port was taken meanwhile: nothing to say.
                    continue;
                };
                assert_eq!(watch.listened(), Some(true), "{addr}");
                drop(l);
                assert_eq!(watch.listened(), Some(false), "{addr} closed");
            }
            // A socket bound and not listening is not a listener.
            let bound =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            bound
                .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
                .unwrap();
            assert_eq!(watch.listened(), Some(false), "bound, not listening");
        }

        #[test]
        fn the_kernel_lists_listeners_as_the_tables_do() {
            let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let v6 = std::net::TcpListener::bind("[::1]:0");
            let _waiting = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
            let quick = quick_listeners().expect("sock_diag answers");
            let slow = rows(|state, _| state == LISTEN);
            let ours = [Some(&v4), v6.as_ref().ok()];
            for l in ours.into_iter().flatten() {
                let addr = l.local_addr().unwrap();
                let pick = |rows: &[Row]| {
                    rows.iter()
                        .find(|r| r.local == addr)
                        .map(|r| (r.inode, r.rx_queue, r.remote))
                };
                assert!(pick(&quick).is_some(), "{addr} in {quick:?}");
                assert_eq!(pick(&quick), pick(&slow), "{addr}");
            }
        }

        #[test]
        fn finds_our_own_listener_and_not_a_closed_one() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let me = std::process::id() as i32;
            let found = |l: &Listener| l.connect == addr && l.bound == addr && !l.is_exposed();
            assert!(super::super::listening(me, 0).iter().any(found));
            drop(listener);
            assert!(!super::super::listening(me, 0).iter().any(found));
        }

        #[test]
        fn the_accept_queue_counts_connections_not_yet_accepted() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            assert_eq!(super::super::accept_queue(port), Some(0));
            let _waiting = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            assert_eq!(super::super::accept_queue(port), Some(1));
            let _taken = listener.accept().unwrap();
            assert_eq!(super::super::accept_queue(port), Some(0));
            drop(listener);
            assert_eq!(super::super::accept_queue(port), None);
        }

        #[test]
        fn the_holder_of_a_port_is_named() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let found = super::super::holders(&[port]);
            assert_eq!(found[&port].pid, std::process::id() as i32);
            assert_eq!(super::super::is_listened_on(port), Some(true));
            drop(listener);
            assert!(super::super::holders(&[port]).is_empty());
            assert_eq!(super::super::is_listened_on(port), Some(false));
        }

        #[test]
        fn established_connections_are_counted_by_local_port() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            assert_eq!(super::super::established(&[port]), Some(0));
            let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (_server, _) = listener.accept().unwrap();
            assert_eq!(super::super::established(&[port]), Some(1));
        }

        #[test]
        fn the_server_on_its_expected_port_is_found_by_lookup_as_by_the_tables() {
            let v4 = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
            let port = v4.local_addr().unwrap().port();
            let me = std::process::id() as i32;
            let found = super::super::listening(me, port);
            let first = found.first().expect("found");
            assert_eq!(first.bound, SocketAddr::from(([0, 0, 0, 0], port)));
            assert_eq!(first.connect, SocketAddr::from(([127, 0, 0, 1], port)));
            assert_eq!(first.id, nix::sys::stat::fstat(&v4).unwrap().st_ino);
            // Both families on the port: both, IPv4 first, as the tables list them.
            if let Ok(v6) = std::net::TcpListener::bind(("::1", port)) {
                let found = super::super::listening(me, port);
                let bound: Vec<_> = found.iter().map(|l| l.bound).collect();
                assert_eq!(bound, [v4.local_addr().unwrap(), v6.local_addr().unwrap()]);
            }
        }

        #[test]
        fn every_interface_is_reported_as_such() {
            let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let me = std::process::id() as i32;
            let found = super::super::listening(me, 0);
            let ours = found.iter().find(|l| l.bound.port() == port).unwrap();
            assert_eq!(ours.bound, SocketAddr::from(([0, 0, 0, 0], port)));
            assert_eq!(ours.connect, SocketAddr::from(([127, 0, 0, 1], port)));
            assert!(ours.is_exposed());
        }

        #[test]
        fn guard_sees_its_probe_accepted() {
            use socket2::{Domain, Socket, Type};
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            socket
                .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
                .unwrap();
            socket.listen(8).unwrap();
            let port = socket.local_addr().unwrap().as_socket().unwrap().port();
            let bound = [BoundSocket {
                name: "http".into(),
                port,
                socket,
            }];
            let mut guard = Guard::new(&bound).unwrap();
            let me = std::process::id() as i32;
            assert_eq!(guard.check(me), Verdict::Watching, "the probe waits");
            let _accepted = bound[0].socket.accept().unwrap();
            assert_eq!(guard.check(me), Verdict::Serving);
        }

        #[test]
        fn a_server_taking_one_connection_at_a_time_is_not_held_up_by_the_probe() {
            use std::io::Read;
            let bound = [BoundSocket::for_test()];
            let mut guard = Guard::new(&bound).unwrap();
            // A client's request queued behind the probe, as on a restart.
            let mut client = std::net::TcpStream::connect(bound[0].addr()).unwrap();
            std::io::Write::write_all(&mut client, b"GET / HTTP/1.1\r\n\r\n").unwrap();
            let (mut first, _) = bound[0].socket.accept().unwrap();
            first
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut got = Vec::new();
            // The probe's end: nothing to read, and no wait for a request that never comes.
            assert_eq!(first.read_to_end(&mut got).unwrap(), 0);
            drop(first);
            let me = std::process::id() as i32;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while guard.check(me) != Verdict::Serving {
                assert!(std::time::Instant::now() < deadline, "the close is seen");
                std::thread::yield_now();
            }
            let (mut second, _) = bound[0].socket.accept().unwrap();
            let mut request = [0u8; 5];
            second.read_exact(&mut request).unwrap();
            assert_eq!(&request, b"GET /");
        }

        #[test]
        fn guard_connects_again_when_its_first_probe_failed() {
            let bound = [BoundSocket::for_test()];
            // Every accept here finds a connection already queued, or fails at once.
            bound[0].socket.set_nonblocking(true).unwrap();
            let mut guard = Guard::new(&bound).unwrap();
            // As if the connect in `new` had failed: its probe leaves the accept queue.
            guard.probe = None;
            drop(bound[0].socket.accept().unwrap());
            let me = std::process::id() as i32;
            assert_eq!(guard.check(me), Verdict::Watching, "a new probe waits");
            let _accepted = bound[0].socket.accept().unwrap();
            assert_eq!(guard.check(me), Verdict::Serving);
        }

        #[test]
        fn wildcard_and_v6_loopback_map_to_loopback() {
            let v4 = "  0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 42 1";
            let table = format!("header\n{v4}\n");
            let parsed = parse_table(&table, |_, _| true);
            assert_eq!(
                parsed,
                vec![Row {
                    local: "0.0.0.0:8080".parse().unwrap(),
                    remote: "0.0.0.0:0".parse().unwrap(),
                    state: LISTEN,
                    rx_queue: 0,
                    inode: 42
                }]
            );
            assert_eq!(
                reachable(parsed[0].local),
                Some("127.0.0.1:8080".parse().unwrap())
            );
            assert_eq!(
                reachable("[::]:80".parse().unwrap()),
                Some("[::1]:80".parse().unwrap())
            );
            assert_eq!(reachable("192.0.2.1:80".parse().unwrap()), None);
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    pub(crate) fn supported() -> bool {
        false
    }

    pub(crate) fn established(_ports: &[u16]) -> Option<usize> {
        None
    }

    pub(crate) fn accept_queue(_port: u16) -> Option<usize> {
        None
    }

    pub(crate) fn holders(_ports: &[u16]) -> std::collections::BTreeMap<u16, Holder> {
        std::collections::BTreeMap::new()
    }

    pub(crate) fn is_listened_on(_port: u16) -> Option<bool> {
        None
    }

    pub(crate) fn quickly_listened_on(_port: u16) -> Option<bool> {
        None
    }

    pub(crate) fn still_listening(_listener: &Listener) -> Option<bool> {
        None
    }

    pub(crate) struct PortWatch;

    impl PortWatch {
        pub(crate) fn new(_port: u16) -> Option<PortWatch> {
            None
        }

        pub(crate) fn listened(&self) -> Option<bool> {
            None
        }
    }

    pub(crate) fn listening(_root: i32, expected: u16) -> Vec<Listener> {
        [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]
        .into_iter()
        .map(|ip| SocketAddr::new(ip, expected))
        .filter(|a| TcpStream::connect_timeout(a, Duration::from_millis(100)).is_ok())
        .map(|a| Listener {
            bound: a,
            connect: a,
            id: 0,
        })
        .collect()
    }

    /// Stands in for the `/proc/net/tcp` rows, which only Linux has.
    pub(crate) struct Row;

    pub(crate) const LISTEN: u8 = 0x0A;

    pub(crate) fn rows(_keep: impl Fn(u8, u16) -> bool) -> Vec<Row> {
        Vec::new()
    }

    pub(crate) fn survey(_rows: &[Row], _root: i32, _handed: &[u64]) -> Survey {
        unreachable!("the guard is never built without /proc")
    }

    pub(crate) fn accepted(_rows: &[Row], _probe: &TcpStream, _server: SocketAddr) -> Option<bool> {
        None
    }
}
