//! The command line: clap definitions only. Turning them into work is `main`'s job.

use clap::{Args, Parser, Subcommand};

use crate::model::name::Name;
use crate::model::ports::PortRanges;
use crate::model::project::{Ready, Restart};

#[derive(Debug, Parser)]
#[command(
    name = "wharf",
    version,
    about = "Named local servers with pre-bound sockets, routed at http://NAME.localhost",
    long_about = None,
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a server as an instance (named by --name or the project), its socket bound by wharf
    Run(RunCli),
    /// List instances: NAME URL PORT PID MODE STATE UPTIME REQUESTS
    Ls(LsCli),
    /// Stop instances (SIGTERM, wait, SIGKILL everything they started); routes go at once
    Stop(StopCli),
    /// Run the front proxy in the foreground (what the service units run)
    Proxy(ProxyCli),
    /// Route NAME.localhost to a server wharf did not start
    Alias(AliasCli),
    /// Print each instance's URL as NAME_URL=… (shell, dotenv or json), for frontends and scripts
    Env(EnvCli),
    /// Run the proxy as a service: systemd user units (Linux) or a LaunchAgent (macOS)
    Install(InstallCli),
    /// Remove what `wharf install` wrote
    Uninstall(UninstallCli),
    /// Check name resolution, the proxy, the units, port 80 and file privacy; say how to fix
    Doctor(DoctorCli),
    /// Keep NAME.localhost in /etc/hosts for clients that do not resolve *.localhost
    #[command(subcommand)]
    Hosts(HostsCli),
    /// Start the instances declared in wharf.toml (or only NAMES), applying any changes
    Up(UpJsonCli),
    /// Stop the instances declared in wharf.toml (or only NAMES)
    Down(UpCli),
    /// Show the output of an instance started by `wharf up` (or `wharf mcp`)
    Logs(LogsCli),
    /// Print the path of wharf's local CA certificate (PEM), made if there is none yet
    Ca(CaCli),
    /// Add wharf's CA to this machine's trust stores (system, Chrome/Firefox NSS, keychain)
    Trust(TrustCli),
    /// Remove wharf's CA from every trust store `wharf trust` added it to
    Untrust(TrustCli),
    /// Print a running instance's URL (exit 1 if none runs)
    Url(UrlCli),
    /// Wait until an instance is ready, then print its URL (exit 1 with the reason if it fails)
    Wait(WaitCli),
    /// Start a new version of an instance beside the running one, switch once it is ready,
    /// then stop the old one (exit 1 with the new version's last output if it fails)
    Reload(ReloadCli),
    /// Serve the Model Context Protocol on stdin/stdout, for coding agents: list, ensure, logs,
    /// stop; what a session starts is stopped when it ends
    Mcp,
}

#[derive(Debug, Args)]
pub(crate) struct TrustCli {
    /// Print what would be run, change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CaCli {
    /// Print the certificate itself instead of its path
    #[arg(long)]
    pub(crate) pem: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DoctorCli {
    /// Apply the fixes wharf can make (`myhostname` in /etc/nsswitch.conf, with a backup)
    #[arg(long)]
    pub(crate) fix: bool,
    /// With --fix: print what would change, change nothing
    #[arg(long, requires = "fix")]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum HostsCli {
    /// Write the current names (instances, their sockets, aliases) as wharf's block in
    /// /etc/hosts (through sudo when needed); `[hosts] sync = true` in config.toml keeps it in
    /// step while the proxy runs
    Sync {
        /// Print the change, write nothing
        #[arg(long)]
        dry_run: bool,
        /// These NAME.localhost names (comma-separated) instead of asking the proxy: how wharf
        /// re-runs itself through sudo
        #[arg(long, hide = true, value_name = "HOSTS")]
        names: Option<String>,
    },
    /// Remove wharf's block from /etc/hosts, and nothing else
    Clean {
        /// Print the change, write nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct UrlCli {
    pub(crate) name: Name,
}

#[derive(Debug, Args)]
pub(crate) struct ReloadCli {
    pub(crate) name: Name,
    /// Only this member of a replicated name (default: each member in turn)
    #[arg(long, value_name = "K")]
    pub(crate) member: Option<u32>,
}

#[derive(Debug, Args)]
pub(crate) struct WaitCli {
    pub(crate) name: Name,
    /// How long to wait (90, 90s, 15m, 2h)
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "60s",
        value_parser = crate::model::project::parse_duration_str
    )]
    pub(crate) timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub(crate) struct UpCli {
    /// The project file (default: the nearest wharf.toml at or above this directory)
    #[arg(long, short = 'f', value_name = "FILE")]
    pub(crate) file: Option<std::path::PathBuf>,
    /// Only these instances
    pub(crate) names: Vec<Name>,
}

#[derive(Debug, Args)]
pub(crate) struct UpJsonCli {
    #[command(flatten)]
    pub(crate) up: UpCli,
    /// The result as JSON, one object a line per instance (status, port, url)
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LogsCli {
    pub(crate) name: Name,
    /// Keep printing what is written
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
}

#[derive(Debug, Default, Args)]
#[command(after_help = "Examples:\n  \
        wharf run --name api -- gunicorn app:app        # fd mode: gunicorn reads LISTEN_FDS\n  \
        wharf run --name docs -- python3 -m http.server -b 127.0.0.1 {port}\n  \
        wharf run --name web -- npm run dev            # vite etc.: env mode, flags added\n  \
        wharf run -- npm run dev                       # named after package.json, a worktree's branch\n  \
        wharf run                                      # the project's dev command, so named\n\n\
        Placeholders in the command: {port} {fd} and, per --socket SUB, {port:SUB} {fd:SUB}.")]
pub(crate) struct RunCli {
    /// Instance name, served at http://NAME.localhost. Default: the matching wharf.toml
    /// instance, package.json, pyproject.toml or Cargo.toml name, else the git repository's or
    /// this directory's; in a linked git worktree with its branch in front (fix-ui.shop)
    #[arg(long, short = 'n')]
    pub(crate) name: Option<Name>,
    /// Pass the socket as an inherited fd (LISTEN_FDS) instead of choosing by the command
    #[arg(long, conflicts_with = "env")]
    pub(crate) fd: bool,
    /// Give the server PORT (and {port}) to bind itself instead of choosing by the command
    #[arg(long)]
    pub(crate) env: bool,
    /// Preferred port; if it is taken wharf says so and goes on. 0 = any free port
    #[arg(long, short = 'p')]
    pub(crate) port: Option<u16>,
    /// Ports to choose from, LO-HI; a comma-separated list is tried in order (4000-4099,5000-5099).
    /// Beats the name's last port when that is outside. Default: `[defaults] range` in
    /// config.toml, else 4000-4999
    #[arg(long, value_name = "LO-HI[,LO-HI…]")]
    pub(crate) range: Option<PortRanges>,
    /// Another named socket (repeatable): routed at SUB.NAME.localhost, passed as fd 4… or PORT_SUB
    #[arg(long = "socket", value_name = "SUB", value_parser = Name::label)]
    pub(crate) sockets: Vec<Name>,
    /// Restart the server when it exits, on the same socket (connections wait, none is
    /// refused): always (the default of a bare --restart), on-failure, or no (the default,
    /// but on-failure for --replicas and --join)
    #[arg(long, value_name = "POLICY", num_args = 0..=1, default_missing_value = "always")]
    pub(crate) restart: Option<Restart>,
    /// Start the server on the first connection, with the socket wharf already holds; stop it
    /// again after --idle-timeout without connections (fd mode)
    #[arg(long)]
    pub(crate) on_demand: bool,
    /// With --on-demand: how long without connections before the server is stopped (90, 90s,
    /// 15m, 2h; default 15m)
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = crate::model::project::parse_duration_str,
        requires = "on_demand"
    )]
    pub(crate) idle_timeout: Option<std::time::Duration>,
    /// When the server counts as ready: notify (READY=1), connect, or http:/PATH (a 2xx or 3xx
    /// answer)
    #[arg(long, value_name = "HOW")]
    pub(crate) ready: Option<Ready>,
    /// Send the server's output, and a copy of wharf's, to FILE (rotated at 1 MiB)
    #[arg(long, value_name = "FILE")]
    pub(crate) log: Option<std::path::PathBuf>,
    /// Set by `wharf up`: the wharf.toml this instance is declared in
    #[arg(long, hide = true, requires = "fingerprint")]
    pub(crate) declared_in: Option<std::path::PathBuf>,
    /// Set by `wharf up`: a digest of the declaration
    #[arg(long, hide = true)]
    pub(crate) fingerprint: Option<String>,
    /// Replace a running instance of the same name
    #[arg(long, conflicts_with = "reuse")]
    pub(crate) force: bool,
    /// If the name already runs this same command from this directory, print its URL and exit
    /// 0 instead of failing (many agents asking for one server get one)
    #[arg(long)]
    pub(crate) reuse: bool,
    /// Leave LISTEN_PID unset, for servers started through wrappers (npm run, sh -c) that
    /// read LISTEN_FDS leniently
    #[arg(long)]
    pub(crate) no_pid: bool,
    /// Print only the URL line and errors
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
    /// Events on stdout, one JSON object a line: mode, port, url (or reused), ready, detached,
    /// exited; the server's own stdout then goes to stderr
    #[arg(long)]
    pub(crate) json: bool,
    /// Say every port tried and why it was not taken (default: one summary line)
    #[arg(long, short = 'v', conflicts_with = "quiet")]
    pub(crate) verbose: bool,
    #[command(flatten)]
    pub(crate) members: Box<MembersCli>,
    /// The server command and its arguments. Default: the one instance of wharf.toml, else
    /// package.json's scripts.dev (run by npm, or pnpm, yarn or bun as the lockfile says)
    #[arg(last = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

/// `wharf run`'s replicas and health flags (issue 18).
#[derive(Debug, Default, Args)]
pub(crate) struct MembersCli {
    /// Run N members of the name (1-64), each a server with a socket of its own, balanced by
    /// the proxy; their lines say NAME#K
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::model::project::MAX_REPLICAS)))]
    pub(crate) replicas: Option<u32>,
    /// Add one member to a name that runs already (started by another `wharf run`)
    #[arg(long, conflicts_with_all = ["replicas", "force", "reuse"])]
    pub(crate) join: bool,
    /// Keep each client on one member (a cookie), for apps with in-memory sessions
    #[arg(long)]
    pub(crate) sticky: bool,
    /// Check GET PATH while the server is ready; after --health-failures failures in a row it
    /// is out of rotation until a check passes
    #[arg(long, value_name = "PATH", value_parser = crate::model::project::parse_health_path)]
    pub(crate) health: Option<String>,
    /// With --health: time between checks (2s, 500ms; default 2s)
    #[arg(long, value_name = "DURATION", requires = "health",
        value_parser = crate::model::project::parse_duration_str)]
    pub(crate) health_interval: Option<std::time::Duration>,
    /// With --health: failures in a row before the server is out of rotation (default 3)
    #[arg(long, value_name = "N", requires = "health",
        value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) health_failures: Option<u32>,
}

#[derive(Debug, Args)]
pub(crate) struct ProxyCli {
    /// Address to listen on (repeatable): 127.0.0.1:7080, [::1]:7080, or a port for both.
    /// Default: $WHARF_LISTEN, then `[proxy] listen` in config.toml, then port 80 if allowed,
    /// else 7080, on 127.0.0.1 and [::1]
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct LsCli {
    /// Machine-readable output
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true))]
pub(crate) struct StopCli {
    /// The instances to stop
    #[arg(group = "what", value_name = "NAME")]
    pub(crate) names: Vec<Name>,
    /// Stop every instance
    #[arg(long, group = "what")]
    pub(crate) all: bool,
    /// Stop the front proxy (instances keep running and re-register when it is back)
    #[arg(long, group = "what")]
    pub(crate) proxy: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AliasCli {
    /// The name to route: http://NAME.localhost
    pub(crate) name: Name,
    /// Where to: PORT, 127.0.0.1:PORT, [::1]:PORT or localhost:PORT
    #[arg(required_unless_present = "rm")]
    pub(crate) addr: Option<String>,
    /// Remove the alias instead
    #[arg(long, conflicts_with = "addr")]
    pub(crate) rm: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EnvCli {
    /// Only this instance
    pub(crate) name: Option<Name>,
    /// shell (`export NAME_URL=…`), dotenv (`NAME_URL=…`) or json
    #[arg(long, value_enum, default_value = "shell")]
    pub(crate) format: EnvFormat,
    /// Also what makes HTTPS clients trust wharf's CA, as instances get it
    /// (NODE_EXTRA_CA_CERTS, SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE)
    #[arg(long)]
    pub(crate) ca: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum EnvFormat {
    Shell,
    Dotenv,
    Json,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    wharf install --dry-run                 # show the units, write nothing\n  \
    wharf install                           # proxy on 7080, socket-activated by your systemd\n  \
    wharf install --port 80 --sysctl        # port 80 by lowering ip_unprivileged_port_start\n  \
    wharf install --instance api --port 4100 -- gunicorn app:app")]
pub(crate) struct InstallCli {
    /// The proxy's port (or the instance's, with --instance)
    #[arg(long, short = 'p')]
    pub(crate) port: Option<u16>,
    /// Print what would be written and run, change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Port < 1024 on Linux: lower net.ipv4.ip_unprivileged_port_start (writes /etc/sysctl.d)
    #[arg(long, conflicts_with = "system_socket")]
    pub(crate) sysctl: bool,
    /// Port < 1024 on Linux: a system socket unit that starts the proxy as you (writes /etc/systemd)
    #[arg(long)]
    pub(crate) system_socket: bool,
    /// Write a launchd LaunchAgent instead of systemd units (the default on macOS)
    #[arg(long, conflicts_with_all = ["sysctl", "system_socket", "instance"])]
    pub(crate) launchd: bool,
    /// Export a server as its own socket-activated unit pair instead (wharf-NAME.socket/.service)
    #[arg(long, value_name = "NAME", requires = "command")]
    pub(crate) instance: Option<Name>,
    /// With --instance: the server command, which gets the socket as fd 3 (LISTEN_FDS)
    #[arg(last = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct UninstallCli {
    /// Print what would be removed, change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Remove an exported instance's units instead of the proxy's
    #[arg(long, value_name = "NAME")]
    pub(crate) instance: Option<Name>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The help once showed `http.server {port}`, which listens on every interface.
    #[test]
    fn help_examples_keep_servers_on_loopback() {
        let mut cli = Cli::command();
        for sub in ["run", "install"] {
            let help = cli
                .find_subcommand_mut(sub)
                .unwrap()
                .render_long_help()
                .to_string();
            for line in help.lines().filter(|l| l.contains("http.server")) {
                assert!(line.contains("-b 127.0.0.1"), "{sub}: {line}");
            }
        }
        Cli::command().debug_assert();
    }
}
