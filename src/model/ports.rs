//! Ports as wharf talks about them: ranges to choose from (`4000-4999,5000-5099`), the name of
//! an instance's main socket, and how each socket got its port (asked, sticky, or scanned, with
//! the ports skipped and why), which `wharf run` and `wharf up` report.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::name::Name;

/// The socket every instance has; `--socket SUB` adds more, named SUB.
pub(crate) const MAIN_SOCKET: &str = "http";
/// Where instances live when nobody says otherwise: high enough to need no privileges, below
/// the kernel's ephemeral range, so outgoing connections rarely sit on it.
pub(crate) const DEFAULT_RANGE: PortRange = PortRange { lo: 4000, hi: 4999 };

/// An inclusive range of ports, `LO-HI`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PortRange {
    pub(crate) lo: u16,
    pub(crate) hi: u16,
}

impl PortRange {
    pub(crate) fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.hi - self.lo) + 1
    }

    /// Every port of the range once, starting at `start` (if inside) and wrapping around.
    pub(crate) fn scan_from(&self, start: Option<u16>) -> impl Iterator<Item = u16> + use<> {
        let (lo, hi) = (self.lo as u32, self.hi as u32);
        let len = hi - lo + 1;
        let first = start.filter(|p| self.contains(*p)).map_or(lo, u32::from);
        (0..len).map(move |i| (lo + (first - lo + i) % len) as u16)
    }
}

/// A port, range or list of them that does not say which ports it means.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum PortRangeError {
    #[error("{0:?} is not a port range; write LO-HI, like 4000-4999")]
    NotARange(String),
    #[error("{0:?}: need 1 <= LO <= HI <= 65535")]
    Bounds(String),
    #[error("{0} is not a port (1-65535)")]
    NotAPort(i64),
    /// An exclusion list item that is neither number nor string (shown as TOML).
    #[error("{0} is neither a port (5432) nor a range (\"6000-6010\")")]
    Neither(String),
}

impl FromStr for PortRange {
    type Err = PortRangeError;
    fn from_str(s: &str) -> Result<Self, PortRangeError> {
        let usage = || PortRangeError::NotARange(s.to_string());
        let (lo, hi) = s.split_once('-').ok_or_else(usage)?;
        let lo: u16 = lo.trim().parse().map_err(|_| usage())?;
        let hi: u16 = hi.trim().parse().map_err(|_| usage())?;
        if lo == 0 || lo > hi {
            return Err(PortRangeError::Bounds(s.to_string()));
        }
        Ok(PortRange { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

/// Ports to choose from: one or more ranges, each tried in full before the next
/// (`4000-4099,5000-5099`). Also the shape of the exclusion list, where one port is `N-N`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PortRanges(Vec<PortRange>);

impl PortRanges {
    pub(crate) fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }

    /// How many ports the ranges name (overlaps counted twice).
    pub(crate) fn len(&self) -> usize {
        self.0.iter().map(PortRange::len).sum()
    }

    /// Every port of every range in order; the range holding `start` begins there and wraps.
    pub(crate) fn scan_from(&self, start: Option<u16>) -> impl Iterator<Item = u16> + use<> {
        let ranges = self.0.clone();
        ranges.into_iter().flat_map(move |r| r.scan_from(start))
    }

    /// Ports of an exclusion list as people write them in TOML: `5432` or `"6000-6010"`.
    pub(crate) fn from_toml(items: &[toml::Value]) -> Result<PortRanges, PortRangeError> {
        let mut out = Vec::new();
        for item in items {
            let range = match item {
                toml::Value::Integer(n) => {
                    let port = u16::try_from(*n)
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or(PortRangeError::NotAPort(*n))?;
                    PortRange { lo: port, hi: port }
                }
                toml::Value::String(s) => match s.trim().parse::<u16>() {
                    Ok(port) if port != 0 => PortRange { lo: port, hi: port },
                    _ => s.parse()?,
                },
                other => return Err(PortRangeError::Neither(other.to_string())),
            };
            out.push(range);
        }
        Ok(PortRanges(out))
    }
}

impl From<PortRange> for PortRanges {
    fn from(r: PortRange) -> Self {
        PortRanges(vec![r])
    }
}

impl FromStr for PortRanges {
    type Err = PortRangeError;
    /// `LO-HI` or a comma-separated list of them.
    fn from_str(s: &str) -> Result<Self, PortRangeError> {
        let ranges = s
            .split(',')
            .map(|part| part.trim().parse::<PortRange>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PortRanges(ranges))
    }
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(PortRange::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Why a port was tried first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Preference {
    /// `--port` (or `port` in wharf.toml).
    Asked,
    /// The port the name had last time.
    Sticky,
}

/// Why a port tried was not taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Taken {
    /// Held by another wharf instance.
    Instance(Name),
    /// Bound by a process wharf did not start: its command and pid, when the platform tells.
    Process(Option<String>),
    /// Below the unprivileged port start.
    Privileged,
    /// In `[defaults] exclude`.
    Excluded,
    /// Any other bind error.
    Unbindable(String),
}

impl fmt::Display for Taken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Taken::Instance(name) => write!(f, "is held by instance '{name}'"),
            Taken::Process(Some(who)) => write!(f, "is in use by {who}"),
            Taken::Process(None) => write!(f, "is in use by another process"),
            Taken::Privileged => write!(f, "needs privileges (ports below 1024)"),
            Taken::Excluded => write!(f, "is excluded by `[defaults] exclude` in config.toml"),
            Taken::Unbindable(e) => write!(f, "cannot be bound: {e}"),
        }
    }
}

/// How one socket got its port: what `wharf run` summarises and `wharf up` tabulates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Allocation {
    pub(crate) socket: String,
    pub(crate) port: u16,
    /// The port tried first and why; `None` when the range (or the OS) chose.
    pub(crate) preferred: Option<(u16, Preference)>,
    /// How many ports were tried, the one got included (0 when the OS chose).
    pub(crate) tried: usize,
    /// The ports tried that were not free, in order.
    pub(crate) skipped: Vec<(u16, Taken)>,
}

impl Allocation {
    /// Why instance `name`'s preferred port was not used (`port 4000 (--port) is in use by
    /// node (pid 9)`); `None` if it was, or if there was none.
    pub(crate) fn fallback_reason(&self, name: &Name) -> Option<String> {
        let (want, why, taken) = self.refused()?;
        Some(format!("port {want} ({}) {taken}", why.describe(name)))
    }

    /// The preferred port, why it was preferred and why it was not got; `None` if it was got,
    /// or if there was none.
    pub(crate) fn refused(&self) -> Option<(u16, Preference, &Taken)> {
        let (want, why) = self.preferred.filter(|(p, _)| *p != self.port)?;
        let (_, taken) = self.skipped.iter().find(|(p, _)| *p == want)?;
        Some((want, why, taken))
    }

    /// One line saying what was skipped, and why, before the port got; `None` when the first
    /// port tried was free.
    pub(crate) fn summary(&self, name: &Name) -> Option<String> {
        // Ports the name's other members hold are no news to whoever started them.
        let mut rest: Vec<&(u16, Taken)> = self
            .skipped
            .iter()
            .filter(|(_, taken)| !matches!(taken, Taken::Instance(holder) if holder == name))
            .collect();
        if rest.is_empty() {
            return None;
        }
        let mut parts = Vec::new();
        if let Some(reason) = self.fallback_reason(name) {
            parts.push(reason);
            rest.retain(|(p, _)| Some(*p) != self.preferred.map(|(want, _)| want));
        }
        if !rest.is_empty() {
            parts.push(format!("{} taken ({})", rest.len(), list_taken(&rest)));
        }
        let socket = match self.socket.as_str() {
            MAIN_SOCKET => String::new(),
            sub => format!(" for '{sub}'"),
        };
        parts.push(format!(
            "got {}{socket} after {} tries",
            self.port, self.tried
        ));
        Some(parts.join("; "))
    }

    /// One line per port skipped, for `--verbose`.
    pub(crate) fn details(&self, name: &Name) -> Vec<String> {
        self.skipped
            .iter()
            .map(|(port, taken)| {
                let why = match self.preferred {
                    Some((want, why)) if want == *port => format!(" ({})", why.describe(name)),
                    _ => String::new(),
                };
                format!("port {port}{why} {taken}")
            })
            .collect()
    }
}

impl Preference {
    fn describe(&self, name: &Name) -> String {
        match self {
            Preference::Asked => "--port".to_string(),
            Preference::Sticky => format!("{name}'s last port"),
        }
    }
}

/// At most this many holders are named in a summary; the rest are counted.
const NAMED_IN_SUMMARY: usize = 4;

/// The taken ports grouped by why, in the order first met: `4001-4003 by node (pid 9), 4005
/// by 'api', and 3 more`.
pub(crate) fn list_taken(taken: &[&(u16, Taken)]) -> String {
    let mut groups: Vec<(&Taken, Vec<u16>)> = Vec::new();
    for (port, why) in taken {
        match groups.iter_mut().find(|(w, _)| *w == why) {
            Some((_, ports)) => ports.push(*port),
            None => groups.push((why, vec![*port])),
        }
    }
    let mut named: Vec<String> = groups
        .iter()
        .take(NAMED_IN_SUMMARY)
        .map(|(why, ports)| {
            let ports = spans(ports);
            match why {
                Taken::Instance(n) => format!("{ports} by '{n}'"),
                Taken::Process(Some(who)) => format!("{ports} by {who}"),
                Taken::Process(None) => format!("{ports} by other processes"),
                Taken::Privileged => format!("{ports} privileged"),
                Taken::Excluded => format!("{ports} excluded"),
                Taken::Unbindable(e) => format!("{ports} unbindable ({e})"),
            }
        })
        .collect();
    let rest: usize = groups
        .iter()
        .skip(NAMED_IN_SUMMARY)
        .map(|(_, p)| p.len())
        .sum();
    if rest > 0 {
        named.push(format!("and {rest} more"));
    }
    named.join(", ")
}

/// Ports as runs: `[1, 2, 3, 7]` → `1-3, 7`.
fn spans(ports: &[u16]) -> String {
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for p in sorted {
        match runs.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(p) => *hi = p,
            _ => runs.push((p, p)),
        }
    }
    let parts: Vec<String> = runs
        .iter()
        .map(|(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    parts.join(", ")
}
