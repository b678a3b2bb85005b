//! The children of this process that are no orphans: every member's server and the proxies
//! started. With replicas several supervisors share one process, so what one of them takes
//! for its server's leftovers (`process::orphans`: our children other than these) must never
//! be another member's server, nor a proxy another member started.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::sys::process::{self, ProcessId};

static OURS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn ours() -> MutexGuard<'static, Vec<i32>> {
    OURS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Start a child with `spawn` and count its pid as ours, with no look for orphans in between.
pub(super) fn spawn<T>(
    spawn: impl FnOnce() -> anyhow::Result<(T, i32)>,
) -> anyhow::Result<(T, i32)> {
    let mut ours = ours();
    let (child, pid) = spawn()?;
    ours.push(pid);
    Ok((child, pid))
}

/// A child that is ours: a proxy this process started.
pub(super) fn add(pid: i32) {
    ours().push(pid);
}

/// A server that exited and was reaped: its pid is no longer ours.
pub(super) fn remove(pid: i32) {
    ours().retain(|p| *p != pid);
}

/// Our children that are none of ours, and their descendants (`process::orphans`); no child
/// is started while they are looked for.
pub(super) fn orphans() -> Vec<ProcessId> {
    let ours = ours();
    process::orphans(&ours)
}
