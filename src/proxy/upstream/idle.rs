//! Idle connections to instances, by address, shared by all client connections: the express
//! lane's raw streams (`upstream`) and hyper's senders (`http1`) wait here between requests.
//! The most recently used one is handed out first; `sweep` (every second) closes the rest once
//! they are not worth keeping.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A connection that can wait in a `Pool`.
pub(crate) trait Idle {
    /// Whether it can carry a request now. Asked once per look: finding out may read from the
    /// connection.
    fn fit(&self) -> Fit;
}

pub(crate) enum Fit {
    Ready,
    /// Still finishing its last exchange: passed over for now, kept for later.
    Busy,
    /// Closed by its server, idle too long, or otherwise not to be reused: closed.
    Done,
}

pub(crate) struct Pool<T> {
    idle: Mutex<HashMap<SocketAddr, Vec<T>>>,
    /// Idle connections kept per address; more at once are closed.
    max_per_addr: usize,
}

impl<T: Idle> Pool<T> {
    pub(crate) fn new(max_per_addr: usize) -> Pool<T> {
        Pool {
            idle: Mutex::default(),
            max_per_addr,
        }
    }

    fn idle(&self) -> MutexGuard<'_, HashMap<SocketAddr, Vec<T>>> {
        // A panic elsewhere leaves the map whole: every change to it is one call.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used connection to `addr` that is ready, if any. Those found done on
    /// the way are closed.
    pub(crate) fn take(&self, addr: SocketAddr) -> Option<T> {
        let mut idle = self.idle();
        let list = idle.get_mut(&addr)?;
        for i in (0..list.len()).rev() {
            match list[i].fit() {
                Fit::Ready => return Some(list.remove(i)),
                Fit::Busy => {}
                Fit::Done => drop(list.remove(i)),
            }
        }
        None
    }

    pub(crate) fn put(&self, addr: SocketAddr, conn: T) {
        let mut idle = self.idle();
        let list = idle.entry(addr).or_default();
        if list.len() >= self.max_per_addr {
            list.retain(|conn| !matches!(conn.fit(), Fit::Done));
        }
        if list.len() < self.max_per_addr {
            list.push(conn);
        }
    }

    /// Close the connections that are done.
    pub(crate) fn sweep(&self) {
        let mut idle = self.idle();
        for list in idle.values_mut() {
            list.retain(|conn| !matches!(conn.fit(), Fit::Done));
        }
        idle.retain(|_, list| !list.is_empty());
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.idle().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 0: closed, 1: busy but open, 2: ready.
    struct Conn(u8);

    impl Idle for Conn {
        fn fit(&self) -> Fit {
            match self.0 {
                0 => Fit::Done,
                1 => Fit::Busy,
                _ => Fit::Ready,
            }
        }
    }

    #[test]
    fn take_hands_out_the_newest_ready_one_closes_the_dead_and_passes_over_the_busy() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let pool = Pool::new(8);
        for state in [2, 0, 1, 0] {
            pool.put(addr, Conn(state));
        }
        let taken = pool.take(addr).unwrap();
        assert_eq!(taken.0, 2);
        assert_eq!(
            pool.len(),
            1,
            "the closed ones are gone, the busy one stays"
        );
        assert!(pool.take(addr).is_none());
        assert!(pool.take("127.0.0.1:2".parse().unwrap()).is_none());
    }

    #[test]
    fn a_full_list_makes_room_by_closing_the_dead_and_then_closes_what_is_put() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let pool = Pool::new(2);
        pool.put(addr, Conn(0));
        pool.put(addr, Conn(2));
        pool.put(addr, Conn(2));
        assert_eq!(pool.len(), 2);
        pool.put(addr, Conn(2));
        assert_eq!(pool.len(), 2);
        pool.sweep();
        assert_eq!(pool.len(), 2);
    }
}
