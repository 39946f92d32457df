//! Crate tests: the T-case security tests (named by SECURITY-TESTS.md ID), the Wycheproof vector
//! loops (T23), the JWKS cache against a loopback issuer (T07, F6) and property tests (Z1).

mod cache;
mod dpop;
mod interop;
mod props;
mod security;
mod wycheproof;

use serde_json::{Value, json};

use crate::{
    Algorithm, ClaimRules, Limits, PublicKey, SigningKey, StandardClaims, TokenError,
    TypExpectation, UnverifiedJwt, b64, validate_claims, verify_signature,
};

pub(crate) const NOW: i64 = 1_700_000_000;
pub(crate) const ISS: &str = "https://issuer.example";
pub(crate) const AUD: &str = "firebreak";
pub(crate) const ALL: [Algorithm; 3] = [Algorithm::Rs256, Algorithm::Es256, Algorithm::EdDsa];

pub(crate) fn claims() -> Value {
    json!({"iss": ISS, "sub": "agent-1", "aud": AUD, "exp": NOW + 300, "iat": NOW, "jti": "jti-1"})
}

pub(crate) fn rules(expected_typ: TypExpectation) -> ClaimRules<'static> {
    ClaimRules {
        issuer: ISS,
        audience: AUD,
        allow_multiple_audiences: false,
        azp_expected: None,
        leeway_secs: 60,
        max_age_secs: None,
        now_secs: NOW,
        expected_typ,
    }
}

/// Parse, verify with `key`, validate as an access token: the whole production path.
pub(crate) fn check(token: &str, key: &PublicKey) -> Result<StandardClaims, TokenError> {
    check_with(token, key, &rules(TypExpectation::AccessToken))
}

pub(crate) fn check_with(
    token: &str,
    key: &PublicKey,
    rules: &ClaimRules<'_>,
) -> Result<StandardClaims, TokenError> {
    let jwt = UnverifiedJwt::parse(token, &Limits::default())?;
    verify_signature(&jwt, key, &ALL)?;
    validate_claims(&jwt, rules)
}

pub(crate) fn ed_key() -> SigningKey {
    SigningKey::generate(Algorithm::EdDsa).unwrap()
}

pub(crate) fn es_key() -> SigningKey {
    SigningKey::generate(Algorithm::Es256).unwrap()
}

/// An access token with the given claims, signed normally.
pub(crate) fn at(key: &SigningKey, claims: &Value) -> String {
    key.sign_jwt("at+jwt", claims).unwrap()
}

/// Signs header and payload given as raw JSON text (so duplicates and odd bytes survive).
pub(crate) fn sign_text(key: &SigningKey, header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", b64::encode(header), b64::encode(payload));
    let sig = key.sign_bytes(input.as_bytes()).unwrap();
    format!("{input}.{}", b64::encode(&sig))
}

/// The standard header text for `key`.
pub(crate) fn header_text(key: &SigningKey) -> String {
    format!(
        r#"{{"alg":"{}","typ":"at+jwt","kid":"{}"}}"#,
        key.alg().as_str(),
        key.kid()
    )
}

pub(crate) fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}
