//! The on-disk port registry: which ports each name had last time (sticky) and which live
//! process holds which ports now (leases). Shared by every `wharf` process, serialised by a lock.
//! It records; it binds nothing (see `supervise::ports`).

use crate::model::instance::Instance;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::model::name::Name;
use crate::state::dirs;
use crate::sys::process::ProcessId;

const FILE: &str = "registry.json";
const LOCK: &str = "registry.lock";
/// Holders keep the lock for a bind loop at most; anything longer is a stuck process.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// The document stored in `registry.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Registry {
    /// Last port of each socket of each name: name → socket → port.
    #[serde(default)]
    pub(crate) sticky: BTreeMap<Name, BTreeMap<String, u16>>,
    /// Ports held right now by live wharf processes: one lease per member of a name (one for
    /// a name without replicas). A name with one lease is written as that lease alone, as
    /// wharfs before replicas wrote (and read) it.
    #[serde(
        default,
        serialize_with = "one_or_many::serialize",
        deserialize_with = "one_or_many::deserialize"
    )]
    pub(crate) leases: BTreeMap<Name, Vec<Lease>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Lease {
    /// The `wharf run` process that holds the ports.
    pub(crate) holder: ProcessId,
    /// socket name → port.
    pub(crate) ports: BTreeMap<String, u16>,
    /// Unix seconds when the lease was taken.
    pub(crate) since: u64,
    /// How the main port was chosen, for `wharf up`'s table (absent in leases older wharfs
    /// wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) allocation: Option<crate::model::ports::Allocation>,
    /// What the holder runs and where (absent in leases older wharfs wrote): who holds a
    /// name, and whether `--reuse` may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) run: Option<Run>,
    /// Which member of a replicated name this lease is for (`--replicas`: one holder may
    /// hold several). `None` for a name without replicas; `Some(0)` for a `--join`ed member,
    /// whose number only the proxy knows (its holder holds that one lease only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) member: Option<u32>,
}

/// A `wharf run`'s command as given (before wharf fills anything in) and its directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Run {
    pub(crate) command: Vec<String>,
    pub(crate) dir: PathBuf,
}

impl Registry {
    /// The live instance holding `port`, if any, and its lease.
    pub(crate) fn holder_of(&self, port: u16) -> Option<(&Name, &Lease)> {
        self.all_leases()
            .find(|(_, lease)| lease.ports.values().any(|p| *p == port))
    }

    /// Every lease, each with its name: a name with replicas once per member.
    pub(crate) fn all_leases(&self) -> impl Iterator<Item = (&Name, &Lease)> {
        self.leases
            .iter()
            .flat_map(|(name, leases)| leases.iter().map(move |l| (name, l)))
    }

    /// The leases of `name`'s members (one without replicas; none when it does not run).
    pub(crate) fn leases_of(&self, name: &Name) -> &[Lease] {
        self.leases.get(name).map_or(&[], Vec::as_slice)
    }

    /// Record `lease` for `name`, replacing one of the same holder and member.
    pub(crate) fn add_lease(&mut self, name: &Name, lease: Lease) {
        let leases = self.leases.entry(name.clone()).or_default();
        leases.retain(|l| !(l.holder == lease.holder && l.member == lease.member));
        leases.push(lease);
        leases.sort_by_key(|l| (l.member.unwrap_or(0), l.since));
    }

    /// Remove `holder`'s lease of `name` for `member`; true if there was one.
    pub(crate) fn remove_lease(
        &mut self,
        name: &Name,
        holder: ProcessId,
        member: Option<u32>,
    ) -> bool {
        let Some(leases) = self.leases.get_mut(name) else {
            return false;
        };
        let before = leases.len();
        leases.retain(|l| !(l.holder == holder && l.member == member));
        let removed = leases.len() != before;
        if leases.is_empty() {
            self.leases.remove(name);
        }
        removed
    }
}

/// A name's leases on disk: one lease alone as an object (what wharfs before replicas read
/// and write), several as a list.
mod one_or_many {
    use super::{BTreeMap, Lease, Name};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        One(Lease),
        Many(Vec<Lease>),
    }

    #[derive(Serialize)]
    #[serde(untagged)]
    enum Writing<'a> {
        One(&'a Lease),
        Many(&'a [Lease]),
    }

    pub(super) fn serialize<S: Serializer>(
        leases: &BTreeMap<Name, Vec<Lease>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        leases
            .iter()
            .map(|(name, l)| {
                let writing = match l.as_slice() {
                    [one] => Writing::One(one),
                    many => Writing::Many(many),
                };
                (name, writing)
            })
            .collect::<BTreeMap<_, _>>()
            .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Name, Vec<Lease>>, D::Error> {
        let stored = BTreeMap::<Name, Stored>::deserialize(d)?;
        Ok(stored
            .into_iter()
            .map(|(name, s)| match s {
                Stored::One(l) => (name, vec![l]),
                Stored::Many(l) => (name, l),
            })
            .filter(|(_, l)| !l.is_empty())
            .collect())
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    #[error("cannot open the registry lock {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another wharf process has held {0} for over {secs}s; if none is running, delete the file",
        secs = LOCK_PATIENCE.as_secs()
    )]
    Busy(PathBuf),
    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The registry in a directory; `lock` gives exclusive access to its contents.
pub(crate) struct Store {
    dir: PathBuf,
    /// Asked what runs when the file must be rebuilt (a proxy's routes, in practice).
    recover: Option<Box<Recovery>>,
}

/// The live instances a corrupt registry is rebuilt from; empty when nobody knows.
pub(crate) type Recovery = dyn Fn() -> Vec<Instance> + Send + Sync;

/// Exclusive access to the registry until dropped; `commit` writes changes.
pub(crate) struct Locked {
    _lock: File,
    path: PathBuf,
    data: Registry,
    /// Things worth telling the user that did not stop us (a corrupt file moved aside).
    pub(crate) warnings: Vec<String>,
}

impl Store {
    pub(crate) fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
            recover: None,
        }
    }

    /// The same store, which rebuilds a corrupt file from the live instances `recover` names.
    pub(crate) fn recovering_from(
        self,
        recover: impl Fn() -> Vec<Instance> + Send + Sync + 'static,
    ) -> Store {
        Store {
            recover: Some(Box::new(recover)),
            ..self
        }
    }

    /// Wait (bounded) for the lock, then load the registry, dropping leases of dead processes.
    /// A file that does not parse is moved aside and replaced by what the proxy knows runs
    /// (or an empty registry without a proxy); `warnings` says so.
    pub(crate) fn lock(&self) -> Result<Locked, RegistryError> {
        let lock_path = self.dir.join(LOCK);
        let lock = dirs::open_private(&lock_path).map_err(|source| RegistryError::Open {
            path: lock_path.clone(),
            source,
        })?;
        let deadline = Instant::now() + LOCK_PATIENCE;
        let mut pause = Duration::from_millis(1);
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(RegistryError::Busy(lock_path));
                }
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(RegistryError::Open {
                        path: lock_path,
                        source,
                    });
                }
            }
        }
        let path = self.dir.join(FILE);
        let io_err = |source| RegistryError::Io {
            path: path.clone(),
            source,
        };
        let mut warnings = Vec::new();
        let data = match dirs::read_private(&path).map_err(io_err)? {
            None => Registry::default(),
            Some(bytes) => match serde_json::from_slice::<Registry>(&bytes) {
                Ok(data) => data,
                Err(e) => {
                    let aside = dirs::move_aside(&path).map_err(io_err)?;
                    let data = self.rebuild();
                    let kept = match data.leases.len() {
                        0 => "no running instance was found to keep".to_string(),
                        _ => {
                            let names: Vec<&str> = data.leases.keys().map(Name::as_str).collect();
                            format!("kept the running {}", names.join(", "))
                        }
                    };
                    warnings.push(format!(
                        "{} was unreadable ({e}); moved it to {} and rebuilt it from the proxy: \
                         {kept}; other names' last ports are forgotten",
                        path.display(),
                        aside.display()
                    ));
                    data
                }
            },
        };
        let rebuilt = !warnings.is_empty();
        let mut locked = Locked {
            _lock: lock,
            path,
            data,
            warnings,
        };
        for leases in locked.data.leases.values_mut() {
            leases.retain(|lease| lease.holder.is_alive());
        }
        locked.data.leases.retain(|_, leases| !leases.is_empty());
        if rebuilt {
            // Saved now: the caller may fail before it commits, and the old file is gone.
            locked.commit()?;
        }
        Ok(locked)
    }
}

impl Store {
    /// A registry holding the leases (and so the sticky ports) of the live instances
    /// `recover` names; empty without one.
    fn rebuild(&self) -> Registry {
        let running = self.recover.as_ref().map(|r| r()).unwrap_or_default();
        let now = unix_now();
        let mut reg = Registry::default();
        for instance in running {
            let Some(holder) = ProcessId::of(instance.pid) else {
                continue;
            };
            let ports: BTreeMap<String, u16> = instance
                .sockets
                .iter()
                .map(|(socket, addr)| (socket.clone(), addr.port()))
                .collect();
            if instance.member.is_none_or(|m| m == 1) {
                reg.sticky.insert(instance.name.clone(), ports.clone());
            }
            reg.add_lease(
                &instance.name,
                Lease {
                    holder,
                    ports,
                    since: instance.started_at.unwrap_or(now),
                    allocation: None,
                    run: None,
                    member: instance.member,
                },
            );
        }
        reg
    }
}

impl Locked {
    /// Write the registry back atomically. The lock stays held until drop.
    pub(crate) fn commit(&self) -> Result<(), RegistryError> {
        let bytes = serde_json::to_vec_pretty(&self.data).expect("registry serialises");
        dirs::write_atomic(&self.path, &bytes).map_err(|source| RegistryError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

impl Deref for Locked {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        &self.data
    }
}

impl DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut Registry {
        &mut self.data
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        s.parse().unwrap()
    }

    #[test]
    fn leases_of_dead_processes_are_dropped_and_sticky_ports_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let dead = ProcessId::of(child.id() as i32).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        {
            let mut reg = store.lock().unwrap();
            for (n, holder, port) in [("dead", dead, 4000), ("live", ProcessId::current(), 4001)] {
                let ports = BTreeMap::from([("http".to_string(), port)]);
                reg.sticky.insert(name(n), ports.clone());
                reg.add_lease(
                    &name(n),
                    Lease {
                        holder,
                        ports,
                        since: 0,
                        allocation: None,
                        run: None,
                        member: None,
                    },
                );
            }
            reg.commit().unwrap();
        }
        let reg = store.lock().unwrap();
        assert_eq!(reg.leases.keys().collect::<Vec<_>>(), [&name("live")]);
        assert_eq!(reg.holder_of(4001).map(|(n, _)| n), Some(&name("live")));
        assert!(reg.holder_of(4000).is_none());
        assert_eq!(reg.sticky.len(), 2);
    }

    /// A name's members each have a lease; one lease alone is written as wharfs before
    /// replicas wrote it, so they still read the file.
    #[test]
    fn members_lease_apart_and_a_lone_lease_keeps_the_old_shape() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let me = ProcessId::current();
        let lease = |member, port| Lease {
            holder: me,
            ports: BTreeMap::from([("http".to_string(), port)]),
            since: 0,
            allocation: None,
            run: None,
            member,
        };
        {
            let mut reg = store.lock().unwrap();
            reg.add_lease(&name("solo"), lease(None, 4000));
            for k in 1..=3 {
                reg.add_lease(&name("api"), lease(Some(k), 4000 + k as u16));
            }
            // The same member again replaces its lease.
            reg.add_lease(&name("api"), lease(Some(2), 4012));
            reg.commit().unwrap();
        }
        let text = std::fs::read_to_string(tmp.path().join(FILE)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(json["leases"]["solo"].is_object(), "{text}");
        assert_eq!(json["leases"]["api"].as_array().unwrap().len(), 3, "{text}");
        let mut reg = store.lock().unwrap();
        let ports: Vec<u16> = reg
            .leases_of(&name("api"))
            .iter()
            .map(|l| l.ports["http"])
            .collect();
        assert_eq!(ports, [4001, 4012, 4003]);
        assert_eq!(
            reg.holder_of(4012).map(|(n, l)| (n.as_str(), l.member)),
            Some(("api", Some(2)))
        );
        assert_eq!(reg.all_leases().count(), 4);
        assert!(reg.remove_lease(&name("api"), me, Some(2)));
        assert!(!reg.remove_lease(&name("api"), me, Some(2)), "gone already");
        assert!(reg.remove_lease(&name("solo"), me, None));
        assert!(
            !reg.leases.contains_key(&name("solo")),
            "no empty list is kept"
        );
        assert_eq!(reg.leases_of(&name("api")).len(), 2);
    }

    #[test]
    fn corrupt_file_is_moved_aside_not_fatal() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(FILE), b"{\"leases\": [oops").unwrap();
        let reg = Store::new(tmp.path()).lock().unwrap();
        assert!(reg.leases.is_empty());
        assert_eq!(reg.warnings.len(), 1, "{:?}", reg.warnings);
        let aside: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .collect();
        assert_eq!(aside.len(), 1);
        drop(reg);
        // Saved already, though the holder never committed: nothing is half-done.
        let saved = std::fs::read(tmp.path().join(FILE)).unwrap();
        assert!(serde_json::from_slice::<Registry>(&saved).is_ok());
    }

    #[test]
    fn symlinked_registry_is_an_error_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("elsewhere");
        std::fs::write(&target, b"{}").unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join(FILE)).unwrap();
        assert!(Store::new(tmp.path()).lock().is_err());
    }
}
