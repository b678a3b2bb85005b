//! The operating system, as wharf uses it: processes and their trees, handing sockets to a
//! child (`LISTEN_FDS`), sd_notify, reading who listens where, printing without panicking,
//! refusing files another user could have written, rewriting a system file wharf was asked
//! to change (`sysfile`), and what `git` says of a checkout. Knows nothing of names, routes or
//! HTTP.

pub(crate) mod child;
pub(crate) mod git;
pub(crate) mod handoff;
pub(crate) mod netstat;
pub(crate) mod notify;
pub(crate) mod process;
pub(crate) mod socket;
pub(crate) mod stdio;
pub(crate) mod sysfile;
pub(crate) mod ticker;
pub(crate) mod trust;
