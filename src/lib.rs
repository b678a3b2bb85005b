//! wharf: named local servers with pre-bound sockets, routed at `NAME.localhost`.

pub mod alloc;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod deadline;
pub mod dirs;
pub mod doctor;
pub mod forward;
pub mod handoff;
pub mod host;
pub mod install;
pub mod launch;
pub mod listeners;
pub mod listening;
pub mod mode;
pub mod name;
pub mod notify;
pub mod pages;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod routes;
pub mod run;
pub mod server;
pub mod service;
