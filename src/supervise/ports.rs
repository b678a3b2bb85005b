//! Binding an instance's sockets race-free: bind and keep, never probe and release. Decides the
//! order of ports tried and records the lease; what the sockets are used for is the supervisor's business.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use socket2::Socket;

use crate::model::name::Name;
use crate::model::ports::{Allocation, MAIN_SOCKET, PortRanges, Preference, Taken};
use crate::state::registry::{self, Lease, RegistryError, Run, Store};
use crate::sys::netstat;
use crate::sys::process::ProcessId;
use crate::sys::socket::{BoundSocket, bind_loopback, local_port};

/// How long `--force` lets the running instance shut down before killing it.
const FORCE_GRACE: Duration = Duration::from_secs(5);
/// What to bind for one instance.
pub(crate) struct Request<'a> {
    pub(crate) name: &'a Name,
    /// Socket names, `MAIN_SOCKET` first.
    pub(crate) sockets: &'a [String],
    /// `--port`: tried first for the main socket; 0 means "any free port" for every socket.
    pub(crate) prefer: Option<u16>,
    /// Ports to scan; `None` means "any free port".
    pub(crate) range: Option<&'a PortRanges>,
    /// Ports never handed out (`[defaults] exclude`), not even when `--port` names one.
    pub(crate) exclude: &'a PortRanges,
    /// Replace a running instance of the same name instead of failing.
    pub(crate) force: bool,
    /// What this instance runs and where, recorded in its lease.
    pub(crate) run: &'a Run,
    /// An instance of the name running `run` already is no error: `AlreadyRunning`.
    pub(crate) reuse: bool,
    /// Which member of the name this is (`--replicas`: 1, 2, …; `--join`: 0, numbered later);
    /// `None` without replicas. Only a name's first member has a last port to prefer.
    pub(crate) member: Option<u32>,
    /// `--join`: one more member for a name that runs: its leases are no conflict, and a
    /// name that does not run is (`NothingToJoin`).
    pub(crate) join: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AllocError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(
        "an instance named '{name}' is already running: {holder}; {fix}",
        holder = holder(*.pid, *.port, .run.as_ref()),
        fix = if *.same {
            format!("it runs this same command here: pass --reuse to use it, or --force to \
                     replace it (`wharf stop {name}` stops it)")
        } else {
            format!("pick another name with --name, pass --force to replace it, or stop it \
                     with `wharf stop {name}`")
        }
    )]
    NameTaken {
        name: Name,
        pid: i32,
        port: u16,
        run: Option<Run>,
        /// It runs the same command in the same directory.
        same: bool,
    },
    /// `--reuse`, and the name runs the same command in the same directory: not an error.
    #[error("'{name}' already runs this command here (wharf pid {pid})", pid = .lease.holder.pid)]
    AlreadyRunning { name: Name, lease: Box<Lease> },
    #[error(
        "nothing named '{name}' is running to join; start it with \
         `wharf run --name {name} -- CMD` (or `--replicas N` for several members at once)"
    )]
    NothingToJoin { name: Name },
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

/// `wharf pid 12, port 4001, running `npm run dev` in /src/shop`.
fn holder(pid: i32, port: u16, run: Option<&Run>) -> String {
    let mut s = format!("wharf pid {pid}, port {port}");
    if let Some(run) = run {
        s.push_str(&format!(
            ", running `{}` in {}",
            run.command.join(" "),
            run.dir.display()
        ));
    }
    s
}

/// The lease on an instance's (or one member's) ports; dropping it gives them back (the
/// sticky record stays).
pub(crate) struct LeaseGuard {
    store: Store,
    name: Name,
    holder: ProcessId,
    member: Option<u32>,
    /// Gives the lease back on drop (not a second guard on a lease an earlier one holds).
    armed: bool,
}

impl LeaseGuard {
    /// This guard came from allocating again for a name this process leases already (a
    /// reload's fresh sockets): the lease is the same, and the first guard gives it back.
    pub(crate) fn merge(mut self) {
        self.armed = false;
    }

    /// The lease (and the ports the name prefers next time) are `ports` again: a reload that
    /// failed returns to the sockets the running server has.
    pub(crate) fn record(&self, ports: &BTreeMap<String, u16>) {
        if let Ok(mut reg) = self.store.lock()
            && let Some(lease) = reg.leases.get_mut(&self.name).and_then(|leases| {
                leases
                    .iter_mut()
                    .find(|l| l.holder == self.holder && l.member == self.member)
            })
        {
            lease.ports.clone_from(ports);
            // Only a name's first member (or its only one) has a last port to prefer.
            if self.member.is_none_or(|m| m == 1) {
                reg.sticky.insert(self.name.clone(), ports.clone());
            }
            let _ = reg.commit();
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.armed
            && let Ok(mut reg) = self.store.lock()
            && reg.remove_lease(&self.name, self.holder, self.member)
        {
            let _ = reg.commit();
        }
    }
}

/// What `allocate` hands back: the sockets, how each port was chosen (same order), the lease.
pub(crate) struct Allocated {
    pub(crate) sockets: Vec<BoundSocket>,
    pub(crate) how: Vec<Allocation>,
    pub(crate) lease: LeaseGuard,
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
    if req.join && reg.leases_of(req.name).is_empty() {
        return Err(AllocError::NothingToJoin {
            name: req.name.clone(),
        });
    }
    // Another process's leases of the name: a conflict, unless this is a member joining it.
    let others: Vec<Lease> = reg
        .leases_of(req.name)
        .iter()
        .filter(|l| l.holder != me && !req.join)
        .cloned()
        .collect();
    if let Some(lease) = others.first() {
        let (holder, port) = (
            lease.holder,
            lease.ports.get(MAIN_SOCKET).copied().unwrap_or(0),
        );
        let same = lease.run.as_ref() == Some(req.run);
        if same && req.reuse {
            return Err(AllocError::AlreadyRunning {
                name: req.name.clone(),
                lease: Box::new(lease.clone()),
            });
        }
        if !req.force {
            return Err(AllocError::NameTaken {
                name: req.name.clone(),
                pid: holder.pid,
                port,
                run: lease.run.clone(),
                same,
            });
        }
        drop(reg);
        let mut holders: Vec<ProcessId> = Vec::new();
        for l in &others {
            if !holders.contains(&l.holder) {
                holders.push(l.holder);
            }
        }
        for holder in holders {
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
        }
        reg = store.lock()?;
    }
    for w in reg.warnings.drain(..) {
        say(w);
    }

    // The last ports are the first member's (or the only one's); other members take any.
    let first = req.member.is_none_or(|m| m == 1);
    let sticky = match first {
        true => reg.sticky.get(req.name).cloned().unwrap_or_default(),
        false => BTreeMap::new(),
    };
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
            } else if let Some((holder, _)) = reg
                .holder_of(port)
                .filter(|(h, l)| *h != req.name || l.holder != me || l.member != req.member)
            {
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
    if first {
        reg.sticky.insert(req.name.clone(), ports.clone());
    }
    reg.add_lease(
        req.name,
        Lease {
            holder: me,
            ports,
            since: registry::unix_now(),
            allocation: how.iter().find(|a| a.socket == MAIN_SOCKET).cloned(),
            run: Some(req.run.clone()),
            member: req.member,
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
        member: req.member,
        armed: true,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ports::{PortRange, list_taken};
    use std::collections::BTreeSet;

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

    /// `n` ports in a row that nobody uses right now, looked for in 15000-29999: below the
    /// ephemeral range, which a machine busy with client connections (a benchmark beside the
    /// tests) can fill so that even port 0 fails. Each test process starts elsewhere.
    fn free_run(n: u16) -> u16 {
        static TRIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let start = std::process::id().wrapping_mul(7919);
        for _ in 0..2000 {
            let k = TRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let base = 15_000 + u16::try_from(start.wrapping_add(k * 16) % 15_000).unwrap();
            if (base..base + n).all(|p| bind_loopback(p).is_ok()) {
                return base;
            }
        }
        panic!("no {n} free ports in a row in 15000-29999");
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
            run: &Run {
                command: vec![who.to_string()],
                dir: "/".into(),
            },
            reuse: false,
            member: None,
            join: false,
        };
        allocate(store, &req, &mut |_| {})
    }

    /// A name held by a live process: the same command in the same directory is a reuse when
    /// asked for, anything else an error naming the holder, its command and directory.
    #[test]
    fn a_held_name_is_reused_or_refused_with_its_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let mut holder = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let held = Run {
            command: vec!["npm".into(), "run".into(), "dev".into()],
            dir: "/src/shop".into(),
        };
        {
            let mut reg = Store::new(tmp.path()).lock().unwrap();
            reg.add_lease(
                &name("shop"),
                Lease {
                    holder: ProcessId::of(holder.id() as i32).unwrap(),
                    ports: BTreeMap::from([(MAIN_SOCKET.to_string(), 4321)]),
                    since: 0,
                    allocation: None,
                    run: Some(held.clone()),
                    member: None,
                },
            );
            reg.commit().unwrap();
        }
        let ask = |run: &Run, reuse: bool| {
            let (n, sockets, exclude) = (
                name("shop"),
                [MAIN_SOCKET.to_string()],
                PortRanges::default(),
            );
            let req = Request {
                name: &n,
                sockets: &sockets,
                prefer: Some(0),
                range: None,
                exclude: &exclude,
                force: false,
                run,
                reuse,
                member: None,
                join: false,
            };
            allocate(Store::new(tmp.path()), &req, &mut |_| {})
                .err()
                .unwrap()
        };
        let AllocError::AlreadyRunning { lease, .. } = ask(&held, true) else {
            panic!("not reused")
        };
        assert_eq!(lease.ports[MAIN_SOCKET], 4321);
        let same = ask(&held, false).to_string();
        assert!(
            same.contains(&format!(
                "wharf pid {}, port 4321, running `npm run dev` in /src/shop",
                holder.id()
            )) && same.contains("pass --reuse"),
            "{same}"
        );
        let elsewhere = Run {
            dir: "/src/other".into(),
            ..held
        };
        let other = ask(&elsewhere, true).to_string();
        assert!(
            other.contains("pick another name with --name, pass --force"),
            "{other}"
        );
        holder.kill().unwrap();
        holder.wait().unwrap();
    }

    fn member_request<'a>(
        n: &'a Name,
        sockets: &'a [String],
        range: &'a PortRanges,
        exclude: &'a PortRanges,
        run: &'a Run,
        member: Option<u32>,
        join: bool,
    ) -> Request<'a> {
        Request {
            name: n,
            sockets,
            prefer: None,
            range: Some(range),
            exclude,
            force: false,
            run,
            reuse: false,
            member,
            join,
        }
    }

    /// Scratch state for members of `api` leasing from a free run of six ports.
    struct Members {
        tmp: tempfile::TempDir,
        range: PortRanges,
        n: Name,
        sockets: [String; 1],
        exclude: PortRanges,
        run: Run,
    }

    impl Members {
        fn new() -> Members {
            let base = free_run(6);
            Members {
                tmp: tempfile::tempdir().unwrap(),
                range: format!("{base}-{}", base + 5).parse().unwrap(),
                n: name("api"),
                sockets: [MAIN_SOCKET.to_string()],
                exclude: PortRanges::default(),
                run: Run {
                    command: vec!["srv".into()],
                    dir: "/".into(),
                },
            }
        }

        /// Member `k`'s request (from the process that runs the replicas, not a join).
        fn request(&self, k: u32) -> Request<'_> {
            let Members {
                range,
                n,
                sockets,
                exclude,
                run,
                ..
            } = self;
            member_request(n, sockets, range, exclude, run, Some(k), false)
        }
    }

    /// `--replicas`: one process leases a port per member under one name; the first
    /// member's port is the name's last port, tried first next time.
    #[test]
    fn members_of_one_process_each_get_a_port_and_the_first_keeps_the_last_port() {
        let f = Members::new();
        let (tmp, n) = (&f.tmp, f.n.clone());
        let members: Vec<Allocated> = (1..=3)
            .map(|k| allocate(Store::new(tmp.path()), &f.request(k), &mut |_| {}).unwrap())
            .collect();
        let ports: BTreeSet<u16> = members.iter().map(|a| a.sockets[0].port).collect();
        assert_eq!(ports.len(), 3, "{ports:?}");
        // Skipping a sibling's port is no news worth a line.
        assert!(members[2].how[0].tried > 1);
        assert_eq!(members[2].how[0].summary(&n), None);
        let reg = Store::new(tmp.path()).lock().unwrap();
        assert_eq!(reg.leases_of(&n).len(), 3);
        assert_eq!(reg.sticky[&n][MAIN_SOCKET], members[0].sockets[0].port);
        drop(reg);
        let second = members[1].sockets[0].port;
        drop(members);
        let reg = Store::new(tmp.path()).lock().unwrap();
        assert!(
            reg.leases_of(&n).is_empty(),
            "every member's lease went with it"
        );
        assert_ne!(reg.sticky[&n][MAIN_SOCKET], second);
    }

    /// A reload of member 2 allocates again: its lease moves to the new port (the first
    /// member's stays, and so does the name's last port), a failed reload records the old
    /// port back, and the first guard alone gives the lease back.
    #[test]
    fn a_members_reload_replaces_its_own_lease_only() {
        let f = Members::new();
        let (tmp, n) = (&f.tmp, f.n.clone());
        let request = |k| f.request(k);
        let first = allocate(Store::new(tmp.path()), &request(1), &mut |_| {}).unwrap();
        let second = allocate(Store::new(tmp.path()), &request(2), &mut |_| {}).unwrap();
        let old = BTreeMap::from([(MAIN_SOCKET.to_string(), second.sockets[0].port)]);
        let fresh = allocate(Store::new(tmp.path()), &request(2), &mut |_| {}).unwrap();
        let new_port = fresh.sockets[0].port;
        fresh.lease.merge();
        let ports_of = |k| {
            let reg = Store::new(tmp.path()).lock().unwrap();
            let lease = reg.leases_of(&n).iter().find(|l| l.member == Some(k));
            lease.map(|l| l.ports[MAIN_SOCKET])
        };
        assert_eq!(ports_of(2), Some(new_port), "the new version's port");
        assert_eq!(ports_of(1), Some(first.sockets[0].port));
        second.lease.record(&old);
        assert_eq!(
            ports_of(2),
            Some(old[MAIN_SOCKET]),
            "back to the running one's"
        );
        let reg = Store::new(tmp.path()).lock().unwrap();
        assert_eq!(reg.leases_of(&n).len(), 2);
        assert_eq!(
            reg.sticky[&n][MAIN_SOCKET], first.sockets[0].port,
            "member 2 is not the name's last port"
        );
        drop(reg);
        drop(second);
        assert_eq!(ports_of(2), None, "its first guard gave it back");
        assert_eq!(ports_of(1), Some(first.sockets[0].port));
    }

    /// `--join` needs the name to run, and then another process's lease is no conflict.
    #[test]
    fn a_join_needs_a_running_name_and_is_no_conflict_with_it() {
        let tmp = tempfile::tempdir().unwrap();
        let base = free_run(4);
        let range: PortRanges = format!("{base}-{}", base + 3).parse().unwrap();
        let (n, sockets, exclude) = (
            name("api"),
            [MAIN_SOCKET.to_string()],
            PortRanges::default(),
        );
        let run = Run {
            command: vec!["srv".into()],
            dir: "/".into(),
        };
        let join = member_request(&n, &sockets, &range, &exclude, &run, Some(0), true);
        let err = allocate(Store::new(tmp.path()), &join, &mut |_| {})
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("nothing named 'api' is running to join; start it with `wharf run --name api -- CMD`"),
            "{err}"
        );
        let mut holder = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        {
            let mut reg = Store::new(tmp.path()).lock().unwrap();
            reg.add_lease(
                &n,
                Lease {
                    holder: ProcessId::of(holder.id() as i32).unwrap(),
                    ports: BTreeMap::from([(MAIN_SOCKET.to_string(), base)]),
                    since: 0,
                    allocation: None,
                    run: Some(run.clone()),
                    member: None,
                },
            );
            reg.commit().unwrap();
        }
        let joined = allocate(Store::new(tmp.path()), &join, &mut |_| {}).unwrap();
        assert_ne!(
            joined.sockets[0].port, base,
            "the running member's port is not given"
        );
        assert_eq!(
            Store::new(tmp.path()).lock().unwrap().leases_of(&n).len(),
            2
        );
        let plain = member_request(&n, &sockets, &range, &exclude, &run, None, false);
        let taken = allocate(Store::new(tmp.path()), &plain, &mut |_| {})
            .err()
            .unwrap();
        assert!(matches!(taken, AllocError::NameTaken { .. }), "{taken}");
        drop(joined);
        holder.kill().unwrap();
        holder.wait().unwrap();
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
