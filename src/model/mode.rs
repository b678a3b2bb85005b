//! Choosing how an instance gets its socket: fd mode (inherited, `LISTEN_FDS`) or env mode
//! (`PORT`, the server binds), and the options that make a known server use it. Looks only at
//! the command line, `sh -c` strings and package.json scripts; never runs anything.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    Fd,
    Env,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Fd => "fd",
            Mode::Env => "env",
        })
    }
}

/// The chosen mode, the command to run (with any options wharf adds, placeholders not yet
/// filled in) and a sentence saying why.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Launch {
    pub(crate) mode: Mode,
    pub(crate) argv: Vec<String>,
    pub(crate) reason: String,
    /// Whether `LISTEN_PID` can name the server: false when a wrapper in front of it forks,
    /// since the server's pid is then not the one wharf starts.
    pub(crate) listen_pid: bool,
    /// Whether to offer a `NOTIFY_SOCKET` (false for servers that only complain about it).
    pub(crate) notify: bool,
    /// fd mode for a server wharf knows cannot take the socket: wharf only follows where it
    /// listens, so nothing can wait on the socket for it (on demand cannot work).
    pub(crate) follows: bool,
}

/// Where the instance's settings come from, so that messages name the switch to change.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source<'a> {
    CommandLine,
    /// A wharf.toml.
    File(&'a Path),
}

impl Source<'_> {
    /// How the user asked for `mode`: `--fd was given`, `mode = "fd" in /p/wharf.toml`.
    fn asked(&self, mode: Mode) -> String {
        match self {
            Source::CommandLine => format!("--{mode} was given"),
            Source::File(file) => format!("mode = \"{mode}\" in {}", file.display()),
        }
    }

    /// Why on-demand activation forces fd mode.
    fn on_demand(&self) -> String {
        format!(
            "{} needs it (the socket must exist before the server)",
            self.on_demand_switch()
        )
    }

    /// Where on-demand activation was asked for: `--on-demand`, `activation = "on-demand" in
    /// /p/wharf.toml`.
    pub(crate) fn on_demand_switch(&self) -> String {
        match self {
            Source::CommandLine => "--on-demand".to_string(),
            Source::File(file) => format!("activation = \"on-demand\" in {}", file.display()),
        }
    }

    /// How to ask for `mode`: `--env`, `mode = "env" in wharf.toml`.
    pub(crate) fn switch(&self, mode: Mode) -> String {
        match self {
            Source::CommandLine => format!("--{mode}"),
            Source::File(_) => format!("mode = \"{mode}\" in wharf.toml"),
        }
    }
}

/// An option wharf may add: added unless the command already gives one of `names` (an empty
/// `names` stands for a positional argument, as `manage.py runserver ADDR`).
struct Opt {
    names: &'static [&'static str],
    add: &'static [&'static str],
}

const fn opt(names: &'static [&'static str], add: &'static [&'static str]) -> Opt {
    Opt { names, add }
}

/// How a known server can take an inherited socket.
enum Takes {
    /// It cannot: it binds for itself, so env mode only.
    Nothing,
    /// It uses the fd these options name, whatever its pid.
    Named(&'static [Opt]),
    /// It reads `LISTEN_FDS` itself, only when `LISTEN_PID` is its own pid; `opts` are added
    /// then. Behind a wrapper that forks, `named` passes the fd explicitly instead; a server
    /// without such an option binds for itself there (env mode).
    Activation {
        opts: &'static [Opt],
        named: Option<&'static [Opt]>,
    },
}

/// A server wharf knows: how it takes a socket, and how it binds 127.0.0.1:{port} itself.
struct Known {
    program: &'static str,
    /// Only when the next word is one of these (e.g. `next dev`); empty = any.
    verbs: &'static [&'static str],
    takes: Takes,
    /// Options for env mode.
    binds: &'static [Opt],
    /// False where `NOTIFY_SOCKET` only makes it complain: puma before 6.1 logs "Systemd
    /// integration failed … sd_notify gem" on every start unless that gem is installed. In fd
    /// mode, requests flow before readiness anyway; `--ready notify` offers it all the same.
    notify: bool,
    /// Options only releases from the given one on, added in either mode when the installed
    /// release is known to be that new (an older one refuses an option it does not know), and
    /// why.
    since: &'static [Since],
}

/// An option a known server accepts from release `version` on.
struct Since {
    version: Version,
    opt: Opt,
    why: &'static str,
}

/// A release, major and minor: `(8, 4)`.
pub(crate) type Version = (u32, u32);

/// The release a package.json `version` names: "8.4.0" and "8.4.0-beta.1" are `(8, 4)`.
pub(crate) fn parse_version(version: &str) -> Option<Version> {
    let mut parts = version.trim().trim_start_matches('v').splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?;
    let digits = minor
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(minor.len());
    Some((major, minor[..digits].parse().ok()?))
}

const PORT_HOST: &[Opt] = &[
    opt(&["--port"], &["--port", "{port}"]),
    opt(&["--host"], &["--host", "127.0.0.1"]),
];

/// Vite's options for its port and host, `--strictPort` so that it fails rather than take
/// another port when the one it is given is taken.
const VITE_BINDS: &[Opt] = &[
    opt(&["--port"], &["--port", "{port}"]),
    opt(&["--strictPort", "--strict-port"], &["--strictPort"]),
    opt(&["--host"], &["--host", "127.0.0.1"]),
];

const KNOWN: &[Known] = &[
    Known {
        program: "gunicorn",
        verbs: &[],
        takes: Takes::Activation {
            opts: &[],
            named: Some(&[opt(&["--bind", "-b"], &["--bind", "fd://{fd}"])]),
        },
        binds: &[opt(&["--bind", "-b"], &["--bind", "127.0.0.1:{port}"])],
        notify: true,
        since: &[],
    },
    Known {
        program: "puma",
        verbs: &[],
        // Without `only`, puma binds its configured or default address (0.0.0.0:9292) and
        // closes the socket it was handed as unused.
        takes: Takes::Activation {
            opts: &[opt(
                &["--bind-to-activated-sockets"],
                &["--bind-to-activated-sockets", "only"],
            )],
            named: None,
        },
        binds: &[opt(
            &["--bind", "-b", "--port", "-p"],
            &["--bind", "tcp://127.0.0.1:{port}"],
        )],
        notify: false,
        since: &[],
    },
    Known {
        program: "uvicorn",
        verbs: &[],
        takes: Takes::Named(&[opt(&["--fd"], &["--fd", "{fd}"])]),
        binds: PORT_HOST,
        notify: true,
        since: &[],
    },
    Known {
        program: "hypercorn",
        verbs: &[],
        takes: Takes::Named(&[opt(&["--bind", "-b"], &["--bind", "fd://{fd}"])]),
        binds: &[opt(&["--bind", "-b"], &["--bind", "127.0.0.1:{port}"])],
        notify: true,
        since: &[],
    },
    Known {
        program: "vite",
        verbs: &[],
        takes: Takes::Nothing,
        binds: VITE_BINDS,
        notify: true,
        since: &[Since {
            version: (8, 4),
            opt: opt(&["--bypass-lock"], &["--bypass-lock"]),
            why: "vite 8.4 refuses a second dev server of the same project, and replicas, \
                  reloads and `wharf up` run one beside the other",
        }],
    },
    // Vite's dev server behind a framework's own command, which ignores PORT (5173 unless
    // told) and passes Vite's options on.
    Known {
        program: "react-router",
        verbs: &["dev"],
        takes: Takes::Nothing,
        binds: VITE_BINDS,
        notify: true,
        since: &[],
    },
    Known {
        program: "remix",
        verbs: &["vite:dev"],
        takes: Takes::Nothing,
        binds: VITE_BINDS,
        notify: true,
        since: &[],
    },
    Known {
        program: "next",
        verbs: &["dev", "start"],
        takes: Takes::Nothing,
        binds: &[
            opt(&["--port", "-p"], &["--port", "{port}"]),
            opt(&["--hostname", "-H"], &["--hostname", "127.0.0.1"]),
        ],
        notify: true,
        since: &[],
    },
    Known {
        program: "astro",
        verbs: &["dev", "preview"],
        takes: Takes::Nothing,
        binds: PORT_HOST,
        notify: true,
        since: &[],
    },
    Known {
        program: "webpack",
        verbs: &["serve"],
        takes: Takes::Nothing,
        binds: PORT_HOST,
        notify: true,
        since: &[],
    },
    Known {
        program: "webpack-dev-server",
        verbs: &[],
        takes: Takes::Nothing,
        binds: PORT_HOST,
        notify: true,
        since: &[],
    },
    Known {
        program: "flask",
        verbs: &["run"],
        takes: Takes::Nothing,
        binds: &[
            opt(&["--port", "-p"], &["--port", "{port}"]),
            opt(&["--host", "-h"], &["--host", "127.0.0.1"]),
        ],
        notify: true,
        since: &[],
    },
    Known {
        program: "rails",
        verbs: &["server", "s"],
        takes: Takes::Nothing,
        binds: &[
            opt(&["-p", "--port"], &["-p", "{port}"]),
            opt(&["-b", "--binding"], &["-b", "127.0.0.1"]),
        ],
        notify: true,
        since: &[],
    },
    Known {
        program: "manage.py",
        verbs: &["runserver"],
        takes: Takes::Nothing,
        binds: &[opt(&[], &["127.0.0.1:{port}"])],
        notify: true,
        since: &[],
    },
];

/// A program that runs the program named after it (and after its own options).
struct Wrapper {
    program: &'static str,
    /// Its sub-command that does so (`uv run`), or "" (`npx`).
    verb: &'static str,
    /// True if the program runs as its child; false if it runs in its place (exec, or loaded
    /// in-process like `bundle exec` does with Ruby scripts), keeping the pid wharf started.
    forks: bool,
    /// Its options that take the next word as their value.
    valued: &'static [&'static str],
}

const UV_VALUED: &[&str] = &[
    "--with",
    "-w",
    "--with-editable",
    "--with-requirements",
    "--python",
    "-p",
    "--package",
    "--extra",
    "--no-extra",
    "--group",
    "--no-group",
    "--only-group",
    "--env-file",
    "--directory",
    "--project",
    "--index",
    "--default-index",
    "--index-url",
    "-i",
    "--extra-index-url",
    "--find-links",
    "-f",
    "--config-file",
    "--cache-dir",
    "--color",
    "--resolution",
    "--prerelease",
    "--exclude-newer",
    "--link-mode",
    "--python-platform",
    "--index-strategy",
    "--keyring-provider",
    "--upgrade-package",
    "-P",
    "--reinstall-package",
    "--refresh-package",
    "--config-setting",
    "-C",
];
const NPM_VALUED: &[&str] = &["--package", "-p", "--call", "-c", "--workspace", "-w"];

/// Checked against each program's source or by running it: uv, npm, pnpm, yarn and bun run
/// the program as a child; env, poetry and pipenv exec it (POSIX); bundle exec execs it or
/// loads a Ruby script in-process; python and node run the script in-process.
const WRAPPERS: &[Wrapper] = &[
    runs("uv", "run", true, UV_VALUED),
    runs("uvx", "", true, UV_VALUED),
    runs("npx", "", true, NPM_VALUED),
    runs("npm", "exec", true, NPM_VALUED),
    runs("pnpm", "exec", true, &["--filter", "-F", "--dir", "-C"]),
    runs("pnpm", "dlx", true, &["--package"]),
    runs("yarn", "exec", true, &[]),
    runs("yarn", "dlx", true, &["--package", "-p"]),
    runs("bunx", "", true, &["--package", "-p"]),
    runs("env", "", false, &["-u", "--unset", "-C", "--chdir"]),
    runs("exec", "", false, &[]),
    runs(
        "poetry",
        "run",
        false,
        &["--directory", "-C", "--project", "-P"],
    ),
    runs("pipenv", "run", false, &[]),
    runs("bundle", "exec", false, &["--gemfile"]),
    runs("python", "", false, &["-c", "-W", "-X"]),
    runs(
        "node",
        "",
        false,
        &["-r", "--require", "--import", "--loader", "-e", "--eval"],
    ),
];

const fn runs(
    program: &'static str,
    verb: &'static str,
    forks: bool,
    valued: &'static [&'static str],
) -> Wrapper {
    Wrapper {
        program,
        verb,
        forks,
        valued,
    }
}

/// Package managers whose `run SCRIPT` runs a package.json script (always as a child); `true`
/// if extra arguments must follow a `--` to reach the script.
const SCRIPT_RUNNERS: &[(&str, bool)] = &[
    ("npm", true),
    ("pnpm", false),
    ("yarn", false),
    ("bun", false),
];

/// Shells whose `-c STRING` runs a command line (a child, unless it starts with `exec`).
const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh"];

/// Choose the mode for `argv`. `forced` is `--fd`/`--env` (or wharf.toml's `mode`),
/// `on_demand` implies fd mode, `source` says where these came from; `scripts` are
/// package.json's `scripts` of the working directory (empty if none); `installed` answers
/// which release of a server is installed there, if known (asked only of servers with options
/// newer releases alone accept).
pub(crate) fn choose(
    forced: Option<Mode>,
    on_demand: bool,
    source: Source,
    argv: &[String],
    scripts: &BTreeMap<String, String>,
    installed: &dyn Fn(&str) -> Option<Version>,
) -> Launch {
    let found = find_server(argv, scripts);
    let asked = match (forced, on_demand) {
        (Some(mode), _) => Some((mode, source.asked(mode))),
        (None, true) => Some((Mode::Fd, source.on_demand())),
        (None, false) => None,
    };
    let plain = |mode, reason: String| Launch {
        mode,
        argv: argv.to_vec(),
        listen_pid: found.fork.is_none(),
        notify: true,
        follows: false,
        reason: match (&found.fork, mode) {
            (Some(fork), Mode::Fd) => {
                format!("{reason}; {fork} runs the server as its child, so LISTEN_PID is left out")
            }
            _ => reason,
        },
    };
    let Some(known) = found.known else {
        return match asked {
            Some((mode, why)) => plain(mode, why),
            None => placeholder_plan(argv).map_or_else(
                || {
                    plain(
                        Mode::Env,
                        format!(
                            "not a server wharf knows, so it gets PORT and binds it itself \
                             ({} to pass a socket)",
                            source.switch(Mode::Fd)
                        ),
                    )
                },
                |(mode, why)| plain(mode, why.to_string()),
            ),
        };
    };
    if asked.is_none()
        && let Some((mode, why)) = placeholder_plan(argv)
    {
        return plain(mode, why.to_string());
    }
    let program = known.program;
    let fork = found.fork.as_deref();
    // (mode, options to add, why, whether wharf only follows where it listens: fd mode for a
    // server that cannot take the socket, or not behind this wrapper)
    let (mode, opts, mut reason, follows) = match (&asked, &known.takes, fork) {
        (Some((Mode::Env, why)), _, _) => (Mode::Env, known.binds, why.clone(), false),
        (Some((Mode::Fd, why)), Takes::Nothing, _) => (
            Mode::Fd,
            &[][..],
            format!("{why}; {program} cannot take a socket, so wharf follows where it listens"),
            true,
        ),
        (Some((Mode::Fd, _)), Takes::Named(opts), _)
        | (
            Some((Mode::Fd, _)),
            Takes::Activation {
                named: Some(opts), ..
            },
            Some(_),
        )
        | (None, Takes::Named(opts), _)
        | (
            None,
            Takes::Activation {
                named: Some(opts), ..
            },
            Some(_),
        ) => (Mode::Fd, *opts, takes_reason(program, &asked, fork), false),
        (Some((Mode::Fd, _)), Takes::Activation { opts, .. }, None)
        | (None, Takes::Activation { opts, .. }, None) => {
            (Mode::Fd, *opts, takes_reason(program, &asked, None), false)
        }
        (Some((Mode::Fd, why)), Takes::Activation { opts, named: None }, Some(fork)) => (
            Mode::Fd,
            *opts,
            format!(
                "{why}; but {program} takes a socket only when LISTEN_PID is its own pid, and \
                 {fork} runs it as a child: wharf follows where it listens instead"
            ),
            true,
        ),
        (None, Takes::Activation { named: None, .. }, Some(fork)) => (
            Mode::Env,
            known.binds,
            format!(
                "{program} takes a socket only when LISTEN_PID is its own pid, but {fork} runs \
                 it as a child; so it binds a port itself"
            ),
            false,
        ),
        (None, Takes::Nothing, _) => (
            Mode::Env,
            known.binds,
            format!("{program} binds for itself"),
            false,
        ),
    };
    let release = (!known.since.is_empty())
        .then(|| installed(program))
        .flatten();
    let newer: Vec<&Since> = known
        .since
        .iter()
        .filter(|since| release.is_some_and(|have| have >= since.version))
        .collect();
    let (added, kept) = apply(
        opts.iter().chain(newer.iter().map(|since| &since.opt)),
        known,
        &found.args,
    );
    let mut out = argv.to_vec();
    if !added.is_empty() {
        match found.via {
            Via::Direct => out.extend(added.iter().cloned()),
            Via::Script { separator } => {
                if separator && !out.iter().any(|a| a == "--") {
                    out.push("--".to_string());
                }
                out.extend(added.iter().cloned());
            }
            Via::Shell { at, separator } => {
                let dashes = if separator { " --" } else { "" };
                out[at] = format!("{}{dashes} {}", out[at], added.join(" "));
            }
        }
        reason.push_str(&format!("; adding {}", added.join(" ")));
    }
    if !kept.is_empty() {
        reason.push_str(&format!("; keeping the command's own {}", kept.join(" ")));
    }
    for since in newer {
        reason.push_str(&format!(" ({}: {})", since.opt.add.join(" "), since.why));
    }
    if let Via::Script { .. } = found.via {
        reason.push_str(" (seen through the package.json script)");
    }
    if !known.notify {
        reason.push_str(&format!(
            "; no NOTIFY_SOCKET ({program} before 6.1 only complains about it; --ready notify \
             offers it)"
        ));
    }
    Launch {
        mode,
        argv: out,
        reason,
        listen_pid: fork.is_none(),
        notify: known.notify,
        follows,
    }
}

/// `{fd}` decides fd mode, `{port}` env mode.
fn placeholder_plan(argv: &[String]) -> Option<(Mode, &'static str)> {
    if argv.iter().any(|a| a.contains("{fd")) {
        return Some((Mode::Fd, "the command has an {fd} placeholder"));
    }
    if argv.iter().any(|a| a.contains("{port")) {
        return Some((Mode::Env, "the command has a {port} placeholder"));
    }
    None
}

fn takes_reason(program: &str, asked: &Option<(Mode, String)>, fork: Option<&str>) -> String {
    let base = match asked {
        Some((_, why)) => format!("{why}; {program} takes an inherited socket"),
        None => format!("{program} takes an inherited socket"),
    };
    match fork {
        Some(fork) => format!("{base}; {fork} runs it as a child, so it is told which fd"),
        None => base,
    }
}

/// The words of `opts` the command does not already give (to add), and the names it does give
/// (left alone).
fn apply<'o>(
    opts: impl IntoIterator<Item = &'o Opt>,
    known: &Known,
    args: &[String],
) -> (Vec<String>, Vec<&'static str>) {
    let after_verb = if known.verbs.is_empty() {
        args
    } else {
        &args[1.min(args.len())..]
    };
    let mut added = Vec::new();
    let mut kept = Vec::new();
    for o in opts {
        let given = if o.names.is_empty() {
            after_verb.iter().any(|a| !a.starts_with('-'))
        } else {
            after_verb.iter().any(|a| {
                o.names
                    .iter()
                    .any(|n| a == n || a.strip_prefix(n).is_some_and(|r| r.starts_with('=')))
            })
        };
        if given {
            kept.push(o.names.first().copied().unwrap_or("address"));
        } else {
            added.extend(o.add.iter().map(|s| s.to_string()));
        }
    }
    (added, kept)
}

/// Where the server's options go.
#[derive(Debug, PartialEq, Eq)]
enum Via {
    /// At the end of the command.
    Direct,
    /// At the end of `npm run SCRIPT`, after a `--` where the runner needs one.
    Script { separator: bool },
    /// At the end of the `sh -c` string at index `at`, after a `--` if `separator` (a
    /// package.json script run by npm).
    Shell { at: usize, separator: bool },
}

struct Found {
    known: Option<&'static Known>,
    /// The words after the server's program name.
    args: Vec<String>,
    /// The first wrapper in front of the server that runs it as a child (`uv run`), if any.
    fork: Option<String>,
    via: Via,
}

/// The base name of a program, with a Python version suffix dropped (`python3.12` → `python`).
fn program_name(word: &str) -> &str {
    let base = word.rsplit('/').next().unwrap_or(word);
    match base.strip_prefix("python") {
        Some(v) if v.chars().all(|c| c.is_ascii_digit() || c == '.') => "python",
        _ => base,
    }
}

fn find_server(argv: &[String], scripts: &BTreeMap<String, String>) -> Found {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    // `sh -c 'STRING'`: look into the string's last command.
    if let [shell, "-c", script, ..] = words[..]
        && SHELLS.contains(&program_name(shell))
    {
        let command = last_command(script);
        let (walked, args) = walk(&command);
        let exec = script.trim_start().starts_with("exec ");
        let shell_fork = (!exec).then(|| format!("{} -c", program_name(shell)));
        if walked.known.is_none() {
            // `sh -c 'npm run dev'`: the script's server, as for `npm run dev` itself.
            let command = command.strip_prefix(&["exec"]).unwrap_or(&command);
            if let Some(found) = script_server(command, scripts) {
                let separator = matches!(found.via, Via::Script { separator: true })
                    && !command.contains(&"--");
                return Found {
                    fork: found.fork.or(shell_fork),
                    via: Via::Shell { at: 2, separator },
                    ..found
                };
            }
        }
        return Found {
            known: walked.known,
            args,
            fork: walked.fork.or(shell_fork),
            via: Via::Shell {
                at: 2,
                separator: false,
            },
        };
    }
    let (walked, args) = walk(&words);
    if walked.known.is_some() {
        return Found {
            known: walked.known,
            args,
            fork: walked.fork,
            via: Via::Direct,
        };
    }
    // `npm run dev`, `pnpm dev`, `yarn start`: look inside the script.
    script_server(&words, scripts).unwrap_or(Found {
        known: None,
        args: Vec::new(),
        fork: walked.fork,
        via: Via::Direct,
    })
}

fn script_server(words: &[&str], scripts: &BTreeMap<String, String>) -> Option<Found> {
    let (&first, rest) = words.split_first()?;
    let runner = program_name(first);
    let &(_, needs_separator) = SCRIPT_RUNNERS.iter().find(|(r, _)| *r == runner)?;
    let rest = match rest.first() {
        Some(&"run") | Some(&"run-script") => &rest[1..],
        _ => rest,
    };
    let script_name = match rest.first() {
        Some(s) => *s,
        None if runner == "npm" => return None,
        None => "start",
    };
    let script = scripts.get(script_name)?;
    let (walked, args) = walk(&last_command(script));
    walked.known?;
    Some(Found {
        known: walked.known,
        args: args
            .into_iter()
            .chain(rest.iter().skip(1).map(|s| s.to_string()))
            .collect(),
        fork: Some(format!("{runner} run")),
        via: Via::Script {
            separator: needs_separator,
        },
    })
}

/// The words of the last command of a shell command line (after `&&`, `||`, `;`), without
/// leading `VAR=value` assignments; empty if it pipes or redirects, where added options
/// would not reach the server.
fn last_command(script: &str) -> Vec<&str> {
    let words: Vec<&str> = script.split_whitespace().collect();
    let start = words
        .iter()
        .rposition(|w| matches!(*w, "&&" | "||" | ";") || w.ends_with(';'))
        .map_or(0, |i| i + 1);
    let last = &words[start..];
    if last
        .iter()
        .any(|w| w.contains(['|', '>', '<']) || *w == "&")
    {
        return Vec::new();
    }
    last.iter()
        .copied()
        .skip_while(|w| w.contains('=') && !w.starts_with('-'))
        .collect()
}

struct Walked {
    known: Option<&'static Known>,
    fork: Option<String>,
}

/// Skip wrappers (and their options), then match the server table. Returns the server, if
/// known, the first forking wrapper, and the words after the server's name.
fn walk(words: &[&str]) -> (Walked, Vec<String>) {
    let mut fork: Option<String> = None;
    let mut i = 0;
    while i < words.len() {
        let word = program_name(words[i]);
        if let Some(known) = KNOWN.iter().find(|k| k.program == word) {
            let rest = &words[i + 1..];
            let verb_ok =
                known.verbs.is_empty() || rest.first().is_some_and(|v| known.verbs.contains(v));
            let args = rest.iter().map(|s| s.to_string()).collect();
            return (
                Walked {
                    known: verb_ok.then_some(known),
                    fork,
                },
                args,
            );
        }
        let next = words.get(i + 1).copied();
        let Some(wrapper) = WRAPPERS
            .iter()
            .find(|w| w.program == word && (w.verb.is_empty() || next == Some(w.verb)))
        else {
            break;
        };
        if wrapper.forks && fork.is_none() {
            fork = Some(match wrapper.verb {
                "" => wrapper.program.to_string(),
                verb => format!("{} {verb}", wrapper.program),
            });
        }
        i += if wrapper.verb.is_empty() { 1 } else { 2 };
        while let Some(&w) = words.get(i) {
            if w == "--" {
                i += 1;
                break;
            }
            if !w.starts_with('-') && !w.contains('=') {
                break;
            }
            i += if wrapper.valued.contains(&w) { 2 } else { 1 };
        }
    }
    (Walked { known: None, fork }, Vec::new())
}

/// Fill in `{fd}`, `{fd:SUB}`, `{port}` and `{port:SUB}`. `sockets` lists (name, port) in fd
/// order, main socket first.
pub(crate) fn substitute(argv: &[String], sockets: &[(String, u16)]) -> Vec<String> {
    argv.iter()
        .map(|arg| {
            let mut arg = arg.clone();
            for (i, (name, port)) in sockets.iter().enumerate() {
                let fd = (3 + i).to_string();
                let port = port.to_string();
                if i == 0 {
                    arg = arg.replace("{fd}", &fd).replace("{port}", &port);
                }
                arg = arg
                    .replace(&format!("{{fd:{name}}}"), &fd)
                    .replace(&format!("{{port:{name}}}"), &port);
            }
            arg
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    /// No release of anything is known to be installed.
    fn none(_: &str) -> Option<Version> {
        None
    }

    fn choose_as(forced: Option<Mode>, on_demand: bool, source: Source, s: &str) -> Launch {
        choose(
            forced,
            on_demand,
            source,
            &words(s),
            &BTreeMap::new(),
            &none,
        )
    }

    fn choose_argv(argv: &[String]) -> Launch {
        choose(
            None,
            false,
            Source::CommandLine,
            argv,
            &BTreeMap::new(),
            &none,
        )
    }

    fn choose_str(s: &str) -> Launch {
        choose_as(None, false, Source::CommandLine, s)
    }

    #[test]
    fn placeholders_decide_first() {
        assert_eq!(choose_str("uvicorn app:app --fd {fd}").mode, Mode::Fd);
        assert_eq!(
            choose_str("gunicorn --bind 127.0.0.1:{port} app").mode,
            Mode::Env
        );
        let plan = choose_str("python3 -m http.server {port}");
        assert_eq!(
            (plan.mode, plan.argv),
            (Mode::Env, words("python3 -m http.server {port}"))
        );
    }

    #[test]
    fn known_servers_through_wrappers() {
        assert_eq!(choose_str("gunicorn app:app").mode, Mode::Fd);
        assert_eq!(choose_str("bundle exec puma").mode, Mode::Fd);
        let plan = choose_str("uvicorn app:app");
        assert_eq!(plan.argv, words("uvicorn app:app --fd {fd}"));
        let plan = choose_str("npx vite");
        assert_eq!(plan.mode, Mode::Env);
        assert_eq!(
            plan.argv,
            words("npx vite --port {port} --strictPort --host 127.0.0.1")
        );
        assert!(choose_str("next build").reason.contains("not a server"));
        assert_eq!(
            choose_str("python3.12 -u -m gunicorn app").argv,
            words("python3.12 -u -m gunicorn app"),
            "python runs gunicorn in-process: LISTEN_PID holds"
        );
    }

    #[test]
    fn puma_uses_only_the_handed_socket_and_gets_no_notify_socket() {
        // Without `only`, puma binds 0.0.0.0:9292 and closes the socket as unused.
        let plan = choose_str("bundle exec puma config.ru");
        assert_eq!(
            (plan.mode, plan.argv, plan.listen_pid, plan.notify),
            (
                Mode::Fd,
                words("bundle exec puma config.ru --bind-to-activated-sockets only"),
                true,
                false
            )
        );
        assert!(plan.reason.contains("NOTIFY_SOCKET"), "{}", plan.reason);
        let plan = choose_as(Some(Mode::Env), false, Source::CommandLine, "puma");
        assert_eq!(plan.argv, words("puma --bind tcp://127.0.0.1:{port}"));
    }

    #[test]
    fn forking_wrappers_pass_the_fd_by_name_or_fall_back_to_env() {
        // uv forks: LISTEN_PID would be uv's, and gunicorn would bind 127.0.0.1:8000.
        let plan = choose_str("uv run --no-sync gunicorn -w 2 app:app");
        assert_eq!(
            (plan.mode, plan.argv, plan.listen_pid),
            (
                Mode::Fd,
                words("uv run --no-sync gunicorn -w 2 app:app --bind fd://{fd}"),
                false
            )
        );
        assert!(
            plan.reason.contains("uv run runs it as a child"),
            "{}",
            plan.reason
        );
        // An option's value that names another known server is not mistaken for the program.
        let plan = choose_str("uv run --with flask --python 3.12 gunicorn app");
        assert_eq!(plan.argv.last().unwrap(), "fd://{fd}");
        // The user's own --bind is kept (wharf then follows where it listens).
        let plan = choose_str("uv run gunicorn -b 127.0.0.1:9000 app");
        assert_eq!(plan.argv, words("uv run gunicorn -b 127.0.0.1:9000 app"));
        assert!(
            plan.reason.contains("keeping the command's own --bind"),
            "{}",
            plan.reason
        );
        // puma cannot be told an fd: behind a fork it binds a port itself.
        let plan = choose_str("npx puma");
        assert_eq!(
            (plan.mode, plan.argv),
            (Mode::Env, words("npx puma --bind tcp://127.0.0.1:{port}"))
        );
        // poetry, pipenv and bundle exec: same pid, no extra options.
        for cmd in [
            "poetry run gunicorn app",
            "pipenv run gunicorn app",
            "env A=1 gunicorn app",
        ] {
            let plan = choose_str(cmd);
            assert_eq!((plan.argv, plan.listen_pid), (words(cmd), true), "{cmd}");
        }
        let plan = choose_str("uvx hypercorn app:app");
        assert_eq!(plan.argv, words("uvx hypercorn app:app --bind fd://{fd}"));
    }

    #[test]
    fn shell_strings_are_looked_into() {
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            "cd backend && DEBUG=1 gunicorn app:app".to_string(),
        ];
        let plan = choose_argv(&argv);
        assert_eq!(plan.mode, Mode::Fd);
        assert_eq!(
            plan.argv[2],
            "cd backend && DEBUG=1 gunicorn app:app --bind fd://{fd}"
        );
        assert!(!plan.listen_pid);
        let argv = vec!["sh".into(), "-c".into(), "exec gunicorn app:app".into()];
        let plan = choose_argv(&argv);
        assert_eq!(
            (plan.argv[2].as_str(), plan.listen_pid),
            ("exec gunicorn app:app", true)
        );
        let argv = vec!["sh".into(), "-c".into(), "vite | tee log".into()];
        let plan = choose_argv(&argv);
        assert_eq!(
            plan.argv[2], "vite | tee log",
            "a pipe: options would not reach vite"
        );
    }

    #[test]
    fn options_already_given_are_kept_and_the_rest_added() {
        // `vite --host` listens everywhere on purpose: kept, but --port is still added.
        let plan = choose_str("vite --host");
        assert_eq!(plan.argv, words("vite --host --port {port} --strictPort"));
        assert!(
            plan.reason
                .contains("adding --port {port} --strictPort; keeping the command's own --host"),
            "{}",
            plan.reason
        );
        let plan = choose_str("/usr/local/bin/next dev --port=3000");
        assert_eq!(
            plan.argv,
            words("/usr/local/bin/next dev --port=3000 --hostname 127.0.0.1")
        );
        let plan = choose_str("python manage.py runserver 8000");
        assert_eq!(plan.argv, words("python manage.py runserver 8000"));
    }

    #[test]
    fn frameworks_on_vite_get_vites_options() {
        // `react-router dev` ignores PORT and listens on 5173: routed, but as a server on a
        // port of its own choosing (no `wharf reload`, a second checkout on 5174).
        let scripts = BTreeMap::from([("dev".to_string(), "react-router dev".to_string())]);
        let plan = choose(
            None,
            false,
            Source::CommandLine,
            &words("npm run dev"),
            &scripts,
            &none,
        );
        assert_eq!(plan.mode, Mode::Env);
        assert_eq!(
            plan.argv,
            words("npm run dev -- --port {port} --strictPort --host 127.0.0.1")
        );
        let plan = choose_str("npx remix vite:dev --port 3000");
        assert_eq!(
            plan.argv,
            words("npx remix vite:dev --port 3000 --strictPort --host 127.0.0.1")
        );
        assert!(
            choose_str("react-router build")
                .reason
                .contains("not a server")
        );
    }

    #[test]
    fn package_scripts_are_looked_into() {
        let scripts = BTreeMap::from([("dev".to_string(), "NODE_ENV=dev vite --open".to_string())]);
        let cli = Source::CommandLine;
        let plan = choose(None, false, cli, &words("npm run dev"), &scripts, &none);
        assert_eq!(
            plan.argv,
            words("npm run dev -- --port {port} --strictPort --host 127.0.0.1")
        );
        assert!(plan.reason.contains("package.json"), "{}", plan.reason);
        let plan = choose(None, false, cli, &words("pnpm dev"), &scripts, &none);
        assert_eq!(
            plan.argv,
            words("pnpm dev --port {port} --strictPort --host 127.0.0.1")
        );
        assert_eq!(
            choose(None, false, cli, &words("npm run build"), &scripts, &none).mode,
            Mode::Env
        );
        let scripts = BTreeMap::from([("start".to_string(), "gunicorn app:app".to_string())]);
        let plan = choose(None, false, cli, &words("npm start"), &scripts, &none);
        assert_eq!(plan.argv, words("npm start -- --bind fd://{fd}"));
    }

    #[test]
    fn fd_mode_for_a_server_that_cannot_take_a_socket_only_follows() {
        let cli = Source::CommandLine;
        assert!(choose_as(None, true, cli, "npx vite").follows);
        assert!(choose_as(Some(Mode::Fd), false, cli, "npx vite").follows);
        assert!(!choose_as(None, true, cli, "gunicorn app:app").follows);
        assert!(!choose_as(None, true, cli, "uv run gunicorn app:app").follows);
        assert!(!choose_str("npx vite").follows, "env mode follows nothing");
    }

    #[test]
    fn a_shell_string_running_a_package_script_is_looked_into() {
        let scripts = BTreeMap::from([("dev".to_string(), "vite".to_string())]);
        let cli = Source::CommandLine;
        let sh = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        let plan = choose(None, false, cli, &sh("npm run dev"), &scripts, &none);
        assert_eq!(plan.mode, Mode::Env);
        assert_eq!(
            plan.argv[2],
            "npm run dev -- --port {port} --strictPort --host 127.0.0.1"
        );
        let plan = choose(None, false, cli, &sh("exec pnpm dev"), &scripts, &none);
        assert_eq!(
            plan.argv[2],
            "exec pnpm dev --port {port} --strictPort --host 127.0.0.1"
        );
        let plan = choose(
            None,
            false,
            cli,
            &sh("npm run dev -- --open"),
            &scripts,
            &none,
        );
        assert_eq!(
            plan.argv[2],
            "npm run dev -- --open --port {port} --strictPort --host 127.0.0.1"
        );
    }

    #[test]
    fn forced_modes_still_get_the_servers_options_and_say_where_they_came_from() {
        let file = Path::new("/p/wharf.toml");
        let plan = choose_as(Some(Mode::Fd), false, Source::CommandLine, "uvicorn app");
        assert_eq!(plan.argv, words("uvicorn app --fd {fd}"));
        assert!(plan.reason.starts_with("--fd was given"), "{}", plan.reason);
        let plan = choose_as(Some(Mode::Fd), false, Source::File(file), "./srv");
        assert_eq!(plan.reason, "mode = \"fd\" in /p/wharf.toml");
        let plan = choose_as(None, true, Source::File(file), "uvicorn app");
        assert_eq!(plan.mode, Mode::Fd);
        assert!(
            plan.reason
                .starts_with("activation = \"on-demand\" in /p/wharf.toml"),
            "{}",
            plan.reason
        );
        let plan = choose_as(None, false, Source::File(file), "./srv");
        assert!(
            plan.reason
                .contains("(mode = \"fd\" in wharf.toml to pass a socket)"),
            "{}",
            plan.reason
        );
        assert!(!plan.reason.contains("--fd"), "{}", plan.reason);
        let plan = choose_as(Some(Mode::Fd), false, Source::CommandLine, "npx ./srv");
        assert!(!plan.listen_pid, "npx forks: LISTEN_PID would name npx");
    }

    #[test]
    fn substitution_fills_main_and_named_sockets() {
        let sockets = [("http".to_string(), 4001), ("admin".to_string(), 4002)];
        let argv = words("srv --fd {fd} --admin-fd {fd:admin} --port={port} --admin {port:admin}");
        assert_eq!(
            substitute(&argv, &sockets),
            words("srv --fd 3 --admin-fd 4 --port=4001 --admin 4002")
        );
    }

    #[test]
    fn options_of_newer_releases_only_when_that_release_is_installed() {
        let scripts = BTreeMap::from([("dev".to_string(), "vite".to_string())]);
        let cli = Source::CommandLine;
        let vite = |release: Version| move |program: &str| (program == "vite").then_some(release);
        let plan = choose(
            None,
            false,
            cli,
            &words("npm run dev"),
            &scripts,
            &vite((8, 4)),
        );
        assert_eq!(
            plan.argv,
            words("npm run dev -- --port {port} --strictPort --host 127.0.0.1 --bypass-lock")
        );
        assert!(
            plan.reason
                .contains("(--bypass-lock: vite 8.4 refuses a second dev server"),
            "{}",
            plan.reason
        );
        // Older releases refuse options they do not know: `Unknown option --bypassLock`.
        for older in [(8, 3), (5, 4)] {
            let plan = choose(None, false, cli, &words("npx vite"), &scripts, &vite(older));
            assert_eq!(
                plan.argv,
                words("npx vite --port {port} --strictPort --host 127.0.0.1")
            );
        }
        // fd mode (wharf follows where vite listens) needs it all the same; given, it is kept.
        let fd = |command: &str| {
            choose(
                Some(Mode::Fd),
                false,
                cli,
                &words(command),
                &scripts,
                &vite((9, 0)),
            )
        };
        let given = fd("vite --bypass-lock");
        assert_eq!(given.argv, words("vite --bypass-lock"));
        assert!(
            given
                .reason
                .contains("keeping the command's own --bypass-lock"),
            "{}",
            given.reason
        );
        assert_eq!(fd("vite").argv, words("vite --bypass-lock"));
    }

    #[test]
    fn releases_read_from_package_versions() {
        assert_eq!(parse_version("8.4.0"), Some((8, 4)));
        assert_eq!(parse_version("8.10.2-beta.1"), Some((8, 10)));
        assert_eq!(parse_version("v9.0.0"), Some((9, 0)));
        assert_eq!(parse_version("8"), None);
        assert_eq!(parse_version("latest"), None);
    }
}
