//! Identifier newtypes. Each has a private field and a parsing constructor, so a value of the type
//! is already well-formed: printable ASCII without spaces, bounded length.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty.
    #[error("identifier is empty")]
    Empty,
    /// Longer than the limit.
    #[error("identifier is longer than {0} bytes")]
    TooLong(usize),
    /// Contains a character outside the allowed set.
    #[error("identifier contains a character outside [A-Za-z0-9._:@/+_-]")]
    BadCharacter,
}

fn check_id(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong(max));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:@/+-".contains(&b) || b == b'_')
    {
        return Err(IdError::BadCharacter);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                check_id(&s, $max)?;
                Ok(Self(s))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::try_from(s.to_owned())
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::try_from(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// A registered agent (`[[agent]] id`); the `sub` and `client_id` of issued tokens.
    AgentId,
    128
);
id_type!(
    /// A registered target (`[[target]] id`).
    TargetId,
    128
);
id_type!(
    /// A session: one per exchange, `sid` in issued tokens.
    SessionId,
    128
);
id_type!(
    /// A token id (`jti`).
    Jti,
    256
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_strictly() {
        assert!(AgentId::try_from("deploy-bot").is_ok());
        assert_eq!(AgentId::try_from(""), Err(IdError::Empty));
        assert_eq!(AgentId::try_from("a b"), Err(IdError::BadCharacter));
        assert_eq!(
            AgentId::try_from("x".repeat(129)),
            Err(IdError::TooLong(128))
        );
    }
}
