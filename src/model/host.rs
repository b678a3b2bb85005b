//! Turning a request's Host into a routing target, once, at the edge: ASCII only, lowercase,
//! port and one trailing dot stripped, every label checked. Only `*.localhost` names route.
//! Which instance (and which of its sockets) a name means is the route table's to say: the
//! longest instance name the host ends with, the one label left in front a socket of it.

use std::borrow::Cow;
use std::fmt;

use crate::model::name::Name;

/// What a Host asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Bare `localhost`: the dashboard.
    Dashboard,
    /// `NAME.localhost`: every label before `.localhost`, as one (possibly dotted) name; an
    /// instance's, or `SUB.NAME` for its socket SUB (see `proxy::routes::Routes::resolve`).
    Instance { name: Name },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    #[error("the Host {0:?} is not a valid host name")]
    Invalid(String),
    /// A real host name or an IP address: wharf is not an open proxy.
    #[error("{0} is not a local name; wharf routes only NAME.localhost")]
    Foreign(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Dashboard => f.write_str("localhost"),
            Target::Instance { name } => write!(f, "{name}.localhost"),
        }
    }
}

/// Parse a Host header value (or an absolute URI's authority) into a target.
pub fn parse(raw: &str) -> Result<Target, HostError> {
    match usual(raw) {
        Some(name) => Ok(Target::Instance { name }),
        None => parse_any(raw),
    }
}

/// `NAME.localhost` or `NAME.localhost:PORT` with NAME a valid name in lowercase: how
/// browsers and tools send a Host, and what every request's Host is. Checked in one pass
/// over its bytes (this runs for every request); None sends anything else, invalid or not,
/// through `parse_any`, which gives these the same answer.
fn usual(raw: &str) -> Option<Name> {
    let host = match raw.as_bytes().iter().rposition(|&b| b == b':') {
        Some(colon) => {
            if !is_port(&raw[colon + 1..]) {
                return None;
            }
            &raw[..colon]
        }
        None => raw,
    };
    Name::checked(host.strip_suffix(".localhost")?)
}

fn parse_any(raw: &str) -> Result<Target, HostError> {
    let invalid = || HostError::Invalid(raw.chars().take(100).collect());
    if raw.is_empty() || !raw.is_ascii() || raw.contains(['/', '\\', '@', ' ', '\t']) {
        return Err(invalid());
    }
    if raw.starts_with('[') {
        return Err(HostError::Foreign(raw.to_string()));
    }
    let host = match raw.rsplit_once(':') {
        Some((host, port)) => {
            if !is_port(port) {
                return Err(invalid());
            }
            host
        }
        None => raw,
    };
    // Lowercased only when it has to be: this runs for every request.
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host == "localhost" {
        return Ok(Target::Dashboard);
    }
    let Some(rest) = host.strip_suffix(".localhost") else {
        if host.split('.').any(str::is_empty) {
            return Err(invalid());
        }
        return Err(HostError::Foreign(host.to_string()));
    };
    Ok(Target::Instance {
        name: rest.parse().map_err(|_| invalid())?,
    })
}

/// A port as a Host may give it: plain digits without a leading zero, 1 to 65535. Other
/// spellings of a number (`+80`, `00080`) would reach the instance verbatim.
fn is_port(port: &str) -> bool {
    port.len() <= 5
        && !port.starts_with('0')
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(name: &str) -> Target {
        Target::Instance {
            name: name.parse().unwrap(),
        }
    }

    #[test]
    fn normalises_case_port_and_one_trailing_dot() {
        for host in [
            "api.localhost",
            "API.LocalHost",
            "api.localhost.",
            "api.localhost:7080",
            "Api.localhost.:80",
        ] {
            assert_eq!(parse(host), Ok(inst("api")), "{host}");
        }
        assert_eq!(parse("admin.api.localhost:7080"), Ok(inst("admin.api")));
        assert_eq!(parse("A.Fix-UI.shop.localhost."), Ok(inst("a.fix-ui.shop")));
        assert_eq!(parse("localhost"), Ok(Target::Dashboard));
        assert_eq!(parse("LOCALHOST.:7080"), Ok(Target::Dashboard));
    }

    #[test]
    fn foreign_hosts_and_ip_literals_are_not_local() {
        for host in [
            "example.com",
            "127.0.0.1:7080",
            "[::1]:7080",
            "localhost.example.com",
            "evil.com:80",
        ] {
            assert!(matches!(parse(host), Err(HostError::Foreign(_))), "{host}");
        }
    }

    #[test]
    fn malformed_hosts_are_invalid() {
        let long = format!("{}.localhost", "a".repeat(64));
        let too_deep = format!("{}.localhost", ["a"; 123].join("."));
        for host in [
            "",
            "a/b.localhost",
            "..localhost",
            "a..localhost",
            "api.localhost..",
            "xn--é.localhost",
            "api.localhost:http",
            "api.localhost:99999",
            "api.localhost:+80",
            "api.localhost:00080",
            "api.localhost:0",
            "api.localhost:",
            "api.localhost:-1",
            "-a.localhost",
            "a_b.localhost",
            &long,
            "user@api.localhost",
            "a b.localhost",
            &too_deep,
        ] {
            assert!(
                matches!(parse(host), Err(HostError::Invalid(_))),
                "{host:?} gave {:?}",
                parse(host)
            );
        }
        assert_eq!(parse("a.b.c.localhost"), Ok(inst("a.b.c")));
        assert_eq!(
            parse(&format!("{}.localhost", "a".repeat(63))),
            Ok(inst(&"a".repeat(63)))
        );
    }

    proptest::proptest! {
        /// The one-pass path for the usual Host gives what the full parse gives.
        #[test]
        fn the_usual_host_parses_as_any_host_does(
            raw in "[a-zA-Z0-9.:_@/ -]{0,12}(\\.localhost|\\.LOCALHOST|localhost)?\\.?(:[0-9]{0,6})?"
        ) {
            proptest::prop_assert_eq!(parse(&raw), parse_any(&raw));
        }
    }
}
