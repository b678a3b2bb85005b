//! What wharf's words mean, as types: instance names (and `naming`: the one a project gives
//! when none is asked for), request hosts, how an instance gets its socket (the server
//! table), and the two files a user writes (`wharf.toml`, `config.toml`),
//! each parsed and validated once at the edge so that everything downstream can trust them.

pub(crate) mod config;
pub(crate) mod host;
pub(crate) mod hosts;
pub(crate) mod instance;
pub(crate) mod mode;
pub(crate) mod name;
pub(crate) mod naming;
pub(crate) mod ports;
pub(crate) mod project;
pub(crate) mod text;
