//! `wharf install`, `uninstall` and `doctor` as commands: gather the facts (binary, user,
//! directories), let `install` plan, then write, print, and run only what was asked.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::cli::args::{DoctorCli, InstallCli, UninstallCli};
use crate::install::{self, File, Outcome, Plan, Port80};
use crate::state::context::Context;

fn user() -> (String, u32) {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    (name, uid.as_raw())
}

fn unprivileged_port_start() -> u16 {
    if nix::unistd::geteuid().is_root() {
        return 0;
    }
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

fn binary(ctx: &Context, warn: bool) -> anyhow::Result<PathBuf> {
    let bin = ctx
        .self_exe
        .canonicalize()
        .context("finding the wharf binary")?;
    let s = bin.to_string_lossy();
    if warn && (s.contains("/target/debug/") || s.contains("/target/release/")) {
        crate::errln!(
            "wharf: note: {s} is inside a build directory; `cargo install --path .` gives the units a \
             binary that `cargo clean` will not remove"
        );
    }
    Ok(bin)
}

pub(crate) fn install(ctx: &Context, cli: InstallCli) -> anyhow::Result<i32> {
    let bin = binary(ctx, cli.instance.is_none())?;
    let (user, uid) = user();
    let plan = if let Some(name) = &cli.instance {
        let unit_dir = &ctx
            .systemd_user_dir()
            .context("no home directory to install units into")?;
        let mut command = cli.command.clone();
        let program =
            crate::sys::handoff::resolve_program(&command[0], ctx.path_var.clone(), &ctx.cwd)
                .with_context(|| format!("cannot find `{}`", command[0]))?;
        command[0] = program.display().to_string();
        let port = cli
            .port
            .context("--instance needs --port: systemd binds that port for the instance")?;
        install::plan_instance(&install::InstanceTarget {
            name,
            port,
            command: &command,
            dir: &ctx.cwd,
            unit_dir,
        })?
    } else if cli.launchd || cfg!(target_os = "macos") {
        let agents_dir = &ctx
            .launch_agents_dir()
            .context("no home directory for LaunchAgents")?;
        install::plan_launchd(&install::LaunchdTarget {
            binary: &bin,
            port: cli.port.unwrap_or(crate::proxy::listeners::PRIVILEGED_PORT),
            agents_dir,
            runtime_dir: &ctx.dirs.runtime,
            state_dir: &ctx.dirs.state,
            uid,
        })
    } else {
        let unit_dir = &ctx
            .systemd_user_dir()
            .context("no home directory to install units into")?;
        let port80 = match (cli.sysctl, cli.system_socket) {
            (true, _) => Some(Port80::Sysctl),
            (_, true) => Some(Port80::SystemSocket),
            _ => None,
        };
        install::plan_systemd(&install::SystemdTarget {
            binary: &bin,
            port: cli.port.unwrap_or(install::DEFAULT_PORT),
            unit_dir,
            unprivileged_start: unprivileged_port_start(),
            port80,
            user: &user,
            uid,
        })?
    };
    if cli.dry_run {
        crate::sys::stdio::out(&install::describe(&plan, true))?;
        print_next(&plan);
        return Ok(0);
    }
    for (path, outcome) in install::write(&plan.files)? {
        let what = match outcome {
            Outcome::Created => "wrote",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
        };
        crate::progressln!("{what} {}", path.display());
    }
    apply_privileged(&plan.privileged, &plan.privileged_commands)?;
    for n in &plan.notes {
        crate::progressln!("note: {n}");
    }
    print_next(&plan);
    Ok(0)
}

fn print_next(plan: &Plan) {
    if !plan.next.is_empty() {
        crate::progressln!("next:");
        for n in &plan.next {
            crate::progressln!("  {n}");
        }
    }
}

/// Write files and run commands as root: directly when we are root, else through sudo (the
/// user asked for it with --sysctl / --system-socket and sees each step first).
fn apply_privileged(files: &[File], commands: &[Vec<String>]) -> anyhow::Result<()> {
    if files.is_empty() && commands.is_empty() {
        return Ok(());
    }
    let root = nix::unistd::geteuid().is_root();
    for f in files {
        crate::progressln!("writing {} (as root)", f.path.display());
        if root {
            std::fs::write(&f.path, &f.content)
                .with_context(|| format!("writing {}", f.path.display()))?;
        } else {
            let mut child = Command::new("sudo")
                .args(["tee", &f.path.display().to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .context("running sudo")?;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(f.content.as_bytes())?;
            if !child.wait()?.success() {
                bail!("sudo tee {} failed", f.path.display());
            }
        }
    }
    for c in commands {
        run_root(c, root)?;
    }
    Ok(())
}

fn run_root(command: &[String], root: bool) -> anyhow::Result<()> {
    crate::progressln!("running {} (as root)", command.join(" "));
    let mut cmd = if root {
        Command::new(&command[0])
    } else {
        let mut c = Command::new("sudo");
        c.arg(&command[0]);
        c
    };
    let status = cmd
        .args(&command[1..])
        .status()
        .with_context(|| format!("running {}", command[0]))?;
    if !status.success() {
        bail!("`{}` failed ({status})", command.join(" "));
    }
    Ok(())
}

pub(crate) fn uninstall(ctx: &Context, cli: UninstallCli) -> anyhow::Result<i32> {
    let (user, uid) = user();
    let root = nix::unistd::geteuid().is_root();
    let (user_files, system_files, stop) = if let Some(name) = &cli.instance {
        let dir = &ctx.systemd_user_dir().context("no home directory")?;
        let files = vec![
            dir.join(format!("wharf-{name}.socket")),
            dir.join(format!("wharf-{name}.service")),
        ];
        let stop = vec![
            "systemctl".into(),
            "--user".into(),
            "disable".into(),
            "--now".into(),
            format!("wharf-{name}.socket"),
            format!("wharf-{name}.service"),
        ];
        (files, Vec::new(), stop)
    } else if cfg!(target_os = "macos") {
        let dir = &ctx.launch_agents_dir().context("no home directory")?;
        let files = vec![dir.join(format!("{}.plist", install::LAUNCHD_LABEL))];
        let stop = vec![
            "launchctl".into(),
            "bootout".into(),
            format!("gui/{uid}/{}", install::LAUNCHD_LABEL),
        ];
        (files, Vec::new(), stop)
    } else {
        let dir = &ctx.systemd_user_dir().context("no home directory")?;
        let (u, s) = install::installed_paths(dir, &user);
        let stop = [
            "systemctl",
            "--user",
            "disable",
            "--now",
            "wharf.socket",
            "wharf-control.socket",
            "wharf.service",
        ]
        .map(String::from)
        .to_vec();
        (u, s, stop)
    };
    let present: Vec<&PathBuf> = user_files
        .iter()
        .chain(&system_files)
        .filter(|p| p.exists())
        .collect();
    if present.is_empty() {
        crate::progressln!("nothing to remove: wharf's service files are not installed");
        return Ok(0);
    }
    if cli.dry_run {
        crate::progressln!("would run: {}", stop.join(" "));
        for p in &present {
            crate::progressln!("would remove {}", p.display());
        }
        return Ok(0);
    }
    // Stop first, so no socket is left listening for a unit that is gone.
    match Command::new(&stop[0])
        .args(&stop[1..])
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => crate::progressln!("ran {}", stop.join(" ")),
        _ => crate::progressln!(
            "could not run `{}` (no user service manager here?); removing the files anyway",
            stop.join(" ")
        ),
    }
    for (path, removed) in install::remove(&user_files)? {
        if removed {
            crate::progressln!("removed {}", path.display());
        } else {
            crate::progressln!("left {} alone: wharf did not write it", path.display());
        }
    }
    // The directories install created, if nothing else lives there now.
    if let Some(dir) = user_files.first().and_then(|p| p.parent()) {
        let _ = std::fs::remove_dir(dir)
            .and_then(|()| dir.parent().map_or(Ok(()), std::fs::remove_dir));
    }
    remove_privileged(&system_files, &user, root)?;
    Ok(0)
}

fn remove_privileged(files: &[PathBuf], user: &str, root: bool) -> anyhow::Result<()> {
    let ours: Vec<&PathBuf> = files
        .iter()
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("wharf install")))
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    let socket_unit = format!("wharf-{user}.socket");
    if ours.iter().any(|p| p.ends_with(&socket_unit)) {
        let _ = run_root(
            &[
                "systemctl".into(),
                "disable".into(),
                "--now".into(),
                socket_unit.clone(),
            ],
            root,
        );
    }
    for p in &ours {
        run_root(&["rm".into(), "-f".into(), p.display().to_string()], root)?;
    }
    if ours.iter().any(|p| p.starts_with("/etc/sysctl.d")) {
        run_root(
            &[
                "sysctl".into(),
                "-w".into(),
                "net.ipv4.ip_unprivileged_port_start=1024".into(),
            ],
            root,
        )?;
    }
    if ours.iter().any(|p| p.starts_with("/etc/systemd")) {
        run_root(&["systemctl".into(), "daemon-reload".into()], root)?;
    }
    Ok(())
}

pub(crate) async fn doctor(ctx: &Context, cli: DoctorCli) -> anyhow::Result<i32> {
    use crate::install::doctor::{self, Nss, Repair};
    let unit_dir = ctx.systemd_user_dir().filter(|_| cfg!(target_os = "linux"));
    let nss = Nss::examine(&ctx.nsswitch_file, ctx.path_var.clone());
    let mut findings = doctor::examine(&ctx.dirs, unit_dir.as_deref(), &nss).await;
    let places = crate::cli::https::places(ctx);
    findings.extend(doctor::trust_stores(&ctx.dirs.state, &places));
    let code = doctor::report(&findings)?;
    if !cli.fix {
        return Ok(code);
    }
    let repairs: Vec<&Repair> = findings.iter().filter_map(|f| f.repair.as_ref()).collect();
    if repairs.is_empty() {
        crate::progressln!("--fix: nothing here that wharf can fix itself; see each fix: above");
        return Ok(code);
    }
    for repair in repairs {
        match repair {
            Repair::Myhostname(path) => {
                let Some(fix) = crate::install::nsswitch::plan(path)? else {
                    continue;
                };
                if cli.dry_run {
                    crate::outln!(
                        "--- {0}\n+++ {0} (after `wharf doctor --fix`)",
                        path.display()
                    )?;
                    crate::sys::stdio::out(&fix.diff())?;
                    crate::progressln!(
                        "dry run: nothing written (the fix would keep a backup at {})",
                        fix.backup.display()
                    );
                    continue;
                }
                fix.apply()?;
                crate::progressln!(
                    "added `myhostname` to the hosts: line of {} (backup: {}); to undo: {}",
                    path.display(),
                    fix.backup.display(),
                    fix.undo()
                );
            }
        }
    }
    Ok(code)
}
