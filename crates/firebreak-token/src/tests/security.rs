//! SECURITY-TESTS.md T01–T22 at the verifier level. Each test asserts the exact refusal and runs
//! a positive twin with the defect removed.

use aws_lc_rs::hmac;
use serde_json::{Value, json};

use super::*;
use crate::{JwksSource, KeySet, Segment};

fn set_claim(claims: &mut Value, name: &str, v: Value) {
    claims.as_object_mut().unwrap().insert(name.into(), v);
}

fn remove_claim(claims: &mut Value, name: &str) {
    claims.as_object_mut().unwrap().remove(name);
}

fn parse(token: &str) -> Result<UnverifiedJwt, TokenError> {
    UnverifiedJwt::parse(token, &Limits::default())
}

/// SECURITY-TESTS.md T01: `alg: none` in any case, with and without a signature, is refused at
/// parse time, before any key lookup.
#[test]
fn t01_alg_none_refused() {
    let key = ed_key();
    let payload = serde_json::to_vec(&claims()).unwrap();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{}"}}"#, key.kid());
        let unsigned = format!(
            "{}.{}.",
            b64::encode(header.as_bytes()),
            b64::encode(&payload)
        );
        assert_eq!(
            parse(&unsigned).err(),
            Some(TokenError::AlgorithmNotAllowed),
            "{alg} empty sig"
        );
        let signed = sign_text(&key, header.as_bytes(), &payload);
        assert_eq!(
            parse(&signed).err(),
            Some(TokenError::AlgorithmNotAllowed),
            "{alg} with sig"
        );
    }
    assert_eq!(
        "none".parse::<Algorithm>(),
        Err(TokenError::AlgorithmNotAllowed)
    );
    // Positive twin.
    assert!(check(&at(&key, &claims()), &key.public_key()).is_ok());
}

/// SECURITY-TESTS.md T02: HS256/384/512 keyed with the public key (as JWK JSON, raw bytes, or
/// thumbprint), and PS256, are refused; the algorithm comes from the key, not the header.
#[test]
fn t02_algorithm_confusion_refused() {
    let key = es_key();
    let public = key.public_key();
    let payload = serde_json::to_vec(&claims()).unwrap();
    let secrets: Vec<Vec<u8>> = vec![
        public.to_jwk().to_string().into_bytes(),
        public.thumbprint().into_bytes(),
        key.pkcs8_der().to_vec(),
    ];
    for (alg, hmac_alg) in [
        ("HS256", hmac::HMAC_SHA256),
        ("HS384", hmac::HMAC_SHA384),
        ("HS512", hmac::HMAC_SHA512),
    ] {
        for secret in &secrets {
            let header = format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{}"}}"#, key.kid());
            let input = format!(
                "{}.{}",
                b64::encode(header.as_bytes()),
                b64::encode(&payload)
            );
            let tag = hmac::sign(&hmac::Key::new(hmac_alg, secret), input.as_bytes());
            let token = format!("{input}.{}", b64::encode(tag.as_ref()));
            assert_eq!(
                parse(&token).err(),
                Some(TokenError::AlgorithmNotAllowed),
                "{alg}"
            );
        }
    }
    for alg in ["PS256", "ES384", "RS512", "es256", "EDDSA"] {
        let header = format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, key.kid());
        let token = sign_text(&key, header.as_bytes(), &payload);
        assert_eq!(
            parse(&token).err(),
            Some(TokenError::AlgorithmNotAllowed),
            "{alg}"
        );
        assert!(serde_json::from_value::<Algorithm>(json!(alg)).is_err());
    }
    // The key's algorithm must be allowed, and the header must agree with it.
    let good = at(&key, &claims());
    let jwt = parse(&good).unwrap();
    assert_eq!(
        verify_signature(&jwt, &public, &[Algorithm::EdDsa, Algorithm::Rs256]),
        Err(TokenError::AlgorithmNotAllowed)
    );
    let ed = ed_key();
    let ed_header = format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}"}}"#, key.kid());
    let mislabelled = sign_text(&ed, ed_header.as_bytes(), &payload);
    let jwt = parse(&mislabelled).unwrap();
    assert_eq!(
        verify_signature(&jwt, &public, &ALL),
        Err(TokenError::AlgorithmMismatch {
            key: Algorithm::Es256
        })
    );
    // Positive twin.
    assert!(check(&good, &public).is_ok());
    assert_eq!(
        serde_json::from_value::<Algorithm>(json!("ES256")).unwrap(),
        Algorithm::Es256
    );
}

/// The P-256 group order n, big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The Ed25519 group order L, little-endian.
const ED25519_L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

fn der_integer(v: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = v.iter().copied().skip_while(|&b| b == 0).collect();
    if v.first().is_none_or(|&b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    let mut out = vec![0x02, v.len() as u8];
    out.extend(v);
    out
}

fn replace_signature(token: &str, sig: &[u8]) -> String {
    let cut = token.rfind('.').unwrap();
    format!("{}.{}", &token[..cut], b64::encode(sig))
}

fn signature_of(token: &str) -> Vec<u8> {
    b64::decode(&token[token.rfind('.').unwrap() + 1..]).unwrap()
}

/// SECURITY-TESTS.md T03: ES256 with r = s = 0, r = s = n, r or s ≥ n, DER encoding or a wrong
/// length; EdDSA with S ≥ L or a small-order public key.
#[test]
fn t03_psychic_and_malleable_signatures_refused() {
    let key = es_key();
    let public = key.public_key();
    let good = at(&key, &claims());
    let sig = signature_of(&good);
    let (r, s) = sig.split_at(32);
    let cases: Vec<(Vec<u8>, TokenError)> = vec![
        (vec![0; 64], TokenError::BadSignature),
        ([P256_N, P256_N].concat(), TokenError::BadSignature),
        ([&P256_N[..], s].concat(), TokenError::BadSignature),
        ([r, &P256_N[..]].concat(), TokenError::BadSignature),
        ([r, &[0xff; 32][..]].concat(), TokenError::BadSignature),
        (
            {
                let mut seq = [der_integer(r), der_integer(s)].concat();
                seq.splice(0..0, [0x30, seq.len() as u8]);
                seq
            },
            TokenError::SignatureLength,
        ),
        (sig[..63].to_vec(), TokenError::SignatureLength),
        ([&sig[..], &[0][..]].concat(), TokenError::SignatureLength),
        (Vec::new(), TokenError::SignatureLength),
    ];
    for (i, (bad, want)) in cases.into_iter().enumerate() {
        assert_eq!(
            check(&replace_signature(&good, &bad), &public).err(),
            Some(want),
            "case {i}"
        );
    }
    assert!(check(&good, &public).is_ok());

    // EdDSA: S + L is the same scalar mod L but not canonical; RFC 8032 requires S < L.
    let ed = ed_key();
    let ed_good = at(&ed, &claims());
    let mut ed_sig = signature_of(&ed_good);
    let mut carry = 0u16;
    for (b, l) in ed_sig[32..].iter_mut().zip(ED25519_L) {
        let sum = u16::from(*b) + u16::from(l) + carry;
        *b = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    assert_eq!(
        check(&replace_signature(&ed_good, &ed_sig), &ed.public_key()).err(),
        Some(TokenError::BadSignature)
    );
    // Small-order public keys are refused when loading.
    for x in [[0u8; 32], {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }] {
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64::encode(&x), "kid": "small"});
        assert_eq!(
            PublicKey::from_jwk(&jwk).err(),
            Some(TokenError::BadKeyMaterial)
        );
    }
    assert!(check(&ed_good, &ed.public_key()).is_ok());
    assert!(PublicKey::from_jwk(&ed.public_key().to_jwk()).is_ok());
}

/// SECURITY-TESTS.md T04: a token signed by an attacker whose key sits in the `jwk` header (or
/// in `x5c`) is refused outright.
#[test]
fn t04_embedded_jwk_refused() {
    let attacker = ed_key();
    let payload = serde_json::to_vec(&claims()).unwrap();
    for member in ["jwk", "x5c"] {
        let value = if member == "jwk" {
            attacker.public_key().to_jwk()
        } else {
            json!(["MIIB"])
        };
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": attacker.kid(), member: value});
        let token = sign_text(&attacker, header.to_string().as_bytes(), &payload);
        assert_eq!(
            parse(&token).err(),
            Some(TokenError::EmbeddedKeyRefused),
            "{member}"
        );
    }
    assert!(check(&at(&attacker, &claims()), &attacker.public_key()).is_ok());
}

/// SECURITY-TESTS.md T05: `jku`/`x5u` pointing at a counting loopback listener and at the metadata
/// address are refused, and the listener sees no connection.
#[test]
fn t05_jku_x5u_refused_without_fetch() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let key = ed_key();
    let payload = serde_json::to_vec(&claims()).unwrap();
    for member in ["jku", "x5u"] {
        for target in [url.as_str(), "http://169.254.169.254/"] {
            let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": key.kid(), member: target});
            let token = sign_text(&key, header.to_string().as_bytes(), &payload);
            assert_eq!(parse(&token).err(), Some(TokenError::EmbeddedKeyRefused));
        }
    }
    // Nothing connected: parsing has no network path at all.
    assert_eq!(
        listener.accept().err().map(|e| e.kind()),
        Some(std::io::ErrorKind::WouldBlock)
    );
    assert!(check(&at(&key, &claims()), &key.public_key()).is_ok());
}

/// SECURITY-TESTS.md T06: hostile `kid` values are either refused as malformed or are merely an
/// unknown map key; they never reach a file system or database.
#[test]
fn t06_hostile_kid_refused() {
    let key = ed_key();
    let set = KeySet::from_keys(vec![key.public_key()]);
    let payload = serde_json::to_vec(&claims()).unwrap();
    let lookup = |token: &str| -> Result<(), TokenError> {
        let jwt = parse(token)?;
        let kid = jwt.header().kid.as_deref().ok_or(TokenError::UnknownKey)?;
        let k = set.get(kid).ok_or(TokenError::UnknownKey)?;
        verify_signature(&jwt, k, &ALL)
    };
    for kid in ["../../../../dev/null", "' OR '1'='1"] {
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
        let token = sign_text(&key, header.to_string().as_bytes(), &payload);
        assert_eq!(lookup(&token), Err(TokenError::UnknownKey), "{kid}");
    }
    for kid in [
        json!("a\u{0}b"),
        json!("k".repeat(10 * 1024)),
        json!(""),
        json!(42),
        json!({"a": 1}),
        json!("é"),
    ] {
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
        let token = sign_text(&key, header.to_string().as_bytes(), &payload);
        assert_eq!(lookup(&token), Err(TokenError::BadKid), "{kid}");
    }
    assert_eq!(lookup(&at(&key, &claims())), Ok(()));
}

/// SECURITY-TESTS.md T08: keys are looked up by (issuer, kid) after `iss` picked the issuer, so
/// issuer A's key never verifies a token claiming issuer B, even when both use one kid.
#[test]
fn t08_other_issuers_kid_refused() {
    let a = ed_key();
    let b = ed_key();
    let sets = [
        ("https://a.example", KeySet::from_keys(vec![a.public_key()])),
        ("https://b.example", KeySet::from_keys(vec![b.public_key()])),
    ];
    let resolve = |token: &str| -> Result<(), TokenError> {
        let jwt = parse(token)?;
        let iss = jwt
            .issuer()
            .ok_or(TokenError::MissingClaim { claim: "iss" })?;
        let (_, set) = sets
            .iter()
            .find(|(i, _)| *i == iss)
            .ok_or(TokenError::IssuerMismatch)?;
        let kid = jwt.header().kid.as_deref().ok_or(TokenError::UnknownKey)?;
        verify_signature(&jwt, set.get(kid).ok_or(TokenError::UnknownKey)?, &ALL)
    };
    let mut c = claims();
    set_claim(&mut c, "iss", json!("https://b.example"));
    assert_eq!(resolve(&at(&a, &c)), Err(TokenError::UnknownKey));
    // Same kid published by both issuers: B's key under A's kid still does not verify A's token.
    let shared = SigningKey::from_pkcs8(Algorithm::EdDsa, "shared".into(), a.pkcs8_der()).unwrap();
    let b_shared =
        SigningKey::from_pkcs8(Algorithm::EdDsa, "shared".into(), b.pkcs8_der()).unwrap();
    let sets2 = [(
        "https://b.example",
        KeySet::from_keys(vec![b_shared.public_key()]),
    )];
    let jwt = parse(&at(&shared, &c)).unwrap();
    let (_, set) = sets2
        .iter()
        .find(|(i, _)| Some(*i) == jwt.issuer())
        .unwrap();
    assert_eq!(
        verify_signature(&jwt, set.get("shared").unwrap(), &ALL),
        Err(TokenError::BadSignature)
    );
    // Positive twin.
    set_claim(&mut c, "iss", json!("https://a.example"));
    assert_eq!(resolve(&at(&a, &c)), Ok(()));
}

/// SECURITY-TESTS.md T09: a poisoned JWKS loses exactly its bad keys, each with a warning naming
/// the kid; the good key keeps working.
#[test]
fn t09_jwks_poisoning_drops_bad_keys() {
    let good = es_key();
    let mut good_jwk = good.public_key().to_jwk();
    good_jwk["kid"] = json!("good");
    let ec = good.public_key().to_jwk();
    let mut off_curve = ec.clone();
    off_curve["kid"] = json!("off-curve");
    let mut y = b64::decode(ec["y"].as_str().unwrap()).unwrap();
    y[31] ^= 1;
    off_curve["y"] = json!(b64::encode(&y));
    let mut wrong_alg = ec.clone();
    wrong_alg["kid"] = json!("wrong-alg");
    wrong_alg["alg"] = json!("RS256");
    let mut enc = ec.clone();
    enc["kid"] = json!("use-enc");
    enc["use"] = json!("enc");
    let mut ops = ec.clone();
    ops["kid"] = json!("ops-no-verify");
    ops["key_ops"] = json!(["sign", "encrypt"]);
    let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "oct", "alg": "HS256"});
    let mut dup1 = ec.clone();
    dup1["kid"] = json!("dup");
    let dup2 = dup1.clone();
    let mut with_private = ec.clone();
    with_private["kid"] = json!("private");
    with_private["d"] = json!("AAAA");
    let mut no_kid = ec.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let jwks = json!({"keys": [oct, enc, wrong_alg, off_curve, dup1, dup2, ops, with_private, no_kid, good_jwk]});
    let (set, warnings) = KeySet::from_jwks_json(jwks.to_string().as_bytes()).unwrap();
    assert_eq!(set.len(), 1, "{warnings:?}");
    assert_eq!(warnings.len(), 9, "{warnings:?}");
    for kid in [
        "oct",
        "use-enc",
        "wrong-alg",
        "off-curve",
        "dup",
        "ops-no-verify",
        "private",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(&format!("{kid:?}"))),
            "no warning for {kid}: {warnings:?}"
        );
    }
    // The exact causes, one key at a time.
    let e = |v: &Value| PublicKey::from_jwk(v).err();
    assert_eq!(e(&jwks["keys"][0]), Some(TokenError::PrivateKeyMaterial)); // oct has `k`
    assert_eq!(
        e(&json!({"kty": "oct", "kid": "x"})),
        Some(TokenError::UnsupportedKeyType)
    );
    assert_eq!(e(&jwks["keys"][1]), Some(TokenError::KeyUseNotSig));
    assert_eq!(e(&jwks["keys"][2]), Some(TokenError::KeyAlgorithmMismatch));
    assert_eq!(e(&jwks["keys"][3]), Some(TokenError::BadKeyMaterial));
    assert_eq!(e(&jwks["keys"][6]), Some(TokenError::KeyOpsNoVerify));
    assert_eq!(e(&jwks["keys"][7]), Some(TokenError::PrivateKeyMaterial));
    let mut p384 = ec.clone();
    p384["crv"] = json!("P-384");
    assert_eq!(e(&p384), Some(TokenError::UnsupportedCurve));
    // Tokens relying on dropped keys are refused; the good key works.
    assert!(set.get("dup").is_none() && set.get("off-curve").is_none());
    let signed_good =
        SigningKey::from_pkcs8(Algorithm::Es256, "good".into(), good.pkcs8_der()).unwrap();
    let token = at(&signed_good, &claims());
    assert!(check(&token, set.get("good").unwrap()).is_ok());
}

/// SECURITY-TESTS.md T10: each of exp, iat, iss, aud, sub and (for access tokens) jti is required.
#[test]
fn t10_missing_required_claims_refused() {
    let key = ed_key();
    for claim in ["exp", "iat", "iss", "aud", "sub", "jti"] {
        let mut c = claims();
        remove_claim(&mut c, claim);
        assert_eq!(
            check(&at(&key, &c), &key.public_key()).err(),
            Some(TokenError::MissingClaim { claim }),
            "{claim}"
        );
    }
    // jti is optional for ID tokens only.
    let mut c = claims();
    remove_claim(&mut c, "jti");
    let id = key.sign_jwt("JWT", &c).unwrap();
    assert!(check_with(&id, &key.public_key(), &rules(TypExpectation::IdToken)).is_ok());
    assert!(check(&at(&key, &claims()), &key.public_key()).is_ok());
}

/// SECURITY-TESTS.md T11: a NumericDate of the wrong type is an error, never "absent".
#[test]
fn t11_wrong_type_numeric_dates_refused() {
    let key = ed_key();
    for claim in ["exp", "nbf", "iat"] {
        for v in [
            json!("9999999999"),
            json!(true),
            json!(null),
            json!([NOW]),
            json!({"t": NOW}),
            json!(1.5e9),
        ] {
            let mut c = claims();
            set_claim(&mut c, claim, v.clone());
            assert_eq!(
                check(&at(&key, &c), &key.public_key()).err(),
                Some(TokenError::ClaimType { claim }),
                "{claim} = {v}"
            );
        }
    }
    let mut c = claims();
    set_claim(&mut c, "nbf", json!(NOW));
    assert!(check(&at(&key, &c), &key.public_key()).is_ok());
}

/// SECURITY-TESTS.md T12: leeway 60 s is applied once to `exp`; absurd values are refused
/// through range checks and checked arithmetic.
#[test]
fn t12_exp_leeway_applied_once() {
    let key = ed_key();
    let with_exp = |v: Value| {
        let mut c = claims();
        set_claim(&mut c, "exp", v);
        check(&at(&key, &c), &key.public_key())
    };
    assert_eq!(
        with_exp(json!(NOW - 61)).err(),
        Some(TokenError::TokenExpired)
    );
    assert_eq!(
        with_exp(json!(NOW - 60)).err(),
        Some(TokenError::TokenExpired)
    );
    assert!(with_exp(json!(NOW - 59)).is_ok());
    assert_eq!(
        with_exp(json!(1e300)).err(),
        Some(TokenError::ClaimType { claim: "exp" })
    );
    assert_eq!(
        with_exp(json!(9_223_372_036_854_775_808u64)).err(),
        Some(TokenError::NumericDateOutOfRange { claim: "exp" })
    );
    assert_eq!(
        with_exp(json!(i64::MAX)).err(),
        Some(TokenError::NumericDateOutOfRange { claim: "exp" })
    );
    assert_eq!(
        with_exp(json!(-1)).err(),
        Some(TokenError::NumericDateOutOfRange { claim: "exp" })
    );
    // Overflow in the rule arithmetic itself is a refusal, not a wrap.
    let jwt = parse(&at(&key, &claims())).unwrap();
    let mut r = rules(TypExpectation::AccessToken);
    r.now_secs = i64::MIN + 1;
    assert_eq!(
        validate_claims(&jwt, &r).err(),
        Some(TokenError::TimeOverflow)
    );
    r.now_secs = NOW;
    r.leeway_secs = -1;
    assert_eq!(
        validate_claims(&jwt, &r).err(),
        Some(TokenError::ApiMisuse("leeway_secs is negative"))
    );
}

/// SECURITY-TESTS.md T13: `nbf` or `iat` beyond now + leeway, and `iat` older than the maximum
/// age, are refused.
#[test]
fn t13_nbf_iat_future_and_max_age_refused() {
    let key = ed_key();
    let run = |name: &str, v: i64, max_age: Option<i64>| {
        let mut c = claims();
        set_claim(&mut c, name, json!(v));
        let mut r = rules(TypExpectation::AccessToken);
        r.max_age_secs = max_age;
        check_with(&at(&key, &c), &key.public_key(), &r)
    };
    assert_eq!(
        run("nbf", NOW + 61, None).err(),
        Some(TokenError::NotYetValid)
    );
    assert!(run("nbf", NOW + 59, None).is_ok());
    assert_eq!(
        run("iat", NOW + 61, None).err(),
        Some(TokenError::IssuedInFuture)
    );
    assert!(run("iat", NOW + 59, None).is_ok());
    assert_eq!(
        run("iat", NOW - 3600 - 61, Some(3600)).err(),
        Some(TokenError::TooOld)
    );
    assert!(run("iat", NOW - 3600 - 59, Some(3600)).is_ok());
}

/// SECURITY-TESTS.md T14: an array `aud` is refused unless the issuer allows multiple audiences,
/// and then `azp` must match when present.
#[test]
fn t14_array_audience_refused_unless_allowed() {
    let key = ed_key();
    let run = |aud: Value, azp: Option<&str>, allow: bool| {
        let mut c = claims();
        set_claim(&mut c, "aud", aud);
        if let Some(azp) = azp {
            set_claim(&mut c, "azp", json!(azp));
        }
        let mut r = rules(TypExpectation::AccessToken);
        r.allow_multiple_audiences = allow;
        r.azp_expected = Some("client-1");
        check_with(&at(&key, &c), &key.public_key(), &r)
    };
    assert_eq!(
        run(json!([AUD, "other"]), None, false).err(),
        Some(TokenError::MultipleAudiencesRefused)
    );
    assert_eq!(
        run(json!([AUD]), None, false).err(),
        Some(TokenError::MultipleAudiencesRefused)
    );
    assert_eq!(
        run(json!(["other"]), None, true).err(),
        Some(TokenError::AudienceMismatch)
    );
    assert_eq!(
        run(json!([AUD, "other"]), Some("client-2"), true).err(),
        Some(TokenError::AuthorizedPartyMismatch)
    );
    assert_eq!(
        run(json!("other"), None, false).err(),
        Some(TokenError::AudienceMismatch)
    );
    assert_eq!(
        run(json!([AUD, 7]), None, true).err(),
        Some(TokenError::ClaimType { claim: "aud" })
    );
    // Positive twins.
    assert_eq!(
        run(json!(AUD), None, false).unwrap().aud,
        vec![AUD.to_string()]
    );
    assert!(run(json!([AUD, "other"]), Some("client-1"), true).is_ok());
    assert!(run(json!([AUD, "other"]), None, true).is_ok());
}

/// SECURITY-TESTS.md T15: `iss` is compared byte-exactly.
#[test]
fn t15_issuer_compared_byte_exact() {
    let key = ed_key();
    for iss in [
        "https://issuer.example/",
        "https://ISSUER.example",
        "http://issuer.example",
        "https://issuer.example/extra",
        "https://issuer.exampl\u{0435}",
    ] {
        let mut c = claims();
        set_claim(&mut c, "iss", json!(iss));
        assert_eq!(
            check(&at(&key, &c), &key.public_key()).err(),
            Some(TokenError::IssuerMismatch),
            "{iss}"
        );
    }
    assert!(check(&at(&key, &claims()), &key.public_key()).is_ok());
}

/// SECURITY-TESTS.md T16: any `crit` is refused, as is `b64`.
#[test]
fn t16_crit_refused() {
    let key = ed_key();
    let payload = serde_json::to_vec(&claims()).unwrap();
    let base = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": key.kid()});
    let with = |extra: Value| {
        let mut h = base.clone();
        h.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        sign_text(&key, h.to_string().as_bytes(), &payload)
    };
    for extra in [
        json!({"crit": ["x-unknown"], "x-unknown": 1}),
        json!({"crit": ["x-absent"]}),
        json!({"crit": []}),
        json!({"crit": "x-unknown"}),
        json!({"crit": ["b64"], "b64": false}),
    ] {
        assert_eq!(
            parse(&with(extra.clone())).err(),
            Some(TokenError::UnsupportedCritical),
            "{extra}"
        );
    }
    assert_eq!(
        parse(&with(json!({"b64": false}))).err(),
        Some(TokenError::UnencodedPayloadRefused)
    );
    assert!(check(&with(json!({})), &key.public_key()).is_ok());
}

/// SECURITY-TESTS.md T17: duplicate members are refused in the header and the payload, including
/// one hidden by an escape.
#[test]
fn t17_duplicate_json_members_refused() {
    let key = ed_key();
    let header = header_text(&key);
    let payload = claims().to_string();
    let dup_header = format!(
        r#"{{"alg":"EdDSA","alg":"none","typ":"at+jwt","kid":"{}"}}"#,
        key.kid()
    );
    assert_eq!(
        parse(&sign_text(&key, dup_header.as_bytes(), payload.as_bytes())).err(),
        Some(TokenError::DuplicateMember(Segment::Header))
    );
    for extra in [
        r#","sub":"agent-2""#,
        r#","\u0061ud":"other""#,
        r#","x":{"y":1,"y":2}"#,
    ] {
        let p = format!("{}{extra}}}", &payload[..payload.len() - 1]);
        assert_eq!(
            parse(&sign_text(&key, header.as_bytes(), p.as_bytes())).err(),
            Some(TokenError::DuplicateMember(Segment::Payload)),
            "{p}"
        );
    }
    assert!(
        check(
            &sign_text(&key, header.as_bytes(), payload.as_bytes()),
            &key.public_key()
        )
        .is_ok()
    );
}

/// Flips an unused trailing bit of the last character of a base64url segment of length ≡ 2 or 3
/// (mod 4).
fn set_trailing_bit(seg: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    assert!(!seg.len().is_multiple_of(4));
    let last = seg.as_bytes()[seg.len() - 1];
    let idx = ALPHABET.iter().position(|&c| c == last).unwrap();
    format!("{}{}", &seg[..seg.len() - 1], ALPHABET[idx | 1] as char)
}

/// SECURITY-TESTS.md T18: non-canonical base64url and malformed segments are refused.
#[test]
fn t18_invalid_base64url_refused() {
    let key = ed_key();
    let good = at(&key, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let bad_b64 = |seg| Some(TokenError::BadBase64(seg));
    assert_eq!(
        parse(&format!("{h}.{p}=.{s}")).err(),
        bad_b64(Segment::Payload)
    );
    assert_eq!(
        parse(&format!("{h}=.{p}.{s}")).err(),
        bad_b64(Segment::Header)
    );
    assert_eq!(
        parse(&format!("{h}.{p}.{s}==")).err(),
        bad_b64(Segment::Signature)
    );
    assert_eq!(
        parse(&format!("{h}.{p}.+{}", &s[1..])).err(),
        bad_b64(Segment::Signature)
    );
    assert_eq!(
        parse(&format!("{h}.{p}./{}", &s[1..])).err(),
        bad_b64(Segment::Signature)
    );
    assert_eq!(
        parse(&format!("{h}.{} {}.{s}", &p[..4], &p[4..])).err(),
        bad_b64(Segment::Payload)
    );
    assert_eq!(
        parse(&format!("{h}.{}\r\n{}.{s}", &p[..4], &p[4..])).err(),
        bad_b64(Segment::Payload)
    );
    // The 64-byte signature leaves 2 unused bits in its last character.
    assert_eq!(
        parse(&format!("{h}.{p}.{}", set_trailing_bit(s))).err(),
        bad_b64(Segment::Signature)
    );
    // 40 header bytes leave 4 unused bits in the last character.
    let odd_header = b64::encode(br#"{"alg":"EdDSA","typ":"at+jwt","kid":"k"}"#);
    let t = format!("{}.{p}.{s}", set_trailing_bit(&odd_header));
    assert_eq!(parse(&t).err(), bad_b64(Segment::Header));
    assert!(parse(&format!("{odd_header}.{p}.{s}")).is_ok());
    // Segment counts and empty segments.
    assert_eq!(
        parse(&format!("{h}.{p}")).err(),
        Some(TokenError::Malformed)
    );
    assert_eq!(
        parse(&format!("{h}.{p}.{s}.x")).err(),
        Some(TokenError::Malformed)
    );
    assert_eq!(
        parse(&format!(".{p}.{s}")).err(),
        Some(TokenError::Malformed)
    );
    assert_eq!(
        parse(&format!("{h}..{s}")).err(),
        Some(TokenError::Malformed)
    );
    assert_eq!(parse("").err(), Some(TokenError::Malformed));
    // Non-UTF-8 JSON, non-object headers, a BOM.
    let payload = claims().to_string();
    let cases: [(&[u8], TokenError); 4] = [
        (
            b"{\"alg\":\"EdDSA\",\"x\":\"\xff\"}",
            TokenError::BadJson(Segment::Header),
        ),
        (
            br#"["alg","EdDSA"]"#,
            TokenError::NotAnObject(Segment::Header),
        ),
        (br#""EdDSA""#, TokenError::NotAnObject(Segment::Header)),
        (
            b"\xEF\xBB\xBF{\"alg\":\"EdDSA\"}",
            TokenError::BadJson(Segment::Header),
        ),
    ];
    for (header, want) in cases {
        assert_eq!(
            parse(&sign_text(&key, header, payload.as_bytes())).err(),
            Some(want)
        );
    }
    let header = header_text(&key);
    assert_eq!(
        parse(&sign_text(&key, header.as_bytes(), b"\xEF\xBB\xBF{}")).err(),
        Some(TokenError::BadJson(Segment::Payload))
    );
    assert_eq!(
        parse(&sign_text(&key, header.as_bytes(), b"[1]")).err(),
        Some(TokenError::NotAnObject(Segment::Payload))
    );
    assert!(check(&good, &key.public_key()).is_ok());
}

/// SECURITY-TESTS.md T19: a token over 16 KiB is refused before decoding, and 10,000 levels of
/// nesting end in an error, not a stack overflow.
#[test]
fn t19_size_and_depth_limits() {
    let limits = Limits::default();
    assert_eq!(limits.max_token_bytes, 16_384);
    // Garbage would be `Malformed` if it were decoded at all.
    assert_eq!(
        parse(&"a".repeat(16_385)).err(),
        Some(TokenError::TokenTooLarge)
    );
    assert_eq!(
        parse(&"a".repeat(17 * 1024)).err(),
        Some(TokenError::TokenTooLarge)
    );
    assert_eq!(
        parse(&"a".repeat(16_384)).err(),
        Some(TokenError::Malformed)
    );
    let key = ed_key();
    let header = header_text(&key);
    let nest = |depth: usize| {
        let mut c = claims().to_string();
        c.truncate(c.len() - 1);
        format!("{c},\"deep\":{}1{}}}", "[".repeat(depth), "]".repeat(depth))
    };
    let huge = Limits {
        max_token_bytes: 1 << 20,
        ..Limits::default()
    };
    let deep = sign_text(&key, header.as_bytes(), nest(10_000).as_bytes());
    assert_eq!(
        UnverifiedJwt::parse(&deep, &huge).err(),
        Some(TokenError::JsonTooDeep(Segment::Payload))
    );
    assert_eq!(parse(&deep).err(), Some(TokenError::TokenTooLarge));
    // The payload object is level 1, so 31 arrays inside it is the deepest accepted.
    let at_limit = sign_text(&key, header.as_bytes(), nest(31).as_bytes());
    assert!(check(&at_limit, &key.public_key()).is_ok());
    let over = sign_text(&key, header.as_bytes(), nest(32).as_bytes());
    assert_eq!(
        parse(&over).err(),
        Some(TokenError::JsonTooDeep(Segment::Payload))
    );
}

/// SECURITY-TESTS.md T20: JWE (five segments, PBES2 headers, every Wycheproof JWE vector), JWS JSON
/// serialisation and nested JWTs are refused before any key work.
#[test]
fn t20_jwe_and_nested_jwt_refused() {
    let key = ed_key();
    let payload = serde_json::to_vec(&claims()).unwrap();
    let pbes2 = b64::encode(
        br#"{"alg":"PBES2-HS256+A128KW","enc":"A128GCM","p2c":2147483647,"p2s":"AAAA"}"#,
    );
    assert_eq!(
        parse(&format!("{pbes2}.AAAA.AAAA.AAAA.AAAA")).err(),
        Some(TokenError::JweNotSupported)
    );
    assert_eq!(parse("a.b.c.d.e").err(), Some(TokenError::JweNotSupported));
    // The same header squeezed into three segments is still refused, before any derivation.
    assert_eq!(
        parse(&format!("{pbes2}.AAAA.AAAA")).err(),
        Some(TokenError::AlgorithmNotAllowed)
    );
    let enc_header = json!({"alg": "EdDSA", "enc": "A128GCM", "kid": key.kid()});
    assert_eq!(
        parse(&sign_text(
            &key,
            enc_header.to_string().as_bytes(),
            &payload
        ))
        .err(),
        Some(TokenError::JweNotSupported)
    );
    for cty in ["JWT", "jwt", "application/JWT"] {
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": key.kid(), "cty": cty});
        let inner = at(&key, &claims());
        let token = sign_text(&key, header.to_string().as_bytes(), inner.as_bytes());
        assert_eq!(
            parse(&token).err(),
            Some(TokenError::NestedJwtRefused),
            "{cty}"
        );
    }
    let good = at(&key, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let json_serialised =
        json!({"payload": parts[1], "protected": parts[0], "signature": parts[2]}).to_string();
    assert_eq!(
        parse(&json_serialised).err(),
        Some(TokenError::JsonSerializationNotSupported)
    );

    // Every Wycheproof JWE vector.
    let v = super::wycheproof::load("json_web_encryption_test.json");
    let mut count = 0;
    let mut failures = Vec::new();
    for group in v["testGroups"].as_array().unwrap() {
        for t in group["tests"].as_array().unwrap() {
            count += 1;
            let jwe = match &t["jwe"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            // Five segments must be named as JWE; the truncated vectors (four segments) are
            // structurally malformed. Either way nothing reaches a key.
            let want = match jwe.split('.').count() {
                _ if jwe.starts_with('{') => TokenError::JsonSerializationNotSupported,
                5 => TokenError::JweNotSupported,
                _ => TokenError::Malformed,
            };
            let got = parse(&jwe).err();
            if got.as_ref() != Some(&want) {
                failures.push((t["tcId"].clone(), format!("{got:?}")));
            }
        }
    }
    assert!(count > 0);
    assert!(
        failures.is_empty(),
        "JWE vectors not refused as JWE: {failures:?}"
    );
    assert!(check(&good, &key.public_key()).is_ok());
}

/// SECURITY-TESTS.md T21: RSA keys under 2048 bits, with e = 1, or over 8192 bits are dropped at
/// load with a warning; the 2048-bit key beside them works.
#[test]
fn t21_weak_rsa_keys_dropped() {
    let keys = super::wycheproof::load("json_web_key_test.json");
    let sig = super::wycheproof::load("json_web_signature_test.json");
    let group = |v: &Value, comment: &str| -> Value {
        v["testGroups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["comment"] == comment)
            .unwrap()
            .clone()
    };
    let mut small = group(&keys, "keysize_too_small")["public"]["keys"][0].clone();
    small["kid"] = json!("rsa-1024");
    let mut e1 = group(&keys, "exponentOne")["public"]["keys"][0].clone();
    e1["kid"] = json!("rsa-e1");
    let rs256_2048 = sig["testGroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["public"]["kid"] == "RS256_2048")
        .unwrap()
        .clone();
    let mut good = rs256_2048["public"].clone();
    good["kid"] = json!("rsa-2048");
    let mut n = vec![0xC5u8; 1026];
    n[1025] |= 1;
    let huge = json!({"kty": "RSA", "kid": "rsa-8208", "n": b64::encode(&n), "e": "AQAB"});
    let mut even_e = good.clone();
    even_e["kid"] = json!("rsa-even-e");
    even_e["e"] = json!(b64::encode(&[1, 0, 0]));
    let jwks = json!({"keys": [small, e1, huge, even_e, good]});
    let (set, warnings) = KeySet::from_jwks_json(jwks.to_string().as_bytes()).unwrap();
    assert_eq!(set.len(), 1, "{warnings:?}");
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert_eq!(
        PublicKey::from_jwk(&jwks["keys"][0]).err(),
        Some(TokenError::RsaKeySize { bits: 1024 })
    );
    assert_eq!(
        PublicKey::from_jwk(&jwks["keys"][1]).err(),
        Some(TokenError::RsaExponent)
    );
    assert_eq!(
        PublicKey::from_jwk(&jwks["keys"][2]).err(),
        Some(TokenError::RsaKeySize { bits: 8208 })
    );
    assert_eq!(
        PublicKey::from_jwk(&jwks["keys"][3]).err(),
        Some(TokenError::RsaExponent)
    );
    // The 1024-bit key's own token has no key to verify against.
    let t1024 = group(&keys, "keysize_too_small")["tests"][0]["jws"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(crate::jwt::CompactJws::parse(&t1024, &Limits::default()).is_ok());
    assert!(set.get("rsa-1024").is_none() && set.get("rsa-e1").is_none());
    // Positive twin: a Wycheproof RS256 token verifies with the 2048-bit key.
    let token = rs256_2048["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["comment"] == "normalPayload")
        .unwrap()["jws"]
        .as_str()
        .unwrap()
        .to_owned();
    let jws = crate::jwt::CompactJws::parse(&token, &Limits::default()).unwrap();
    assert_eq!(jws.verify(set.get("rsa-2048").unwrap(), &ALL), Ok(()));
}

/// SECURITY-TESTS.md T22: access tokens and ID tokens (and DPoP proofs) cannot stand in for each
/// other.
#[test]
fn t22_token_type_confusion_refused() {
    let key = ed_key();
    let pk = key.public_key();
    let signed = |typ: Option<&str>| {
        let mut h = json!({"alg": "EdDSA", "kid": key.kid()});
        if let Some(t) = typ {
            h["typ"] = json!(t);
        }
        key.sign_raw(&h, claims().to_string().as_bytes()).unwrap()
    };
    let as_access = rules(TypExpectation::AccessToken);
    let as_id = rules(TypExpectation::IdToken);
    for typ in [None, Some("JWT"), Some("dpop+jwt"), Some("at+jwt+x")] {
        assert_eq!(
            check_with(&signed(typ), &pk, &as_access).err(),
            Some(TokenError::WrongTokenType),
            "{typ:?}"
        );
    }
    for typ in [Some("at+jwt"), Some("application/at+jwt"), Some("dpop+jwt")] {
        assert_eq!(
            check_with(&signed(typ), &pk, &as_id).err(),
            Some(TokenError::WrongTokenType),
            "{typ:?}"
        );
    }
    // Positive twins.
    for typ in [Some("at+jwt"), Some("AT+JWT"), Some("application/at+jwt")] {
        assert!(check_with(&signed(typ), &pk, &as_access).is_ok(), "{typ:?}");
    }
    for typ in [None, Some("JWT")] {
        assert!(check_with(&signed(typ), &pk, &as_id).is_ok(), "{typ:?}");
    }
}

/// Round trips that the other crates rely on: JWK export/import, thumbprints, PKCS#8 reload.
#[test]
fn signing_keys_round_trip() {
    for alg in [Algorithm::EdDsa, Algorithm::Es256] {
        let key = SigningKey::generate(alg).unwrap();
        assert_eq!(key.kid(), key.public_key().thumbprint());
        assert!(format!("{key:?}").contains("[redacted]"));
        let jwk = key.public_key().to_jwk();
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], alg.as_str());
        let back = PublicKey::from_jwk(&jwk).unwrap();
        assert_eq!(back, key.public_key());
        let reloaded = SigningKey::from_pkcs8(alg, "k1".into(), key.pkcs8_der()).unwrap();
        assert_eq!(reloaded.kid(), "k1");
        assert_eq!(reloaded.public_key().kid(), "k1");
        assert!(check(&at(&reloaded, &claims()), &back).is_ok());
        assert_eq!(
            parse(&at(&reloaded, &claims()))
                .unwrap()
                .header()
                .kid
                .as_deref(),
            Some("k1")
        );
    }
    assert_eq!(
        SigningKey::generate(Algorithm::Rs256).err(),
        Some(TokenError::UnsupportedSigningAlgorithm)
    );
    assert_eq!(
        SigningKey::from_pkcs8(Algorithm::Es256, "k".into(), ed_key().pkcs8_der()).err(),
        Some(TokenError::PrivateKeyRejected)
    );
    // RFC 7638 §3.1's example thumbprint.
    let rfc = json!({"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29", "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
    assert_eq!(
        PublicKey::from_jwk(&rfc).unwrap().thumbprint(),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
    assert_eq!(
        crate::sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(crate::random_b64url(32).len(), 43);
    let _ = JwksSource::Uri(String::new());
}
