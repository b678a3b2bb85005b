//! The control plane between `wharf` commands and the front proxy: JSON lines over a Unix
//! socket in the private runtime directory (same user only). `protocol` is the wire format,
//! `client` the commands' end, `server` the proxy's end, `launch` finds or starts a proxy.

pub mod client;
pub mod launch;
pub mod protocol;
pub mod server;
