//! Which member of a name takes a request: `choose`, the one function both the express lane
//! and hyper's path call, and the passive health behind it (`Health`: requests in flight, and
//! a member whose connections are refused is ejected for a while).
//!
//! **Least outstanding requests, ties broken round-robin.** Dev servers differ wildly in what
//! a request costs (a page that compiles on first hit, an endpoint that sleeps): round-robin
//! alone keeps sending every third request to a member stuck on a slow one, while the count
//! of requests in flight, which the proxy knows for free, steers around it at once. When the
//! counts tie (the usual case on an idle dev machine, all zero), a turn that advances with
//! every choice spreads requests evenly, so three members each see a third of a sequential
//! client's requests.
//!
//! **In rotation**: not failed, not unhealthy (the supervisor's health check), able to take a
//! connection now (env mode: listening; fd mode: the held socket queues it), and not ejected.
//! Members known ready (`READY=1`, or they answered) are preferred to ones still starting or
//! restarting behind a held socket, whose connections would wait. A connection refused or
//! reset before anything was sent ejects a member for `BACKOFF` (the request goes to another,
//! which is safe for any method: nothing was sent); after it, one request is let through as a
//! trial (half-open), and a success, or its supervisor registering it ready, re-admits it. When
//! every usable member is ejected they are tried anyway, so a single server that stopped
//! listening reads as it always did (a 502 that says so), never as a hang.
//!
//! **Sticky** names (`sticky = true`) keep a client on one member with a cookie,
//! `wharf-member-NAME=K`: a request whose cookie names a member in rotation goes there; any
//! other is balanced, and its answer sets the cookie.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::model::instance::State;
use crate::model::name::Name;
use crate::proxy::errors::ProxyError;
use crate::proxy::routes::{Members, Route};

/// How long a member whose connections are refused stays out of rotation before a trial.
pub(crate) const BACKOFF: Duration = Duration::from_secs(1);

/// One member's traffic and passive health, kept across its re-registrations.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Requests sent to it whose response has not ended.
    outstanding: AtomicUsize,
    /// Out of rotation until then (ms on `clock`); 0: in rotation.
    ejected_until: AtomicU64,
    /// Why it was last ejected, for the 503 page.
    last_error: Mutex<Option<String>>,
}

impl Health {
    /// Back in rotation: it answered, or its supervisor says it is ready.
    pub(crate) fn admit(&self) {
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Relaxed);
            *self.last_error() = None;
        }
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    fn last_error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Out of rotation now. The clock is read only for a member ejected once.
    fn ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && clock() < until
    }

    /// Ejected once, its backoff over: this request is the one that may try it. Taking the
    /// trial pushes the backoff on, so the requests after it keep away until it has gone well.
    fn take_trial(&self) {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return;
        }
        let now = clock();
        if now >= until {
            let later = now + millis(BACKOFF);
            let _ = self.ejected_until.compare_exchange(
                until,
                later,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

/// Milliseconds since the proxy's first look at the clock (never 0).
fn clock() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    millis(START.get_or_init(Instant::now).elapsed()) + 1
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The request `member` was sending did not reach it (`e`: the connection was refused or
/// reset before anything was sent, or a new one closed unanswered) and goes elsewhere: the
/// member is out of rotation (`eject`), and the request is no longer counted as its.
pub(crate) fn refused(member: Busy, e: &ProxyError, now: &Members) {
    eject(&member.route, e, now);
    member.route.requests.fetch_sub(1, Ordering::Relaxed);
}

/// Take `route` out of rotation for `BACKOFF`: a request could not reach it (`e`, noted for
/// the 503 page). Not if it has moved since (`now`, the name's members as they are: a reload
/// registers a member's new socket before its old one closes).
pub(crate) fn eject(route: &Route, e: &ProxyError, now: &Members) {
    let moved = now
        .by_owner(route.owner)
        .is_none_or(|r| r.instance.sockets != route.instance.sockets);
    if moved {
        return;
    }
    let why = match e {
        ProxyError::Unreachable { addr, source, .. } => {
            format!("not answering at {addr}: {source}")
        }
        other => other.to_string(),
    };
    mark_ejected(route, why);
}

/// At most this many connections are tried for one request beyond one per member (a member
/// that re-registers meanwhile, at a new socket, is tried again).
const EXTRA_TRIES: usize = 2;

fn mark_ejected(route: &Route, why: String) {
    let health = &route.health;
    health
        .ejected_until
        .store(clock() + millis(BACKOFF), Ordering::Relaxed);
    *health.last_error() = Some(why);
}

/// A request on its way to a member: counted in its requests, and in its outstanding ones
/// until dropped (when the response has ended, or failed).
#[derive(Debug)]
pub(crate) struct Busy {
    route: Arc<Route>,
}

impl Busy {
    fn new(route: Arc<Route>) -> Busy {
        route.requests.fetch_add(1, Ordering::Relaxed);
        route.health.outstanding.fetch_add(1, Ordering::Relaxed);
        Busy { route }
    }

    pub(crate) fn route(&self) -> &Arc<Route> {
        &self.route
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.route
            .health
            .outstanding
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a request goes (`choose`).
#[derive(Debug)]
pub(crate) enum Choice {
    Member(Busy),
    /// None can take it now, but one is starting and not listening yet (env mode): wait for
    /// the table to change (bounded by `Limits::starting_wait`).
    Wait,
    /// None can take it: each failed, is unhealthy, or was tried already.
    Nobody,
}

/// The member of `members` that takes the next request: the one `cookie` names if it is in
/// rotation, else the least busy in rotation (see the module's doc), never one of `tried`
/// (registrations this request failed to reach; the same member registered again since, at a
/// new socket, may be tried).
pub(crate) fn choose(members: &Members, cookie: Option<u32>, tried: &[Arc<Route>]) -> Choice {
    if tried.len() >= members.all.len() + EXTRA_TRIES {
        return Choice::Nobody;
    }
    let was_tried = |r: &Arc<Route>| tried.iter().any(|t| Arc::ptr_eq(t, r));
    let usable = |r: &&Arc<Route>| {
        !was_tried(r) && !r.failed() && r.instance.state != State::Unhealthy && !r.not_listening()
    };
    // The usual case: one server, in rotation.
    if let [only] = members.all.as_slice() {
        return if !usable(&only) {
            match only.coming() && !was_tried(only) {
                true => Choice::Wait,
                false => Choice::Nobody,
            }
        } else {
            only.health.take_trial();
            Choice::Member(Busy::new(only.clone()))
        };
    }
    if let Some(route) = cookie
        .and_then(|k| members.by_number(k))
        .filter(|r| usable(r) && !r.health.ejected())
    {
        return Choice::Member(Busy::new(route.clone()));
    }
    let ready =
        |r: &Arc<Route>| r.instance.state == State::Ready || r.answered.load(Ordering::Relaxed);
    let start = members.turn.fetch_add(1, Ordering::Relaxed);
    let n = members.all.len();
    let rotated = || (0..n).map(move |i| &members.all[(start + i) % n]);
    let least = |admitted: &dyn Fn(&Arc<Route>) -> bool| {
        rotated()
            .filter(usable)
            .filter(|r| admitted(r))
            .min_by_key(|r| r.health.outstanding())
    };
    let in_rotation = |r: &Arc<Route>| !r.health.ejected();
    let pick = least(&|r| in_rotation(r) && ready(r))
        .or_else(|| least(&in_rotation))
        // All ejected: try them anyway rather than turn the request away untried.
        .or_else(|| least(&|_| true));
    match pick {
        Some(route) => {
            route.health.take_trial();
            Choice::Member(Busy::new(route.clone()))
        }
        None if members.all.iter().any(|r| !was_tried(r) && r.coming()) => Choice::Wait,
        None => Choice::Nobody,
    }
}

/// One member as the 503 page tells it: its number (its name, when it is the name's only
/// registration), state, and last error.
pub(crate) fn describe(route: &Route, replicated: bool) -> String {
    let i = &route.instance;
    let mut line = match replicated {
        true => format!("member {} (wharf pid {}): {}", route.number, i.pid, i.state),
        false => format!("{} (wharf pid {}): {}", i.name, i.pid, i.state),
    };
    let ejected = route.health.ejected();
    let error = route.health.last_error().clone();
    match (error, &i.last_exit) {
        (Some(error), _) => {
            line += &format!(", {}", error);
            if ejected {
                line += " (out of rotation for a moment)";
            }
        }
        (None, Some(exit)) => line += &format!(", last exit: {exit}"),
        (None, None) if i.state == State::Unhealthy => line += ", failing its health check",
        (None, None) => {}
    }
    line
}

/// Why a request to `members` failed once none was left to try after `last`: for a
/// replicated name, what each member is up to (a 503 naming them); for a single server, `last`.
pub(crate) fn exhausted(members: &Members, last: ProxyError) -> ProxyError {
    match members.replicated() {
        true => nobody(members),
        false => last,
    }
}

/// A 503 naming each member of `members`, its state and last error.
pub(crate) fn nobody(members: &Members) -> ProxyError {
    ProxyError::NoMember {
        name: members.name().clone(),
        members: members
            .all
            .iter()
            .map(|r| describe(r, members.replicated()))
            .collect(),
    }
}

/// The cookie that keeps a client of `name` on one member.
pub(crate) fn cookie_name(name: &Name) -> String {
    format!("wharf-member-{name}")
}

/// The member a request's `Cookie` header values name for `name`, if one does (the last
/// valid one wins).
pub(crate) fn cookie_member<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    name: &Name,
) -> Option<u32> {
    let wanted = cookie_name(name);
    let mut found = None;
    for value in values {
        for pair in value.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if &pair[..eq] == wanted.as_bytes()
                && let Some(k) = std::str::from_utf8(&pair[eq + 1..])
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|k| *k > 0)
            {
                found = Some(k);
            }
        }
    }
    found
}

/// The `Set-Cookie` value that keeps a client of `name` on member `number`.
pub(crate) fn set_cookie(name: &Name, number: u32) -> String {
    format!(
        "{}={number}; Path=/; HttpOnly; SameSite=Lax",
        cookie_name(name)
    )
}

/// What a sticky name's answer must set, if anything: the cookie naming the member that
/// answered, when the request's did not.
pub(crate) fn cookie_to_set(members: &Members, asked: Option<u32>, went: u32) -> Option<String> {
    (members.sticky() && asked != Some(went)).then(|| set_cookie(members.name(), went))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::instance::Instance;
    use crate::proxy::routes::{Owner, Routes};

    /// A name with members 1..=n, in `states`, owned by this (live) process.
    fn members(states: &[State]) -> (Routes, Arc<Members>) {
        let routes = Routes::default();
        let me = std::process::id() as i32;
        for (i, state) in states.iter().enumerate() {
            let sockets = [(
                "http".to_string(),
                format!("127.0.0.1:{}", 4001 + i).parse().unwrap(),
            )]
            .into();
            let mut instance = Instance::bare("api".parse().unwrap(), me, *state, sockets);
            instance.member = Some(i as u32 + 1);
            routes
                .register(Owner::Connection(i as u64), instance)
                .unwrap();
        }
        let m = routes.get(&"api".parse().unwrap()).unwrap();
        (routes, m)
    }

    fn chosen(c: Choice) -> u32 {
        match c {
            Choice::Member(b) => b.route().number,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ties_go_round_robin_and_the_least_busy_wins() {
        let (_r, m) = members(&[State::Ready; 3]);
        let picks: Vec<u32> = (0..6).map(|_| chosen(choose(&m, None, &[]))).collect();
        let mut sorted = picks.clone();
        sorted.sort();
        assert_eq!(sorted, [1, 1, 2, 2, 3, 3], "{picks:?}");
        // Two held by members 1 and 2: 3 takes the next ones until it is as busy.
        let a = choose(&m, None, &[]);
        let b = choose(&m, None, &[]);
        let busy: Vec<u32> = [&a, &b]
            .iter()
            .map(|c| match c {
                Choice::Member(b) => b.route().number,
                _ => 0,
            })
            .collect();
        let free = 6 - busy.iter().sum::<u32>();
        assert_eq!(chosen(choose(&m, None, &[])), free);
    }

    #[test]
    fn out_of_rotation_members_are_passed_over() {
        let (_r, m) = members(&[State::Unhealthy, State::Failed, State::Ready]);
        for _ in 0..5 {
            assert_eq!(chosen(choose(&m, None, &[])), 3);
        }
        assert!(matches!(
            choose(&m, None, &[m.all[2].clone()]),
            Choice::Nobody
        ));
        // Starting behind a held socket (fd mode) serves only when none is ready.
        let (_r, m) = members(&[State::Starting, State::Ready]);
        for _ in 0..4 {
            assert_eq!(chosen(choose(&m, None, &[])), 2);
        }
        assert_eq!(chosen(choose(&m, None, &[m.all[1].clone()])), 1);
    }

    #[test]
    fn an_ejected_member_waits_its_backoff_then_gets_one_trial() {
        let (_r, m) = members(&[State::Ready, State::Ready]);
        mark_ejected(&m.all[0], "connection refused".into());
        for _ in 0..4 {
            assert_eq!(chosen(choose(&m, None, &[])), 2);
        }
        assert!(
            describe(&m.all[0], true).contains("connection refused"),
            "{}",
            describe(&m.all[0], true)
        );
        // Every member ejected: tried anyway.
        mark_ejected(&m.all[1], "connection refused".into());
        assert!(matches!(choose(&m, None, &[]), Choice::Member(_)));
        // The backoff over: one trial, and the others keep away meanwhile.
        m.all[0].health.ejected_until.store(1, Ordering::Relaxed);
        m.all[1]
            .health
            .ejected_until
            .store(u64::MAX, Ordering::Relaxed);
        assert_eq!(chosen(choose(&m, None, &[])), 1);
        assert!(m.all[0].health.ejected(), "the trial holds it out");
        m.all[0].health.admit();
        assert!(!m.all[0].health.ejected());
        assert!(!describe(&m.all[0], true).contains("refused"));
    }

    #[test]
    fn a_cookie_keeps_a_client_on_its_member_while_it_is_in_rotation() {
        let (_r, m) = members(&[State::Ready, State::Ready, State::Ready]);
        let name: Name = "api".parse().unwrap();
        let header = b"a=1; wharf-member-api=2; b=3".as_slice();
        let k = cookie_member([header].into_iter(), &name);
        assert_eq!(k, Some(2));
        for _ in 0..5 {
            assert_eq!(chosen(choose(&m, k, &[])), 2);
        }
        mark_ejected(&m.all[1], "connection refused".into());
        assert_ne!(chosen(choose(&m, k, &[])), 2);
        for bad in [
            &b"wharf-member-api=x"[..],
            b"wharf-member-api=0",
            b"wharf-member-apix=1",
            b"",
        ] {
            assert_eq!(cookie_member([bad].into_iter(), &name), None, "{bad:?}");
        }
        assert_eq!(
            set_cookie(&name, 3),
            "wharf-member-api=3; Path=/; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn a_member_registered_again_at_a_new_socket_is_tried_again_and_not_ejected() {
        let (routes, m) = members(&[State::Ready]);
        let old = m.all[0].clone();
        let mut instance = old.instance.clone();
        instance.sockets = [("http".to_string(), "127.0.0.1:5001".parse().unwrap())].into();
        routes.register(Owner::Connection(0), instance).unwrap();
        let now = routes.get(&"api".parse().unwrap()).unwrap();
        assert_eq!(chosen(choose(&now, None, std::slice::from_ref(&old))), 1);
        let e = ProxyError::Unknown("api".parse().unwrap());
        eject(&old, &e, &now);
        assert!(
            !now.all[0].health.ejected(),
            "its old socket failed, not it"
        );
        eject(&now.all[0], &e, &now);
        assert!(now.all[0].health.ejected());
        // However often it moves, one request tries a bounded number of times.
        let tried = vec![old; 3];
        assert!(matches!(choose(&now, None, &tried), Choice::Nobody));
    }

    #[test]
    fn a_single_server_is_always_tried_or_waited_for() {
        let (_r, m) = members(&[State::Ready]);
        mark_ejected(&m.all[0], "connection refused".into());
        assert_eq!(chosen(choose(&m, None, &[])), 1);
        assert!(matches!(
            choose(&m, None, &[m.all[0].clone()]),
            Choice::Nobody
        ));
    }
}
