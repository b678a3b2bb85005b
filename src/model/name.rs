//! Instance names: one DNS label, so `NAME.localhost` is a valid host name.
//! Parsing is the only way to get a `Name`; everything downstream trusts it.

use std::fmt;
use std::str::FromStr;

/// A validated instance (or socket) name: `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Name(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error(
        "{0:?} is {1} characters long; a name is at most 63 (one DNS label){try_}",
        try_ = try_(.2)
    )]
    TooLong(String, usize, Option<String>),
    #[error(
        "{name:?} has {what}; a name is lowercase letters, digits and '-' \
         (not first or last), like \"api\" or \"web-2\"{try_}",
        try_ = try_(suggestion)
    )]
    Invalid {
        name: String,
        what: String,
        /// A valid name close to the one given, when there is one.
        suggestion: Option<String>,
    },
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
    /// leading `_` never makes two names share a variable.
    pub fn env_var(&self, what: &str) -> String {
        let prefix = if self.0.starts_with(|c: char| c.is_ascii_digit()) {
            "_"
        } else {
            ""
        };
        format!(
            "{prefix}{}_{what}",
            self.0.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// A valid name made from `s`, if any: lowercase, each run of other characters as one
    /// `-`, none at the ends, at most 63 characters (`Bad_Name` → `bad-name`).
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

impl FromStr for Name {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        let suggestion = || Name::suggest(s).map(|n| n.0);
        if s.len() > 63 {
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
        if s.starts_with('-') || s.ends_with('-') {
            return Err(invalid("a '-' at its start or end".to_string()));
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

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "api", "web-2", "0", &"x".repeat(63)] {
            assert_eq!(ok.parse::<Name>().unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_what_is_not_one_label() {
        for bad in [
            "",
            "-a",
            "a-",
            "a.b",
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
            ("a.b", Some("a-b")),
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
        for n in ["a", "web-2", "2web", "9-9"] {
            let v = var(n);
            assert!(
                v.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{v}"
            );
        }
    }
}
