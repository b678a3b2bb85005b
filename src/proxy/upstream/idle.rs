//! Idle connections to instances, by address, shared by all client connections: the express
//! lane's raw streams (`upstream`) and hyper's senders (`http1`) wait here between requests.
//! The most recently used one is handed out first; `sweep` (every second) closes the rest once
//! they are not worth keeping.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
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

/// The pool's map: the keys are instances' addresses, which wharf's own registry chose, so
/// SipHash's defence against chosen keys buys nothing; it cost a new connection's request
/// (one take, one put) about 2 % of its instructions.
type ByAddr<T> = HashMap<SocketAddr, Vec<T>, BuildHasherDefault<AddrHasher>>;

/// FxHash's mixing step (rustc's hasher), over the words an address hashes as.
#[derive(Default)]
pub(crate) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(n.into());
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(n.into());
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(n.into());
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub(crate) struct Pool<T> {
    idle: Mutex<ByAddr<T>>,
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

    fn idle(&self) -> MutexGuard<'_, ByAddr<T>> {
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

    #[test]
    fn addresses_that_differ_in_port_or_ip_hash_apart() {
        use std::hash::BuildHasher;
        let hash = |a: &str| {
            let addr: SocketAddr = a.parse().unwrap();
            BuildHasherDefault::<AddrHasher>::default().hash_one(addr)
        };
        let addrs = [
            "127.0.0.1:3000",
            "127.0.0.1:3001",
            "127.0.0.2:3000",
            "[::1]:3000",
        ];
        for (i, a) in addrs.iter().enumerate() {
            assert_eq!(hash(a), hash(a));
            for b in &addrs[i + 1..] {
                assert_ne!(hash(a), hash(b), "{a} {b}");
            }
        }
    }

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
