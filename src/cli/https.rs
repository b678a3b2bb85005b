//! HTTPS's commands: `wharf ca`.

use crate::ca::Authority;
use crate::state::context::Context;
use crate::sys::stdio;

/// `wharf ca`: the CA certificate's path (or, with `--pem`, the certificate), for tools that
/// take a CA file (`curl --cacert "$(wharf ca)"`). Makes the CA if there is none yet.
pub(crate) fn ca(ctx: &Context, pem: bool) -> anyhow::Result<i32> {
    let ca = Authority::open_or_create(ctx.dirs.state()?)?;
    if pem {
        stdio::out(ca.cert_pem())?;
    } else {
        stdio::out(&format!("{}\n", ca.cert_path().display()))?;
    }
    Ok(0)
}
