//! The control plane between `wharf` commands and the front proxy: JSON lines over a Unix
//! socket in the private runtime directory (same user only). `protocol` is the wire format,
//! `client` the commands' end, `launch` finds or starts a proxy. The proxy's end is
//! `proxy::control`: it serves the route table this plane changes.

pub(crate) mod client;
pub(crate) mod launch;
pub(crate) mod protocol;
