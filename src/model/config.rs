//! The user's configuration file (`~/.config/wharf/config.toml`): read in two layers, a raw
//! serde shape that refuses unknown keys, then validated types. Errors name the file, and the
//! line (syntax, unknown keys) or the key (values).
//! It is read only if nobody else could have written it (see `trust`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::ports::{PortRangeError, PortRanges};
use crate::model::project::DurationError;
use crate::sys::trust::{Trust, TrustError};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    trust: RawTrust,
    #[serde(default)]
    hosts: RawHosts,
}

/// `[hosts] sync = true`: the proxy keeps wharf's block in the hosts file in step.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHosts {
    sync: Option<bool>,
}

/// Paths read even though another user could have written them (`wharf.toml`s).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    #[serde(default)]
    paths: Vec<String>,
}

/// Defaults for instances (`wharf run` and wharf.toml) that do not say otherwise.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    /// `"4000-4099"`, `"4000-4099,5000-5099"` or `["4000-4099", "5000-5099"]`.
    range: Option<toml::Value>,
    /// Ports and ranges never handed out: `[5432, "6000-6010"]`.
    #[serde(default)]
    exclude: Vec<toml::Value>,
    idle_timeout: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    #[serde(default)]
    listen: Vec<String>,
    upstream_timeout: Option<u64>,
    tunnel_linger: Option<u64>,
    express: Option<bool>,
    https: Option<bool>,
    redirect: Option<bool>,
}

/// The validated configuration.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Config {
    /// Where the proxy listens; empty means the default (port 80 if allowed, else 7080).
    pub(crate) proxy_listen: Vec<SocketAddr>,
    /// How long the proxy waits for an instance's response head before answering 504; unset,
    /// the proxy's default (`proxy::limits`).
    pub(crate) upstream_timeout: Option<Duration>,
    /// How long an upgraded connection (a WebSocket) stays open once one side has ended it;
    /// unset, the proxy's default.
    pub(crate) tunnel_linger: Option<Duration>,
    /// Whether plain HTTP/1.1 requests take the express lane (`proxy::lane`); off, hyper
    /// serves every HTTP/1.1 request.
    pub(crate) express: bool,
    /// Whether the proxy serves HTTPS and URLs say `https://` (`[proxy] https`).
    pub(crate) https: Https,
    /// Whether plain-HTTP requests for an instance are redirected to HTTPS (308).
    pub(crate) redirect: bool,
    /// Ports instances choose from when they name none, ranges in order.
    pub(crate) range: PortRanges,
    /// Ports never handed out, whatever range or `--port` says.
    pub(crate) exclude: PortRanges,
    /// How long an on-demand instance may stay without connections.
    pub(crate) idle_timeout: Duration,
    /// Project files allowed whoever could have written them: absolute paths (a directory
    /// allows everything below it) or `*`.
    pub(crate) trust: Vec<PathBuf>,
    /// Whether the proxy rewrites wharf's block in the hosts file as routes come and go
    /// (`wharf hosts sync`, kept in step).
    pub(crate) hosts_sync: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            proxy_listen: Vec::new(),
            upstream_timeout: None,
            tunnel_linger: None,
            express: true,
            https: Https::Auto,
            redirect: false,
            range: crate::model::ports::DEFAULT_RANGE.into(),
            exclude: PortRanges::default(),
            idle_timeout: crate::model::project::DEFAULT_IDLE,
            trust: Vec::new(),
            hosts_sync: false,
        }
    }
}

/// `[proxy] https`: TLS on the proxy's listeners (the first byte of a connection tells a
/// ClientHello from a request), and which scheme the URLs wharf prints use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Https {
    /// Unset: HTTPS is served; URLs say `https://` once `wharf trust` has put the CA in a
    /// trust store, since before that a browser would only show a warning.
    Auto,
    /// `true`: served, and URLs say `https://`.
    On,
    /// `false`: no TLS at all; a ClientHello is closed, and no CA is made.
    Off,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("{path}: {issue}")]
    Invalid { path: String, issue: ConfigIssue },
    #[error(transparent)]
    Untrusted(#[from] TrustError),
}

/// What is wrong in a configuration text: the key, and what to write instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ConfigIssue {
    /// Not TOML, or a key wharf does not know: toml's message names the line and the key.
    #[error("{0}")]
    Syntax(String),
    #[error("{key}: {value} is not 1 to {max} {unit}")]
    OutOfRange {
        key: &'static str,
        value: u64,
        max: u64,
        unit: &'static str,
    },
    #[error("defaults.range: {0}")]
    Range(PortRangeError),
    #[error("defaults.range: write \"4000-4099\" or [\"4000-4099\", \"5000-5099\"]")]
    RangeList,
    /// `defaults.range` neither a string nor a list (the value as TOML).
    #[error("defaults.range: {0} is not a range; write \"4000-4099\" or \"4000-4099,5000-5099\"")]
    RangeType(String),
    #[error("defaults.exclude: {0}")]
    Exclude(PortRangeError),
    #[error("defaults.idle_timeout: {0}")]
    IdleTimeout(DurationError),
    #[error("trust.paths: {0:?} is not an absolute path (or \"*\" for every path)")]
    TrustPath(String),
    #[error("proxy.listen: {0}")]
    Listen(AddressError),
}

/// A listen address wharf will not use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum AddressError {
    #[error("{0:?} is not an address; write 127.0.0.1:7080, [::1]:7080 or 7080")]
    Unparsed(String),
    #[error("{0} is not a loopback address; wharf listens on this machine only")]
    NotLoopback(SocketAddr),
}

/// Read `path` if `trust` allows it; a missing file is the default configuration.
pub(crate) fn load(path: &Path, trust: &Trust) -> Result<Config, ConfigError> {
    match trust.read(path) {
        Ok((_, text)) => parse(&text).map_err(|issue| ConfigError::Invalid {
            path: path.display().to_string(),
            issue,
        }),
        Err(e) if e.is_not_found() => Ok(Config::default()),
        Err(e) => Err(e.into()),
    }
}

/// Parse configuration text; the error says where and what.
pub(crate) fn parse(text: &str) -> Result<Config, ConfigIssue> {
    let raw: RawConfig = toml::from_str(text)
        .map_err(|e| ConfigIssue::Syntax(e.to_string().trim_end().to_string()))?;
    let upstream_timeout = seconds("proxy.upstream_timeout", raw.proxy.upstream_timeout, 86_400)?;
    let tunnel_linger = seconds("proxy.tunnel_linger", raw.proxy.tunnel_linger, 30)?;
    let range = match &raw.defaults.range {
        None => crate::model::ports::DEFAULT_RANGE.into(),
        Some(toml::Value::String(r)) => r.parse().map_err(ConfigIssue::Range)?,
        Some(toml::Value::Array(items)) => {
            let parts: Option<Vec<&str>> = items.iter().map(toml::Value::as_str).collect();
            let parts = parts
                .filter(|p| !p.is_empty())
                .ok_or(ConfigIssue::RangeList)?;
            parts.join(",").parse().map_err(ConfigIssue::Range)?
        }
        Some(other) => return Err(ConfigIssue::RangeType(other.to_string())),
    };
    let exclude = PortRanges::from_toml(&raw.defaults.exclude).map_err(ConfigIssue::Exclude)?;
    let idle_timeout = match &raw.defaults.idle_timeout {
        None => crate::model::project::DEFAULT_IDLE,
        Some(v) => crate::model::project::parse_duration(v).map_err(ConfigIssue::IdleTimeout)?,
    };
    let mut trust = Vec::new();
    for p in &raw.trust.paths {
        if p != "*" && !Path::new(p).is_absolute() {
            return Err(ConfigIssue::TrustPath(p.clone()));
        }
        trust.push(PathBuf::from(p));
    }
    Ok(Config {
        proxy_listen: parse_listen(&raw.proxy.listen).map_err(ConfigIssue::Listen)?,
        upstream_timeout,
        tunnel_linger,
        express: raw.proxy.express.unwrap_or(true),
        https: match raw.proxy.https {
            None => Https::Auto,
            Some(true) => Https::On,
            Some(false) => Https::Off,
        },
        redirect: raw.proxy.redirect.unwrap_or(false),
        range,
        exclude,
        idle_timeout,
        trust,
        hosts_sync: raw.hosts.sync.unwrap_or(false),
    })
}

/// A whole number of seconds from 1 to `max` for `key`, if set.
fn seconds(
    key: &'static str,
    value: Option<u64>,
    max: u64,
) -> Result<Option<Duration>, ConfigIssue> {
    match value {
        None => Ok(None),
        Some(secs) if (1..=max).contains(&secs) => Ok(Some(Duration::from_secs(secs))),
        Some(value) => Err(ConfigIssue::OutOfRange {
            key,
            value,
            max,
            unit: "seconds",
        }),
    }
}

/// Listen addresses as written by people: `127.0.0.1:7080`, `[::1]:7080`, `localhost:7080`
/// (both loopbacks) or a bare port (both loopbacks). Comma-separated lists are split.
pub(crate) fn parse_listen(items: &[String]) -> Result<Vec<SocketAddr>, AddressError> {
    let mut out = Vec::new();
    for item in items
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let port_only = item.strip_prefix("localhost:").unwrap_or(item);
        if let Ok(port) = port_only.parse::<u16>() {
            out.push(SocketAddr::from(([127, 0, 0, 1], port)));
            out.push(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)));
            continue;
        }
        let addr: SocketAddr = item
            .parse()
            .map_err(|_| AddressError::Unparsed(item.to_string()))?;
        if !addr.ip().is_loopback() {
            return Err(AddressError::NotLoopback(addr));
        }
        out.push(addr);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_in_every_spelling() {
        let c = parse("[proxy]\nlisten = [\"127.0.0.1:7080\", \"[::1]:7081\"]\n").unwrap();
        assert_eq!(c.proxy_listen.len(), 2);
        assert_eq!(parse_listen(&["8080".into()]).unwrap().len(), 2);
        assert_eq!(parse_listen(&["localhost:0".into()]).unwrap()[0].port(), 0);
        assert!(
            parse_listen(&["0.0.0.0:80".into()])
                .unwrap_err()
                .to_string()
                .contains("loopback")
        );
        assert_eq!(parse("").unwrap(), Config::default());
        assert!(parse("[hosts]\nsync = true\n").unwrap().hosts_sync);
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let err = parse("[proxy]\nlisten = []\nlisten_on = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("listen_on"), "{err}");
        let err = parse("[proxy]\nupstream_timeout = 0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "proxy.upstream_timeout: 0 is not 1 to 86400 seconds"
        );
        let c = parse("[proxy]\nupstream_timeout = 5\n").unwrap();
        assert_eq!(c.upstream_timeout, Some(Duration::from_secs(5)));
        let err = parse("[proxy]\ntunnel_linger = 31\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tunnel_linger"), "{err}");
        let c = parse("[proxy]\ntunnel_linger = 1\n").unwrap();
        assert_eq!(c.tunnel_linger, Some(Duration::from_secs(1)));
        let c = parse("[defaults]\nrange = \"5000-5099\"\nidle_timeout = \"2m\"\n").unwrap();
        assert_eq!(
            (c.range.to_string(), c.idle_timeout),
            ("5000-5099".to_string(), Duration::from_secs(120))
        );
        assert!(
            parse("[defaults]\nrange = \"x\"\n")
                .unwrap_err()
                .to_string()
                .contains("defaults.range")
        );
        let c = parse("[trust]\npaths = [\"/tmp/shared\", \"*\"]\n").unwrap();
        assert_eq!(c.trust, [PathBuf::from("/tmp/shared"), PathBuf::from("*")]);
        assert!(
            parse("[trust]\npaths = [\"shared\"]\n")
                .unwrap_err()
                .to_string()
                .contains("not an absolute path")
        );
    }

    #[test]
    fn the_express_lane_is_on_unless_switched_off() {
        assert!(parse("").unwrap().express);
        assert!(parse("[proxy]\nexpress = true\n").unwrap().express);
        assert!(!parse("[proxy]\nexpress = false\n").unwrap().express);
        for bad in ["\"no\"", "0", "[]"] {
            let err = parse(&format!("[proxy]\nlisten = []\nexpress = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("line 3") && err.contains("express") && err.contains("boolean"),
                "{bad}: {err}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[proxy]\nexpress = \"off\"\n").unwrap();
        let err = load(&path, &Trust::anything()).unwrap_err().to_string();
        assert!(
            err.starts_with(&path.display().to_string()) && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn messages_say_what_and_how_to_fix() {
        for (text, want) in [
            (
                "[proxy]\nlisten = [\"10.0.0.1:80\"]",
                "proxy.listen: 10.0.0.1:80 is not a loopback address; wharf listens on this machine only",
            ),
            (
                "[proxy]\nlisten = [\"x\"]",
                "proxy.listen: \"x\" is not an address; write 127.0.0.1:7080, [::1]:7080 or 7080",
            ),
            (
                "[defaults]\nrange = 4000",
                "defaults.range: 4000 is not a range; write \"4000-4099\" or \"4000-4099,5000-5099\"",
            ),
            (
                "[defaults]\nrange = []",
                "defaults.range: write \"4000-4099\" or [\"4000-4099\", \"5000-5099\"]",
            ),
            (
                "[defaults]\nrange = \"9-1\"",
                "defaults.range: \"9-1\": need 1 <= LO <= HI <= 65535",
            ),
            (
                "[defaults]\nexclude = [0]",
                "defaults.exclude: 0 is not a port (1-65535)",
            ),
            (
                "[defaults]\nexclude = [true]",
                "defaults.exclude: true is neither a port (5432) nor a range (\"6000-6010\")",
            ),
            (
                "[defaults]\nidle_timeout = \"soon\"",
                "defaults.idle_timeout: \"soon\" is not a duration; write seconds (90) or \"90s\", \"15m\", \"2h\"",
            ),
            (
                "[trust]\npaths = [\"x\"]",
                "trust.paths: \"x\" is not an absolute path (or \"*\" for every path)",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().to_string(), want, "{text}");
        }
    }

    #[test]
    fn several_ranges_and_an_exclusion_list() {
        let c = parse("[defaults]\nrange = \"4000-4099, 5000-5099\"\nexclude = [5432, \"6000-6010\", \"7\"]\n")
            .unwrap();
        assert_eq!(c.range.to_string(), "4000-4099,5000-5099");
        assert_eq!(c.exclude.to_string(), "5432-5432,6000-6010,7-7");
        assert!(c.exclude.contains(6005) && c.exclude.contains(7) && !c.exclude.contains(6011));
        let c = parse("[defaults]\nrange = [\"4000-4099\", \"5000-5099\"]\n").unwrap();
        assert_eq!(c.range.to_string(), "4000-4099,5000-5099");
        for bad in [
            "exclude = [0]",
            "exclude = [70000]",
            "exclude = [\"a-b\"]",
            "exclude = [true]",
            "range = 4000",
            "range = []",
            "range = \"4000-4099,\"",
        ] {
            let err = parse(&format!("[defaults]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("defaults."), "{bad}: {err}");
        }
    }
}
