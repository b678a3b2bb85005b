//! What wharf's words mean, as types: instance names, request hosts, how an instance gets its
//! socket (the server table), and the two files a user writes (`wharf.toml`, `config.toml`),
//! each parsed and validated once at the edge so that everything downstream can trust them.

pub mod config;
pub mod host;
pub mod instance;
pub mod mode;
pub mod name;
pub mod ports;
pub mod project;
pub mod text;
