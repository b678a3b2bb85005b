//! wharf's integration tests: one binary, a module per area, real processes and real peers.

mod it;
