//! The commands a user types: their clap definitions (`args`), the small client commands
//! (`commands`: ls, stop, alias, env), a project's instances (`up`: up, down, logs) and the
//! service commands (`service`: install, uninstall, doctor), and HTTPS's (`https`: ca).
//! `wharf run` and `wharf proxy`
//! are the supervisor's and the proxy's own entry points.

pub(crate) mod args;
pub(crate) mod commands;
pub mod entry;
pub(crate) mod https;
pub(crate) mod service;
pub(crate) mod up;
