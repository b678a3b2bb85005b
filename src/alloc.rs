//! Binding an instance's sockets race-free: bind and keep, never probe and release. Decides the
//! order of ports tried and records the lease; what the sockets are used for is `run`'s business.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::name::Name;
use crate::process::ProcessId;
use crate::registry::{self, Lease, RegistryError, Store};

/// The socket every instance has; `--socket SUB` adds more, named SUB.
pub const MAIN_SOCKET: &str = "http";
/// Where instances live when nobody says otherwise: high enough to need no privileges, below
/// the kernel's ephemeral range, so outgoing connections rarely sit on it.
pub const DEFAULT_RANGE: PortRange = PortRange { lo: 4000, hi: 4999 };
/// How long `--force` lets the running instance shut down before killing it.
const FORCE_GRACE: Duration = Duration::from_secs(5);

/// An inclusive range of ports, `LO-HI`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }

    /// Every port of the range once, starting at `start` (if inside) and wrapping around.
    fn scan_from(&self, start: Option<u16>) -> impl Iterator<Item = u16> + use<> {
        let (lo, hi) = (self.lo as u32, self.hi as u32);
        let len = hi - lo + 1;
        let first = start.filter(|p| self.contains(*p)).map_or(lo, u32::from);
        (0..len).map(move |i| (lo + (first - lo + i) % len) as u16)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || format!("{s:?} is not a port range; write LO-HI, like 4000-4999");
        let (lo, hi) = s.split_once('-').ok_or_else(usage)?;
        let lo: u16 = lo.trim().parse().map_err(|_| usage())?;
        let hi: u16 = hi.trim().parse().map_err(|_| usage())?;
        if lo == 0 || lo > hi {
            return Err(format!("{s:?}: need 1 <= LO <= HI <= 65535"));
        }
        Ok(PortRange { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

/// What to bind for one instance.
pub struct Request<'a> {
    pub name: &'a Name,
    /// Socket names, `MAIN_SOCKET` first.
    pub sockets: &'a [String],
    /// `--port`: tried first for the main socket; 0 means "any free port" for every socket.
    pub prefer: Option<u16>,
    /// Ports to scan; `None` means "any free port".
    pub range: Option<PortRange>,
    /// Replace a running instance of the same name instead of failing.
    pub force: bool,
}

/// Why a port was wished for first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Wish {
    /// `--port` (a wharf.toml `port`).
    Asked,
    /// The instance's port last time.
    Last,
}

/// How an instance's main port was chosen, kept with its lease for `wharf up`'s summary.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Choice {
    /// The port tried first and why; `None` when no port was wished for.
    pub preferred: Option<(u16, Wish)>,
    /// Why the preferred port was not got (`is in use by another process`); `None` if it was.
    pub refused: Option<String>,
    /// How many ports were tried, the one got included.
    pub tried: usize,
}

/// A bound, listening socket on 127.0.0.1, blocking, close-on-exec.
#[derive(Debug)]
pub struct BoundSocket {
    pub name: String,
    pub port: u16,
    pub socket: Socket,
}

impl BoundSocket {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(
        "an instance named '{name}' is already running (wharf pid {pid}, port {port}); \
         stop it with `wharf stop {name}`, pick another --name, or pass --force to replace it"
    )]
    NameTaken { name: Name, pid: i32, port: u16 },
    #[error("the running '{name}' (pid {pid}) did not stop when asked; stop it by hand")]
    WouldNotStop { name: Name, pid: i32 },
    #[error("no free port in {range} for '{socket}': {who}. {fix}")]
    Exhausted {
        range: PortRange,
        socket: String,
        who: String,
        fix: &'static str,
    },
    #[error("cannot bind 127.0.0.1:{port}")]
    Bind {
        port: u16,
        #[source]
        source: io::Error,
    },
}

/// The lease on an instance's ports; dropping it gives them back (the sticky record stays).
pub struct LeaseGuard {
    store: Store,
    name: Name,
    holder: ProcessId,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Ok(mut reg) = self.store.lock()
            && reg
                .leases
                .get(&self.name)
                .is_some_and(|l| l.holder == self.holder)
        {
            reg.leases.remove(&self.name);
            let _ = reg.commit();
        }
    }
}

/// Bind every socket of `req`, record the lease, and return both. `say` gets one line per
/// port that was tried and not taken, and any warnings. Nothing is recorded on error.
pub fn allocate(
    store: Store,
    req: &Request,
    say: &mut dyn FnMut(String),
) -> Result<(Vec<BoundSocket>, LeaseGuard), AllocError> {
    let me = ProcessId::current();
    let mut reg = store.lock()?;
    if let Some(lease) = reg.leases.get(req.name).filter(|l| l.holder != me) {
        let (holder, port) = (
            lease.holder,
            lease.ports.get(MAIN_SOCKET).copied().unwrap_or(0),
        );
        if !req.force {
            return Err(AllocError::NameTaken {
                name: req.name.clone(),
                pid: holder.pid,
                port,
            });
        }
        drop(reg);
        say(format!(
            "stopping the running '{}' (pid {}) as --force asks",
            req.name, holder.pid
        ));
        if !holder.terminate(FORCE_GRACE) {
            return Err(AllocError::WouldNotStop {
                name: req.name.clone(),
                pid: holder.pid,
            });
        }
        reg = store.lock()?;
    }
    for w in reg.warnings.drain(..) {
        say(w);
    }

    let sticky = reg.sticky.get(req.name).cloned().unwrap_or_default();
    let mut bound: Vec<BoundSocket> = Vec::new();
    let mut choice = None;
    for socket_name in req.sockets {
        let is_main = socket_name == MAIN_SOCKET;
        let prefer = if is_main { req.prefer } else { None };
        let last = sticky.get(socket_name).copied();
        let mut tried = Tried::default();
        let mut attempt = |port: u16, why: &str, tried: &mut Tried| -> Option<Socket> {
            if bound.iter().any(|b| b.port == port) || tried.ports.contains(&port) {
                return None;
            }
            tried.ports.push(port);
            if let Some(holder) = reg.holder_of(port).filter(|h| *h != req.name) {
                let refusal = format!("is held by instance '{holder}'");
                say(format!("port {port}{why} {refusal}"));
                tried.first_refusal.get_or_insert(refusal);
                tried.held.push((port, holder.clone()));
                return None;
            }
            match bind_loopback(port) {
                Ok(socket) => Some(socket),
                Err(e) => {
                    let refusal = describe_bind_error(&e);
                    say(format!("port {port}{why} {refusal}"));
                    tried.first_refusal.get_or_insert(refusal);
                    tried.other += 1;
                    None
                }
            }
        };

        let mut found = None;
        let mut preferred = None;
        if let Some(p) = prefer.filter(|p| *p != 0) {
            preferred = Some((p, Wish::Asked));
            found = attempt(p, " (--port)", &mut tried).map(|s| (p, s));
        }
        let ephemeral = req.prefer == Some(0) || req.range.is_none();
        if found.is_none()
            && !ephemeral
            && let Some(p) = last
        {
            preferred.get_or_insert((p, Wish::Last));
            found = attempt(p, &format!(" ({}'s last port)", req.name), &mut tried).map(|s| (p, s));
        }
        if found.is_none() {
            match req.range.filter(|_| !ephemeral) {
                Some(range) => {
                    let start = prefer.or(last).map(|p| p.wrapping_add(1));
                    for p in range.scan_from(start) {
                        if let Some(s) = attempt(p, "", &mut tried) {
                            found = Some((p, s));
                            break;
                        }
                    }
                    if found.is_none() {
                        return Err(tried.exhausted(range, socket_name));
                    }
                }
                None => {
                    let socket =
                        bind_loopback(0).map_err(|source| AllocError::Bind { port: 0, source })?;
                    let port = local_port(&socket)
                        .map_err(|source| AllocError::Bind { port: 0, source })?;
                    tried.ports.push(port);
                    found = Some((port, socket));
                }
            }
        }
        let (port, socket) = found.expect("every branch binds or returns");
        if is_main {
            choice = Some(Choice {
                preferred,
                refused: preferred
                    .filter(|(p, _)| *p != port)
                    .and(tried.first_refusal.take()),
                tried: tried.ports.len(),
            });
        }
        bound.push(BoundSocket {
            name: socket_name.clone(),
            port,
            socket,
        });
    }

    let ports: BTreeMap<String, u16> = bound.iter().map(|b| (b.name.clone(), b.port)).collect();
    reg.sticky.insert(req.name.clone(), ports.clone());
    reg.leases.insert(
        req.name.clone(),
        Lease {
            holder: me,
            ports,
            since: registry::unix_now(),
            choice,
        },
    );
    reg.commit()?;
    drop(reg);
    let guard = LeaseGuard {
        store,
        name: req.name.clone(),
        holder: me,
    };
    Ok((bound, guard))
}

/// Ports tried for one socket, for the exhaustion message.
#[derive(Default)]
struct Tried {
    ports: Vec<u16>,
    held: Vec<(u16, Name)>,
    other: usize,
    /// Why the first port tried was not got.
    first_refusal: Option<String>,
}

impl Tried {
    fn exhausted(self, range: PortRange, socket: &str) -> AllocError {
        let mut holders: BTreeMap<&Name, Vec<u16>> = BTreeMap::new();
        for (port, name) in &self.held {
            holders.entry(name).or_default().push(*port);
        }
        let mut parts: Vec<String> = holders
            .iter()
            .map(|(name, ports)| {
                let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                format!("'{name}' holds {}", list.join(", "))
            })
            .collect();
        if self.other > 0 {
            parts.push(format!("{} in use by other processes", self.other));
        }
        AllocError::Exhausted {
            range,
            socket: socket.to_string(),
            who: parts.join("; "),
            fix: "Stop an instance (`wharf stop NAME`), widen the range (`--range LO-HI`), \
                  or take any free port with `--port 0`.",
        }
    }
}

fn describe_bind_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => "is in use by another process".to_string(),
        Some(libc::EACCES) => "needs privileges (ports below 1024)".to_string(),
        _ => format!("cannot be bound: {e}"),
    }
}

/// Bind and listen on 127.0.0.1:`port` with the full backlog. The socket is blocking (as systemd
/// hands sockets over) and close-on-exec (only the handoff step passes it on).
pub fn bind_loopback(port: u16) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())?;
    socket.listen(backlog())?;
    Ok(socket)
}

pub fn local_port(socket: &Socket) -> io::Result<u16> {
    socket
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

/// The kernel's cap on listen backlogs: asking for less would make bursts of connections wait
/// for SYN retries while an instance (re)starts. Rust's std asks for only 128.
pub fn backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(libc::SOMAXCONN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_parses_and_scans_with_wraparound() {
        let r: PortRange = "4000-4003".parse().unwrap();
        assert_eq!(
            r.scan_from(Some(4002)).collect::<Vec<_>>(),
            [4002, 4003, 4000, 4001]
        );
        assert_eq!(
            r.scan_from(Some(9000)).collect::<Vec<_>>(),
            [4000, 4001, 4002, 4003]
        );
        assert_eq!(r.scan_from(None).count(), 4);
        for bad in ["4000", "a-b", "5-4", "0-10", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }
}
