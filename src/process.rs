//! Process identity (pid plus start time, so a recycled pid is never mistaken for ours),
//! the process tree, and stopping a process politely then firmly.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A process as recorded on disk: its pid and, where the platform tells, when it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    /// Start time in clock ticks since boot (Linux `/proc/PID/stat` field 22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
}

impl ProcessId {
    pub fn current() -> ProcessId {
        ProcessId::of(std::process::id() as i32).expect("our own process exists")
    }

    /// The process with this pid as it is now; `None` if there is none.
    pub fn of(pid: i32) -> Option<ProcessId> {
        if pid <= 0 || !exists(pid) || imp::is_zombie(pid) {
            return None;
        }
        Some(ProcessId {
            pid,
            start: imp::start_time(pid),
        })
    }

    /// True while this very process (not a later one with the same pid) is alive.
    pub fn is_alive(&self) -> bool {
        match (ProcessId::of(self.pid), self.start) {
            (Some(now), Some(start)) => now.start.is_none_or(|s| s == start),
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// SIGTERM, wait up to `grace` for it to go, then SIGKILL and wait a little more.
    /// Returns true if the process is gone.
    pub fn terminate(&self, grace: Duration) -> bool {
        if !self.is_alive() {
            return true;
        }
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        if self.wait_gone(grace) {
            return true;
        }
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        self.wait_gone(Duration::from_secs(2))
    }

    fn wait_gone(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(5);
        while Instant::now() < deadline {
            if !self.is_alive() {
                return true;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        !self.is_alive()
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
pub fn in_tree(pid: i32, root: i32) -> bool {
    imp::in_tree(pid, root)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::HashMap;

    /// Fields after the `comm` field of `/proc/PID/stat` (comm may hold spaces and parens).
    fn stat_fields(pid: i32) -> Option<Vec<String>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        Some(rest.split(' ').map(str::to_string).collect())
    }

    /// An exited process nobody has reaped yet still answers `kill(pid, 0)`.
    pub fn is_zombie(pid: i32) -> bool {
        stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s == "Z"))
    }

    pub fn start_time(pid: i32) -> Option<u64> {
        // Field 22 overall; index 19 after pid and comm.
        stat_fields(pid)?.get(19)?.parse().ok()
    }

    pub fn parent(pid: i32) -> Option<i32> {
        stat_fields(pid)?.get(1)?.parse().ok()
    }

    pub fn in_tree(mut pid: i32, root: i32) -> bool {
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

    /// Every process whose ancestry reaches `root`, `root` included.
    pub fn tree(root: i32) -> Vec<i32> {
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Some(ppid) = parent(pid) {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
        let mut out = vec![root];
        let mut i = 0;
        while i < out.len() {
            if let Some(kids) = children.get(&out[i]) {
                out.extend(kids);
            }
            i += 1;
        }
        out
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub fn start_time(_pid: i32) -> Option<u64> {
        None
    }

    pub fn is_zombie(_pid: i32) -> bool {
        false
    }

    pub fn in_tree(_pid: i32, _root: i32) -> bool {
        // Without /proc we cannot walk the tree cheaply; the notify socket's 0700 directory
        // already limits senders to our own uid.
        true
    }
}

#[cfg(target_os = "linux")]
pub use imp::tree;

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
