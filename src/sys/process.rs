//! Process identity (pid plus start time, so a recycled pid is never mistaken for ours),
//! the process tree, and stopping a process (or a whole instance: its supervisor and every
//! process its server started) politely then firmly.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A process as recorded on disk: its pid and, where the platform tells, when it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ProcessId {
    pub(crate) pid: i32,
    /// Start time in clock ticks since boot (Linux `/proc/PID/stat` field 22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) start: Option<u64>,
}

impl ProcessId {
    pub(crate) fn current() -> ProcessId {
        ProcessId::of(std::process::id() as i32).expect("our own process exists")
    }

    /// The process with this pid as it is now; `None` if there is none.
    pub(crate) fn of(pid: i32) -> Option<ProcessId> {
        if pid <= 0 || !exists(pid) || imp::is_zombie(pid) {
            return None;
        }
        Some(ProcessId {
            pid,
            start: imp::start_time(pid),
        })
    }

    /// True while this very process (not a later one with the same pid) is alive.
    pub(crate) fn is_alive(&self) -> bool {
        match (ProcessId::of(self.pid), self.start) {
            (Some(now), Some(start)) => now.start.is_none_or(|s| s == start),
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// SIGTERM, wait up to `grace` for it to go, then SIGKILL and wait a little more.
    /// Returns true if the process is gone.
    pub(crate) fn terminate(&self, grace: Duration) -> bool {
        end_all(std::slice::from_ref(self), Instant::now() + grace).1
    }

    /// Send `signal` if this very process is still alive; true if it was.
    pub(crate) fn signal(&self, signal: Signal) -> bool {
        let alive = self.is_alive();
        if alive {
            let _ = kill(Pid::from_raw(self.pid), signal);
        }
        alive
    }
}

/// After a stop signal, how long a server has before it and everything it started are
/// killed (`wharf stop` and `wharf run` take `$WHARF_STOP_TIMEOUT` instead when set).
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// After SIGKILL, how long a process may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Polls until every process in `procs` is gone or `deadline` passes; true if all are gone.
fn wait_all_gone(procs: &[ProcessId], deadline: Instant) -> bool {
    let mut pause = Duration::from_millis(5);
    loop {
        if procs.iter().all(|p| !p.is_alive()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Everything a server started, as it is now: `server`, its descendants, and the members of
/// the process group it leads (which keeps them findable after their parent died). Empty if
/// all are gone. Outside Linux only `server` itself: there is no cheap way to walk the tree.
pub(crate) fn family_of(server: i32) -> Vec<ProcessId> {
    imp::family(server)
}

/// Make this process the reaper of its descendants' orphans (Linux), so that a server that
/// detaches itself (forks, `setsid`, and lets its first process exit) stays below us, where
/// `orphans` finds it, instead of going to init. False where the system has no such thing.
pub(crate) fn become_subreaper() -> bool {
    imp::become_subreaper()
}

/// Our own children other than `except`, and their descendants: with `become_subreaper`,
/// what a server left behind when its first process exited. Zombies left out (and reaped:
/// they are ours). Empty outside Linux.
pub(crate) fn orphans(except: &[i32]) -> Vec<ProcessId> {
    imp::orphans(except)
}

/// `a` plus the processes of `b` it does not already hold.
pub(crate) fn union(mut a: Vec<ProcessId>, b: Vec<ProcessId>) -> Vec<ProcessId> {
    for p in b {
        if !a.contains(&p) {
            a.push(p);
        }
    }
    a
}

/// SIGTERM to each of `procs` still alive, wait until `deadline` for them to go, then SIGKILL
/// what is left. Returns how many had to be killed and whether all are gone now.
pub(crate) fn end_all(procs: &[ProcessId], deadline: Instant) -> (usize, bool) {
    procs.iter().for_each(|p| {
        p.signal(Signal::SIGTERM);
    });
    if wait_all_gone(procs, deadline) {
        return (0, true);
    }
    let left = kill_all(procs);
    (left, wait_all_gone(procs, Instant::now() + KILL_WAIT))
}

/// SIGKILL each of `procs` still alive; returns how many were.
pub(crate) fn kill_all(procs: &[ProcessId]) -> usize {
    procs.iter().filter(|p| p.signal(Signal::SIGKILL)).count()
}

/// How `stop_instance` went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// The supervisor stopped its server and itself within the grace.
    Cleanly,
    /// The supervisor had to be killed, or left processes behind: `killed` were SIGKILLed.
    Forced { killed: usize },
    /// Something survived SIGKILL (stuck in the kernel).
    Stuck,
}

/// How much longer than its grace a supervisor may take to stop: it kills its server at the
/// grace, then reaps it and deregisters.
const SUPERVISOR_MARGIN: Duration = Duration::from_secs(5);

/// Stop an instance: SIGTERM to its supervisor (`wharf run`), which stops its server politely
/// and, after `grace`, firmly. If the supervisor itself does not end in time it is killed,
/// and whatever is left of the server's process tree (as it was when the stop began) is
/// killed too, so nothing it started keeps the port.
pub(crate) fn stop_instance(
    supervisor: ProcessId,
    server: Option<i32>,
    grace: Duration,
) -> Stopped {
    let tree = server.map(family_of).unwrap_or_default();
    supervisor.signal(Signal::SIGTERM);
    let mut killed = 0;
    if !wait_all_gone(&[supervisor], Instant::now() + grace + SUPERVISOR_MARGIN) {
        killed += kill_all(&[supervisor]);
    }
    killed += kill_all(&tree);
    if !wait_all_gone(&[supervisor], Instant::now() + KILL_WAIT)
        || !wait_all_gone(&tree, Instant::now() + KILL_WAIT)
    {
        return Stopped::Stuck;
    }
    match killed {
        0 => Stopped::Cleanly,
        killed => Stopped::Forced { killed },
    }
}

fn exists(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// True if `pid` is `root` or one of its descendants.
pub(crate) fn in_tree(pid: i32, root: i32) -> bool {
    imp::in_tree(pid, root)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::HashMap;

    use super::ProcessId;

    /// Fields after the `comm` field of `/proc/PID/stat` (comm may hold spaces and parens).
    fn stat_fields(pid: i32) -> Option<Vec<String>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        Some(rest.split(' ').map(str::to_string).collect())
    }

    /// An exited process nobody has reaped yet still answers `kill(pid, 0)`.
    pub(crate) fn is_zombie(pid: i32) -> bool {
        stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s == "Z"))
    }

    pub(crate) fn start_time(pid: i32) -> Option<u64> {
        // Field 22 overall; index 19 after pid and comm.
        stat_fields(pid)?.get(19)?.parse().ok()
    }

    pub(crate) fn parent(pid: i32) -> Option<i32> {
        stat_fields(pid)?.get(1)?.parse().ok()
    }

    pub(crate) fn in_tree(mut pid: i32, root: i32) -> bool {
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            match parent(pid) {
                Some(p) if p > 1 => pid = p,
                _ => return false,
            }
        }
        false
    }

    /// Every process whose ancestry reaches `root`, `root` included. From each thread's
    /// `children` list down the tree (a few reads for a server that starts nothing), else
    /// from every process's stat.
    pub(crate) fn tree(root: i32) -> Vec<i32> {
        tree_by_children(root).unwrap_or_else(|| tree_by_stat(root))
    }

    /// `root` and the processes below it, from every process's stat.
    pub(super) fn tree_by_stat(root: i32) -> Vec<i32> {
        descendants(vec![root], &table())
    }

    /// `root` and the processes below it, from their threads' `children` lists; `None` where
    /// the kernel keeps none.
    fn tree_by_children(root: i32) -> Option<Vec<i32>> {
        if !std::path::Path::new("/proc/thread-self/children").exists() {
            return None;
        }
        let mut out = vec![root];
        let mut i = 0;
        while i < out.len() {
            // A process gone meanwhile has no tasks left to read.
            let tasks = std::fs::read_dir(format!("/proc/{}/task", out[i]));
            for task in tasks.into_iter().flatten().flatten() {
                let Ok(list) = std::fs::read_to_string(task.path().join("children")) else {
                    continue;
                };
                for kid in list.split_ascii_whitespace().filter_map(|p| p.parse().ok()) {
                    if !out.contains(&kid) {
                        out.push(kid);
                    }
                }
            }
            i += 1;
        }
        Some(out)
    }

    /// `root`'s tree plus the members of the process group numbered `root`, and their trees;
    /// zombies and processes gone meanwhile left out. One look at each process's stat.
    pub(crate) fn family(root: i32) -> Vec<ProcessId> {
        // The usual case after a server exited, told by two signals instead of a read of
        // every process's stat: `root` is gone and its group is empty (its tree, if any, came
        // to us and is `orphans`').
        let gone = |pid: i32| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                == Err(nix::errno::Errno::ESRCH)
        };
        if root > 1 && gone(root) && gone(-root) {
            return Vec::new();
        }
        let table = table();
        let mut seeds = vec![root];
        seeds.extend(
            table
                .iter()
                .filter(|p| p.group == root && p.pid != root)
                .map(|p| p.pid),
        );
        living(seeds, &table)
    }

    /// Our children (zombies included), from each thread's `children` list; `None` where the
    /// kernel keeps none.
    fn children() -> Option<Vec<i32>> {
        let mut all = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let list = std::fs::read_to_string(task.path().join("children")).ok()?;
            all.extend(
                list.split_ascii_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
        Some(all)
    }

    /// One process, as its stat says.
    struct Entry {
        pid: i32,
        parent: i32,
        group: i32,
        start: Option<u64>,
        zombie: bool,
    }

    /// Every process.
    fn table() -> Vec<Entry> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let pid = entry.file_name().to_str()?.parse().ok()?;
                let fields = stat_fields(pid)?;
                Some(Entry {
                    pid,
                    parent: fields.get(1)?.parse().ok()?,
                    group: fields.get(2)?.parse().ok()?,
                    // Field 22 overall; index 19 after pid and comm.
                    start: fields.get(19).and_then(|s| s.parse().ok()),
                    zombie: fields.first().is_some_and(|s| s == "Z"),
                })
            })
            .collect()
    }

    pub(crate) fn become_subreaper() -> bool {
        nix::sys::prctl::set_child_subreaper(true).is_ok()
    }

    pub(crate) fn orphans(except: &[i32]) -> Vec<ProcessId> {
        // The usual case, told by our threads' lists of children instead of a read of every
        // process's stat: no child but `except`.
        if children().is_some_and(|c| c.iter().all(|p| except.contains(p))) {
            return Vec::new();
        }
        let me = std::process::id() as i32;
        // A zombie reaped here may have forked just before it exited (the middle of a double
        // fork), and the table, read one pid at a time, can have missed that child, which
        // came to us when its parent exited: look again after reaping, a few times at most.
        for _ in 0..8 {
            let table = table();
            let mut seeds = Vec::new();
            let mut reaped = false;
            for e in table
                .iter()
                .filter(|e| e.parent == me && !except.contains(&e.pid))
            {
                if e.zombie {
                    // Ours to reap; the server itself is tokio's, and never among them.
                    let _ = nix::sys::wait::waitpid(
                        nix::unistd::Pid::from_raw(e.pid),
                        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                    );
                    reaped = true;
                } else {
                    seeds.push(e.pid);
                }
            }
            if !reaped || !seeds.is_empty() {
                return living(seeds, &table);
            }
        }
        Vec::new()
    }

    /// `seeds` and everything below them in `table` that has not exited.
    fn living(seeds: Vec<i32>, table: &[Entry]) -> Vec<ProcessId> {
        let by_pid: HashMap<i32, &Entry> = table.iter().map(|e| (e.pid, e)).collect();
        descendants(seeds, table)
            .into_iter()
            .filter_map(|pid| by_pid.get(&pid))
            .filter(|e| !e.zombie)
            .map(|e| ProcessId {
                pid: e.pid,
                start: e.start,
            })
            .collect()
    }

    /// `seeds` and everything below them in `table`, each once.
    fn descendants(mut out: Vec<i32>, table: &[Entry]) -> Vec<i32> {
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for e in table {
            children.entry(e.parent).or_default().push(e.pid);
        }
        let mut i = 0;
        while i < out.len() {
            if let Some(kids) = children.get(&out[i]) {
                for kid in kids {
                    if !out.contains(kid) {
                        out.push(*kid);
                    }
                }
            }
            i += 1;
        }
        out
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::ProcessId;

    pub(crate) fn start_time(_pid: i32) -> Option<u64> {
        None
    }

    pub(crate) fn is_zombie(_pid: i32) -> bool {
        false
    }

    pub(crate) fn in_tree(_pid: i32, _root: i32) -> bool {
        // Without /proc we cannot walk the tree cheaply; the notify socket's 0700 directory
        // already limits senders to our own uid.
        true
    }

    pub(crate) fn family(root: i32) -> Vec<ProcessId> {
        ProcessId::of(root).into_iter().collect()
    }

    pub(crate) fn become_subreaper() -> bool {
        false
    }

    pub(crate) fn orphans(_except: &[i32]) -> Vec<ProcessId> {
        Vec::new()
    }
}

#[cfg(target_os = "linux")]
pub(crate) use imp::tree;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_recycled_pid_is_not() {
        let me = ProcessId::current();
        assert!(me.is_alive());
        if me.start.is_some() {
            let other = ProcessId {
                start: me.start.map(|s| s + 1),
                ..me
            };
            assert!(!other.is_alive());
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_tree_read_from_children_lists_is_the_tree_read_from_every_stat() {
        use std::io::BufRead;
        // A shell with a child of its own, below this process: it names the child once forked.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let sh_pid = sh.id() as i32;
        let mut line = String::new();
        std::io::BufReader::new(sh.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let sleep_pid: i32 = line.trim().parse().unwrap();
        let by_stat = |root| {
            let mut t = imp::tree_by_stat(root);
            t.sort();
            t
        };
        let mut quick = imp::tree(sh_pid);
        quick.sort();
        assert_eq!(quick, by_stat(sh_pid));
        assert_eq!(quick.len(), 2, "the shell and its sleep");
        let me = std::process::id() as i32;
        assert!(imp::tree(me).contains(&sh_pid));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(sleep_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = sh.kill();
        let _ = sh.wait();
    }

    #[test]
    fn exited_child_is_not_alive_and_terminate_reaps_nothing_twice() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let id = ProcessId::of(child.id() as i32).unwrap();
        assert!(id.is_alive());
        let killer = std::thread::spawn(move || id.terminate(Duration::from_secs(5)));
        child.wait().unwrap();
        assert!(killer.join().unwrap());
        assert!(!id.is_alive());
    }
}
