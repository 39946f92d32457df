//! Interop: code we did not write verifies what we emit (STYLE.md §9). jsonwebtoken checks our
//! EdDSA and ES256 tokens against the JWK we publish, so a bug shared by our signer and our
//! verifier cannot hide.

use serde_json::json;

use super::*;

#[test]
fn interop_jsonwebtoken_verifies_our_tokens() {
    for (alg, theirs) in [
        (Algorithm::EdDsa, jsonwebtoken::Algorithm::EdDSA),
        (Algorithm::Es256, jsonwebtoken::Algorithm::ES256),
    ] {
        let key = SigningKey::generate(alg).unwrap();
        // jsonwebtoken reads the real clock, so these claims are valid until 2096.
        let c = json!({"iss": ISS, "sub": "agent-1", "aud": AUD, "exp": 4_000_000_000i64, "iat": NOW, "jti": "j"});
        let token = at(&key, &c);
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(key.public_key().to_jwk()).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(theirs);
        validation.set_audience(&[AUD]);
        validation.set_issuer(&[ISS]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
        assert_eq!(data.claims["sub"], "agent-1");
        assert_eq!(data.header.kid.as_deref(), Some(key.kid()));
        assert_eq!(data.header.typ.as_deref(), Some("at+jwt"));
        // And the other way round: a tampered token is refused by them too.
        let mut tampered = token.clone().into_bytes();
        let i = tampered.len() - 2;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(&tampered, &decoding, &validation).is_err()
        );
    }
}
