//! Keeping wharf's block in the hosts file in step with the route table, when the user opted
//! in (`[hosts] sync = true` in config.toml). A task of its own: it wakes on the route table's
//! changes, waits for them to settle, and writes on a blocking thread, so a request never
//! waits for it. What it cannot do it says once, with the fix.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::proxy::routes::Routes;
use crate::state::hosts::HostsError;
use crate::sys::sysfile::SysFileError;

/// How long the table must stay unchanged before the file is written (a `wharf up` of ten
/// instances is one write).
const DEBOUNCE: Duration = Duration::from_millis(200);
/// After the proxy starts, how long running instances get to register again before the block
/// is first written, so a restart does not empty it for a moment.
const SETTLE: Duration = Duration::from_secs(1);

pub(crate) async fn keep(routes: Arc<Routes>, path: PathBuf, shutdown: CancellationToken) {
    let mut changes = routes.subscribe();
    let mut first = true;
    let mut written: Option<BTreeSet<String>> = None;
    let mut said: Option<String> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(SETTLE), if first => {}
        }
        first = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = changes.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(DEBOUNCE) => break,
            }
        }
        let names = {
            let table = changes.borrow_and_update();
            crate::model::hosts::hostnames(
                table
                    .values()
                    .flat_map(|m| m.all.iter().map(|r| &r.instance)),
            )
        };
        if written.as_ref() == Some(&names) {
            continue;
        }
        let file = path.clone();
        let wanted = names.clone();
        let result =
            tokio::task::spawn_blocking(move || crate::state::hosts::write(&file, Some(&wanted)))
                .await;
        match result {
            Ok(Ok(_)) => {
                written = Some(names);
                if said.take().is_some() {
                    eprintln!("wharf proxy: {} is in step again", path.display());
                }
            }
            Ok(Err(e)) => {
                let why = why_not(&e, &path);
                if said.as_ref() != Some(&why) {
                    eprintln!("wharf proxy: {why}");
                    said = Some(why);
                }
            }
            Err(e) => eprintln!("wharf proxy: writing {}: {e}", path.display()),
        }
    }
}

/// Why the block was not written, and the ways out.
fn why_not(e: &HostsError, path: &std::path::Path) -> String {
    let (path, off) = (
        path.display(),
        "or turn this off: remove `[hosts] sync = true` from config.toml",
    );
    match e {
        HostsError::File(SysFileError::NotWritable { uid, .. }) => format!(
            "cannot keep {path} in step ([hosts] sync = true): this proxy runs as uid {uid} and \
             may not write it. Run `wharf hosts sync` when names change (it uses sudo), let \
             the system resolve *.localhost instead (`wharf doctor --fix`), {off}"
        ),
        e => format!("cannot keep {path} in step ([hosts] sync = true): {e}; {off}"),
    }
}
