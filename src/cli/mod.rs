//! The commands a user types: their clap definitions (`args`), the small client commands
//! (`commands`: ls, stop, alias, env), a project's instances (`up`: up, down, logs), the
//! service commands (`service`: install, uninstall, doctor), wharf's block in the hosts
//! file (`hosts`: sync, clean), HTTPS's (`https`: ca, trust, untrust) and the MCP server for
//! agents (`mcp`). `wharf run` and `wharf proxy` are the supervisor's and the proxy's own entry
//! points; `run` fills in the name and command `wharf run` is not given.

pub(crate) mod args;
pub(crate) mod commands;
pub mod entry;
pub(crate) mod hosts;
pub(crate) mod https;
pub(crate) mod mcp;
pub(crate) mod reload;
pub(crate) mod run;
pub(crate) mod service;
pub(crate) mod up;
