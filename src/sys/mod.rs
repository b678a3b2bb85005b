//! The operating system, as wharf uses it: processes and their trees, handing sockets to a
//! child (`LISTEN_FDS`), sd_notify, reading who listens where, printing without panicking, and
//! refusing files another user could have written. Knows nothing of names, routes or HTTP.

pub(crate) mod handoff;
pub(crate) mod netstat;
pub(crate) mod notify;
pub(crate) mod process;
pub(crate) mod socket;
pub(crate) mod stdio;
pub(crate) mod trust;
