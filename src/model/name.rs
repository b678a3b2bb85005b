//! Instance names: DNS labels joined by dots, so `NAME.localhost` is a valid host name. Most
//! are one label (`shop`); a linked git worktree's gets its branch in front (`fix-ui.shop`).
//! Socket names are always one label (`Name::label`): `SUB.NAME.localhost` is routed by the
//! longest instance name the host ends with, and what is left must be one of its sockets.
//! Parsing is the only way to get a `Name`; everything downstream trusts it.

use std::fmt;
use std::str::FromStr;

/// A validated instance (or socket) name: labels `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?` joined by
/// `.`, at most `MAX_LEN` in all; a socket name is one label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Name(String);

/// The longest name: `NAME.localhost` stays within a host name's 253 characters.
pub const MAX_LEN: usize = 253 - ".localhost".len();

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error(
        "{0:?} is {1} characters long; a name is at most 63 between dots (one DNS label) \
         and {MAX_LEN} in all{try_}",
        try_ = try_(.2)
    )]
    TooLong(String, usize, Option<String>),
    #[error(
        "{name:?} has {what}; a name is lowercase letters, digits and '-' \
         (not first or last), like \"api\" or \"web-2\", or such labels joined by '.' \
         (\"fix-ui.shop\"){try_}",
        try_ = try_(suggestion)
    )]
    Invalid {
        name: String,
        what: String,
        /// A valid name close to the one given, when there is one.
        suggestion: Option<String>,
    },
    /// A socket name with a dot: `SUB.NAME.localhost` has room for one label.
    #[error(
        "{0:?} has a '.'; a socket name is one label, like \"admin\"{try_}",
        try_ = try_(.1)
    )]
    Dotted(String, Option<String>),
}

fn try_(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(": try {s:?}"))
        .unwrap_or_default()
}

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The environment variable `NAME_WHAT` for this name, valid in every shell and dotenv
    /// file: uppercase, `-` → `_`, and a leading `_` when the name starts with a digit
    /// (`admin-api` → `ADMIN_API_URL`, `2web` → `_2WEB_URL`). No name starts with `-`, so the
    /// leading `_` never makes two names share a variable. A dot is `__` (`fix-ui.shop` →
    /// `FIX_UI__SHOP_URL`), which only a name with `--` in the same place shares.
    pub fn env_var(&self, what: &str) -> String {
        let prefix = if self.0.starts_with(|c: char| c.is_ascii_digit()) {
            "_"
        } else {
            ""
        };
        format!(
            "{prefix}{}_{what}",
            self.0
                .to_ascii_uppercase()
                .replace('-', "_")
                .replace('.', "__")
        )
    }

    /// A one-label name: what a socket name must be.
    pub fn label(s: &str) -> Result<Name, NameError> {
        let name: Name = s.parse()?;
        if name.is_label() {
            Ok(name)
        } else {
            Err(NameError::Dotted(
                s.to_string(),
                Name::suggest(s).map(|n| n.0),
            ))
        }
    }

    /// `s` as a name if it is one, checked in one pass over its bytes, with no error to
    /// explain (`from_str` says why a name is not one): for the Host of every request.
    pub fn checked(s: &str) -> Option<Name> {
        if s.is_empty() || s.len() > MAX_LEN {
            return None;
        }
        // The current label's length so far, and the byte before this one.
        let (mut label, mut last) = (0usize, b'.');
        for &b in s.as_bytes() {
            match b {
                b'a'..=b'z' | b'0'..=b'9' => label += 1,
                // Not at a label's start, nor (below) at its end.
                b'-' if label > 0 => label += 1,
                b'.' if label > 0 && last != b'-' => label = 0,
                _ => return None,
            }
            if label > 63 {
                return None;
            }
            last = b;
        }
        (label > 0 && last != b'-').then(|| Name(s.to_string()))
    }

    /// One label, no dot.
    pub fn is_label(&self) -> bool {
        !self.0.contains('.')
    }

    /// `PREFIX.NAME`: a linked worktree's branch in front of the project's name.
    pub fn prefixed(&self, prefix: &Name) -> Result<Name, NameError> {
        format!("{prefix}.{self}").parse()
    }

    /// The names this one ends with, itself first, then each without its first label
    /// (`a.b.c`, `b.c`, `c`), each with what was cut off (`None`, `a`, `a.b`).
    pub fn suffixes(name: &str) -> impl Iterator<Item = (Option<&str>, &str)> {
        std::iter::once((None, name)).chain(
            name.match_indices('.')
                .map(move |(i, _)| (Some(&name[..i]), &name[i + 1..])),
        )
    }

    /// A valid one-label name made from `s`, if any: lowercase, each run of other characters
    /// (dots included) as one `-`, none at the ends, at most 63 characters (`Bad_Name` →
    /// `bad-name`, `fix/ui` → `fix-ui`). wharf's one normaliser: inferred names and branch
    /// prefixes go through it, and error messages suggest what it makes.
    pub fn suggest(s: &str) -> Option<Name> {
        let mut out = String::new();
        for c in s.chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                out.push(c);
            } else if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
        }
        out.truncate(63);
        out.trim_end_matches('-').parse().ok()
    }
}

/// What a name close to `s` could be: each label normalised, empty ones dropped.
fn suggest_dotted(s: &str) -> Option<String> {
    let labels: Vec<String> = s
        .split('.')
        .filter_map(Name::suggest)
        .map(|n| n.0)
        .collect();
    let joined = labels.join(".");
    (!labels.is_empty() && joined.len() <= MAX_LEN).then_some(joined)
}

impl FromStr for Name {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        let suggestion = || suggest_dotted(s);
        if s.len() > MAX_LEN || s.split('.').any(|l| l.len() > 63) {
            return Err(NameError::TooLong(s.to_string(), s.len(), suggestion()));
        }
        let invalid = |what: String| NameError::Invalid {
            name: s.to_string(),
            what,
            suggestion: suggestion(),
        };
        let mut upper = None;
        let mut others: Vec<char> = Vec::new();
        for c in s.chars() {
            if c.is_ascii_uppercase() {
                upper.get_or_insert(c);
            } else if !(c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '-'
                || c == '.'
                || others.contains(&c))
            {
                others.push(c);
            }
        }
        if upper.is_some() || !others.is_empty() {
            let mut what: Vec<String> = upper
                .map(|c| format!("an uppercase letter {c:?}"))
                .into_iter()
                .collect();
            match others.as_slice() {
                [] => {}
                [c] => what.push(format!("the character {c:?}")),
                cs => what.push(format!(
                    "the characters {}",
                    cs.iter()
                        .map(|c| format!("{c:?}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )),
            }
            return Err(invalid(what.join(" and ")));
        }
        let labels = || s.split('.');
        if labels().any(str::is_empty) {
            return Err(invalid(
                "an empty label (a '.' at its start or end, or two together)".to_string(),
            ));
        }
        if labels().any(|l| l.starts_with('-') || l.ends_with('-')) {
            let what = if s.contains('.') {
                "a '-' at the start or end of a label"
            } else {
                "a '-' at its start or end"
            };
            return Err(invalid(what.to_string()));
        }
        Ok(Name(s.to_string()))
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        s.parse()
    }
}

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Tables keyed by `Name` can be asked with a `&str` (a suffix of a host) without a copy.
impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels_and_dotted_names() {
        let longest = [&"x".repeat(63); 4].map(String::as_str).join(".")[..MAX_LEN].to_string();
        for ok in [
            "a",
            "api",
            "web-2",
            "0",
            &"x".repeat(63),
            "fix-ui.shop",
            "a.b.c",
            &longest,
        ] {
            assert_eq!(ok.parse::<Name>().unwrap().as_str(), ok);
        }
        assert!(format!("{longest}.localhost").len() == 253);
    }

    #[test]
    fn socket_names_are_one_label() {
        assert_eq!(Name::label("admin").unwrap().as_str(), "admin");
        let err = Name::label("a.b").unwrap_err();
        assert_eq!(err, NameError::Dotted("a.b".into(), Some("a-b".into())));
        assert!(err.to_string().ends_with("try \"a-b\""), "{err}");
        assert!(matches!(Name::label("A"), Err(NameError::Invalid { .. })));
    }

    #[test]
    fn prefixes_and_suffixes() {
        let shop: Name = "shop".parse().unwrap();
        let fix = Name::suggest("fix/ui").unwrap();
        assert_eq!(shop.prefixed(&fix).unwrap().as_str(), "fix-ui.shop");
        let all: Vec<_> = Name::suffixes("a.b.c").collect();
        assert_eq!(
            all,
            [(None, "a.b.c"), (Some("a"), "b.c"), (Some("a.b"), "c")]
        );
        assert_eq!(Name::suffixes("c").collect::<Vec<_>>(), [(None, "c")]);
    }

    #[test]
    fn rejects_what_is_not_labels() {
        let long = format!("{}.x", ["x"; 122].join("."));
        for bad in [
            "",
            "-a",
            "a-",
            ".a",
            "a.",
            "a..b",
            "a.-b",
            "a-.b",
            &long,
            &format!("{}.a", "x".repeat(64)),
            "a_b",
            "Api",
            "a b",
            "ü",
            &"x".repeat(64),
        ] {
            assert!(bad.parse::<Name>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn uppercase_error_suggests_the_fix() {
        let err = "Api".parse::<Name>().unwrap_err().to_string();
        assert!(err.contains("try \"api\""), "{err}");
    }

    /// `Bad_Name` once suggested `bad_name`, which is rejected in turn.
    #[test]
    fn a_suggested_name_is_always_accepted() {
        for (bad, suggested) in [
            ("Bad_Name", Some("bad-name")),
            ("my app", Some("my-app")),
            ("-api-", Some("api")),
            ("__x__y..", Some("x-y")),
            ("a_b.C", Some("a-b.c")),
            ("a..b", Some("a.b")),
            ("ü", None),
            ("__", None),
        ] {
            let err = bad.parse::<Name>().unwrap_err();
            let got = match &err {
                NameError::Invalid { suggestion, .. } => suggestion.clone(),
                other => panic!("{other}"),
            };
            assert_eq!(got.as_deref(), suggested, "{bad:?}: {err}");
            if let Some(s) = got {
                s.parse::<Name>().unwrap();
                assert!(err.to_string().ends_with(&format!("try {s:?}")), "{err}");
            } else {
                assert!(!err.to_string().contains("try"), "{err}");
            }
        }
        let long = format!("{}_x", "a".repeat(70));
        let NameError::TooLong(_, _, Some(s)) = long.parse::<Name>().unwrap_err() else {
            panic!("no suggestion for a long name")
        };
        assert_eq!(s.parse::<Name>().unwrap().as_str(), "a".repeat(63));
    }

    /// `2web` once became `export 2WEB_URL=…`, which no shell accepts.
    #[test]
    fn env_vars_are_valid_shell_names() {
        let var = |n: &str| n.parse::<Name>().unwrap().env_var("URL");
        assert_eq!(var("admin-api"), "ADMIN_API_URL");
        assert_eq!(var("2web"), "_2WEB_URL");
        assert_eq!(var("0"), "_0_URL");
        assert_eq!(var("fix-ui.shop"), "FIX_UI__SHOP_URL");
        for n in ["a", "web-2", "2web", "9-9", "a.b"] {
            let v = var(n);
            assert!(
                v.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{v}"
            );
        }
    }

    proptest::proptest! {
        /// `checked` takes exactly the names `from_str` takes.
        #[test]
        fn checked_agrees_with_from_str(s in "[a-z0-9.A_-]{0,70}") {
            proptest::prop_assert_eq!(Name::checked(&s), s.parse::<Name>().ok());
        }
    }

    #[test]
    fn checked_refuses_what_from_str_refuses() {
        let long_label = "a".repeat(64);
        let long = ["a"; 123].join(".");
        for s in [
            "",
            "-a",
            "a-",
            "a.-b",
            "a-.b",
            ".a",
            "a.",
            "a..b",
            "A",
            "a_b",
            "é",
            &long_label,
            &long,
        ] {
            assert_eq!(Name::checked(s), None, "{s:?}");
            assert!(s.parse::<Name>().is_err(), "{s:?}");
        }
        let longest_label = "a".repeat(63);
        for s in ["a", "a-b", "a.b-c.d", "0", &longest_label] {
            assert_eq!(Name::checked(s), Some(s.parse().unwrap()), "{s:?}");
        }
    }
}
