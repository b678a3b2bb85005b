//! wharf: named local servers with pre-bound sockets, routed at `NAME.localhost`.
//!
//! # Layout
//!
//! Dependencies point down this list, never up:
//!
//! - `cli`: the commands a user types, and what each one does with the parts below.
//! - `install`: running the proxy as a service (systemd units, launchd agents), `doctor`, and
//!   the system files wharf edits when asked (`/etc/hosts` through sudo, nsswitch.conf).
//! - `supervise`: `wharf run`, one instance's supervisor (one per member with `--replicas`):
//!   binds its ports, starts its server with them, watches readiness and health, restarts it,
//!   and keeps its route registered.
//! - `proxy`: `wharf proxy`, the front proxy: accepts connections, routes `NAME.localhost`,
//!   forwards HTTP/1.1 (express lane and hyper's path), HTTP/2 and tunnels.
//! - `control`: the control plane between commands and the proxy (wire format, client,
//!   server), and starting a proxy when none runs.
//! - `ca`: wharf's local certificate authority, name-constrained to `localhost`, and the
//!   certificates it issues per name.
//! - `state`: what wharf keeps between commands: private directories, registry, logs.
//! - `model`: wharf's vocabulary as types: names, hosts, modes, instances, the user's files.
//! - `sys`: the operating system: processes, socket handoff, sd_notify, netstat, stdio, trust,
//!   what `git` says of a checkout, and writing system files in place.

pub(crate) mod ca;
pub mod cli;
pub(crate) mod control;
pub(crate) mod install;
pub(crate) mod model;
pub(crate) mod proxy;
pub(crate) mod state;
pub(crate) mod supervise;
pub(crate) mod sys;

/// What the fuzz tier (tests/it/fuzz.rs) drives directly, without a proxy around it.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::proxy::lane::chunked::Decoder;

    pub mod host {
        pub use crate::model::host::{HostError, Target, parse};
    }
}
