//! wharf: named local servers with pre-bound sockets, routed at `NAME.localhost`.

pub mod alloc;
pub mod budget;
pub mod cli;
pub mod commands;
pub mod control;
pub mod deadline;
pub mod demand;
pub mod doctor;
pub mod forward;
pub mod install;
pub mod listeners;
pub mod model;
pub mod pages;
pub mod proxy;
pub mod registration;
pub mod routes;
pub mod run;
pub mod server;
pub mod service;
pub mod state;
pub mod sys;
pub mod up;
