//! Choosing how an instance gets its socket: fd mode (inherited, `LISTEN_FDS`) or env mode
//! (`PORT`, the server binds). Looks only at the command line and package.json scripts.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
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

/// The chosen mode, the command to run (with any flags wharf adds, placeholders not yet
/// filled in) and a sentence saying why.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub mode: Mode,
    pub argv: Vec<String>,
    pub reason: String,
}

/// A server wharf knows: how it takes a socket, and the flags that make it take ours.
struct Known {
    program: &'static str,
    /// Only when the next word is one of these (e.g. `next dev`); empty = any.
    verbs: &'static [&'static str],
    mode: Mode,
    /// Added unless the user already passed the first of them.
    flags: &'static [&'static str],
}

const KNOWN: &[Known] = &[
    Known {
        program: "gunicorn",
        verbs: &[],
        mode: Mode::Fd,
        flags: &[],
    },
    Known {
        program: "puma",
        verbs: &[],
        mode: Mode::Fd,
        flags: &[],
    },
    Known {
        program: "uvicorn",
        verbs: &[],
        mode: Mode::Fd,
        flags: &["--fd", "{fd}"],
    },
    Known {
        program: "hypercorn",
        verbs: &[],
        mode: Mode::Fd,
        flags: &["--bind", "fd://{fd}"],
    },
    Known {
        program: "vite",
        verbs: &[],
        mode: Mode::Env,
        flags: &["--port", "{port}", "--strictPort", "--host", "127.0.0.1"],
    },
    Known {
        program: "next",
        verbs: &["dev", "start"],
        mode: Mode::Env,
        flags: &["--port", "{port}", "--hostname", "127.0.0.1"],
    },
    Known {
        program: "astro",
        verbs: &["dev", "preview"],
        mode: Mode::Env,
        flags: &["--port", "{port}", "--host", "127.0.0.1"],
    },
    Known {
        program: "webpack",
        verbs: &["serve"],
        mode: Mode::Env,
        flags: &["--port", "{port}", "--host", "127.0.0.1"],
    },
    Known {
        program: "webpack-dev-server",
        verbs: &[],
        mode: Mode::Env,
        flags: &["--port", "{port}", "--host", "127.0.0.1"],
    },
    Known {
        program: "flask",
        verbs: &["run"],
        mode: Mode::Env,
        flags: &["--port", "{port}", "--host", "127.0.0.1"],
    },
    Known {
        program: "rails",
        verbs: &["server", "s"],
        mode: Mode::Env,
        flags: &["-p", "{port}", "-b", "127.0.0.1"],
    },
    Known {
        program: "manage.py",
        verbs: &["runserver"],
        mode: Mode::Env,
        flags: &["127.0.0.1:{port}"],
    },
];

/// Wrappers that run the next word as a program: (wrapper, sub-command or "", how many more
/// words to skip after the sub-command).
const RUNNERS: &[(&str, &str)] = &[
    ("npx", ""),
    ("bunx", ""),
    ("uvx", ""),
    ("env", ""),
    ("exec", ""),
    ("npm", "exec"),
    ("pnpm", "exec"),
    ("pnpm", "dlx"),
    ("yarn", "dlx"),
    ("yarn", "exec"),
    ("uv", "run"),
    ("poetry", "run"),
    ("pipenv", "run"),
    ("bundle", "exec"),
    ("python", "-m"),
    ("python3", "-m"),
    ("python", ""),
    ("python3", ""),
    ("node", ""),
];

/// Package managers whose `run SCRIPT` runs a package.json script; `true` if extra arguments
/// must follow a `--` to reach the script.
const SCRIPT_RUNNERS: &[(&str, bool)] = &[
    ("npm", true),
    ("pnpm", false),
    ("yarn", false),
    ("bun", false),
];

/// Choose the mode for `argv`. `forced` is `--fd`/`--env`; `scripts` are package.json's
/// `scripts` of the working directory (empty if none).
pub fn choose(forced: Option<Mode>, argv: &[String], scripts: &BTreeMap<String, String>) -> Plan {
    let plan = |mode, argv: &[String], reason: String| Plan {
        mode,
        argv: argv.to_vec(),
        reason,
    };
    if let Some(mode) = forced {
        return plan(mode, argv, format!("--{mode} was given"));
    }
    if argv.iter().any(|a| a.contains("{fd")) {
        return plan(Mode::Fd, argv, "the command has an {fd} placeholder".into());
    }
    if argv.iter().any(|a| a.contains("{port")) {
        return plan(
            Mode::Env,
            argv,
            "the command has a {port} placeholder".into(),
        );
    }
    let Some(found) = find_server(argv, scripts) else {
        return plan(
            Mode::Env,
            argv,
            "not a server wharf knows, so it gets PORT and binds it itself (--fd to pass a socket)"
                .into(),
        );
    };
    let mut out = argv.to_vec();
    let already = found.known.flags.first().is_some_and(|f| {
        found
            .args
            .iter()
            .any(|a| a == f || a.starts_with(&format!("{f}=")))
    });
    let mut reason = match found.known.mode {
        Mode::Fd => format!("{} takes an inherited socket", found.known.program),
        Mode::Env => format!("{} binds for itself", found.known.program),
    };
    if !found.known.flags.is_empty() && !already {
        if found.needs_separator {
            out.push("--".to_string());
        }
        out.extend(found.known.flags.iter().map(|f| f.to_string()));
        reason.push_str(&format!("; adding {}", found.known.flags.join(" ")));
    }
    if found.via_script {
        reason.push_str(" (seen through the package.json script)");
    }
    plan(found.known.mode, &out, reason)
}

struct Found {
    known: &'static Known,
    /// The words after the server's program name.
    args: Vec<String>,
    via_script: bool,
    needs_separator: bool,
}

fn base(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

fn find_server(argv: &[String], scripts: &BTreeMap<String, String>) -> Option<Found> {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    if let Some(found) = find_in_words(&words) {
        return Some(Found {
            known: found.0,
            args: found.1,
            via_script: false,
            needs_separator: false,
        });
    }
    // `npm run dev`, `pnpm dev`, `yarn start`: look inside the script.
    let (&first, rest) = words.split_first()?;
    let &(_, needs_separator) = SCRIPT_RUNNERS.iter().find(|(r, _)| *r == base(first))?;
    let rest = match rest.first() {
        Some(&"run") | Some(&"run-script") => &rest[1..],
        _ => rest,
    };
    let script_name = match rest.first() {
        Some(s) => *s,
        None if base(first) == "npm" => return None,
        None => "start",
    };
    let script_name = if script_name == "start" || scripts.contains_key(script_name) {
        script_name
    } else {
        return None;
    };
    let script = scripts.get(script_name)?;
    let script_words: Vec<&str> = script
        .split_whitespace()
        .filter(|w| !w.contains('='))
        .collect();
    let (known, args) = find_in_words(&script_words)?;
    Some(Found {
        known,
        args: args
            .into_iter()
            .chain(rest.iter().skip(1).map(|s| s.to_string()))
            .collect(),
        via_script: true,
        needs_separator: needs_separator && !rest.contains(&"--"),
    })
}

/// Skip runner words, then match the server table.
fn find_in_words(words: &[&str]) -> Option<(&'static Known, Vec<String>)> {
    let mut i = 0;
    'outer: while i < words.len() {
        let word = base(words[i]);
        for known in KNOWN {
            if word == known.program {
                let rest = &words[i + 1..];
                let verb_ok =
                    known.verbs.is_empty() || rest.first().is_some_and(|v| known.verbs.contains(v));
                return verb_ok.then(|| (known, rest.iter().map(|s| s.to_string()).collect()));
            }
        }
        for (runner, sub) in RUNNERS {
            if word == *runner {
                let next = words.get(i + 1).copied().unwrap_or("");
                if sub.is_empty() {
                    i += 1;
                    while words
                        .get(i)
                        .is_some_and(|w| w.starts_with('-') || w.contains('='))
                    {
                        i += 1;
                    }
                    continue 'outer;
                } else if next == *sub {
                    i += 2;
                    continue 'outer;
                }
            }
        }
        return None;
    }
    None
}

/// Fill in `{fd}`, `{fd:SUB}`, `{port}` and `{port:SUB}`. `sockets` lists (name, port) in fd
/// order, main socket first.
pub fn substitute(argv: &[String], sockets: &[(String, u16)]) -> Vec<String> {
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

    fn choose_str(s: &str) -> Plan {
        choose(None, &words(s), &BTreeMap::new())
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
        assert_eq!(choose_str("uv run gunicorn -w 2 app:app").mode, Mode::Fd);
        assert_eq!(choose_str("bundle exec puma").mode, Mode::Fd);
        let plan = choose_str("uvicorn app:app");
        assert_eq!(plan.argv, words("uvicorn app:app --fd {fd}"));
        let plan = choose_str("npx vite");
        assert_eq!(plan.mode, Mode::Env);
        assert_eq!(
            plan.argv,
            words("npx vite --port {port} --strictPort --host 127.0.0.1")
        );
        let plan = choose_str("/usr/local/bin/next dev --port 3000");
        assert_eq!(
            plan.argv,
            words("/usr/local/bin/next dev --port 3000"),
            "user's own --port kept"
        );
        assert!(choose_str("next build").reason.contains("not a server"));
    }

    #[test]
    fn package_scripts_are_looked_into() {
        let scripts = BTreeMap::from([("dev".to_string(), "NODE_ENV=dev vite --open".to_string())]);
        let plan = choose(None, &words("npm run dev"), &scripts);
        assert_eq!(
            plan.argv,
            words("npm run dev -- --port {port} --strictPort --host 127.0.0.1")
        );
        assert!(plan.reason.contains("package.json"), "{}", plan.reason);
        let plan = choose(None, &words("pnpm dev"), &scripts);
        assert_eq!(
            plan.argv,
            words("pnpm dev --port {port} --strictPort --host 127.0.0.1")
        );
        assert_eq!(
            choose(None, &words("npm run build"), &scripts).mode,
            Mode::Env
        );
    }

    #[test]
    fn unknown_defaults_to_env_and_flags_win() {
        assert_eq!(choose_str("./my-server").mode, Mode::Env);
        let plan = choose(Some(Mode::Fd), &words("./my-server"), &BTreeMap::new());
        assert_eq!(plan.mode, Mode::Fd);
        assert!(plan.reason.contains("--fd"));
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
}
