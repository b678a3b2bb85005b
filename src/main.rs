//! The `wharf` binary: handles the exec step, parses arguments, builds the runtime, dispatches,
//! and prints errors. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use wharf::cli::{Cli, Command, RunCli};
use wharf::dirs::Dirs;
use wharf::mode::Mode;
use wharf::{handoff, run};

fn main() -> ExitCode {
    // The exec step between wharf and a server runs before anything else, single-threaded.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == handoff::HELPER_ARG) {
        let rest: Vec<_> = args.skip_while(|a| a != "--").skip(1).collect();
        return exit(handoff::exec_step(&rest));
    }
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => exit(code),
        Err(e) => {
            eprintln!("wharf: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => {
            let ctx = run::Env {
                dirs: Dirs::from_env(|k| std::env::var_os(k))?,
                self_exe: std::env::current_exe()?,
                cwd: std::env::current_dir()?,
                path_var: std::env::var_os("PATH"),
            };
            runtime.block_on(run::run(&ctx, run_args(args)))
        }
    }
}

fn run_args(cli: RunCli) -> run::RunArgs {
    let mode = match (cli.fd, cli.env) {
        (true, _) => Some(Mode::Fd),
        (_, true) => Some(Mode::Env),
        _ => None,
    };
    run::RunArgs {
        name: cli.name,
        mode,
        port: cli.port,
        range: Some(cli.range),
        sockets: cli.sockets,
        restart: cli.restart,
        force: cli.force,
        no_pid: cli.no_pid,
        quiet: cli.quiet,
        command: cli.command,
    }
}
