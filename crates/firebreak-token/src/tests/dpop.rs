//! DPoP proofs (RFC 9449 §4.3) and the replay cache. Every check has a failing case and a
//! passing twin; the interop test has jsonwebtoken produce the proofs (STYLE.md §9), and
//! `z7_dpop_proof` is SECURITY-TESTS.md Z7 as a property test.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;
use crate::{
    DpopExpect, DpopProof, DpopReplayCache, MAX_DPOP_JTI_BYTES, normalize_htu, sha256_b64url,
    verify_dpop_proof,
};

const URI: &str = "https://broker.example/oauth2/token";
const NOW_U: u64 = NOW as u64;
const ALGS: [Algorithm; 2] = [Algorithm::Es256, Algorithm::EdDsa];

fn expect() -> DpopExpect<'static> {
    DpopExpect {
        method: "POST",
        uri: URI,
        access_token: None,
        now: NOW_U,
        max_age_secs: 60,
        leeway_secs: 5,
        algorithms: &ALGS,
        nonce: None,
    }
}

fn proof_claims() -> Value {
    json!({"jti": "proof-1", "htm": "POST", "htu": URI, "iat": NOW})
}

fn proof_header(key: &SigningKey) -> Value {
    json!({"typ": "dpop+jwt", "alg": key.alg().as_str(), "jwk": key.public_key().to_jwk()})
}

/// A proof with `header` and `claims`, signed by `key`.
fn proof_with(key: &SigningKey, header: &Value, claims: &Value) -> String {
    key.sign_raw(header, &serde_json::to_vec(claims).unwrap())
        .unwrap()
}

fn proof(key: &SigningKey) -> String {
    proof_with(key, &proof_header(key), &proof_claims())
}

fn with(v: &Value, name: &str, value: Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().insert(name.into(), value);
    v
}

fn without(v: &Value, name: &str) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove(name);
    v
}

fn verify(p: &str) -> Result<DpopProof, TokenError> {
    verify_dpop_proof(p, &expect())
}

#[test]
fn dpop_valid_proof_accepted_with_rfc7638_thumbprint() {
    for key in [es_key(), ed_key()] {
        let got = verify(&proof(&key)).unwrap();
        assert_eq!(got.jkt, key.public_key().thumbprint());
        assert_eq!(got.jti, "proof-1");
        assert_eq!(got.iat, NOW_U);
        assert_eq!(got.ath, None);
        // The jwk's optional members (kid, alg, use) do not change the binding.
        let bare = json!({"typ": "dpop+jwt", "alg": key.alg().as_str(),
            "jwk": without(&without(&without(&key.public_key().to_jwk(), "kid"), "alg"), "use")});
        assert_eq!(
            verify(&proof_with(&key, &bare, &proof_claims()))
                .unwrap()
                .jkt,
            got.jkt
        );
    }
}

#[test]
fn dpop_typ_must_be_exactly_dpop_jwt() {
    let key = es_key();
    for typ in [
        json!("JWT"),
        json!("at+jwt"),
        json!("DPoP+jwt"),
        json!("application/dpop+jwt"),
        json!(""),
    ] {
        let p = proof_with(
            &key,
            &with(&proof_header(&key), "typ", typ.clone()),
            &proof_claims(),
        );
        assert_eq!(verify(&p).err(), Some(TokenError::WrongTokenType), "{typ}");
    }
    let p = proof_with(&key, &without(&proof_header(&key), "typ"), &proof_claims());
    assert_eq!(verify(&p).err(), Some(TokenError::WrongTokenType));
    let p = proof_with(
        &key,
        &with(&proof_header(&key), "typ", json!(1)),
        &proof_claims(),
    );
    assert_eq!(
        verify(&p).err(),
        Some(TokenError::HeaderMemberType { member: "typ" })
    );
    assert!(verify(&proof(&key)).is_ok());
}

#[test]
fn dpop_alg_must_be_asymmetric_and_allowed() {
    let key = ed_key();
    for alg in ["none", "HS256", "HS512", "PS256", "ES384"] {
        let p = proof_with(
            &key,
            &with(&proof_header(&key), "alg", json!(alg)),
            &proof_claims(),
        );
        assert_eq!(
            verify(&p).err(),
            Some(TokenError::AlgorithmNotAllowed),
            "{alg}"
        );
    }
    // An algorithm we know but the caller does not allow.
    let only_es = [Algorithm::Es256];
    let e = DpopExpect {
        algorithms: &only_es,
        ..expect()
    };
    assert_eq!(
        verify_dpop_proof(&proof(&key), &e).err(),
        Some(TokenError::AlgorithmNotAllowed)
    );
    // The header names ES256 but the embedded key is Ed25519: the key's algorithm wins.
    let p = proof_with(
        &key,
        &with(&proof_header(&key), "alg", json!("ES256")),
        &proof_claims(),
    );
    assert_eq!(
        verify(&p).err(),
        Some(TokenError::AlgorithmMismatch {
            key: Algorithm::EdDsa
        })
    );
    assert!(verify(&proof(&key)).is_ok());
    assert!(verify_dpop_proof(&proof(&es_key()), &e).is_ok());
}

#[test]
fn dpop_jwk_required_public_and_sound() {
    let key = es_key();
    let h = proof_header(&key);
    let c = proof_claims();
    assert_eq!(
        verify(&proof_with(&key, &without(&h, "jwk"), &c)).err(),
        Some(TokenError::DpopKeyMissing)
    );
    assert_eq!(
        verify(&proof_with(&key, &with(&h, "jwk", json!("key")), &c)).err(),
        Some(TokenError::HeaderMemberType { member: "jwk" })
    );
    // A private key in the header (the RFC 9449 §4.3 step 7 "MUST NOT contain a private key").
    let private = with(
        &key.public_key().to_jwk(),
        "d",
        json!(b64::encode(&[7u8; 32])),
    );
    assert_eq!(
        verify(&proof_with(&key, &with(&h, "jwk", private), &c)).err(),
        Some(TokenError::PrivateKeyMaterial)
    );
    // Symmetric keys, with and without the secret.
    let oct = json!({"kty": "oct", "k": b64::encode(b"secret")});
    assert_eq!(
        verify(&proof_with(&key, &with(&h, "jwk", oct), &c)).err(),
        Some(TokenError::PrivateKeyMaterial)
    );
    assert_eq!(
        verify(&proof_with(
            &key,
            &with(&h, "jwk", json!({"kty": "oct"})),
            &c
        ))
        .err(),
        Some(TokenError::UnsupportedKeyType)
    );
    // A point off the curve.
    let mut off = key.public_key().to_jwk();
    off["y"] = json!(b64::encode(&[1u8; 32]));
    assert_eq!(
        verify(&proof_with(&key, &with(&h, "jwk", off), &c)).err(),
        Some(TokenError::BadKeyMaterial)
    );
    // A key for encryption.
    let enc = with(&key.public_key().to_jwk(), "use", json!("enc"));
    assert_eq!(
        verify(&proof_with(&key, &with(&h, "jwk", enc), &c)).err(),
        Some(TokenError::KeyUseNotSig)
    );
    // Key locations stay refused next to the inline key: no fetch, no second key source.
    for (member, value) in [
        ("jku", json!("http://169.254.169.254/")),
        ("x5u", json!("http://169.254.169.254/")),
        ("x5c", json!(["MIIB"])),
    ] {
        assert_eq!(
            verify(&proof_with(&key, &with(&h, member, value), &c)).err(),
            Some(TokenError::EmbeddedKeyRefused),
            "{member}"
        );
    }
    // The other header rules still apply to proofs.
    assert_eq!(
        verify(&proof_with(&key, &with(&h, "crit", json!(["exp"])), &c)).err(),
        Some(TokenError::UnsupportedCritical)
    );
    assert!(verify(&proof_with(&key, &h, &c)).is_ok());
}

#[test]
fn dpop_signature_must_verify_with_the_embedded_key() {
    let key = es_key();
    let other = es_key();
    // Signed by `other`, claiming `key`'s public key.
    let p = proof_with(&other, &proof_header(&key), &proof_claims());
    assert_eq!(verify(&p).err(), Some(TokenError::BadSignature));
    // A payload changed after signing.
    let good = proof(&key);
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] =
        b64::encode(&serde_json::to_vec(&with(&proof_claims(), "htm", json!("POST "))).unwrap());
    assert_eq!(
        verify(&parts.join(".")).err(),
        Some(TokenError::BadSignature)
    );
    // No signature at all.
    parts = good.split('.').map(str::to_owned).collect();
    parts[2] = String::new();
    assert_eq!(
        verify(&parts.join(".")).err(),
        Some(TokenError::SignatureLength)
    );
    assert!(verify(&good).is_ok());
}

#[test]
fn dpop_jti_required_and_bounded() {
    let key = ed_key();
    let h = proof_header(&key);
    let check_jti = |jti: Option<Value>| {
        let c = match jti {
            Some(j) => with(&proof_claims(), "jti", j),
            None => without(&proof_claims(), "jti"),
        };
        verify(&proof_with(&key, &h, &c))
    };
    assert_eq!(
        check_jti(None).err(),
        Some(TokenError::MissingClaim { claim: "jti" })
    );
    assert_eq!(
        check_jti(Some(json!(42))).err(),
        Some(TokenError::ClaimType { claim: "jti" })
    );
    for bad in [
        String::new(),
        "a".repeat(MAX_DPOP_JTI_BYTES + 1),
        "a\nb".to_owned(),
        "a\u{0}b".to_owned(),
    ] {
        assert_eq!(
            check_jti(Some(json!(bad))).err(),
            Some(TokenError::DpopBadJti),
            "{bad:?}"
        );
    }
    let longest = "a".repeat(MAX_DPOP_JTI_BYTES);
    assert_eq!(check_jti(Some(json!(longest))).unwrap().jti, longest);
}

#[test]
fn dpop_htm_must_equal_the_method() {
    let key = ed_key();
    let h = proof_header(&key);
    for htm in ["GET", "post", "POST ", ""] {
        let p = proof_with(&key, &h, &with(&proof_claims(), "htm", json!(htm)));
        assert_eq!(
            verify(&p).err(),
            Some(TokenError::DpopClaimMismatch { claim: "htm" }),
            "{htm:?}"
        );
    }
    let p = proof_with(&key, &h, &without(&proof_claims(), "htm"));
    assert_eq!(
        verify(&p).err(),
        Some(TokenError::MissingClaim { claim: "htm" })
    );
    let p = proof_with(&key, &h, &with(&proof_claims(), "htm", json!(["POST"])));
    assert_eq!(
        verify(&p).err(),
        Some(TokenError::ClaimType { claim: "htm" })
    );
    // Twin: the same proof is right for a GET when the request is a GET.
    let p = proof_with(&key, &h, &with(&proof_claims(), "htm", json!("GET")));
    assert!(
        verify_dpop_proof(
            &p,
            &DpopExpect {
                method: "GET",
                ..expect()
            }
        )
        .is_ok()
    );
}

#[test]
fn dpop_htu_compared_after_normalisation() {
    let key = es_key();
    let h = proof_header(&key);
    let htu = |u: &str| {
        verify(&proof_with(
            &key,
            &h,
            &with(&proof_claims(), "htu", json!(u)),
        ))
    };
    for other in [
        "https://broker.example/oauth2/token2",
        "https://broker.example/oauth2/Token",
        "https://broker.example/oauth2/",
        "http://broker.example/oauth2/token",
        "https://broker.example:8443/oauth2/token",
        "https://evil.example/oauth2/token",
        "https://broker.example.evil.example/oauth2/token",
        "https://broker.example@evil.example/oauth2/token",
        "/oauth2/token",
        "",
    ] {
        assert_eq!(
            htu(other).err(),
            Some(TokenError::DpopClaimMismatch { claim: "htu" }),
            "{other}"
        );
    }
    assert_eq!(
        verify(&proof_with(&key, &h, &without(&proof_claims(), "htu"))).err(),
        Some(TokenError::MissingClaim { claim: "htu" })
    );
    // RFC 3986 §6 equivalents, and query and fragment ignored (RFC 9449 §4.3 step 9).
    for same in [
        URI,
        "HTTPS://Broker.Example/oauth2/token",
        "https://broker.example:443/oauth2/token",
        "https://broker.example/oauth2/./token",
        "https://broker.example/%6Fauth2/token",
        "https://broker.example/oauth2/token?x=1",
        "https://broker.example/oauth2/token#frag",
    ] {
        assert!(htu(same).is_ok(), "{same}");
    }
    // The caller's URI is normalised too, and must itself be one.
    let e = DpopExpect {
        uri: "https://BROKER.example:443/oauth2/token?ignored",
        ..expect()
    };
    assert!(verify_dpop_proof(&proof(&key), &e).is_ok());
    let e = DpopExpect {
        uri: "/oauth2/token",
        ..expect()
    };
    assert!(matches!(
        verify_dpop_proof(&proof(&key), &e),
        Err(TokenError::ApiMisuse(_))
    ));
    assert_eq!(normalize_htu(URI).as_deref(), Some(URI));
}

#[test]
fn dpop_iat_window_enforced() {
    let key = ed_key();
    let h = proof_header(&key);
    let at_iat = |iat: Value| verify(&proof_with(&key, &h, &with(&proof_claims(), "iat", iat)));
    // Window: [now - 60 - 5, now + 5].
    assert!(at_iat(json!(NOW - 65)).is_ok());
    assert_eq!(at_iat(json!(NOW - 66)).err(), Some(TokenError::TooOld));
    assert!(at_iat(json!(NOW + 5)).is_ok());
    assert_eq!(
        at_iat(json!(NOW + 6)).err(),
        Some(TokenError::IssuedInFuture)
    );
    assert_eq!(
        at_iat(json!(NOW as f64)).err(),
        Some(TokenError::ClaimType { claim: "iat" })
    );
    assert_eq!(
        at_iat(json!(NOW.to_string())).err(),
        Some(TokenError::ClaimType { claim: "iat" })
    );
    assert_eq!(
        at_iat(json!(-1)).err(),
        Some(TokenError::NumericDateOutOfRange { claim: "iat" })
    );
    assert_eq!(
        verify(&proof_with(&key, &h, &without(&proof_claims(), "iat"))).err(),
        Some(TokenError::MissingClaim { claim: "iat" })
    );
    // No overflow near the end of time.
    let e = DpopExpect {
        now: u64::MAX,
        ..expect()
    };
    assert_eq!(
        verify_dpop_proof(&proof(&key), &e).err(),
        Some(TokenError::TimeOverflow)
    );
}

#[test]
fn dpop_ath_checked_only_with_an_access_token() {
    let key = es_key();
    let h = proof_header(&key);
    let token = "eyJ.an-access-token.sig";
    let good_ath = sha256_b64url(token.as_bytes());
    let with_token = DpopExpect {
        access_token: Some(token),
        ..expect()
    };
    let no_ath = proof(&key);
    assert_eq!(
        verify_dpop_proof(&no_ath, &with_token).err(),
        Some(TokenError::MissingClaim { claim: "ath" })
    );
    let wrong = proof_with(
        &key,
        &h,
        &with(&proof_claims(), "ath", json!(sha256_b64url(b"other"))),
    );
    assert_eq!(
        verify_dpop_proof(&wrong, &with_token).err(),
        Some(TokenError::DpopClaimMismatch { claim: "ath" })
    );
    let not_string = proof_with(&key, &h, &with(&proof_claims(), "ath", json!(1)));
    assert_eq!(
        verify_dpop_proof(&not_string, &with_token).err(),
        Some(TokenError::ClaimType { claim: "ath" })
    );
    let right = proof_with(&key, &h, &with(&proof_claims(), "ath", json!(good_ath)));
    let got = verify_dpop_proof(&right, &with_token).unwrap();
    assert_eq!(got.ath.as_deref(), Some(good_ath.as_str()));
    // Without an access token `ath` is not required, and one for another token is not checked
    // here; `check_ath` applies it later for a caller that learns of the token afterwards.
    assert!(verify(&no_ath).is_ok());
    let unchecked = verify(&wrong).unwrap();
    assert_eq!(
        unchecked.check_ath(token),
        Err(TokenError::DpopClaimMismatch { claim: "ath" })
    );
    assert!(verify(&right).unwrap().check_ath(token).is_ok());
    assert_eq!(
        verify(&no_ath).unwrap().check_ath(token),
        Err(TokenError::MissingClaim { claim: "ath" })
    );
}

/// RFC 9449 §4.2 (Figure 4 / §7.1 example): the `ath` of the example access token.
#[test]
fn dpop_ath_rfc9449_vector() {
    assert_eq!(
        sha256_b64url(b"Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    );
}

#[test]
fn dpop_nonce_checked_when_expected() {
    let key = ed_key();
    let h = proof_header(&key);
    let e = DpopExpect {
        nonce: Some("n-1"),
        ..expect()
    };
    assert_eq!(
        verify_dpop_proof(&proof(&key), &e).err(),
        Some(TokenError::MissingClaim { claim: "nonce" })
    );
    let wrong = proof_with(&key, &h, &with(&proof_claims(), "nonce", json!("n-2")));
    assert_eq!(
        verify_dpop_proof(&wrong, &e).err(),
        Some(TokenError::DpopClaimMismatch { claim: "nonce" })
    );
    let right = proof_with(&key, &h, &with(&proof_claims(), "nonce", json!("n-1")));
    assert!(verify_dpop_proof(&right, &e).is_ok());
    // Without an expected nonce, a proof's nonce is ignored.
    assert!(verify(&wrong).is_ok());
}

#[test]
fn dpop_oversized_proof_refused_before_decoding() {
    let key = ed_key();
    let big = with(&proof_claims(), "pad", json!("x".repeat(9000)));
    assert_eq!(
        verify(&proof_with(&key, &proof_header(&key), &big)).err(),
        Some(TokenError::TokenTooLarge)
    );
    let fits = with(&proof_claims(), "pad", json!("x".repeat(2000)));
    assert!(verify(&proof_with(&key, &proof_header(&key), &fits)).is_ok());
}

/// SECURITY-TESTS.md T04 and T22 stay true: the DPoP entry point is the only one that takes a
/// `jwk` header, and proofs and access tokens cannot stand in for each other.
#[test]
fn t04_jwk_header_still_refused_outside_dpop() {
    let key = ed_key();
    // A valid proof is not a token: the ordinary parser refuses its `jwk`.
    let p = proof(&key);
    assert!(verify(&p).is_ok());
    assert_eq!(
        UnverifiedJwt::parse(&p, &Limits::default()).err(),
        Some(TokenError::EmbeddedKeyRefused)
    );
    // An access token with the attacker's key embedded is refused as before...
    let mut h = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": key.kid()});
    h["jwk"] = key.public_key().to_jwk();
    let token = proof_with(&key, &h, &claims());
    assert_eq!(
        check(&token, &key.public_key()).err(),
        Some(TokenError::EmbeddedKeyRefused)
    );
    // ...and is no proof either.
    assert_eq!(verify(&token).err(), Some(TokenError::WrongTokenType));
    // A plain access token is no proof: it has no key to bind to.
    assert_eq!(
        verify(&at(&key, &claims())).err(),
        Some(TokenError::DpopKeyMissing)
    );
    assert!(check(&at(&key, &claims()), &key.public_key()).is_ok());
}

/// RFC 7638 §3.1 (RSA) and RFC 8037 Appendix A.3 (Ed25519): the published thumbprints.
#[test]
fn thumbprint_rfc7638_vectors() {
    let rsa = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29"
    });
    let key = PublicKey::from_jwk(&rsa).unwrap();
    assert_eq!(
        key.thumbprint(),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
    assert_eq!(key.kid(), "2011-04-29", "an explicit kid is kept");
    let ed =
        json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
    let key = PublicKey::from_jwk(&ed).unwrap();
    assert_eq!(
        key.thumbprint(),
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    );
    assert_eq!(
        key.kid(),
        key.thumbprint(),
        "without a kid, the thumbprint is the kid"
    );
    // Members are the required ones only: optional members change nothing.
    let decorated = json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        "kid": "k", "alg": "EdDSA", "use": "sig", "key_ops": ["verify"]});
    assert_eq!(
        PublicKey::from_jwk(&decorated).unwrap().thumbprint(),
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    );
    // P-256: the hash input is the lexicographically ordered required members, no whitespace.
    let es = es_key().public_key();
    let jwk = es.to_jwk();
    let input = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap()
    );
    assert_eq!(es.thumbprint(), sha256_b64url(input.as_bytes()));
}

fn cached(p: &str) -> DpopProof {
    verify(p).unwrap()
}

#[test]
fn dpop_replay_cache_refuses_replays_within_the_window() {
    let key = ed_key();
    let mut cache = DpopReplayCache::new(16);
    let p = cached(&proof(&key));
    assert!(cache.check_and_insert(&p, &expect()).is_ok());
    assert_eq!(
        cache.check_and_insert(&p, &expect()),
        Err(TokenError::DpopReplayed)
    );
    // Same jti under another key is another proof.
    let other = cached(&proof(&es_key()));
    assert!(cache.check_and_insert(&other, &expect()).is_ok());
    // Still remembered at the last second the proof could be accepted (iat + 60 + 5)...
    let last = DpopExpect {
        now: NOW_U + 65,
        ..expect()
    };
    assert!(verify_dpop_proof(&proof(&key), &last).is_ok());
    assert_eq!(
        cache.check_and_insert(&p, &last),
        Err(TokenError::DpopReplayed)
    );
    // ...and forgotten only once verification itself would refuse it.
    let after = DpopExpect {
        now: NOW_U + 66,
        ..expect()
    };
    assert_eq!(
        verify_dpop_proof(&proof(&key), &after).err(),
        Some(TokenError::TooOld)
    );
    assert!(cache.check_and_insert(&p, &after).is_ok());
    assert_eq!(cache.len(), 1, "expired entries were purged");
}

#[test]
fn dpop_replay_cache_full_fails_closed() {
    let key = ed_key();
    let mut cache = DpopReplayCache::new(2);
    assert!(cache.is_empty());
    let jtis: Vec<DpopProof> = (0..3)
        .map(|i| {
            cached(&proof_with(
                &key,
                &proof_header(&key),
                &with(&proof_claims(), "jti", json!(format!("p-{i}"))),
            ))
        })
        .collect();
    assert!(cache.check_and_insert(&jtis[0], &expect()).is_ok());
    assert!(cache.check_and_insert(&jtis[1], &expect()).is_ok());
    assert_eq!(
        cache.check_and_insert(&jtis[2], &expect()),
        Err(TokenError::DpopReplayCacheFull)
    );
    // Live entries were not evicted to make room.
    assert_eq!(
        cache.check_and_insert(&jtis[0], &expect()),
        Err(TokenError::DpopReplayed)
    );
    // Once they expire there is room again.
    let later = DpopExpect {
        now: NOW_U + 66,
        ..expect()
    };
    assert!(cache.check_and_insert(&jtis[2], &later).is_ok());
    assert_eq!(cache.len(), 1);
}

/// Interop: jsonwebtoken signs the proofs (ES256, EdDSA) and builds the ES256 `jwk` itself; our
/// verifier accepts them and computes the same thumbprint as jsonwebtoken.
#[test]
fn interop_jsonwebtoken_dpop_proofs_verify() {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
    use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
    for alg in [Algorithm::Es256, Algorithm::EdDsa] {
        let ours = SigningKey::generate(alg).unwrap();
        let der = ours.pkcs8_der();
        let (theirs, encoding, jwk) = match alg {
            Algorithm::Es256 => {
                let enc = jsonwebtoken::EncodingKey::from_ec_der(der);
                let jwk = Jwk::from_encoding_key(&enc, jsonwebtoken::Algorithm::ES256).unwrap();
                (jsonwebtoken::Algorithm::ES256, enc, jwk)
            }
            _ => {
                let raw = Ed25519KeyPair::from_pkcs8(der).unwrap();
                let x = b64::encode(raw.public_key().as_ref());
                let jwk: Jwk =
                    serde_json::from_value(json!({"kty": "OKP", "crv": "Ed25519", "x": x}))
                        .unwrap();
                (
                    jsonwebtoken::Algorithm::EdDSA,
                    jsonwebtoken::EncodingKey::from_ed_der(der),
                    jwk,
                )
            }
        };
        let mut header = jsonwebtoken::Header::new(theirs);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(jwk.clone());
        let token = "an-access-token";
        let claims = json!({"jti": format!("jwt-{alg}"), "htm": "POST", "htu": URI, "iat": NOW,
            "ath": sha256_b64url(token.as_bytes())});
        let p = jsonwebtoken::encode(&header, &claims, &encoding).unwrap();
        let e = DpopExpect {
            access_token: Some(token),
            ..expect()
        };
        let got = verify_dpop_proof(&p, &e).unwrap();
        assert_eq!(got.jkt, jwk.thumbprint(ThumbprintHash::SHA256), "{alg}");
        assert_eq!(got.jkt, ours.public_key().thumbprint(), "{alg}");
        // And a wrong method is refused for their proof as for ours.
        let get = DpopExpect {
            method: "GET",
            ..e.clone()
        };
        assert_eq!(
            verify_dpop_proof(&p, &get).err(),
            Some(TokenError::DpopClaimMismatch { claim: "htm" })
        );
    }
}

fn es_key_cached() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(es_key)
}

fn mutate(s: &str, pos: prop::sample::Index, c: char) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    let i = pos.index(chars.len());
    chars[i] = c;
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// SECURITY-TESTS.md Z7: a proof is accepted only when its key is the expected `jkt` and its
    /// `htm`, `htu` and `ath` match the request; changing any one of them is refused.
    #[test]
    fn z7_dpop_proof(which in 0usize..4, pos in any::<prop::sample::Index>(), c in "[a-zA-Z0-9/_.-]") {
        let c = c.chars().next().unwrap();
        let key = es_key_cached();
        let token = "the-bound-token";
        let mut claims: Map<String, Value> = proof_claims().as_object().unwrap().clone();
        claims.insert("ath".into(), json!(sha256_b64url(token.as_bytes())));
        let e = DpopExpect { access_token: Some(token), ..expect() };
        let good = proof_with(key, &proof_header(key), &Value::Object(claims.clone()));
        let ok = verify_dpop_proof(&good, &e).unwrap();
        prop_assert_eq!(&ok.jkt, &key.public_key().thumbprint());
        let (method, uri, tok) = match which {
            0 => (mutate("POST", pos, c), URI.to_owned(), token.to_owned()),
            1 => ("POST".to_owned(), mutate(URI, pos, c), token.to_owned()),
            _ => ("POST".to_owned(), URI.to_owned(), mutate(token, pos, c)),
        };
        let changed = DpopExpect { method: &method, uri: &uri, access_token: Some(&tok), ..expect() };
        let same_request = normalize_htu(&uri) == normalize_htu(URI) && method == "POST" && tok == token;
        match verify_dpop_proof(&good, &changed) {
            Ok(p) => prop_assert!(same_request && p.jkt == ok.jkt, "accepted a changed request"),
            Err(_) => prop_assert!(!same_request),
        }
        // Another key never yields the same jkt.
        if which == 3 {
            let other = ed_key();
            let p = proof_with(&other, &proof_header(&other), &Value::Object(claims));
            prop_assert_ne!(verify_dpop_proof(&p, &e).unwrap().jkt, ok.jkt);
        }
    }
}
