//! OAuth scopes (RFC 6749 §3.3): a space-delimited list of case-sensitive scope tokens.

/// `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// Why a `scope` parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeError {
    /// Not a list of scope tokens (look-alike characters, control bytes, double spaces).
    Malformed,
    /// The same scope twice: refused rather than guessed at.
    Duplicate,
}

/// Parses a `scope` parameter strictly: single spaces between tokens, no duplicates.
pub fn parse_scope(s: &str) -> Result<Vec<String>, ScopeError> {
    let mut out: Vec<String> = Vec::new();
    for tok in s.split(' ') {
        if !is_scope_token(tok) {
            return Err(ScopeError::Malformed);
        }
        if out.iter().any(|t| t == tok) {
            return Err(ScopeError::Duplicate);
        }
        out.push(tok.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_strictly() {
        assert_eq!(
            parse_scope("read write"),
            Ok(vec!["read".into(), "write".into()])
        );
        assert_eq!(parse_scope("read  write"), Err(ScopeError::Malformed));
        assert_eq!(parse_scope("read read"), Err(ScopeError::Duplicate));
        assert_eq!(parse_scope("r\u{0435}ad"), Err(ScopeError::Malformed));
        assert_eq!(parse_scope(""), Err(ScopeError::Malformed));
        assert_eq!(parse_scope("a\"b"), Err(ScopeError::Malformed));
    }
}
