//! Binding an instance's sockets race-free: bind and keep, never probe and release. Decides the
//! order of ports tried and records the lease; what the sockets are used for is `run`'s business.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use crate::model::name::Name;
use crate::state::registry::{self, Lease, RegistryError, Store};
use crate::sys::netstat;
use crate::sys::process::ProcessId;

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

    fn len(&self) -> usize {
        usize::from(self.hi - self.lo) + 1
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

/// Ports to choose from: one or more ranges, each tried in full before the next
/// (`4000-4099,5000-5099`). Also the shape of the exclusion list, where one port is `N-N`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRanges(Vec<PortRange>);

impl PortRanges {
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many ports the ranges name (overlaps counted twice).
    fn len(&self) -> usize {
        self.0.iter().map(PortRange::len).sum()
    }

    /// Every port of every range in order; the range holding `start` begins there and wraps.
    fn scan_from(&self, start: Option<u16>) -> impl Iterator<Item = u16> + use<> {
        let ranges = self.0.clone();
        ranges.into_iter().flat_map(move |r| r.scan_from(start))
    }

    /// Ports of an exclusion list as people write them in TOML: `5432` or `"6000-6010"`.
    pub fn from_toml(items: &[toml::Value]) -> Result<PortRanges, String> {
        let mut out = Vec::new();
        for item in items {
            let range = match item {
                toml::Value::Integer(n) => {
                    let port = u16::try_from(*n)
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| format!("{n} is not a port (1-65535)"))?;
                    PortRange { lo: port, hi: port }
                }
                toml::Value::String(s) => match s.trim().parse::<u16>() {
                    Ok(port) if port != 0 => PortRange { lo: port, hi: port },
                    _ => s.parse()?,
                },
                other => {
                    return Err(format!(
                        "{other} is neither a port (5432) nor a range (\"6000-6010\")"
                    ));
                }
            };
            out.push(range);
        }
        Ok(PortRanges(out))
    }
}

impl From<PortRange> for PortRanges {
    fn from(r: PortRange) -> Self {
        PortRanges(vec![r])
    }
}

impl FromStr for PortRanges {
    type Err = String;
    /// `LO-HI` or a comma-separated list of them.
    fn from_str(s: &str) -> Result<Self, String> {
        let ranges = s
            .split(',')
            .map(|part| part.trim().parse::<PortRange>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PortRanges(ranges))
    }
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(PortRange::to_string).collect();
        f.write_str(&parts.join(","))
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
    pub range: Option<&'a PortRanges>,
    /// Ports never handed out (`[defaults] exclude`), not even when `--port` names one.
    pub exclude: &'a PortRanges,
    /// Replace a running instance of the same name instead of failing.
    pub force: bool,
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

/// Why a port was tried first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preference {
    /// `--port` (or `port` in wharf.toml).
    Asked,
    /// The port the name had last time.
    Sticky,
}

/// Why a port tried was not taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Taken {
    /// Held by another wharf instance.
    Instance(Name),
    /// Bound by a process wharf did not start: its command and pid, when the platform tells.
    Process(Option<String>),
    /// Below the unprivileged port start.
    Privileged,
    /// In `[defaults] exclude`.
    Excluded,
    /// Any other bind error.
    Unbindable(String),
}

impl fmt::Display for Taken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Taken::Instance(name) => write!(f, "is held by instance '{name}'"),
            Taken::Process(Some(who)) => write!(f, "is in use by {who}"),
            Taken::Process(None) => write!(f, "is in use by another process"),
            Taken::Privileged => write!(f, "needs privileges (ports below 1024)"),
            Taken::Excluded => write!(f, "is excluded by `[defaults] exclude` in config.toml"),
            Taken::Unbindable(e) => write!(f, "cannot be bound: {e}"),
        }
    }
}

/// How one socket got its port: what `wharf run` summarises and `wharf up` tabulates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub socket: String,
    pub port: u16,
    /// The port tried first and why; `None` when the range (or the OS) chose.
    pub preferred: Option<(u16, Preference)>,
    /// How many ports were tried, the one got included (0 when the OS chose).
    pub tried: usize,
    /// The ports tried that were not free, in order.
    pub skipped: Vec<(u16, Taken)>,
}

impl Allocation {
    /// Why instance `name`'s preferred port was not used (`port 4000 (--port) is in use by
    /// node (pid 9)`); `None` if it was, or if there was none.
    pub fn fallback_reason(&self, name: &Name) -> Option<String> {
        let (want, why, taken) = self.refused()?;
        Some(format!("port {want} ({}) {taken}", why.describe(name)))
    }

    /// The preferred port, why it was preferred and why it was not got; `None` if it was got,
    /// or if there was none.
    pub fn refused(&self) -> Option<(u16, Preference, &Taken)> {
        let (want, why) = self.preferred.filter(|(p, _)| *p != self.port)?;
        let (_, taken) = self.skipped.iter().find(|(p, _)| *p == want)?;
        Some((want, why, taken))
    }

    /// One line saying what was skipped, and why, before the port got; `None` when the first
    /// port tried was free.
    pub fn summary(&self, name: &Name) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let mut parts = Vec::new();
        let mut rest: Vec<&(u16, Taken)> = self.skipped.iter().collect();
        if let Some(reason) = self.fallback_reason(name) {
            parts.push(reason);
            rest.retain(|(p, _)| Some(*p) != self.preferred.map(|(want, _)| want));
        }
        if !rest.is_empty() {
            parts.push(format!("{} taken ({})", rest.len(), list_taken(&rest)));
        }
        let socket = match self.socket.as_str() {
            MAIN_SOCKET => String::new(),
            sub => format!(" for '{sub}'"),
        };
        parts.push(format!(
            "got {}{socket} after {} tries",
            self.port, self.tried
        ));
        Some(parts.join("; "))
    }

    /// One line per port skipped, for `--verbose`.
    pub fn details(&self, name: &Name) -> Vec<String> {
        self.skipped
            .iter()
            .map(|(port, taken)| {
                let why = match self.preferred {
                    Some((want, why)) if want == *port => format!(" ({})", why.describe(name)),
                    _ => String::new(),
                };
                format!("port {port}{why} {taken}")
            })
            .collect()
    }
}

impl Preference {
    fn describe(&self, name: &Name) -> String {
        match self {
            Preference::Asked => "--port".to_string(),
            Preference::Sticky => format!("{name}'s last port"),
        }
    }
}

/// At most this many holders are named in a summary; the rest are counted.
const NAMED_IN_SUMMARY: usize = 4;

/// The taken ports grouped by why, in the order first met: `4001-4003 by node (pid 9), 4005
/// by 'api', and 3 more`.
fn list_taken(taken: &[&(u16, Taken)]) -> String {
    let mut groups: Vec<(&Taken, Vec<u16>)> = Vec::new();
    for (port, why) in taken {
        match groups.iter_mut().find(|(w, _)| *w == why) {
            Some((_, ports)) => ports.push(*port),
            None => groups.push((why, vec![*port])),
        }
    }
    let mut named: Vec<String> = groups
        .iter()
        .take(NAMED_IN_SUMMARY)
        .map(|(why, ports)| {
            let ports = spans(ports);
            match why {
                Taken::Instance(n) => format!("{ports} by '{n}'"),
                Taken::Process(Some(who)) => format!("{ports} by {who}"),
                Taken::Process(None) => format!("{ports} by other processes"),
                Taken::Privileged => format!("{ports} privileged"),
                Taken::Excluded => format!("{ports} excluded"),
                Taken::Unbindable(e) => format!("{ports} unbindable ({e})"),
            }
        })
        .collect();
    let rest: usize = groups
        .iter()
        .skip(NAMED_IN_SUMMARY)
        .map(|(_, p)| p.len())
        .sum();
    if rest > 0 {
        named.push(format!("and {rest} more"));
    }
    named.join(", ")
}

/// Ports as runs: `[1, 2, 3, 7]` → `1-3, 7`.
fn spans(ports: &[u16]) -> String {
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for p in sorted {
        match runs.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(p) => *hi = p,
            _ => runs.push((p, p)),
        }
    }
    let parts: Vec<String> = runs
        .iter()
        .map(|(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    parts.join(", ")
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
        range: PortRanges,
        socket: String,
        who: String,
        fix: String,
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

/// What `allocate` hands back: the sockets, how each port was chosen (same order), the lease.
pub(crate) struct Allocated {
    pub sockets: Vec<BoundSocket>,
    pub how: Vec<Allocation>,
    pub lease: LeaseGuard,
}

/// How often `--port 0` asks the OS again when it offers an excluded port.
const EPHEMERAL_TRIES: usize = 32;

/// Bind every socket of `req`, record the lease, and return them with how each port was
/// chosen. `say` gets warnings only (a corrupt registry, a replaced instance); the ports
/// skipped are in the result. Nothing is recorded on error.
pub(crate) fn allocate(
    store: Store,
    req: &Request,
    say: &mut dyn FnMut(String),
) -> Result<Allocated, AllocError> {
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
    let ephemeral = req.prefer == Some(0) || req.range.is_none();
    let mut bound: Vec<BoundSocket> = Vec::new();
    let mut how: Vec<Allocation> = Vec::new();
    // Ports found taken for an earlier socket: not tried, nor reported, again.
    let mut seen: Vec<(u16, Taken)> = Vec::new();
    for socket_name in req.sockets {
        let is_main = socket_name == MAIN_SOCKET;
        // What the user asked for wins; the last port counts only inside the range asked for.
        // `--port 0` means any port for every socket, the last ones included.
        let preferred = match (is_main.then_some(req.prefer).flatten(), req.range) {
            (Some(0), _) => None,
            (Some(p), _) => Some((p, Preference::Asked)),
            (None, Some(range)) if !ephemeral => sticky
                .get(socket_name)
                .copied()
                .filter(|p| range.contains(*p))
                .map(|p| (p, Preference::Sticky)),
            (None, _) => None,
        };
        let mut tried = 0;
        let mut skipped: Vec<(u16, Taken)> = Vec::new();
        let mut attempt = |port: u16, skipped: &mut Vec<(u16, Taken)>| -> Option<Socket> {
            let done = |p: &u16| *p == port;
            if bound.iter().any(|b| b.port == port)
                || seen.iter().any(|(p, _)| done(p))
                || skipped.iter().any(|(p, _)| done(p))
            {
                return None;
            }
            tried += 1;
            let taken = if req.exclude.contains(port) {
                Taken::Excluded
            } else if let Some(holder) = reg.holder_of(port).filter(|h| *h != req.name) {
                Taken::Instance(holder.clone())
            } else {
                match bind_loopback(port) {
                    Ok(socket) => return Some(socket),
                    Err(e) => describe_bind_error(&e),
                }
            };
            skipped.push((port, taken));
            None
        };

        let mut found = None;
        if let Some((p, _)) = preferred {
            found = attempt(p, &mut skipped).map(|s| (p, s));
        }
        if found.is_none() {
            match req.range.filter(|_| !ephemeral) {
                Some(range) => {
                    let start = preferred.map(|(p, _)| p.wrapping_add(1));
                    for p in range.scan_from(start) {
                        if req.exclude.contains(p) {
                            continue;
                        }
                        if let Some(s) = attempt(p, &mut skipped) {
                            found = Some((p, s));
                            break;
                        }
                    }
                    if found.is_none() {
                        drop(reg);
                        seen.extend(skipped);
                        name_processes(seen.iter_mut().collect());
                        return Err(exhausted(range, req.exclude, socket_name, &seen));
                    }
                }
                None => found = Some(any_port(req.exclude)?),
            }
        }
        let (port, socket) = found.expect("every branch binds or returns");
        seen.extend(skipped.iter().cloned());
        how.push(Allocation {
            socket: socket_name.clone(),
            port,
            preferred,
            tried,
            skipped,
        });
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
            allocation: how.iter().find(|a| a.socket == MAIN_SOCKET).cloned(),
        },
    );
    reg.commit()?;
    drop(reg);
    // Outside the lock: reading /proc can take a while on a busy machine.
    name_processes(how.iter_mut().flat_map(|a| a.skipped.iter_mut()).collect());
    let lease = LeaseGuard {
        store,
        name: req.name.clone(),
        holder: me,
    };
    Ok(Allocated {
        sockets: bound,
        how,
        lease,
    })
}

/// A port of the OS's choosing that is not excluded.
fn any_port(exclude: &PortRanges) -> Result<(u16, Socket), AllocError> {
    let bind_err = |source| AllocError::Bind { port: 0, source };
    // Excluded offers stay bound until the end, so the OS does not offer them again.
    let mut refused = Vec::new();
    for _ in 0..EPHEMERAL_TRIES {
        let socket = bind_loopback(0).map_err(bind_err)?;
        let port = local_port(&socket).map_err(bind_err)?;
        if !exclude.contains(port) {
            return Ok((port, socket));
        }
        refused.push(socket);
    }
    Err(bind_err(io::Error::other(format!(
        "the OS offered only excluded ports ({exclude})"
    ))))
}

/// Name the processes behind ports found in use, in one look at the system.
fn name_processes(mut taken: Vec<&mut (u16, Taken)>) {
    let unnamed: Vec<u16> = taken
        .iter()
        .filter(|(_, t)| *t == Taken::Process(None))
        .map(|(p, _)| *p)
        .collect();
    if unnamed.is_empty() {
        return;
    }
    let holders = netstat::holders(&unnamed);
    for (port, t) in taken.iter_mut().map(|e| &mut **e) {
        if *t == Taken::Process(None)
            && let Some(h) = holders.get(port)
        {
            *t = Taken::Process(Some(h.to_string()));
        }
    }
}

/// At most this many wharf instances are named when a range is exhausted; the rest are counted.
const NAMED_HOLDERS: usize = 5;

/// The error for a range with no free port: which instances hold it, how many ports other
/// processes hold, how many are excluded, and the ways out.
fn exhausted(
    range: &PortRanges,
    exclude: &PortRanges,
    socket: &str,
    seen: &[(u16, Taken)],
) -> AllocError {
    let in_range: Vec<&(u16, Taken)> = seen.iter().filter(|(p, _)| range.contains(*p)).collect();
    let mut holders: BTreeMap<&Name, Vec<u16>> = BTreeMap::new();
    let mut others = 0;
    for (port, taken) in &in_range {
        match taken {
            Taken::Instance(name) => holders.entry(name).or_default().push(*port),
            Taken::Excluded => {}
            _ => others += 1,
        }
    }
    let mut parts: Vec<String> = holders
        .iter()
        .take(NAMED_HOLDERS)
        .map(|(name, ports)| {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            format!("'{name}' holds {}", list.join(", "))
        })
        .collect();
    if holders.len() > NAMED_HOLDERS {
        parts.push(format!(
            "{} more wharf instances hold the others",
            holders.len() - NAMED_HOLDERS
        ));
    }
    if others > 0 {
        parts.push(format!("{others} in use by other processes"));
    }
    let excluded = range
        .scan_from(None)
        .filter(|p| exclude.contains(*p))
        .count();
    if excluded > 0 {
        parts.push(format!("{excluded} excluded by `[defaults] exclude`"));
    }
    AllocError::Exhausted {
        range: range.clone(),
        socket: socket.to_string(),
        who: format!("all {} taken ({})", range.len(), parts.join("; ")),
        fix: format!(
            "Stop an instance (`wharf stop NAME`), add a fallback range \
             (`--range {range},LO-HI`), or take any free port with `--port 0`."
        ),
    }
}

fn describe_bind_error(e: &io::Error) -> Taken {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => Taken::Process(None),
        Some(libc::EACCES) => Taken::Privileged,
        _ => Taken::Unbindable(e.to_string()),
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

    fn name(s: &str) -> Name {
        s.parse().unwrap()
    }

    /// `n` ports in a row that nobody listens on right now (found by binding port 0).
    fn free_run(n: u16) -> u16 {
        'search: loop {
            let base = local_port(&bind_loopback(0).unwrap()).unwrap();
            if base.checked_add(n).is_none() {
                continue;
            }
            for p in base..base + n {
                if bind_loopback(p).is_err() {
                    continue 'search;
                }
            }
            return base;
        }
    }

    fn alloc(
        store: Store,
        who: &str,
        prefer: Option<u16>,
        range: &str,
        exclude: &str,
        sockets: &[&str],
    ) -> Result<Allocated, AllocError> {
        let sockets: Vec<String> = sockets.iter().map(|s| s.to_string()).collect();
        let range: PortRanges = range.parse().unwrap();
        let exclude: PortRanges = if exclude.is_empty() {
            PortRanges::default()
        } else {
            exclude.parse().unwrap()
        };
        let n = name(who);
        let req = Request {
            name: &n,
            sockets: &sockets,
            prefer,
            range: Some(&range),
            exclude: &exclude,
            force: false,
        };
        allocate(store, &req, &mut |_| {})
    }

    #[test]
    fn port_zero_forgets_the_last_port_of_every_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let base = free_run(4);
        let range = format!("{base}-{}", base + 3);
        let both = [MAIN_SOCKET, "admin"];
        drop(alloc(Store::new(tmp.path()), "web", None, &range, "", &both).unwrap());
        let any = alloc(Store::new(tmp.path()), "web", Some(0), &range, "", &both).unwrap();
        assert_eq!(any.how[1].preferred, None, "{:?}", any.how[1]);
        assert_eq!(any.how[1].tried, 0, "the OS chose");
    }

    #[test]
    fn taken_ports_are_grouped_by_holder_in_runs() {
        let api = Taken::Instance(name("api"));
        let node = Taken::Process(Some("node (pid 9)".into()));
        let taken = [
            (4001, node.clone()),
            (4002, node.clone()),
            (4003, api),
            (4004, node),
        ];
        let refs: Vec<&(u16, Taken)> = taken.iter().collect();
        assert_eq!(
            list_taken(&refs),
            "4001-4002, 4004 by node (pid 9), 4003 by 'api'"
        );
    }

    #[test]
    fn several_ranges_parse_and_scan_in_order() {
        let r: PortRanges = "10-11, 20-22".parse().unwrap();
        assert_eq!(r.to_string(), "10-11,20-22");
        assert_eq!(
            r.scan_from(Some(21)).collect::<Vec<_>>(),
            [10, 11, 21, 22, 20]
        );
        assert_eq!(r.len(), 5);
        assert!("10-11,".parse::<PortRanges>().is_err());
    }

    #[test]
    fn an_explicit_range_beats_the_last_port_which_counts_inside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let base = free_run(6);
        let (a, b) = (
            format!("{base}-{}", base + 2),
            format!("{}-{}", base + 3, base + 5),
        );
        let first = alloc(Store::new(tmp.path()), "web", None, &a, "", &[MAIN_SOCKET]).unwrap();
        assert!(first.sockets[0].port <= base + 2);
        drop(first);
        let again = alloc(Store::new(tmp.path()), "web", None, &b, "", &[MAIN_SOCKET]).unwrap();
        let in_b = again.sockets[0].port;
        assert!(
            (base + 3..=base + 5).contains(&in_b),
            "{in_b} is not in {b}"
        );
        assert_eq!(
            again.how[0].preferred, None,
            "the last port was outside {b}"
        );
        drop(again);
        // Inside the ranges asked for, the last port wins over the scan order.
        let both = format!("{a},{b}");
        let back = alloc(
            Store::new(tmp.path()),
            "web",
            None,
            &both,
            "",
            &[MAIN_SOCKET],
        )
        .unwrap();
        assert_eq!(back.sockets[0].port, in_b);
        assert_eq!(back.how[0].preferred, Some((in_b, Preference::Sticky)));
    }

    #[test]
    fn a_full_first_range_falls_back_to_the_next_and_excluded_ports_are_never_given() {
        let tmp = tempfile::tempdir().unwrap();
        let base = free_run(4);
        let _hold = bind_loopback(base).unwrap();
        let ranges = format!("{base}-{base},{}-{}", base + 1, base + 3);
        let exclude = format!("{}-{}", base + 1, base + 2);
        let got = alloc(
            Store::new(tmp.path()),
            "api",
            None,
            &ranges,
            &exclude,
            &[MAIN_SOCKET],
        )
        .unwrap();
        assert_eq!(got.sockets[0].port, base + 3);
        let how = &got.how[0];
        assert_eq!(how.tried, 2, "{how:?}");
        let summary = how.summary(&name("api")).unwrap();
        assert!(
            summary.contains(&format!("1 taken ({base} by ")),
            "{summary}"
        );
        assert!(summary.contains(&format!("got {}", base + 3)), "{summary}");

        // An excluded --port is refused and said so; the range is used instead.
        let got2 = alloc(
            Store::new(tmp.path()),
            "db",
            Some(base + 1),
            &ranges,
            &exclude,
            &[MAIN_SOCKET],
        );
        let err = got2.err().expect("only excluded or held ports remain");
        let msg = err.to_string();
        assert!(msg.contains("'api' holds"), "{msg}");
        assert!(msg.contains("1 in use by other processes"), "{msg}");
        assert!(msg.contains("2 excluded"), "{msg}");
    }

    #[test]
    fn a_taken_preferred_port_is_one_summary_line_and_sockets_do_not_rescan() {
        let tmp = tempfile::tempdir().unwrap();
        let base = free_run(6);
        let _a = bind_loopback(base).unwrap();
        let _b = bind_loopback(base + 1).unwrap();
        let range = format!("{base}-{}", base + 5);
        let got = alloc(
            Store::new(tmp.path()),
            "web",
            Some(base),
            &range,
            "",
            &[MAIN_SOCKET, "admin"],
        )
        .unwrap();
        let (main, admin) = (&got.how[0], &got.how[1]);
        assert_eq!(main.port, base + 2);
        assert_eq!(main.preferred, Some((base, Preference::Asked)));
        let me = format!("(pid {})", std::process::id());
        let reason = main.fallback_reason(&name("web")).unwrap();
        assert!(
            reason.starts_with(&format!("port {base} (--port) is in use by ")),
            "{reason}"
        );
        assert!(reason.contains(&me), "the holder is named: {reason}");
        assert_eq!(main.details(&name("web")).len(), 2);
        assert_eq!(admin.port, base + 3);
        assert!(
            admin.skipped.is_empty(),
            "known taken ports are not tried again: {admin:?}"
        );
        assert_eq!(admin.summary(&name("web")), None);
    }
}
