//! wharf: named local servers with pre-bound sockets, routed at `NAME.localhost`.

pub mod alloc;
pub mod cli;
pub mod commands;
pub mod control;
pub mod demand;
pub mod doctor;
pub mod install;
pub mod model;
pub mod proxy;
pub mod registration;
pub mod run;
pub mod service;
pub mod state;
pub mod sys;
pub mod up;
