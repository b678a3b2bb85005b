//! The project file, `wharf.toml`: the instances a project declares, read in two layers (a raw
//! serde shape that refuses unknown keys, then validated types). Every error names the file,
//! the line and the key. It is read only if nobody else could have written it (see `trust`).
//! Running the instances is `up`'s job.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::model::mode::Mode;
use crate::model::name::{Name, NameError};
use crate::model::ports::{PortRangeError, PortRanges};
use crate::sys::trust::{Trust, TrustError};

pub(crate) const FILE_NAME: &str = "wharf.toml";
/// An on-demand instance with no `idle_timeout` is stopped after this long without connections.
pub(crate) const DEFAULT_IDLE: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    #[serde(default)]
    instances: BTreeMap<Spanned<String>, RawInstance>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawCommand {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    command: Spanned<RawCommand>,
    dir: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    mode: Option<Spanned<String>>,
    port: Option<u16>,
    range: Option<Spanned<String>>,
    #[serde(default)]
    sockets: Vec<Spanned<String>>,
    activation: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<toml::Value>>,
    restart: Option<Spanned<String>>,
    ready: Option<Spanned<String>>,
    replicas: Option<Spanned<i64>>,
    sticky: Option<bool>,
    health: Option<Spanned<RawHealth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Spanned<String>,
    interval: Option<Spanned<toml::Value>>,
    failures: Option<Spanned<i64>>,
}

/// How the server is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Activation {
    /// On the first connection, with the socket wharf already holds; stopped when idle.
    OnDemand,
    /// Right away, by `wharf up`.
    Start,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Restart {
    No,
    OnFailure,
    Always,
}

/// When the server counts as ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ready {
    /// It sends `READY=1` to `NOTIFY_SOCKET`.
    Notify,
    /// It accepts a connection (env mode: it listens).
    Connect,
    /// `GET PATH` gets any HTTP answer.
    Http(String),
}

/// A `ready` that is none of the ways wharf can tell.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not notify, connect or http:/PATH")]
pub(crate) struct ReadyError(String);

impl std::str::FromStr for Ready {
    type Err = ReadyError;
    fn from_str(s: &str) -> Result<Ready, ReadyError> {
        match s {
            "notify" => Ok(Ready::Notify),
            "connect" => Ok(Ready::Connect),
            s if s.starts_with("http:/") => Ok(Ready::Http(s["http:".len()..].to_string())),
            other => Err(ReadyError(other.to_string())),
        }
    }
}

impl std::fmt::Display for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ready::Notify => f.write_str("notify"),
            Ready::Connect => f.write_str("connect"),
            Ready::Http(path) => write!(f, "http:{path}"),
        }
    }
}

/// The most members one name may have (`replicas`, `--replicas`).
pub(crate) const MAX_REPLICAS: u32 = 64;
/// How often a ready server's health is checked when `health` names no `interval`.
pub(crate) const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Failed health checks in a row before a server is out of rotation, when `health` says not.
pub(crate) const DEFAULT_HEALTH_FAILURES: u32 = 3;

/// Health checks while a server is ready: `GET path` on its own address every `interval`;
/// `failures` failures in a row (an answer other than 2xx or 3xx, or none) take it out of
/// rotation (unhealthy) until one passes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Health {
    pub(crate) path: String,
    pub(crate) interval: Duration,
    pub(crate) failures: u32,
}

/// A health check path that is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an HTTP path; write one that starts with /, like \"/health\"")]
pub(crate) struct HealthPathError(String);

/// A health check path as given: it must start with `/`.
pub(crate) fn parse_health_path(s: &str) -> Result<String, HealthPathError> {
    match s.starts_with('/') && !s.chars().any(char::is_whitespace) {
        true => Ok(s.to_string()),
        false => Err(HealthPathError(s.to_string())),
    }
}

/// One declared instance, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Declared {
    pub(crate) name: Name,
    /// The argv to run (a string command becomes `sh -c STRING`).
    pub(crate) command: Vec<String>,
    /// Working directory, absolute.
    pub(crate) dir: PathBuf,
    /// The line `dir` was set on (else the table's), for messages.
    pub(crate) dir_line: usize,
    pub(crate) env: BTreeMap<String, String>,
    /// `None` = auto.
    pub(crate) mode: Option<Mode>,
    pub(crate) port: Option<u16>,
    pub(crate) range: Option<PortRanges>,
    pub(crate) sockets: Vec<Name>,
    pub(crate) activation: Activation,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) restart: Restart,
    pub(crate) ready: Option<Ready>,
    /// Members to run (`replicas`, 1 when not given).
    pub(crate) replicas: u32,
    /// Keep each client on one member.
    pub(crate) sticky: bool,
    pub(crate) health: Option<Health>,
    /// The line of its `[instances.NAME]` table, for messages.
    pub(crate) line: usize,
}

impl Declared {
    /// A digest of everything that shapes the running instance: a change means restart.
    pub(crate) fn fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &self.command,
            &self.dir,
            &self.env,
            self.mode.map(|m| m.to_string()),
            self.port,
        )
            .hash(&mut h);
        (
            self.range.as_ref().map(|r| r.to_string()),
            &self.sockets,
            format!("{:?}", self.activation),
        )
            .hash(&mut h);
        (
            self.idle_timeout,
            format!("{:?}{:?}", self.restart, self.ready),
        )
            .hash(&mut h);
        // Left out while they are the defaults, so that files written before them keep
        // their fingerprints (and running instances are not restarted by an upgrade).
        if (self.replicas, self.sticky, &self.health) != (1, false, &None) {
            (self.replicas, self.sticky, &self.health).hash(&mut h);
        }
        format!("{:016x}", h.finish())
    }

    /// Whether its working directory is there to start in; the error names the file (`path`),
    /// the line and the key.
    pub(crate) fn check_dir(&self, path: &Path) -> Result<(), ProjectError> {
        let problem = match std::fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => DirProblem::NotADirectory,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirProblem::Missing,
            Err(e) => DirProblem::Unusable(e.to_string()),
        };
        Err(ProjectError::Invalid {
            path: path.to_path_buf(),
            mistake: Box::new(Mistake {
                line: self.dir_line,
                issue: Issue::Key {
                    name: self.name.clone(),
                    key: "dir",
                    problem: Problem::Dir {
                        dir: self.dir.clone(),
                        problem,
                    },
                },
            }),
        })
    }
}

/// A parsed project file.
#[derive(Debug)]
pub(crate) struct Project {
    /// The file itself (symlinks resolved): what its instances are declared in.
    pub(crate) path: PathBuf,
    pub(crate) instances: Vec<Declared>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProjectError {
    #[error("no {FILE_NAME} in {0} or any directory above it; write one, or pass -f FILE")]
    NotFound(PathBuf),
    #[error(transparent)]
    Untrusted(#[from] TrustError),
    #[error("{path}:{mistake}")]
    Invalid {
        path: PathBuf,
        mistake: Box<Mistake>,
    },
}

/// A mistake in a project file: the line it is on, and what is wrong there.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{line}: {issue}")]
pub(crate) struct Mistake {
    pub(crate) line: usize,
    pub(crate) issue: Issue,
}

/// What is wrong, by key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Issue {
    /// Not TOML, or a key wharf does not know: toml's own message.
    #[error("{0}")]
    Syntax(String),
    /// The table's name (`[instances.NAME]`) is not a name.
    #[error("instances.{key}: {error}")]
    Name { key: String, error: NameError },
    #[error("instances.{name}.{key}: {problem}")]
    Key {
        name: Name,
        key: &'static str,
        problem: Problem,
    },
}

/// What is wrong with one key's value, and what to write instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Problem {
    #[error("is empty; give the program and its arguments")]
    EmptyArgv,
    #[error("is empty")]
    EmptyShell,
    #[error("{0:?} is not fd, env or auto")]
    Mode(String),
    #[error("{0}")]
    Range(PortRangeError),
    #[error("{0}")]
    SocketName(NameError),
    #[error("{0:?} is used twice (or is the main socket's name)")]
    SocketTwice(Name),
    #[error("{0:?} is not on-demand or start")]
    Activation(String),
    #[error(
        "on-demand needs fd mode: the socket must exist before the server does (set mode = \"fd\")"
    )]
    OnDemandNeedsFd,
    #[error("{0}")]
    Duration(DurationError),
    #[error(
        "only an on-demand instance is stopped when idle; add activation = \"on-demand\" or remove idle_timeout"
    )]
    IdleNotOnDemand,
    #[error("{0:?} is not no, on-failure or always")]
    Restart(String),
    #[error("{0}")]
    Ready(ReadyError),
    #[error("{dir} {problem}")]
    Dir { dir: PathBuf, problem: DirProblem },
    #[error("{0} is not a number of members from 1 to {MAX_REPLICAS}")]
    Replicas(i64),
    #[error("{0}")]
    HealthPath(HealthPathError),
    #[error("{0} is not a number of failures (1 or more)")]
    HealthFailures(i64),
}

/// Why an instance's working directory cannot be started in.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DirProblem {
    #[error("is not a directory")]
    NotADirectory,
    #[error("does not exist")]
    Missing,
    #[error("cannot be used: {0}")]
    Unusable(String),
}

/// A duration wharf cannot read (shown as TOML: a string in quotes).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0} is not a duration; write seconds (90) or \"90s\", \"15m\", \"2h\"")]
pub(crate) struct DurationError(String);

/// The nearest `wharf.toml` at or above `dir`.
pub(crate) fn find(dir: &Path) -> Result<PathBuf, ProjectError> {
    dir.ancestors()
        .map(|d| d.join(FILE_NAME))
        .find(|p| p.is_file())
        .ok_or_else(|| ProjectError::NotFound(dir.to_path_buf()))
}

/// Read `path` if `trust` allows it, and validate it.
pub(crate) fn load(path: &Path, trust: &Trust) -> Result<Project, ProjectError> {
    let (path, text) = trust.read(path)?;
    let base = path.parent().unwrap_or(Path::new("/"));
    match parse(&text, base) {
        Ok(instances) => Ok(Project { path, instances }),
        Err(mistake) => Err(ProjectError::Invalid {
            path,
            mistake: Box::new(mistake),
        }),
    }
}

/// Parse project text into its instances; relative `dir`s are taken from `base`.
pub(crate) fn parse(text: &str, base: &Path) -> Result<Vec<Declared>, Mistake> {
    let line_of = |span: Range<usize>| text[..span.start.min(text.len())].matches('\n').count() + 1;
    let raw: RawProject = toml::from_str(text).map_err(|e| Mistake {
        line: e.span().map(&line_of).unwrap_or(1),
        issue: Issue::Syntax(e.message().trim_end().to_string()),
    })?;
    let mut instances = Vec::new();
    for (key, raw) in raw.instances {
        let line = line_of(key.span());
        let name: Name = key.get_ref().parse().map_err(|error| Mistake {
            line,
            issue: Issue::Name {
                key: key.get_ref().clone(),
                error,
            },
        })?;
        let at = |span: Range<usize>, key: &'static str, problem: Problem| Mistake {
            line: line_of(span),
            issue: Issue::Key {
                name: name.clone(),
                key,
                problem,
            },
        };
        let command = match raw.command.get_ref() {
            RawCommand::Argv(argv) if argv.is_empty() || argv[0].is_empty() => {
                return Err(at(raw.command.span(), "command", Problem::EmptyArgv));
            }
            RawCommand::Argv(argv) => argv.clone(),
            RawCommand::Shell(s) if s.trim().is_empty() => {
                return Err(at(raw.command.span(), "command", Problem::EmptyShell));
            }
            RawCommand::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
        };
        let mode = match raw.mode.as_ref().map(|m| (m.span(), m.get_ref().as_str())) {
            None | Some((_, "auto")) => None,
            Some((_, "fd")) => Some(Mode::Fd),
            Some((_, "env")) => Some(Mode::Env),
            Some((span, other)) => {
                return Err(at(span, "mode", Problem::Mode(other.to_string())));
            }
        };
        let range = match &raw.range {
            None => None,
            Some(r) => Some(
                r.get_ref()
                    .parse::<PortRanges>()
                    .map_err(|e| at(r.span(), "range", Problem::Range(e)))?,
            ),
        };
        let mut sockets = Vec::new();
        for s in &raw.sockets {
            let sub: Name = Name::label(s.get_ref())
                .map_err(|e| at(s.span(), "sockets", Problem::SocketName(e)))?;
            if sub.as_str() == crate::model::ports::MAIN_SOCKET || sockets.contains(&sub) {
                return Err(at(s.span(), "sockets", Problem::SocketTwice(sub)));
            }
            sockets.push(sub);
        }
        let activation = match raw
            .activation
            .as_ref()
            .map(|a| (a.span(), a.get_ref().as_str()))
        {
            None | Some((_, "start")) => Activation::Start,
            Some((_, "on-demand")) => Activation::OnDemand,
            Some((span, other)) => {
                return Err(at(
                    span,
                    "activation",
                    Problem::Activation(other.to_string()),
                ));
            }
        };
        if activation == Activation::OnDemand && mode == Some(Mode::Env) {
            let span = raw.activation.as_ref().map(Spanned::span).unwrap_or(0..0);
            return Err(at(span, "activation", Problem::OnDemandNeedsFd));
        }
        let idle_timeout = match &raw.idle_timeout {
            None => None,
            Some(v) => Some(
                parse_duration(v.get_ref())
                    .map_err(|e| at(v.span(), "idle_timeout", Problem::Duration(e)))?,
            ),
        };
        if let (Some(v), Activation::Start) = (&raw.idle_timeout, activation) {
            return Err(at(v.span(), "idle_timeout", Problem::IdleNotOnDemand));
        }
        let restart = match raw
            .restart
            .as_ref()
            .map(|r| (r.span(), r.get_ref().as_str()))
        {
            None | Some((_, "on-failure")) => Restart::OnFailure,
            Some((_, "no")) => Restart::No,
            Some((_, "always")) => Restart::Always,
            Some((span, other)) => {
                return Err(at(span, "restart", Problem::Restart(other.to_string())));
            }
        };
        let ready = match &raw.ready {
            None => None,
            Some(r) => Some(
                r.get_ref()
                    .parse::<Ready>()
                    .map_err(|e| at(r.span(), "ready", Problem::Ready(e)))?,
            ),
        };
        let replicas = match &raw.replicas {
            None => 1,
            Some(r) => u32::try_from(*r.get_ref())
                .ok()
                .filter(|n| (1..=MAX_REPLICAS).contains(n))
                .ok_or_else(|| at(r.span(), "replicas", Problem::Replicas(*r.get_ref())))?,
        };
        let health = match &raw.health {
            None => None,
            Some(h) => {
                let h = h.get_ref();
                let path = parse_health_path(h.path.get_ref())
                    .map_err(|e| at(h.path.span(), "health.path", Problem::HealthPath(e)))?;
                let interval = match &h.interval {
                    None => DEFAULT_HEALTH_INTERVAL,
                    Some(v) => parse_duration(v.get_ref())
                        .map_err(|e| at(v.span(), "health.interval", Problem::Duration(e)))?,
                };
                let failures = match &h.failures {
                    None => DEFAULT_HEALTH_FAILURES,
                    Some(f) => u32::try_from(*f.get_ref())
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| {
                            at(
                                f.span(),
                                "health.failures",
                                Problem::HealthFailures(*f.get_ref()),
                            )
                        })?,
                };
                Some(Health {
                    path,
                    interval,
                    failures,
                })
            }
        };
        let (dir, dir_line) = match &raw.dir {
            None => (base.to_path_buf(), line),
            Some(d) => (base.join(d.get_ref()), line_of(d.span())),
        };
        instances.push(Declared {
            name,
            command,
            dir,
            dir_line,
            env: raw.env,
            mode,
            port: raw.port,
            range,
            sockets,
            activation,
            idle_timeout,
            restart,
            ready,
            replicas,
            sticky: raw.sticky.unwrap_or(false),
            health,
            line,
        });
    }
    Ok(instances)
}

/// A duration as people write it on the command line: `90`, `90s`, `15m`, `2h`, `250ms`.
pub(crate) fn parse_duration_str(s: &str) -> Result<Duration, DurationError> {
    let v = match s.parse::<i64>() {
        Ok(n) => toml::Value::Integer(n),
        Err(_) => toml::Value::String(s.to_string()),
    };
    parse_duration(&v)
}

/// `90`, `"90s"`, `"15m"`, `"2h"`, and `"250ms"` for what must be quick.
pub(crate) fn parse_duration(v: &toml::Value) -> Result<Duration, DurationError> {
    let bad = || DurationError(v.to_string());
    match v {
        toml::Value::Integer(n) if *n > 0 => Ok(Duration::from_secs(*n as u64)),
        toml::Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let n: u64 = s[..split].parse().map_err(|_| bad())?;
            let d = match &s[split..] {
                "ms" => Duration::from_millis(n),
                "" | "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.saturating_mul(60)),
                "h" => Duration::from_secs(n.saturating_mul(3600)),
                _ => return Err(bad()),
            };
            (n > 0).then_some(d).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Vec<Declared> {
        parse(text, Path::new("/p")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn parse_err(text: &str) -> (usize, String) {
        let mistake = parse(text, Path::new("/p")).unwrap_err();
        (mistake.line, mistake.issue.to_string())
    }

    #[test]
    fn a_full_instance_and_defaults() {
        let p = parse_ok(
            r#"
[instances.api]
command = ["gunicorn", "app:app"]
dir = "backend"
env = { DEBUG = "1" }
mode = "fd"
range = "4100-4199"
sockets = ["admin"]
activation = "on-demand"
idle_timeout = "10m"
restart = "always"
ready = "http:/health"

[instances.docs]
command = "python3 -m http.server $PORT"
"#,
        );
        let api = &p[0];
        assert_eq!(api.name.as_str(), "api");
        assert_eq!(api.dir, Path::new("/p/backend"));
        assert_eq!(api.activation, Activation::OnDemand);
        assert_eq!(api.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(api.ready, Some(Ready::Http("/health".into())));
        assert_eq!((api.line, api.dir_line), (2, 4));
        let docs = &p[1];
        assert_eq!(docs.command, ["sh", "-c", "python3 -m http.server $PORT"]);
        assert_eq!(
            (docs.activation, docs.restart, docs.mode),
            (Activation::Start, Restart::OnFailure, None)
        );
        assert_ne!(api.fingerprint(), docs.fingerprint());
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let (line, msg) = parse_err("[instances.api]\ncommand = \"x\"\nport = 1\nbogus = 2\n");
        assert_eq!(line, 4, "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
        let (line, msg) =
            parse_err("[instances.api]\ncommand = \"x\"\n\n[instances.api]\ncommand = \"y\"\n");
        assert_eq!(line, 4, "{msg}");
        assert!(
            msg.contains("duplicate") || msg.contains("defined"),
            "{msg}"
        );
        let (line, msg) = parse_err("[instances.Bad_Name]\ncommand = \"x\"\n");
        assert_eq!(line, 1);
        assert!(
            msg.contains("Bad_Name") && msg.contains("lowercase"),
            "{msg}"
        );
        let (line, msg) = parse_err("[instances.api]\ncommand = \"x\"\nrange = \"9-1\"\n");
        assert_eq!(line, 3);
        assert!(msg.contains("instances.api.range"), "{msg}");
        let (_, msg) = parse_err("[instances.api]\nport = 4000\n");
        assert!(msg.contains("command"), "{msg}");
        let (line, msg) = parse_err("[instances.api]\ncommand = []\n");
        assert_eq!(line, 2);
        assert!(msg.contains("empty"), "{msg}");
        let (_, msg) = parse_err(
            "[instances.api]\ncommand = \"x\"\nmode = \"env\"\nactivation = \"on-demand\"\n",
        );
        assert!(msg.contains("on-demand needs fd mode"), "{msg}");
        let (_, msg) = parse_err("[instances.api]\ncommand = \"x\"\nidle_timeout = \"5 days\"\n");
        assert!(msg.contains("not a duration"), "{msg}");
        let (line, msg) = parse_err("[instances.api]\ncommand = \"x\"\nidle_timeout = \"5m\"\n");
        assert!(msg.contains("only an on-demand instance"), "{msg}");
        assert_eq!(line, 3);
    }

    #[test]
    fn messages_say_what_and_how_to_fix() {
        let head = "[instances.api]\ncommand = \"x\"\n";
        for (rest, want) in [
            (
                "mode = \"tcp\"",
                "instances.api.mode: \"tcp\" is not fd, env or auto",
            ),
            (
                "restart = \"never\"",
                "instances.api.restart: \"never\" is not no, on-failure or always",
            ),
            (
                "ready = \"tcp\"",
                "instances.api.ready: \"tcp\" is not notify, connect or http:/PATH",
            ),
            (
                "activation = \"lazy\"",
                "instances.api.activation: \"lazy\" is not on-demand or start",
            ),
            (
                "range = \"x\"",
                "instances.api.range: \"x\" is not a port range; write LO-HI, like 4000-4999",
            ),
            (
                "sockets = [\"http\"]",
                "instances.api.sockets: Name(\"http\") is used twice (or is the main socket's name)",
            ),
            (
                "idle_timeout = 0\nactivation = \"on-demand\"",
                "instances.api.idle_timeout: 0 is not a duration; write seconds (90) or \"90s\", \"15m\", \"2h\"",
            ),
        ] {
            let (line, msg) = parse_err(&format!("{head}{rest}\n"));
            assert_eq!((line, msg.as_str()), (3, want));
        }
        let (_, msg) = parse_err("[instances.api]\ncommand = \" \"\n");
        assert_eq!(msg, "instances.api.command: is empty");
        let api = &parse_ok("[instances.api]\ncommand = \"x\"\ndir = \"nowhere\"\n")[0];
        let err = api.check_dir(Path::new("/p/wharf.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/p/wharf.toml:3: instances.api.dir: /p/nowhere does not exist"
        );
    }

    #[test]
    fn replicas_sticky_and_health() {
        let p = parse_ok(
            r#"
[instances.api]
command = "x"
replicas = 3
sticky = true
health = { path = "/up", interval = "50ms", failures = 5 }

[instances.web]
command = "y"
health = { path = "/health" }
"#,
        );
        let (api, web) = (&p[0], &p[1]);
        assert_eq!((api.replicas, api.sticky), (3, true));
        assert_eq!(
            api.health,
            Some(Health {
                path: "/up".into(),
                interval: Duration::from_millis(50),
                failures: 5
            })
        );
        assert_eq!((web.replicas, web.sticky), (1, false));
        assert_eq!(
            web.health,
            Some(Health {
                path: "/health".into(),
                interval: DEFAULT_HEALTH_INTERVAL,
                failures: DEFAULT_HEALTH_FAILURES
            })
        );
        let mut more = api.clone();
        more.replicas = 4;
        assert_ne!(
            api.fingerprint(),
            more.fingerprint(),
            "a change restarts it"
        );
        let plain = &parse_ok("[instances.api]\ncommand = \"x\"\n")[0];
        let mut one = plain.clone();
        one.replicas = 1;
        assert_eq!(plain.fingerprint(), one.fingerprint());
    }

    #[test]
    fn bad_replicas_and_health_name_the_line_and_key() {
        let head = "[instances.api]\ncommand = \"x\"\n";
        for (rest, line, want) in [
            (
                "replicas = 0",
                3,
                "instances.api.replicas: 0 is not a number of members from 1 to 64",
            ),
            (
                "replicas = 65",
                3,
                "instances.api.replicas: 65 is not a number of members from 1 to 64",
            ),
            (
                "[instances.api.health]\npath = \"health\"",
                4,
                "instances.api.health.path: \"health\" is not an HTTP path; write one that starts with /, like \"/health\"",
            ),
            (
                "[instances.api.health]\npath = \"/h\"\ninterval = \"soon\"",
                5,
                "instances.api.health.interval: \"soon\" is not a duration; write seconds (90) or \"90s\", \"15m\", \"2h\"",
            ),
            (
                "[instances.api.health]\npath = \"/h\"\nfailures = 0",
                5,
                "instances.api.health.failures: 0 is not a number of failures (1 or more)",
            ),
        ] {
            let (got_line, msg) = parse_err(&format!("{head}{rest}\n"));
            assert_eq!((got_line, msg.as_str()), (line, want), "{rest}");
        }
        let (line, msg) = parse_err(&format!("{head}sticky = \"yes\"\n"));
        assert_eq!(line, 3);
        assert!(msg.contains("sticky") || msg.contains("bool"), "{msg}");
        let (line, msg) = parse_err(&format!("{head}health = {{ path = \"/h\", every = 2 }}\n"));
        assert_eq!(line, 3);
        assert!(msg.contains("every"), "{msg}");
    }

    #[test]
    fn durations_take_milliseconds_too() {
        assert_eq!(parse_duration_str("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration_str("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration_str("0ms").is_err());
        assert!(parse_duration_str("5us").is_err());
    }

    #[test]
    fn found_upward() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "").unwrap();
        let deep = dir.path().join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(find(&deep).unwrap(), dir.path().join(FILE_NAME));
        assert!(matches!(
            find(Path::new("/proc/self")),
            Err(ProjectError::NotFound(_))
        ));
    }
}
