//! `wharf reload NAME [--member K]`: the proxy relays it to the instance's supervisor(s), which
//! start the new version beside the running one, switch once it is ready and stop the old one
//! (`supervise::reload`). Exit 0 when every member runs the new version; 1 with the reason
//! (and the new version's last output) when one did not become ready and the old one serves.

use anyhow::Context as _;

use crate::control::client::ClientError;
use crate::control::launch;
use crate::control::protocol::Request;
use crate::model::name::Name;
use crate::state::context::Context;

pub(crate) async fn reload(ctx: &Context, name: Name, member: Option<u32>) -> anyhow::Result<i32> {
    let Some(mut proxy) = launch::connect(ctx.dirs.runtime()?).await else {
        crate::errln!(
            "wharf: no front proxy is running, and reloads go through it; `wharf ls` lists \
             what runs (an instance started with `wharf run` or `wharf up` starts the proxy)"
        );
        return Ok(1);
    };
    let request = Request::Reload {
        name: name.clone(),
        member,
    };
    match proxy.client.call(&request).await {
        Ok(answer) => {
            let members = answer.reload.unwrap_or(1);
            let what = match member {
                Some(k) => format!("member {k} of {name}"),
                None if members == 1 => name.to_string(),
                None => format!("{members} members of {name}"),
            };
            crate::outln!("wharf: reloaded {what}: the new version serves")?;
            Ok(0)
        }
        Err(ClientError::Refused(why)) => {
            crate::errln!("wharf: reload of {name} failed: {why}");
            Ok(1)
        }
        Err(e) => Err(e).context("asking the front proxy to reload"),
    }
}
