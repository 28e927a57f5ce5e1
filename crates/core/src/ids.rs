//! Identifiers. Resource ids are UUIDs (v4) as lowercase strings; user ids are opaque strings
//! from the identity provider, prefixed by its kind (`firebase:` and a uid of at most 128
//! characters, `oidc:` and a `sub` of at most 255).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The maximum length of a user id: an OpenID Connect `sub` (at most 255 characters) with its
/// issuer's prefix.
pub const MAX_USER_ID_LEN: usize = 300;

/// A new random resource id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether `s` is a resource id (a UUID in canonical form).
pub fn is_resource_id(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

/// Who owns something. Deserialized through [`UserId::parse`], so a task's arguments cannot
/// carry an empty, oversized or whitespace-laden owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl TryFrom<String> for UserId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<UserId> for String {
    fn from(u: UserId) -> String {
        u.0
    }
}

impl std::ops::Deref for UserId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl UserId {
    /// Checks and wraps a user id: 1-[`MAX_USER_ID_LEN`] printable characters.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_USER_ID_LEN {
            return Err(format!("user id must be 1-{MAX_USER_ID_LEN} characters"));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("user id must not contain spaces or control characters".into());
        }
        Ok(Self(s.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate() {
        assert!(is_resource_id(&new_id()));
        assert!(!is_resource_id("img-123"));
        assert!(UserId::parse("uid_42").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse(&"x".repeat(MAX_USER_ID_LEN)).is_ok());
        assert!(UserId::parse(&"x".repeat(MAX_USER_ID_LEN + 1)).is_err());
        let u: UserId = serde_json::from_str("\"firebase:abc\"").unwrap();
        assert_eq!(serde_json::to_string(&u).unwrap(), "\"firebase:abc\"");
        assert!(serde_json::from_str::<UserId>("\"a b\"").is_err());
    }
}
