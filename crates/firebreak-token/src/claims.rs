//! Standard claim validation (RFC 7519 §4.1, RFC 9068 §2.2), run only after the signature has
//! verified. A claim of the wrong type is an error, never "absent"; time arithmetic is checked.

use serde_json::{Map, Value};

use crate::{TokenError, UnverifiedJwt};

/// Which kind of token the caller expects; keeps access tokens and ID tokens from standing in for
/// each other (RFC 8725 §3.11, RFC 9068 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypExpectation {
    /// `typ` must be `at+jwt` or `application/at+jwt` (case-insensitive); `jti` is required.
    AccessToken,
    /// `typ` absent or `JWT` (case-insensitive); `at+jwt` and `dpop+jwt` are refused; `jti` is
    /// optional (the broker then uses the token's SHA-256 as replay key).
    IdToken,
}

/// What the claims must satisfy.
#[derive(Debug, Clone)]
pub struct ClaimRules<'a> {
    /// Compared byte-exactly with `iss`; no normalisation of case, slashes or scheme.
    pub issuer: &'a str,
    /// Must equal `aud` when it is a string; may be one element of an array `aud` only when
    /// `allow_multiple_audiences` is set.
    pub audience: &'a str,
    /// Accept an array `aud` containing `audience` (then `azp` is checked, see `azp_expected`).
    pub allow_multiple_audiences: bool,
    /// With an array `aud`: if the token has `azp` and this is `Some`, they must be equal.
    pub azp_expected: Option<&'a str>,
    /// Clock leeway, applied once to each of `exp`, `nbf` and `iat`. Must not be negative.
    pub leeway_secs: i64,
    /// Refuse tokens whose `iat` is older than `now - max_age - leeway`. Must not be negative.
    pub max_age_secs: Option<i64>,
    /// The current time, in Unix seconds.
    pub now_secs: i64,
    /// Access token or ID token.
    pub expected_typ: TypExpectation,
}

/// The standard claims of a validated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandardClaims {
    /// `iss`, equal to the expected issuer.
    pub iss: String,
    /// `sub`, non-empty.
    pub sub: String,
    /// `aud` as a list (one element when the token had a string).
    pub aud: Vec<String>,
    /// `exp`, in Unix seconds.
    pub exp: i64,
    /// `iat`, in Unix seconds.
    pub iat: i64,
    /// `nbf`, if present.
    pub nbf: Option<i64>,
    /// `jti`, if present (always present for access tokens).
    pub jti: Option<String>,
}

/// 9999-12-31T23:59:59Z: no real token expires later, and it keeps sums far from overflow.
const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

pub(crate) fn numeric_date(
    claims: &Map<String, Value>,
    claim: &'static str,
) -> Result<Option<i64>, TokenError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if n.is_f64() {
                // 1e300, 1.5 and 1700000000.0 alike: only integers are NumericDates here.
                return Err(TokenError::ClaimType { claim });
            }
            // u64 beyond i64 (2^63...) fails `as_i64` and is out of range.
            match n.as_i64() {
                Some(v) if (0..=MAX_NUMERIC_DATE).contains(&v) => Ok(Some(v)),
                _ => Err(TokenError::NumericDateOutOfRange { claim }),
            }
        }
        Some(_) => Err(TokenError::ClaimType { claim }),
    }
}

fn required_date(claims: &Map<String, Value>, claim: &'static str) -> Result<i64, TokenError> {
    numeric_date(claims, claim)?.ok_or(TokenError::MissingClaim { claim })
}

fn optional_string(
    claims: &Map<String, Value>,
    claim: &'static str,
) -> Result<Option<String>, TokenError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::ClaimType { claim }),
    }
}

fn required_string(claims: &Map<String, Value>, claim: &'static str) -> Result<String, TokenError> {
    optional_string(claims, claim)?.ok_or(TokenError::MissingClaim { claim })
}

fn check_typ(typ: Option<&str>, expected: TypExpectation) -> Result<(), TokenError> {
    let ok = match expected {
        TypExpectation::AccessToken => typ.is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        }),
        TypExpectation::IdToken => typ.is_none_or(|t| t.eq_ignore_ascii_case("JWT")),
    };
    if ok {
        Ok(())
    } else {
        Err(TokenError::WrongTokenType)
    }
}

fn audiences(
    claims: &Map<String, Value>,
    rules: &ClaimRules<'_>,
) -> Result<Vec<String>, TokenError> {
    const CLAIM: &str = "aud";
    match claims.get(CLAIM) {
        None => Err(TokenError::MissingClaim { claim: CLAIM }),
        Some(Value::String(a)) => {
            if a == rules.audience {
                Ok(vec![a.clone()])
            } else {
                Err(TokenError::AudienceMismatch)
            }
        }
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    _ => return Err(TokenError::ClaimType { claim: CLAIM }),
                }
            }
            if out.is_empty() {
                return Err(TokenError::ClaimType { claim: CLAIM });
            }
            // RFC 8725 §3.9: an array audience is a token meant for several parties; only an
            // issuer configured for it may send one, and then `azp` must name the expected party.
            if !rules.allow_multiple_audiences {
                return Err(TokenError::MultipleAudiencesRefused);
            }
            if !out.iter().any(|a| a == rules.audience) {
                return Err(TokenError::AudienceMismatch);
            }
            let azp = optional_string(claims, "azp")?;
            if let (Some(azp), Some(expected)) = (azp, rules.azp_expected)
                && azp != expected
            {
                return Err(TokenError::AuthorizedPartyMismatch);
            }
            Ok(out)
        }
        Some(_) => Err(TokenError::ClaimType { claim: CLAIM }),
    }
}

/// Validates the standard claims of `jwt`, whose signature has already verified.
///
/// Required: `exp`, `iat`, `iss`, `aud`, `sub`, and `jti` for access tokens.
/// `exp <= now - leeway` is [`TokenError::TokenExpired`]; `nbf > now + leeway` is
/// [`TokenError::NotYetValid`]; `iat > now + leeway` is [`TokenError::IssuedInFuture`]; with a
/// maximum age, `iat < now - max_age - leeway` is [`TokenError::TooOld`].
///
/// # Errors
/// The variants above, plus `WrongTokenType`, `MissingClaim`, `ClaimType`,
/// `NumericDateOutOfRange`, `IssuerMismatch`, `AudienceMismatch`, `MultipleAudiencesRefused`,
/// `AuthorizedPartyMismatch`, `TimeOverflow`, and `ApiMisuse` for a negative leeway or max age.
pub fn validate_claims(
    jwt: &UnverifiedJwt,
    rules: &ClaimRules<'_>,
) -> Result<StandardClaims, TokenError> {
    if rules.leeway_secs < 0 {
        return Err(TokenError::ApiMisuse("leeway_secs is negative"));
    }
    if rules.max_age_secs.is_some_and(|m| m < 0) {
        return Err(TokenError::ApiMisuse("max_age_secs is negative"));
    }
    check_typ(jwt.header().typ.as_deref(), rules.expected_typ)?;
    let claims = jwt.claims();

    let iss = required_string(claims, "iss")?;
    if iss.as_bytes() != rules.issuer.as_bytes() {
        return Err(TokenError::IssuerMismatch);
    }
    let sub = required_string(claims, "sub")?;
    let aud = audiences(claims, rules)?;
    let exp = required_date(claims, "exp")?;
    let iat = required_date(claims, "iat")?;
    let nbf = numeric_date(claims, "nbf")?;
    let jti = match rules.expected_typ {
        TypExpectation::AccessToken => Some(required_string(claims, "jti")?),
        TypExpectation::IdToken => optional_string(claims, "jti")?,
    };

    let now = rules.now_secs;
    let earliest = now
        .checked_sub(rules.leeway_secs)
        .ok_or(TokenError::TimeOverflow)?;
    let latest = now
        .checked_add(rules.leeway_secs)
        .ok_or(TokenError::TimeOverflow)?;
    if exp <= earliest {
        return Err(TokenError::TokenExpired);
    }
    if nbf.is_some_and(|nbf| nbf > latest) {
        return Err(TokenError::NotYetValid);
    }
    if iat > latest {
        return Err(TokenError::IssuedInFuture);
    }
    if let Some(max_age) = rules.max_age_secs {
        let oldest = earliest
            .checked_sub(max_age)
            .ok_or(TokenError::TimeOverflow)?;
        if iat < oldest {
            return Err(TokenError::TooOld);
        }
    }
    Ok(StandardClaims {
        iss,
        sub,
        aud,
        exp,
        iat,
        nbf,
        jti,
    })
}
