//! What wharf keeps between commands: its private directories and the rules for files in them,
//! the port registry (sticky ports and live leases), instances' logs, and the context a command
//! starts from (directories, this binary, the working directory, PATH, home).

pub mod context;
pub mod dirs;
pub mod logs;
pub mod registry;
