//! Why a request was not forwarded, or failed upstream: `ProxyError`, each kind with its
//! status and a hint for the page that tells it. Both HTTP/1.1 paths and HTTP/2 answer with it.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

use crate::model::host::HostError;
use crate::model::name::Name;
use crate::proxy::body::BoxError;
use crate::proxy::budget::OutOfFds;

/// Why a request was not forwarded, or failed upstream. Each maps to one status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("CONNECT is refused: wharf is not an open proxy")]
    Connect,
    #[error("the request target is longer than {0} bytes")]
    UriTooLong(usize),
    #[error("a header line is longer than {0} bytes")]
    HeaderTooLarge(usize),
    #[error("the request has no Host")]
    NoHost,
    #[error("the request has more than one Host")]
    DuplicateHost,
    #[error("the absolute URI's host does not match the Host header")]
    HostMismatch,
    #[error(
        "the absolute URI's scheme is not the connection's (http:// over plain HTTP, https:// over TLS)"
    )]
    BadScheme,
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("no instance is named {0}")]
    Unknown(Name),
    #[error("{sub}.{name}.localhost: '{name}' has no socket named {sub}")]
    NoSocket { name: Name, sub: String },
    #[error("this request already went through wharf: a route points back at the proxy")]
    Loop,
    #[error("{0} did not start listening within {secs}s", secs = .1.as_secs())]
    NotListening(Name, Duration),
    #[error("{0} failed and gave up restarting")]
    Failed(Name),
    /// A name none of whose members (or whose only server) can take the request: each
    /// described (`balance::describe`).
    #[error("{name} cannot take requests now")]
    NoMember { name: Name, members: Vec<String> },
    #[error("{name} ({addr}) is not answering: {source}")]
    Unreachable {
        name: Name,
        addr: SocketAddr,
        /// It failed on a pooled connection, which the server may have closed just then.
        reused: bool,
        /// Some of an answer had arrived: the server has the request (`rules::may_send_again`).
        answered: bool,
        #[source]
        source: BoxError,
    },
    #[error("{name} ({addr}) sent an invalid response: {why}")]
    BadResponse {
        name: Name,
        addr: SocketAddr,
        why: &'static str,
    },
    #[error("{name} ({addr}) sent no response head within {secs}s", secs = after.as_secs())]
    UpstreamTimeout {
        name: Name,
        addr: SocketAddr,
        after: Duration,
    },
    #[error("the request body stalled for {secs}s", secs = .0.as_secs())]
    BodyStalled(Duration),
    #[error(transparent)]
    OutOfFds(#[from] OutOfFds),
    #[error("the request body is malformed or was cut short")]
    ClientBody(#[source] BoxError),
}

/// What an instance that closed the connection before a response head is said to have done
/// (`ProxyError::Unreachable`), in the words both HTTP/1.1 paths give.
pub(crate) const CLOSED_UNANSWERED: &str = "closed the connection without answering";

/// Why an instance's response head is refused (`ProxyError::BadResponse`), in the words both
/// HTTP/1.1 paths give: only kinds hyper's client can tell apart too.
pub(crate) mod invalid {
    pub(crate) const MALFORMED: &str = "malformed response head";
    pub(crate) const STATUS: &str = "invalid status code";
    pub(crate) const TOO_LARGE: &str = "response head too large";
    /// Not a number, or two that differ: hyper's client does not tell which.
    pub(crate) const CONTENT_LENGTH: &str = "invalid Content-Length";
}

impl From<&ProxyError> for StatusCode {
    fn from(e: &ProxyError) -> StatusCode {
        match e {
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::HeaderTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::NoHost
            | ProxyError::ClientBody(_)
            | ProxyError::DuplicateHost
            | ProxyError::HostMismatch
            | ProxyError::BadScheme => StatusCode::BAD_REQUEST,
            ProxyError::Host(HostError::Invalid(_)) => StatusCode::BAD_REQUEST,
            ProxyError::Host(HostError::Foreign(_)) => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::Unknown(_) | ProxyError::NoSocket { .. } => StatusCode::NOT_FOUND,
            ProxyError::Loop => StatusCode::LOOP_DETECTED,
            ProxyError::NotListening(..)
            | ProxyError::Failed(_)
            | ProxyError::NoMember { .. }
            | ProxyError::OutOfFds(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Unreachable { .. } | ProxyError::BadResponse { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyStalled(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

impl ProxyError {
    /// The instance could not be reached, or no descriptor was left to reach it with.
    pub(crate) fn unreachable(
        name: &Name,
        addr: SocketAddr,
        reused: bool,
        answered: bool,
        source: BoxError,
    ) -> ProxyError {
        if let Some(out) = cause::<OutOfFds>(&*source) {
            return ProxyError::OutOfFds(*out);
        }
        ProxyError::Unreachable {
            name: name.clone(),
            addr,
            reused,
            answered,
            source,
        }
    }

    pub(crate) fn hint(&self) -> &'static str {
        match self {
            ProxyError::Host(HostError::Foreign(_)) | ProxyError::Connect => {
                "Ask for http://NAME.localhost instead; `wharf ls` lists the names."
            }
            ProxyError::Unreachable { .. } => {
                "The server is not accepting connections: is it still running? The dashboard \
                 shows its state and last exit."
            }
            ProxyError::BadResponse { .. } => {
                "The server's answer is not valid HTTP/1.1; see its output (the dashboard says where)."
            }
            ProxyError::Loop => "Check `wharf alias` entries: one points at the proxy itself.",
            ProxyError::OutOfFds(_) => {
                "Too many connections are open at once; try again, or raise the open-file limit \
                 (`ulimit -n`, LimitNOFILE=)."
            }
            ProxyError::NotListening(..) => {
                "The server is slow to start; see its output (the dashboard says where)."
            }
            ProxyError::UpstreamTimeout { .. } => {
                "The server is slow to answer; see its output (the dashboard says where). If it \
                 needs longer, raise upstream_timeout under [proxy] in ~/.config/wharf/config.toml."
            }
            _ => "Check the request; curl, browsers and http_proxy=http://127.0.0.1:PORT all work.",
        }
    }
}

pub(crate) fn caused_by<E: std::error::Error + 'static>(
    err: &(dyn std::error::Error + 'static),
) -> bool {
    cause::<E>(err).is_some()
}

/// The first error of type `E` in `err`'s chain, looking inside `io::Error`s too (their
/// `source` skips the error they wrap).
pub(crate) fn cause<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_status() {
        let name: Name = "api".parse().unwrap();
        let cases: Vec<(ProxyError, u16)> = vec![
            (ProxyError::Connect, 405),
            (ProxyError::UriTooLong(8192), 414),
            (ProxyError::HeaderTooLarge(16384), 431),
            (ProxyError::DuplicateHost, 400),
            (ProxyError::HostMismatch, 400),
            (
                ProxyError::Host(HostError::Foreign("example.com".into())),
                421,
            ),
            (ProxyError::Host(HostError::Invalid("a/b".into())), 400),
            (ProxyError::Unknown("x".parse().unwrap()), 404),
            (
                ProxyError::NoSocket {
                    name: name.clone(),
                    sub: "x".into(),
                },
                404,
            ),
            (ProxyError::Loop, 508),
            (
                ProxyError::NotListening(name.clone(), Duration::from_secs(60)),
                503,
            ),
            (
                ProxyError::UpstreamTimeout {
                    name,
                    addr: "127.0.0.1:1".parse().unwrap(),
                    after: Duration::from_secs(120),
                },
                504,
            ),
            (ProxyError::BodyStalled(Duration::from_secs(60)), 408),
            (
                ProxyError::ClientBody("invalid chunk size line".into()),
                400,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(StatusCode::from(&e).as_u16(), status, "{e}");
        }
    }
}
