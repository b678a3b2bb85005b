//! The operating system, as wharf uses it: processes and their trees, handing sockets to a
//! child (`LISTEN_FDS`), sd_notify, reading who listens where, printing without panicking, and
//! refusing files another user could have written. Knows nothing of names, routes or HTTP.

pub mod handoff;
pub mod netstat;
pub mod notify;
pub mod process;
pub mod socket;
pub mod stdio;
pub mod trust;
