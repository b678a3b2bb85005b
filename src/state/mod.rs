//! What wharf keeps between commands: its private directories and the rules for files in them,
//! the port registry (sticky ports and live leases), instances' logs, the instances `wharf mcp`
//! sessions lease, the context a command starts from (directories, this binary, the working
//! directory, PATH, home), and wharf's block in the hosts file (`wharf hosts sync`).

pub(crate) mod context;
pub(crate) mod dirs;
pub(crate) mod hosts;
pub(crate) mod leases;
pub(crate) mod logs;
pub(crate) mod registry;
