//! wharf: named local servers with pre-bound sockets, routed at `NAME.localhost`.

pub mod alloc;
pub mod cli;
pub mod control;
pub mod dirs;
pub mod handoff;
pub mod listening;
pub mod mode;
pub mod name;
pub mod notify;
pub mod process;
pub mod registry;
pub mod run;
