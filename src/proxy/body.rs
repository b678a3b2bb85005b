//! The body type on both sides of the proxy, and its error: what hyper's path, the HTTP/2
//! server, the deadlines and wharf's own pages hand each other.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type on both sides of the proxy.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
