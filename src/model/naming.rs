//! An instance's name when `wharf run` is not given one, and its command when it is not given
//! that either: read from the project around the working directory. In order: the
//! `wharf.toml` instance with this command and directory, `package.json` `name` (its `@scope/`
//! dropped), `pyproject.toml` `[project] name`, `Cargo.toml` `[package] name` (nearest
//! directory first, up to the checkout's top), the git repository's directory, the current
//! directory; normalised by `Name::suggest`. In a linked git worktree the branch comes in
//! front (`fix/ui` → `fix-ui.shop`), so every worktree of a repository has its own name.
//! Pure but for reading the files; what git says comes in as a `Checkout`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::model::name::Name;
use crate::model::project::{Declared, Project};
use crate::sys::git::Checkout;

/// Where an inferred name came from, as `wharf run` says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The instance of that name in this wharf.toml.
    Declared(PathBuf),
    PackageJson(PathBuf),
    Pyproject(PathBuf),
    CargoToml(PathBuf),
    /// The git repository's directory name.
    Repository(PathBuf),
    /// The current directory's name.
    Directory(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Declared(p) => write!(f, "{}", p.display()),
            Source::PackageJson(_) => f.write_str("package.json"),
            Source::Pyproject(_) => f.write_str("pyproject.toml"),
            Source::CargoToml(_) => f.write_str("Cargo.toml"),
            Source::Repository(_) => f.write_str("the git repository's directory"),
            Source::Directory(_) => f.write_str("the current directory"),
        }
    }
}

/// A name made from the project, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Inferred {
    pub(crate) name: Name,
    pub(crate) source: Source,
    /// In a linked worktree: the branch (or, detached, the worktree's directory name) whose
    /// label was put in front.
    pub(crate) worktree: Option<String>,
}

impl Inferred {
    /// `name shop (from package.json)`, `name fix-ui.shop (from package.json, in the worktree
    /// of branch fix/ui)`.
    pub(crate) fn describe(&self) -> String {
        match &self.worktree {
            None => format!("name {} (from {})", self.name, self.source),
            Some(branch) => format!(
                "name {} (from {}, in the worktree of {branch})",
                self.name, self.source
            ),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum NamingError {
    #[error(
        "no name could be made from {0} or the project around it; pass one: \
         `wharf run --name NAME -- CMD`"
    )]
    Nothing(PathBuf),
    #[error(
        "{name} is too long for a worktree's name with {branch:?} in front; pass one: \
         `wharf run --name NAME -- CMD`"
    )]
    TooLong { name: Name, branch: String },
}

/// The name for `command` run in `dir`. `declared`: the nearest wharf.toml, if any.
pub(crate) fn infer(
    dir: &Path,
    command: &[String],
    declared: Option<&Project>,
    checkout: Option<&Checkout>,
) -> Result<Inferred, NamingError> {
    let (name, source) = declared
        .and_then(|p| {
            let d = matching(p, dir, command)?;
            Some((d.name.clone(), Source::Declared(p.path.clone())))
        })
        .or_else(|| from_files(dir, checkout.map(|c| c.top.as_path())))
        .or_else(|| {
            let c = checkout?;
            let name = dir_name(&c.repo)?;
            Some((name, Source::Repository(c.repo.clone())))
        })
        .or_else(|| Some((dir_name(dir)?, Source::Directory(dir.to_path_buf()))))
        .ok_or_else(|| NamingError::Nothing(dir.to_path_buf()))?;
    in_worktree(name, source, checkout)
}

/// The name of a declared instance started from `checkout` (by `wharf up`): its own, with a
/// linked worktree's branch in front.
pub(crate) fn declared_name(
    declared: &Declared,
    checkout: Option<&Checkout>,
    file: &Path,
) -> Result<Inferred, NamingError> {
    in_worktree(
        declared.name.clone(),
        Source::Declared(file.to_path_buf()),
        checkout,
    )
}

fn in_worktree(
    name: Name,
    source: Source,
    checkout: Option<&Checkout>,
) -> Result<Inferred, NamingError> {
    let Some(c) = checkout.filter(|c| c.linked) else {
        return Ok(Inferred {
            name,
            source,
            worktree: None,
        });
    };
    let branch = c
        .branch
        .clone()
        .or_else(|| c.top.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let too_long = || NamingError::TooLong {
        name: name.clone(),
        branch: branch.clone(),
    };
    let prefix = Name::suggest(&branch).ok_or_else(too_long)?;
    let name = name.prefixed(&prefix).map_err(|_| too_long())?;
    Ok(Inferred {
        name,
        source,
        worktree: Some(branch),
    })
}

/// The instance declared with this command, run in `dir`. A string command (`sh -c S`)
/// matches the words of S as typed.
fn matching<'p>(project: &'p Project, dir: &Path, command: &[String]) -> Option<&'p Declared> {
    let here = canonical(dir);
    project.instances.iter().find(|d| {
        canonical(&d.dir) == here
            && (d.command == command
                || matches!(d.command.as_slice(), [sh, c, s] if sh == "sh" && c == "-c"
                    && s.split_whitespace().eq(command.iter().map(String::as_str))))
    })
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// The first name in the project files of `dir` and the directories above it, up to `top`
/// (only `dir` without one).
fn from_files(dir: &Path, top: Option<&Path>) -> Option<(Name, Source)> {
    let top = top.map(canonical);
    let dir = canonical(dir);
    for d in dir.ancestors() {
        if let Some(found) = names_in(d) {
            return Some(found);
        }
        if top.as_deref().is_none_or(|t| t == d || !d.starts_with(t)) {
            return None;
        }
    }
    None
}

/// The name one directory's project files give, in their order.
fn names_in(dir: &Path) -> Option<(Name, Source)> {
    let package = dir.join("package.json");
    if let Some(name) = Package::read(&package).and_then(|p| p.name) {
        let unscoped = match name.strip_prefix('@') {
            Some(scoped) => scoped.split_once('/').map_or(scoped, |(_, n)| n),
            None => &name,
        };
        if let Some(name) = Name::suggest(unscoped) {
            return Some((name, Source::PackageJson(package)));
        }
    }
    let pyproject = dir.join("pyproject.toml");
    if let Some(name) = toml_name(&pyproject, "project").and_then(|n| Name::suggest(&n)) {
        return Some((name, Source::Pyproject(pyproject)));
    }
    let cargo = dir.join("Cargo.toml");
    if let Some(name) = toml_name(&cargo, "package").and_then(|n| Name::suggest(&n)) {
        return Some((name, Source::CargoToml(cargo)));
    }
    None
}

/// `[TABLE] name` of a TOML file, when it is a plain string (not `name.workspace = true`).
fn toml_name(path: &Path, table: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let doc: toml::Table = text.parse().ok()?;
    doc.get(table)?.get("name")?.as_str().map(str::to_string)
}

fn dir_name(dir: &Path) -> Option<Name> {
    Name::suggest(&canonical(dir).file_name()?.to_string_lossy())
}

/// What wharf reads of a `package.json`: its name, version and scripts.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Package {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) version: Option<String>,
    #[serde(default)]
    pub(crate) scripts: BTreeMap<String, String>,
}

impl Package {
    /// The file at `path`, if it is there and reads as a package.json.
    pub(crate) fn read(path: &Path) -> Option<Package> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// The project's dev command, for a bare `wharf run` in `dir`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DevCommand {
    /// The one instance of the nearest wharf.toml.
    Declared(Box<Declared>),
    /// `scripts.dev` of `dir`'s package.json, through the package manager its lockfile names.
    Script {
        argv: Vec<String>,
        lockfile: Option<&'static str>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DevCommandError {
    #[error(
        "{file} declares {count} instances ({names}); start them with `wharf up`, or give \
         the command: `wharf run -- CMD`"
    )]
    Several {
        file: PathBuf,
        count: usize,
        names: String,
    },
    #[error(
        "nothing to run: no wharf.toml with one instance, and no package.json with \
         scripts.dev in {0}; give the command: `wharf run -- CMD`"
    )]
    Nothing(PathBuf),
}

/// The lockfiles that say which package manager a project uses, in the order they are looked
/// for; npm without any.
const LOCKFILES: [(&str, &str); 5] = [
    ("pnpm-lock.yaml", "pnpm"),
    ("yarn.lock", "yarn"),
    ("bun.lock", "bun"),
    ("bun.lockb", "bun"),
    ("package-lock.json", "npm"),
];

/// The one instance of `declared` (the nearest wharf.toml), else `scripts.dev` of `dir`'s
/// package.json run by the package manager its lockfile names (npm without one).
pub(crate) fn dev_command(
    dir: &Path,
    declared: Option<&Project>,
) -> Result<DevCommand, DevCommandError> {
    if let Some(p) = declared {
        match p.instances.as_slice() {
            [one] => return Ok(DevCommand::Declared(Box::new(one.clone()))),
            [] => {}
            many => {
                return Err(DevCommandError::Several {
                    file: p.path.clone(),
                    count: many.len(),
                    names: many
                        .iter()
                        .map(|d| d.name.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    let has_dev =
        Package::read(&dir.join("package.json")).is_some_and(|p| p.scripts.contains_key("dev"));
    if !has_dev {
        return Err(DevCommandError::Nothing(dir.to_path_buf()));
    }
    let found = LOCKFILES.iter().find(|(f, _)| dir.join(f).is_file());
    let runner = found.map_or("npm", |(_, r)| r);
    Ok(DevCommand::Script {
        argv: [runner, "run", "dev"].map(String::from).to_vec(),
        lockfile: found.map(|(f, _)| *f),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).unwrap();
    }

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn name_in(dir: &Path, checkout: Option<&Checkout>) -> (String, String) {
        let i = infer(dir, &words("x"), None, checkout).unwrap();
        (i.name.to_string(), i.source.to_string())
    }

    #[test]
    fn the_files_in_their_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("My_Dir");
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(
            name_in(&dir, None),
            ("my-dir".into(), "the current directory".into())
        );
        write(&dir, "Cargo.toml", "[package]\nname = \"crate_name\"\n");
        assert_eq!(
            name_in(&dir, None),
            ("crate-name".into(), "Cargo.toml".into())
        );
        write(&dir, "pyproject.toml", "[project]\nname = \"Py.Thing\"\n");
        assert_eq!(
            name_in(&dir, None),
            ("py-thing".into(), "pyproject.toml".into())
        );
        write(
            &dir,
            "package.json",
            r#"{"name": "@acme/shop", "scripts": {}}"#,
        );
        assert_eq!(name_in(&dir, None), ("shop".into(), "package.json".into()));
        // Unusable entries are passed over, not fatal.
        write(&dir, "package.json", r#"{"name": "ü"}"#);
        write(&dir, "pyproject.toml", "[project]\nversion = \"1\"\n");
        write(&dir, "Cargo.toml", "[package]\nname.workspace = true\n");
        assert_eq!(name_in(&dir, None).0, "my-dir");
    }

    #[test]
    fn upward_to_the_checkout_top_then_the_repository() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("shop-repo");
        let sub = repo.join("apps/web");
        std::fs::create_dir_all(&sub).unwrap();
        let checkout = Checkout {
            top: repo.clone(),
            repo: repo.clone(),
            linked: false,
            branch: Some("main".into()),
        };
        assert_eq!(
            name_in(&sub, Some(&checkout)),
            ("shop-repo".into(), "the git repository's directory".into())
        );
        write(&repo, "package.json", r#"{"name": "root"}"#);
        assert_eq!(name_in(&sub, Some(&checkout)).0, "root");
        write(&sub, "Cargo.toml", "[package]\nname = \"web\"\n");
        assert_eq!(name_in(&sub, Some(&checkout)).0, "web");
        // Above the top is not the project's: without a checkout only `dir` counts.
        assert_eq!(name_in(&repo.join("apps"), None).0, "apps");
    }

    #[test]
    fn a_linked_worktree_puts_its_branch_in_front() {
        let tmp = tempfile::tempdir().unwrap();
        let wt = tmp.path().join("wt");
        std::fs::create_dir(&wt).unwrap();
        write(&wt, "package.json", r#"{"name": "@acme/shop"}"#);
        let mut checkout = Checkout {
            top: wt.clone(),
            repo: tmp.path().join("shop"),
            linked: true,
            branch: Some("fix/UI".into()),
        };
        let i = infer(&wt, &words("x"), None, Some(&checkout)).unwrap();
        assert_eq!(i.name.as_str(), "fix-ui.shop");
        assert_eq!(
            i.describe(),
            "name fix-ui.shop (from package.json, in the worktree of fix/UI)"
        );
        checkout.branch = None;
        let i = infer(&wt, &words("x"), None, Some(&checkout)).unwrap();
        assert_eq!(i.name.as_str(), "wt.shop");
        checkout.linked = false;
        let i = infer(&wt, &words("x"), None, Some(&checkout)).unwrap();
        assert_eq!((i.name.as_str(), i.worktree), ("shop", None));
    }

    #[test]
    fn a_declared_instance_with_this_command_and_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write(dir, "package.json", r#"{"name": "shop"}"#);
        let text = "[instances.api]\ncommand = \"gunicorn  app:app\"\n\n\
                    [instances.web]\ncommand = [\"npm\", \"run\", \"dev\"]\ndir = \".\"\n";
        let project = Project {
            path: dir.join("wharf.toml"),
            instances: crate::model::project::parse(text, dir).unwrap(),
        };
        let named = |cmd: &str| infer(dir, &words(cmd), Some(&project), None).unwrap();
        assert_eq!(named("gunicorn app:app").name.as_str(), "api");
        assert_eq!(named("npm run dev").name.as_str(), "web");
        assert!(matches!(named("npm run dev").source, Source::Declared(_)));
        assert_eq!(named("npm run build").name.as_str(), "shop");
        // The same command elsewhere is not the declared instance.
        let other = dir.join("other");
        std::fs::create_dir(&other).unwrap();
        let i = infer(&other, &words("npm run dev"), Some(&project), None).unwrap();
        assert_eq!(i.name.as_str(), "other");
    }

    #[test]
    fn the_dev_command() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(matches!(
            dev_command(dir, None),
            Err(DevCommandError::Nothing(_))
        ));
        write(dir, "package.json", r#"{"scripts": {"dev": "vite"}}"#);
        let script = |lock| DevCommand::Script {
            argv: words(&format!(
                "{} run dev",
                match lock {
                    Some("pnpm-lock.yaml") => "pnpm",
                    Some("yarn.lock") => "yarn",
                    _ => "npm",
                }
            )),
            lockfile: lock,
        };
        assert_eq!(dev_command(dir, None), Ok(script(None)));
        write(dir, "yarn.lock", "");
        assert_eq!(dev_command(dir, None), Ok(script(Some("yarn.lock"))));
        write(dir, "pnpm-lock.yaml", "");
        assert_eq!(dev_command(dir, None), Ok(script(Some("pnpm-lock.yaml"))));
        let project = |text: &str| Project {
            path: dir.join("wharf.toml"),
            instances: crate::model::project::parse(text, dir).unwrap(),
        };
        let one = project("[instances.api]\ncommand = \"x\"\n");
        assert!(matches!(
            dev_command(dir, Some(&one)),
            Ok(DevCommand::Declared(d)) if d.name.as_str() == "api"
        ));
        let two = project("[instances.a]\ncommand = \"x\"\n[instances.b]\ncommand = \"y\"\n");
        let err = dev_command(dir, Some(&two)).unwrap_err().to_string();
        assert!(
            err.contains("2 instances (a, b)") && err.contains("wharf up"),
            "{err}"
        );
    }
}
