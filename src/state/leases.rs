//! Instances that `wharf mcp` sessions started, and which live sessions hold each: two agents
//! ensuring one server share it, and the last to leave stops it. One 0600 file in the runtime
//! directory, read and changed only under its lock; an instance started outside an MCP
//! session never gets a record, so no session ever stops it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::name::Name;
use crate::state::dirs;
use crate::sys::process::ProcessId;

const FILE: &str = "mcp-leases.json";
const LOCK: &str = "mcp-leases.lock";

/// One leased instance: its supervisor (`wharf run`) when it was leased, and the sessions
/// (`wharf mcp` processes) holding it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Leased {
    pub(crate) supervisor: ProcessId,
    pub(crate) holders: Vec<ProcessId>,
}

/// The lease records, locked until dropped.
pub(crate) struct Leases {
    path: PathBuf,
    _lock: File,
    pub(crate) leased: BTreeMap<Name, Leased>,
}

impl Leases {
    /// Wait for the lock (blocking), then read the records, leaving out those whose
    /// supervisor is gone and holders that are gone. An unreadable file is moved aside.
    pub(crate) fn lock(runtime: &Path) -> io::Result<Leases> {
        let lock = dirs::open_private(&runtime.join(LOCK))?;
        lock.lock()?;
        let path = runtime.join(FILE);
        let mut leased: BTreeMap<Name, Leased> = match dirs::read_private(&path)? {
            None => BTreeMap::new(),
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(l) => l,
                Err(_) => {
                    dirs::move_aside(&path)?;
                    BTreeMap::new()
                }
            },
        };
        leased.retain(|_, l| l.supervisor.is_alive());
        for l in leased.values_mut() {
            l.holders.retain(ProcessId::is_alive);
        }
        Ok(Leases {
            path,
            _lock: lock,
            leased,
        })
    }

    pub(crate) fn commit(&self) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.leased).map_err(io::Error::other)?;
        dirs::write_atomic(&self.path, &bytes)
    }

    /// `holder` started `name` (its supervisor `supervisor`): a lease held by it alone.
    pub(crate) fn start(&mut self, name: &Name, supervisor: ProcessId, holder: ProcessId) {
        self.leased.insert(
            name.clone(),
            Leased {
                supervisor,
                holders: vec![holder],
            },
        );
    }

    /// `holder` reuses `name`, run by the supervisor with pid `supervisor`: it joins the lease
    /// if a session started that instance; false if none did (then it is not leased at all).
    pub(crate) fn join(&mut self, name: &Name, supervisor: i32, holder: ProcessId) -> bool {
        match self.leased.get_mut(name) {
            Some(l) if l.supervisor.pid == supervisor => {
                if !l.holders.contains(&holder) {
                    l.holders.push(holder);
                }
                true
            }
            _ => false,
        }
    }

    /// `name` was stopped: its lease goes.
    pub(crate) fn end(&mut self, name: &Name) {
        self.leased.remove(name);
    }

    /// `holder` leaves every lease it holds.
    pub(crate) fn leave(&mut self, holder: ProcessId) {
        for l in self.leased.values_mut() {
            l.holders.retain(|h| *h != holder);
        }
    }

    /// The leases nobody holds any more (their last holder left, or died without leaving),
    /// taken out: the instances to stop, with their supervisors.
    pub(crate) fn unheld(&mut self) -> Vec<(Name, ProcessId)> {
        let gone: Vec<Name> = self
            .leased
            .iter()
            .filter(|(_, l)| l.holders.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        gone.into_iter()
            .filter_map(|n| self.leased.remove(&n).map(|l| (n, l.supervisor)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn name(s: &str) -> Name {
        s.parse().unwrap()
    }

    /// Two sessions share what one started; the last to leave gets it to stop, and a dead
    /// holder counts as gone.
    #[test]
    fn the_last_holder_to_leave_stops_it() {
        let tmp = tempfile::tempdir().unwrap();
        let me = ProcessId::current();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let them = ProcessId::of(other.id() as i32).unwrap();
        {
            let mut l = Leases::lock(tmp.path()).unwrap();
            l.start(&name("shop"), me, me);
            assert!(l.join(&name("shop"), me.pid, them));
            assert!(!l.join(&name("api"), me.pid, them), "never leased");
            assert!(!l.join(&name("shop"), me.pid + 1, them), "another instance");
            l.commit().unwrap();
        }
        let mode = std::fs::metadata(tmp.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut l = Leases::lock(tmp.path()).unwrap();
        l.leave(me);
        assert!(l.unheld().is_empty(), "still held by the other session");
        assert_eq!(l.leased[&name("shop")].holders, [them]);
        l.commit().unwrap();
        drop(l);
        other.kill().unwrap();
        other.wait().unwrap();
        let mut l = Leases::lock(tmp.path()).unwrap();
        assert_eq!(l.unheld(), [(name("shop"), me)]);
        assert!(l.leased.is_empty());
    }

    #[test]
    fn a_corrupt_file_is_moved_aside() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(FILE), b"{not json").unwrap();
        assert!(Leases::lock(tmp.path()).unwrap().leased.is_empty());
        assert!(!tmp.path().join(FILE).exists());
    }
}
