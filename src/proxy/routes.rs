//! The route table: instance name → its members, and where each one's sockets are. A name
//! is one registration's (a single server), or several members' (replicas: `--replicas`,
//! `--join`), which `balance` chooses among per request. The table lives in a `watch` channel:
//! readers clone the current table's `Arc` (or one name's) under the channel's read lock, so a
//! lookup waits only while a writer copies and edits the table (a registration, rarely);
//! writers edit a copy, swap it in and wake every subscriber, in one step.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::SystemTime;

use http::uri::Authority;
use tokio::sync::watch;

use crate::model::instance::{Instance, State};
use crate::model::mode::Mode;
use crate::model::name::Name;
use crate::proxy::balance::Health;

/// Who registered a route: a control connection, or the alias file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    Connection(u64),
    Alias,
}

/// One routable server: a name's only registration, or one member of it.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) instance: Instance,
    pub(crate) owner: Owner,
    /// Its number among the name's members (a registration without one is member 1).
    pub(crate) number: u32,
    /// When the name was first registered (kept across re-registrations).
    pub(crate) since: SystemTime,
    /// Requests forwarded to it (shared across re-registrations).
    pub(crate) requests: Arc<AtomicU64>,
    /// Requests in flight and passive health (shared across re-registrations).
    pub(crate) health: Arc<Health>,
    /// Whether it has answered a request since this registration.
    pub(crate) answered: std::sync::atomic::AtomicBool,
    /// Each socket's address as an URI authority, built once.
    authorities: HashMap<String, (SocketAddr, Authority)>,
}

impl Route {
    fn new(
        instance: Instance,
        owner: Owner,
        number: u32,
        since: SystemTime,
        requests: Arc<AtomicU64>,
        health: Arc<Health>,
    ) -> Route {
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
            number,
            since,
            requests,
            health,
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

    /// An env-mode server its supervisor starts again: a connection it refuses means it went
    /// down (its supervisor has yet to say so), and its next registration is worth waiting
    /// for. In fd mode the held socket queues connections, so none is refused.
    pub(crate) fn comes_back(&self) -> bool {
        self.instance.mode == Mode::Env && self.instance.restarts && !self.failed()
    }

    /// An env-mode server that was serving: a connection it refuses may mean it is opening its
    /// socket again while it lives on (Django's runserver closes it for a second or two after
    /// each code change), and the same address is worth waiting for. Not a replica's member:
    /// with every member down, a name answers 503 at once.
    pub(crate) fn may_reopen(&self) -> bool {
        self.instance.mode == Mode::Env
            && self.instance.state == State::Ready
            && self.instance.member.is_none()
    }

    /// Not listening yet, but on its way (not failed, not failing its health check): worth
    /// waiting for.
    pub(crate) fn coming(&self) -> bool {
        self.not_listening() && !matches!(self.instance.state, State::Failed | State::Unhealthy)
    }
}

/// A name's registrations: one, or the members of a replicated name, by number.
#[derive(Debug)]
pub(crate) struct Members {
    /// At least one, ordered by `Route::number`.
    pub(crate) all: Vec<Arc<Route>>,
    /// Where the balancer's round-robin tie-break starts next (kept across table versions).
    pub(crate) turn: Arc<AtomicUsize>,
}

impl Members {
    pub(crate) fn name(&self) -> &Name {
        &self.all[0].instance.name
    }

    /// The first member's: the name's registration for everything that knows only one.
    pub(crate) fn first(&self) -> &Arc<Route> {
        &self.all[0]
    }

    pub(crate) fn alias(&self) -> bool {
        self.all[0].owner == Owner::Alias
    }

    /// Several members, or one that registered as a member: requests are balanced, and an
    /// answer about the name names its members.
    pub(crate) fn replicated(&self) -> bool {
        self.all.len() > 1 || self.all[0].instance.member.is_some()
    }

    /// Clients are kept on one member (a cookie): when any member asks.
    pub(crate) fn sticky(&self) -> bool {
        self.all.iter().any(|r| r.instance.sticky)
    }

    pub(crate) fn by_owner(&self, owner: Owner) -> Option<&Arc<Route>> {
        self.all.iter().find(|r| r.owner == owner)
    }

    pub(crate) fn by_number(&self, number: u32) -> Option<&Arc<Route>> {
        self.all.iter().find(|r| r.number == number)
    }

    fn has_socket(&self, sub: &str) -> bool {
        self.all.iter().any(|r| r.authorities.contains_key(sub))
    }
}

pub(crate) type Table = HashMap<Name, Arc<Members>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RouteError {
    #[error(
        "the name '{name}' is already served by wharf pid {pid}; stop it first (`wharf stop {name}`), \
         or add a member to it with `wharf run --name {name} --join -- CMD`"
    )]
    Taken { name: Name, pid: i32 },
    #[error(
        "member {member} of '{name}' is already served by wharf pid {pid}; pick another number, \
         or let wharf pick one (`--join`)"
    )]
    MemberTaken { name: Name, member: u32, pid: i32 },
    #[error("the name '{0}' is an alias; remove it first (`wharf alias --rm {0}`)")]
    Alias(Name),
    /// `SUB.NAME` while NAME has a socket SUB (or the other way round): one host, two meanings.
    #[error(
        "{sub}.{name}.localhost is already the host of '{name}''s socket {sub}; pick another name"
    )]
    SocketHost { name: Name, sub: String },
}

/// What a host's name finds in the table.
pub(crate) enum Resolved {
    /// The name's members, and which socket (`None`: the main one).
    Found(Arc<Members>, Option<Name>),
    /// No instance's name is the host's or ends it.
    Unknown,
    /// The longest instance name the host ends with is `members`', but what is left in
    /// front, `sub`, is none of their sockets.
    NoSocket { members: Arc<Members>, sub: String },
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

    pub(crate) fn get(&self, name: &Name) -> Option<Arc<Members>> {
        self.table.borrow().get(name).cloned()
    }

    /// The instance a host's name means: the longest registered name that is the host's name or
    /// a suffix of it on a dot, the one label left in front its socket (`admin.api` → api's
    /// socket admin; `fix-ui.shop` → the instance `fix-ui.shop` if registered, else shop's
    /// socket `fix-ui`, else nothing). One hash lookup for a registered name.
    pub(crate) fn resolve(&self, asked: &Name) -> Resolved {
        let table = self.table.borrow();
        resolve_in(&table, asked)
    }

    /// A receiver that changes whenever the table does (for requests waiting on a start).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Table>> {
        self.table.subscribe()
    }

    /// Add or replace `instance` for `owner`; returns its member number when it registered
    /// as a member (`Some(0)` asks for the smallest free one). The rules:
    /// - a registration without a member number is refused while another live owner holds
    ///   the name;
    /// - one with a number joins the name (a registration without one there counts as member
    ///   1), unless another live owner holds that number;
    /// - the same owner registering again updates its member (state, sockets: a reload moves
    ///   a member to a new socket), keeping its number and counters;
    /// - what an owner whose process is dead registered is taken over.
    pub(crate) fn register(
        &self,
        owner: Owner,
        mut instance: Instance,
    ) -> Result<Option<u32>, RouteError> {
        let asked = instance.member.is_some();
        self.update(|table| {
            shadowing(table, &instance)?;
            let name = instance.name.clone();
            let old = table.get(&name);
            let mut mine = None;
            let mut others = Vec::new();
            if let Some(old) = old {
                if old.alias() && owner != Owner::Alias {
                    return Err(RouteError::Alias(name));
                }
                for route in &old.all {
                    if route.owner == owner {
                        mine = Some(route.clone());
                    } else if owner != Owner::Alias
                        && crate::sys::process::ProcessId::of(route.instance.pid).is_some()
                    {
                        others.push(route.clone());
                    }
                }
            }
            let taken = |n: u32| others.iter().find(|r| r.number == n);
            let number = match (instance.member, &mine) {
                (None | Some(0), Some(mine)) => mine.number,
                (None, None) => match others.first() {
                    Some(other) => {
                        return Err(RouteError::Taken {
                            name,
                            pid: other.instance.pid,
                        });
                    }
                    None => 1,
                },
                (Some(0), None) => (1..).find(|n| taken(*n).is_none()).unwrap_or(1),
                (Some(k), _) => match taken(k) {
                    Some(other) => {
                        return Err(RouteError::MemberTaken {
                            name,
                            member: k,
                            pid: other.instance.pid,
                        });
                    }
                    None => k,
                },
            };
            if instance.member.is_some() {
                instance.member = Some(number);
            }
            let (since, requests, health) = match &mine {
                Some(old) => (old.since, old.requests.clone(), old.health.clone()),
                // New here (or a proxy restart): the instance says how long it has been up
                // and what earlier proxies counted.
                None => (
                    instance.started_at.map_or_else(SystemTime::now, |t| {
                        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t)
                    }),
                    Arc::new(AtomicU64::new(instance.requests_before.unwrap_or(0))),
                    Arc::default(),
                ),
            };
            // Its supervisor says it is ready: whatever the proxy saw fail before is past.
            if instance.state == State::Ready {
                health.admit();
            }
            let route = Route::new(instance, owner, number, since, requests, health);
            let mut all = others;
            all.push(Arc::new(route));
            all.sort_by_key(|r| r.number);
            let turn = old.map(|m| m.turn.clone()).unwrap_or_default();
            table.insert(name, Arc::new(Members { all, turn }));
            Ok(asked.then_some(number))
        })
    }

    /// Remove `name` (all its members, whoever owns them); returns what was there.
    pub(crate) fn remove(&self, name: &Name) -> Option<Arc<Members>> {
        let mut removed = None;
        let _ = self.update(|table| {
            removed = table.remove(name);
            Ok::<_, RouteError>(())
        });
        removed
    }

    /// Remove every member `owner` registered (its connection closed); a name stays while
    /// other members remain.
    pub(crate) fn remove_owner(&self, owner: Owner) {
        let _ = self.update(|table| {
            table.retain(|_, members| {
                if members.all.iter().all(|r| r.owner != owner) {
                    return true;
                }
                let all: Vec<Arc<Route>> = members
                    .all
                    .iter()
                    .filter(|r| r.owner != owner)
                    .cloned()
                    .collect();
                if all.is_empty() {
                    return false;
                }
                *members = Arc::new(Members {
                    all,
                    turn: members.turn.clone(),
                });
                true
            });
            Ok::<_, RouteError>(())
        });
    }

    /// Edit a copy of the table and swap it in, waking subscribers; an `Err` changes nothing.
    fn update<T, E>(&self, edit: impl FnOnce(&mut Table) -> Result<T, E>) -> Result<T, E> {
        let mut result = None;
        self.table.send_if_modified(|table| {
            let mut next = Table::clone(table);
            let edited = edit(&mut next);
            let changed = edited.is_ok();
            if changed {
                *table = Arc::new(next);
            }
            result = Some(edited);
            changed
        });
        result.expect("the edit ran")
    }
}

fn resolve_in(table: &Table, asked: &Name) -> Resolved {
    for (front, name) in Name::suffixes(asked.as_str()) {
        let Some(members) = table.get(name) else {
            continue;
        };
        let Some(front) = front else {
            return Resolved::Found(members.clone(), None);
        };
        return match Name::label(front) {
            Ok(sub) if members.has_socket(sub.as_str()) => {
                Resolved::Found(members.clone(), Some(sub))
            }
            _ => Resolved::NoSocket {
                members: members.clone(),
                sub: front.to_string(),
            },
        };
    }
    Resolved::Unknown
}

/// Refuse an instance whose name is the host of another's socket, or with a socket whose host
/// is another instance's name: each host means one thing.
fn shadowing(table: &Table, instance: &Instance) -> Result<(), RouteError> {
    let name = instance.name.as_str();
    if let Some((sub, rest)) = name.split_once('.')
        && let Some(other) = table.get(rest)
        && other.has_socket(sub)
        && sub != crate::model::ports::MAIN_SOCKET
    {
        return Err(RouteError::SocketHost {
            name: other.name().clone(),
            sub: sub.to_string(),
        });
    }
    for sub in instance.sockets.keys() {
        if sub != crate::model::ports::MAIN_SOCKET && table.contains_key(&*format!("{sub}.{name}"))
        {
            return Err(RouteError::SocketHost {
                name: instance.name.clone(),
                sub: sub.clone(),
            });
        }
    }
    Ok(())
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
    use std::sync::atomic::Ordering;

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
        let route = routes.get(&"api".parse().unwrap()).unwrap().first().clone();
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
        let api = routes.get(&"api".parse().unwrap()).unwrap();
        api.first().requests.fetch_add(1, Ordering::Relaxed);
        routes
            .register(Owner::Connection(1), instance("api", me, &[]))
            .unwrap();
        assert_eq!(
            routes
                .get(&"api".parse().unwrap())
                .unwrap()
                .first()
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

    /// The longest registered name the host ends with wins; the one label left must be one of
    /// its sockets.
    #[test]
    fn dotted_names_and_sockets_share_hosts_unambiguously() {
        let routes = Routes::default();
        let me = std::process::id() as i32;
        let shop = instance(
            "shop",
            me,
            &[("http", "127.0.0.1:4001"), ("admin", "127.0.0.1:4002")],
        );
        routes.register(Owner::Connection(1), shop).unwrap();
        let wt = instance("fix-ui.shop", me, &[("http", "127.0.0.1:4003")]);
        routes.register(Owner::Connection(2), wt).unwrap();
        let found = |host: &str| match routes.resolve(&host.parse().unwrap()) {
            Resolved::Found(r, sub) => format!(
                "{} {}",
                r.name(),
                r.first().upstream(sub.as_ref()).unwrap().0.port()
            ),
            Resolved::Unknown => "unknown".into(),
            Resolved::NoSocket { members, sub } => format!("{} has no {sub}", members.name()),
        };
        assert_eq!(found("shop"), "shop 4001");
        assert_eq!(found("admin.shop"), "shop 4002");
        assert_eq!(found("http.shop"), "shop 4001");
        assert_eq!(found("fix-ui.shop"), "fix-ui.shop 4003");
        assert_eq!(found("other.shop"), "shop has no other");
        assert_eq!(found("a.admin.shop"), "shop has no a.admin");
        assert_eq!(found("admin.fix-ui.shop"), "fix-ui.shop has no admin");
        assert_eq!(found("nope"), "unknown");
        assert_eq!(found("shop.nope"), "unknown");
        // One host, one meaning: `admin.shop` is shop's socket, so no instance may take it,
        // and no instance may add a socket whose host is another instance.
        let err = routes
            .register(Owner::Connection(3), instance("admin.shop", me, &[]))
            .unwrap_err();
        assert!(matches!(err, RouteError::SocketHost { .. }), "{err}");
        let err = routes
            .register(
                Owner::Connection(4),
                instance("shop", me, &[("fix-ui", "127.0.0.1:4004")]),
            )
            .unwrap_err();
        assert!(err.to_string().contains("fix-ui.shop.localhost"), "{err}");
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
