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
    #[error("{0:?} is {1} characters long; a name is at most 63 (one DNS label)")]
    TooLong(String, usize),
    #[error(
        "{name:?} has {what}; a name is lowercase letters, digits and '-' \
         (not first or last), like \"api\" or \"web-2\""
    )]
    Invalid { name: String, what: String },
}

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as an environment-variable suffix: `admin-api` → `ADMIN_API`.
    pub fn env_suffix(&self) -> String {
        self.0.to_ascii_uppercase().replace('-', "_")
    }
}

impl FromStr for Name {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        let invalid = |what: String| NameError::Invalid {
            name: s.to_string(),
            what,
        };
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > 63 {
            return Err(NameError::TooLong(s.to_string(), s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            let what = if c.is_ascii_uppercase() {
                format!(
                    "an uppercase letter {c:?} (use {:?})",
                    s.to_ascii_lowercase()
                )
            } else {
                format!("the character {c:?}")
            };
            return Err(invalid(what));
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
        assert!(err.contains("\"api\""), "{err}");
    }

    #[test]
    fn env_suffix_is_shell_safe() {
        assert_eq!(
            "admin-api".parse::<Name>().unwrap().env_suffix(),
            "ADMIN_API"
        );
    }
}
