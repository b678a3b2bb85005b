//! The route table: instance name → where its sockets are. It lives in a `watch` channel:
//! readers clone the current table's `Arc` (or one route's) under the channel's read lock, so a
//! lookup waits only while a writer copies and edits the table (a registration, rarely); writers
//! edit a copy, swap it in and wake every subscriber, in one step.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use http::uri::Authority;
use tokio::sync::watch;

use crate::model::instance::{Instance, State};
use crate::model::mode::Mode;
use crate::model::name::Name;

/// Who registered a route: a control connection, or the alias file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    Connection(u64),
    Alias,
}

/// One routable instance.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) instance: Instance,
    pub(crate) owner: Owner,
    /// When the name was first registered (kept across re-registrations).
    pub(crate) since: SystemTime,
    /// Requests forwarded to it (shared across re-registrations).
    pub(crate) requests: Arc<AtomicU64>,
    /// Whether it has answered a request since this registration.
    pub(crate) answered: std::sync::atomic::AtomicBool,
    /// Each socket's address as an URI authority, built once.
    authorities: HashMap<String, (SocketAddr, Authority)>,
}

impl Route {
    fn new(instance: Instance, owner: Owner, since: SystemTime, requests: Arc<AtomicU64>) -> Route {
        let authorities = instance
            .sockets
            .iter()
            .map(|(name, addr)| {
                let authority = addr
                    .to_string()
                    .parse()
                    .expect("a socket address is an authority");
                (name.clone(), (*addr, authority))
            })
            .collect();
        Route {
            instance,
            owner,
            since,
            requests,
            answered: Default::default(),
            authorities,
        }
    }

    /// The socket for `sub` if the instance has one by that name, else its main socket.
    pub(crate) fn upstream(&self, sub: Option<&Name>) -> Option<&(SocketAddr, Authority)> {
        sub.and_then(|s| self.authorities.get(s.as_str()))
            .or_else(|| self.authorities.get(crate::model::ports::MAIN_SOCKET))
    }

    /// True when requests must wait: an env-mode server that does not listen yet (in fd mode
    /// the kernel queues connections on the held socket, so they can go straight through).
    pub(crate) fn not_listening(&self) -> bool {
        self.instance.mode == Mode::Env && self.instance.state != State::Ready
    }

    pub(crate) fn failed(&self) -> bool {
        self.instance.state == State::Failed
    }

    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) type Table = HashMap<Name, Arc<Route>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RouteError {
    #[error(
        "the name '{name}' is already served by wharf pid {pid}; stop it first (`wharf stop {name}`)"
    )]
    Taken { name: Name, pid: i32 },
    #[error("the name '{0}' is an alias; remove it first (`wharf alias --rm {0}`)")]
    Alias(Name),
}

/// The shared route table. One `watch` channel is its lock, its version and its wake-up;
/// `arc-swap` would make lookups lock-free but need a writers' lock and a wake-up beside it.
pub(crate) struct Routes {
    table: watch::Sender<Arc<Table>>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            table: watch::Sender::new(Arc::default()),
        }
    }
}

impl Routes {
    pub(crate) fn snapshot(&self) -> Arc<Table> {
        self.table.borrow().clone()
    }

    pub(crate) fn get(&self, name: &Name) -> Option<Arc<Route>> {
        self.table.borrow().get(name).cloned()
    }

    /// A receiver that changes whenever the table does (for requests waiting on a start).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Table>> {
        self.table.subscribe()
    }

    /// Add or replace `instance` for `owner`. A name held by another live owner is refused;
    /// one whose registering process is dead is taken over.
    pub(crate) fn register(&self, owner: Owner, instance: Instance) -> Result<(), RouteError> {
        self.update(|table| {
            let (since, requests) = match table.get(&instance.name) {
                Some(old) if old.owner == owner => (old.since, old.requests.clone()),
                Some(old) if old.owner == Owner::Alias => {
                    return Err(RouteError::Alias(instance.name.clone()));
                }
                Some(old)
                    if owner != Owner::Alias
                        && crate::sys::process::ProcessId::of(old.instance.pid).is_some() =>
                {
                    return Err(RouteError::Taken {
                        name: instance.name.clone(),
                        pid: old.instance.pid,
                    });
                }
                // New here (or a proxy restart): the instance says how long it has been up
                // and what earlier proxies counted.
                _ => (
                    instance.started_at.map_or_else(SystemTime::now, |t| {
                        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t)
                    }),
                    Arc::new(AtomicU64::new(instance.requests_before.unwrap_or(0))),
                ),
            };
            table.insert(
                instance.name.clone(),
                Arc::new(Route::new(instance, owner, since, requests)),
            );
            Ok(())
        })
    }

    /// Remove `name` (whoever owns it); returns what was there.
    pub(crate) fn remove(&self, name: &Name) -> Option<Arc<Route>> {
        let mut removed = None;
        let _ = self.update(|table| {
            removed = table.remove(name);
            Ok::<_, RouteError>(())
        });
        removed
    }

    /// Remove every route `owner` registered (its connection closed).
    pub(crate) fn remove_owner(&self, owner: Owner) {
        let _ = self.update(|table| {
            table.retain(|_, route| route.owner != owner);
            Ok::<_, RouteError>(())
        });
    }

    /// Edit a copy of the table and swap it in, waking subscribers; an `Err` changes nothing.
    fn update<E>(&self, edit: impl FnOnce(&mut Table) -> Result<(), E>) -> Result<(), E> {
        let mut result = Ok(());
        self.table.send_if_modified(|table| {
            let mut next = Table::clone(table);
            result = edit(&mut next);
            if result.is_ok() {
                *table = Arc::new(next);
            }
            result.is_ok()
        });
        result
    }
}

/// The alias routes as stored on disk: name → address.
pub(crate) type AliasMap = BTreeMap<Name, SocketAddr>;

/// An alias as a route: an instance with only a main socket, always ready.
pub(crate) fn alias_instance(name: Name, addr: SocketAddr) -> Instance {
    let sockets = BTreeMap::from([(crate::model::ports::MAIN_SOCKET.to_string(), addr)]);
    Instance::bare(name, 0, State::Ready, sockets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(name: &str, pid: i32, sockets: &[(&str, &str)]) -> Instance {
        let sockets = sockets
            .iter()
            .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
            .collect();
        Instance::bare(name.parse().unwrap(), pid, State::Starting, sockets)
    }

    #[test]
    fn sub_socket_falls_back_to_the_main_one() {
        let routes = Routes::default();
        let me = std::process::id() as i32;
        let inst = instance(
            "api",
            me,
            &[("http", "127.0.0.1:4001"), ("admin", "127.0.0.1:4002")],
        );
        routes.register(Owner::Connection(1), inst).unwrap();
        let route = routes.get(&"api".parse().unwrap()).unwrap();
        let admin: Name = "admin".parse().unwrap();
        let other: Name = "other".parse().unwrap();
        assert_eq!(
            route.upstream(Some(&admin)).unwrap().1.as_str(),
            "127.0.0.1:4002"
        );
        assert_eq!(
            route.upstream(Some(&other)).unwrap().1.as_str(),
            "127.0.0.1:4001"
        );
        assert_eq!(route.upstream(None).unwrap().0.port(), 4001);
    }

    #[test]
    fn live_owners_keep_their_names_dead_ones_lose_them() {
        let routes = Routes::default();
        let me = std::process::id() as i32;
        routes
            .register(Owner::Connection(1), instance("api", me, &[]))
            .unwrap();
        let err = routes
            .register(Owner::Connection(2), instance("api", me, &[]))
            .unwrap_err();
        assert!(matches!(err, RouteError::Taken { .. }));
        // Re-registering by the same owner keeps the counters.
        routes.get(&"api".parse().unwrap()).unwrap().count_request();
        routes
            .register(Owner::Connection(1), instance("api", me, &[]))
            .unwrap();
        assert_eq!(
            routes
                .get(&"api".parse().unwrap())
                .unwrap()
                .requests
                .load(Ordering::Relaxed),
            1
        );
        // A dead owner's name is free.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id() as i32;
        child.wait().unwrap();
        routes
            .register(Owner::Connection(3), instance("web", dead, &[]))
            .unwrap();
        routes
            .register(Owner::Connection(4), instance("web", me, &[]))
            .unwrap();
        routes.remove_owner(Owner::Connection(1));
        assert!(routes.get(&"api".parse().unwrap()).is_none());
        assert!(routes.get(&"web".parse().unwrap()).is_some());
    }

    #[test]
    fn aliases_are_not_taken_over() {
        let routes = Routes::default();
        let name: Name = "db".parse().unwrap();
        routes
            .register(
                Owner::Alias,
                alias_instance(name.clone(), "127.0.0.1:5432".parse().unwrap()),
            )
            .unwrap();
        let err = routes
            .register(Owner::Connection(1), instance("db", 1, &[]))
            .unwrap_err();
        assert_eq!(err, RouteError::Alias(name));
    }

    #[tokio::test]
    async fn changes_are_announced() {
        let routes = Routes::default();
        let mut rx = routes.subscribe();
        routes
            .register(Owner::Connection(1), instance("a", 1, &[]))
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
    }
}
