//! Finding where an env-mode child really listens: a dev server may move to another port than
//! the `PORT` it was given. Linux reads `/proc`; elsewhere only the expected port is probed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Loopback addresses on which `root`'s process tree accepts TCP connections, lowest port
/// first; wildcard binds are reported as their loopback address. `expected` is the port the
/// child was told to use (the only one probed where `/proc` is missing).
pub fn listening(root: i32, expected: u16) -> Vec<SocketAddr> {
    let mut found = imp::listening(root, expected);
    found.sort_by_key(|a| (a.port(), a.is_ipv6()));
    found.dedup();
    found
}

/// Open TCP connections whose local port is one of `ports` (any process), or `None` where
/// the platform cannot tell. Tells an idle on-demand instance from a busy one.
pub fn established(ports: &[u16]) -> Option<usize> {
    imp::established(ports)
}

/// A process that listens on a TCP port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: i32,
    /// Its command name (`/proc/PID/comm`).
    pub command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.command, self.pid)
    }
}

/// Who listens on each of `ports` (any address, any process whose descriptors we may read),
/// in one pass over `/proc`. Ports with no listener, or one we cannot see (another user's
/// process when we are not root, or a platform without `/proc`), are absent.
pub fn holders(ports: &[u16]) -> std::collections::BTreeMap<u16, Holder> {
    imp::holders(ports)
}

/// True if something listens on TCP `port` on any address, as far as the platform tells
/// (`None` where it cannot).
pub fn is_listened_on(port: u16) -> Option<bool> {
    imp::is_listened_on(port)
}

/// The address to connect to for a socket bound at `addr`, if it is reachable over loopback.
fn reachable(addr: SocketAddr) -> Option<SocketAddr> {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip if ip.is_loopback() => ip,
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) if v4.is_loopback() => IpAddr::V4(v4),
            _ => return None,
        },
        IpAddr::V4(_) => return None,
    };
    Some(SocketAddr::new(ip, addr.port()))
}

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use std::collections::HashSet;

    const LISTEN: &str = "0A";
    const ESTABLISHED: &str = "01";

    pub fn established(ports: &[u16]) -> Option<usize> {
        let mut n = 0;
        for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(table) = std::fs::read_to_string(path) else {
                continue;
            };
            n += table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.get(3) == Some(&ESTABLISHED)
                        && fields
                            .get(1)
                            .and_then(|f| parse_addr(f))
                            .is_some_and(|a| ports.contains(&a.port()))
                })
                .count();
        }
        Some(n)
    }

    pub fn listening(root: i32, _expected: u16) -> Vec<SocketAddr> {
        let inodes = socket_inodes(root);
        if inodes.is_empty() {
            return Vec::new();
        }
        listeners()
            .into_iter()
            .filter(|(_, inode)| inodes.contains(inode))
            .filter_map(|(addr, _)| reachable(addr))
            .collect()
    }

    fn socket_inodes(root: i32) -> HashSet<u64> {
        crate::process::tree(root)
            .into_iter()
            .flat_map(process_sockets)
            .collect()
    }

    /// The inodes of the sockets process `pid` has open (none if we may not look).
    fn process_sockets(pid: i32) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let target = std::fs::read_link(entry.path()).ok()?;
                let target = target.to_string_lossy();
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// Every listening TCP socket of the machine: (local address, inode).
    fn listeners() -> Vec<(SocketAddr, u64)> {
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .flat_map(|table| parse_table(&table))
            .collect()
    }

    pub fn is_listened_on(port: u16) -> Option<bool> {
        Some(listeners().iter().any(|(addr, _)| addr.port() == port))
    }

    pub fn holders(ports: &[u16]) -> std::collections::BTreeMap<u16, Holder> {
        let mut wanted: std::collections::HashMap<u64, u16> = listeners()
            .into_iter()
            .filter(|(addr, _)| ports.contains(&addr.port()))
            .map(|(addr, inode)| (inode, addr.port()))
            .collect();
        let mut found = std::collections::BTreeMap::new();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return found;
        };
        for entry in procs.flatten() {
            if wanted.is_empty() {
                break;
            }
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            for inode in process_sockets(pid) {
                if let Some(port) = wanted.remove(&inode) {
                    let command = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .map(|c| c.trim_end().to_string())
                        .unwrap_or_else(|_| "?".to_string());
                    found.entry(port).or_insert(Holder { pid, command });
                }
            }
        }
        found
    }

    /// Listening sockets of a `/proc/net/tcp{,6}` table: (local address, inode).
    pub fn parse_table(table: &str) -> Vec<(SocketAddr, u64)> {
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                // Tens of thousands of lines on a busy machine, a handful of listeners: look
                // at the state before splitting the rest.
                let mut fields = line.split_whitespace();
                let local = fields.nth(1)?;
                if fields.nth(1)? != LISTEN {
                    return None;
                }
                let inode = fields.nth(5)?.parse().ok()?;
                Some((parse_addr(local)?, inode))
            })
            .collect()
    }

    /// `0100007F:0FA1` (IPv4) or 32 hex digits + port (IPv6), each 32-bit word in host order.
    fn parse_addr(field: &str) -> Option<SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let mut bytes = Vec::with_capacity(16);
        for chunk in ip.as_bytes().chunks(8) {
            let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
            bytes.extend_from_slice(&word.to_ne_bytes());
        }
        let ip = match bytes.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
            16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn finds_our_own_listener_and_not_a_closed_one() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let me = std::process::id() as i32;
            assert!(super::super::listening(me, 0).contains(&addr));
            drop(listener);
            assert!(!super::super::listening(me, 0).contains(&addr));
        }

        #[test]
        fn the_holder_of_a_port_is_named() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let found = super::super::holders(&[port]);
            assert_eq!(found[&port].pid, std::process::id() as i32);
            assert_eq!(super::super::is_listened_on(port), Some(true));
            drop(listener);
            assert!(super::super::holders(&[port]).is_empty());
            assert_eq!(super::super::is_listened_on(port), Some(false));
        }

        #[test]
        fn established_connections_are_counted_by_local_port() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            assert_eq!(super::super::established(&[port]), Some(0));
            let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (_server, _) = listener.accept().unwrap();
            assert_eq!(super::super::established(&[port]), Some(1));
        }

        #[test]
        fn wildcard_and_v6_loopback_map_to_loopback() {
            let v4 = "  0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 42 1";
            let table = format!("header\n{v4}\n");
            let parsed = parse_table(&table);
            assert_eq!(parsed, vec![("0.0.0.0:8080".parse().unwrap(), 42)]);
            assert_eq!(
                reachable(parsed[0].0),
                Some("127.0.0.1:8080".parse().unwrap())
            );
            assert_eq!(
                reachable("[::]:80".parse().unwrap()),
                Some("[::1]:80".parse().unwrap())
            );
            assert_eq!(reachable("192.0.2.1:80".parse().unwrap()), None);
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;
    use std::time::Duration;

    pub fn established(_ports: &[u16]) -> Option<usize> {
        None
    }

    pub fn holders(_ports: &[u16]) -> std::collections::BTreeMap<u16, Holder> {
        std::collections::BTreeMap::new()
    }

    pub fn is_listened_on(_port: u16) -> Option<bool> {
        None
    }

    pub fn listening(_root: i32, expected: u16) -> Vec<SocketAddr> {
        [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]
        .into_iter()
        .map(|ip| SocketAddr::new(ip, expected))
        .filter(|a| std::net::TcpStream::connect_timeout(a, Duration::from_millis(100)).is_ok())
        .filter_map(reachable)
        .collect()
    }
}
