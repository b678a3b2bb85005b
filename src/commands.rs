//! The small client commands: `ls`, `stop`, `alias`, `env`. Each asks the front proxy when one
//! runs and falls back to the on-disk registry when none does.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::context::Context;
use crate::control::{Instance, Listed, Request, State};
use crate::launch;
use crate::mode::Mode;
use crate::name::Name;
use crate::pages::human_duration;
use crate::process::ProcessId;
use crate::registry::Store;

/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What is running: from the proxy if it answers (`true`), else from the registry's leases
/// with direct URLs (`false`).
async fn instances(ctx: &Context) -> anyhow::Result<(Vec<Listed>, bool)> {
    let runtime = ctx.dirs.runtime()?;
    if let Some(mut c) = launch::connect(runtime).await {
        let list = c.client.call(&Request::List).await?;
        return Ok((list.instances.unwrap_or_default(), true));
    }
    let reg = Store::new(ctx.dirs.state()?).lock()?;
    let now = crate::registry::unix_now();
    let listed = reg
        .leases
        .iter()
        .map(|(name, lease)| {
            let sockets: BTreeMap<String, SocketAddr> = lease
                .ports
                .iter()
                .map(|(s, p)| (s.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, *p))))
                .collect();
            let port = lease
                .ports
                .get(crate::alloc::MAIN_SOCKET)
                .copied()
                .unwrap_or(0);
            Listed {
                url: crate::control::url(name, port),
                instance: Instance {
                    name: name.clone(),
                    pid: lease.holder.pid,
                    child_pid: None,
                    mode: Mode::Fd,
                    state: State::Ready,
                    sockets,
                    last_exit: None,
                    declared: None,
                },
                alias: false,
                uptime_secs: now.saturating_sub(lease.since),
                requests: 0,
            }
        })
        .collect();
    Ok((listed, false))
}

pub async fn ls(ctx: &Context, json: bool) -> anyhow::Result<i32> {
    let (list, via_proxy) = instances(ctx).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    if !via_proxy {
        eprintln!("wharf: no front proxy is running; URLs below go to each instance directly");
    }
    if list.is_empty() {
        eprintln!("wharf: no instances; start one with `wharf run --name NAME -- CMD`");
        return Ok(0);
    }
    let rows: Vec<[String; 9]> = list
        .iter()
        .map(|l| {
            let i = &l.instance;
            let port = i
                .sockets
                .get(crate::alloc::MAIN_SOCKET)
                .map(|a| a.port().to_string())
                .unwrap_or_default();
            let pid = match (l.alias, i.child_pid) {
                (true, _) => "-".to_string(),
                (false, Some(child)) => child.to_string(),
                (false, None) => "-".to_string(),
            };
            let (mode, state) = match (l.alias, via_proxy) {
                (true, _) => ("-".to_string(), "alias".to_string()),
                (false, true) => (i.mode.to_string(), format!("{:?}", i.state).to_lowercase()),
                (false, false) => ("-".to_string(), "running".to_string()),
            };
            let requests = if via_proxy {
                l.requests.to_string()
            } else {
                "-".to_string()
            };
            [
                i.name.to_string(),
                l.url.clone(),
                port,
                pid,
                mode,
                state,
                human_duration(l.uptime_secs),
                requests,
                i.last_exit.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "URL",
        "PORT",
        "PID",
        "MODE",
        "STATE",
        "UPTIME",
        "REQUESTS",
        "LAST EXIT",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(0)
}

pub async fn stop(
    ctx: &Context,
    name: Option<Name>,
    all: bool,
    proxy: bool,
) -> anyhow::Result<i32> {
    if proxy {
        return stop_proxy(ctx).await;
    }
    let (list, _) = instances(ctx).await?;
    let mut leases: BTreeMap<Name, i32> = {
        let reg = Store::new(ctx.dirs.state()?).lock()?;
        reg.leases
            .iter()
            .map(|(n, l)| (n.clone(), l.holder.pid))
            .collect()
    };
    for l in list.iter().filter(|l| !l.alias) {
        leases
            .entry(l.instance.name.clone())
            .or_insert(l.instance.pid);
    }
    let targets: Vec<Name> = match name {
        Some(name) => {
            let is_alias = list.iter().any(|l| l.alias && l.instance.name == name);
            if is_alias {
                bail!(
                    "'{name}' is an alias, not a process; remove it with `wharf alias --rm {name}`"
                );
            }
            if !leases.contains_key(&name) {
                bail!("no instance named '{name}' is running; `wharf ls` lists them");
            }
            vec![name]
        }
        None if all => leases.keys().cloned().collect(),
        None => unreachable!("clap requires a name, --all or --proxy"),
    };
    let runtime = ctx.dirs.runtime()?.to_path_buf();
    let mut proxy = launch::connect(&runtime).await;
    let mut failed = 0;
    for name in targets {
        // The route goes first, so nobody is sent to a server that is shutting down.
        if let Some(c) = proxy.as_mut() {
            let _ = c.client.call(&Request::Stop { name: name.clone() }).await;
        }
        let pid = leases[&name];
        let stopped = match ProcessId::of(pid) {
            None => true,
            Some(id) => tokio::task::spawn_blocking(move || id.terminate(STOP_GRACE)).await?,
        };
        if stopped {
            eprintln!("wharf: stopped {name} (pid {pid})");
        } else {
            eprintln!("wharf: {name} (pid {pid}) survived SIGKILL; is it stuck in the kernel?");
            failed += 1;
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

async fn stop_proxy(ctx: &Context) -> anyhow::Result<i32> {
    let Some(c) = launch::connect(ctx.dirs.runtime()?).await else {
        eprintln!("wharf: no front proxy is running");
        return Ok(0);
    };
    let pid = c.hello.pid.context("the proxy did not say its pid")?;
    drop(c);
    let id = ProcessId::of(pid);
    let stopped = match id {
        None => true,
        Some(id) => tokio::task::spawn_blocking(move || id.terminate(STOP_GRACE)).await?,
    };
    if !stopped {
        bail!("the proxy (pid {pid}) did not stop");
    }
    eprintln!("wharf: stopped the front proxy (pid {pid})");
    Ok(0)
}

pub async fn alias(ctx: &Context, name: Name, addr: Option<String>) -> anyhow::Result<i32> {
    let addr = addr.map(|a| parse_alias_addr(&a)).transpose()?;
    let runtime = ctx.dirs.runtime()?;
    ctx.dirs.state()?;
    let mut c = launch::connect_or_start(runtime, &ctx.self_exe).await?;
    c.client
        .call(&Request::Alias {
            name: name.clone(),
            addr,
        })
        .await?;
    match addr {
        Some(addr) => {
            let port = c.hello.http_port.unwrap_or(80);
            eprintln!("wharf: {name} → {addr}");
            eprintln!("wharf: {name} is at {}", crate::control::url(&name, port));
        }
        None => eprintln!("wharf: removed the alias {name}"),
    }
    Ok(0)
}

/// `8080`, `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080`: loopback only.
pub fn parse_alias_addr(s: &str) -> anyhow::Result<SocketAddr> {
    let s = s.trim().trim_start_matches("http://").trim_end_matches('/');
    let addr = if let Ok(port) = s.parse::<u16>() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    } else if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .with_context(|| format!("{port:?} is not a port"))?;
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    } else {
        s.parse().with_context(|| {
            format!("{s:?} is not an address; write 8080, 127.0.0.1:8080 or [::1]:8080")
        })?
    };
    if !addr.ip().is_loopback() {
        bail!("{addr} is not on this machine; wharf routes to loopback addresses only");
    }
    if addr.port() == 0 {
        bail!("port 0 is not a server's port");
    }
    Ok(addr)
}

pub async fn env(
    ctx: &Context,
    name: Option<Name>,
    format: crate::cli::EnvFormat,
) -> anyhow::Result<i32> {
    use crate::cli::EnvFormat;
    let (list, _) = instances(ctx).await?;
    let selected: Vec<&Listed> = list
        .iter()
        .filter(|l| name.as_ref().is_none_or(|n| *n == l.instance.name))
        .collect();
    if let (Some(name), true) = (&name, selected.is_empty()) {
        bail!("no instance named '{name}' is running; `wharf ls` lists them");
    }
    let vars: BTreeMap<String, &str> = selected
        .iter()
        .map(|l| {
            (
                format!("{}_URL", l.instance.name.env_suffix()),
                l.url.as_str(),
            )
        })
        .collect();
    match format {
        EnvFormat::Shell => vars.iter().for_each(|(k, v)| println!("export {k}={v}")),
        EnvFormat::Dotenv => vars.iter().for_each(|(k, v)| println!("{k}={v}")),
        EnvFormat::Json => println!("{}", serde_json::to_string_pretty(&vars)?),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_addresses_are_loopback_only() {
        assert_eq!(
            parse_alias_addr("8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            parse_alias_addr("localhost:81").unwrap(),
            "127.0.0.1:81".parse().unwrap()
        );
        assert_eq!(
            parse_alias_addr("http://[::1]:82/").unwrap(),
            "[::1]:82".parse().unwrap()
        );
        assert!(parse_alias_addr("10.0.0.1:80").is_err());
        assert!(parse_alias_addr("example.com:80").is_err());
        assert!(parse_alias_addr("0").is_err());
    }
}
