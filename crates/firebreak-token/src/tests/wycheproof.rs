//! SECURITY-TESTS.md T23 (and the Wycheproof half of T09): one loop per vector file, naming every
//! failing tcId, failing when nothing was loaded. The loops drive the same internal functions the
//! JWT path uses (`CompactJws::parse`/`verify`, `PublicKey::verify_raw`).

use std::path::Path;

use serde_json::{Value, json};

use super::{ALL, hex};
use crate::jwt::CompactJws;
use crate::{KeySet, Limits, PublicKey, TokenError, b64};

pub(crate) fn load(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/vectors/wycheproof")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// The `alg` a token claims, read leniently (padding tolerated) only to decide what the vector
/// expects; the code under test reads it strictly.
fn claimed_alg(jws: &str) -> Option<String> {
    let h = jws.split('.').next()?;
    let bytes = b64::decode(h.trim_end_matches('='))?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["alg"].as_str().map(str::to_owned)
}

fn allowed_name(alg: &str) -> bool {
    ["RS256", "ES256", "EdDSA"].contains(&alg)
}

struct Tally {
    file: &'static str,
    count: usize,
    failures: Vec<String>,
}

impl Tally {
    fn new(file: &'static str) -> Self {
        Tally {
            file,
            count: 0,
            failures: Vec::new(),
        }
    }

    fn record(&mut self, t: &Value, expect_accept: bool, outcome: Result<(), TokenError>) {
        self.count += 1;
        if t["result"] == "acceptable" {
            return;
        }
        if expect_accept != outcome.is_ok() {
            self.failures.push(format!(
                "tcId {} ({}, {}): expected {}, got {outcome:?}",
                t["tcId"],
                t["comment"].as_str().unwrap_or(""),
                t["result"].as_str().unwrap_or(""),
                if expect_accept { "accept" } else { "refuse" },
            ));
        }
    }

    fn finish(self) {
        assert!(self.count > 0, "{}: no vectors loaded", self.file);
        assert!(
            self.failures.is_empty(),
            "{}: {} failures:\n{}",
            self.file,
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// Compact-JWS vectors: verify `jws` with the group's `public` JWK. A `valid` vector must verify
/// only when its algorithm is allowed; HS* groups (no public key) are refused whole.
fn jws_file(file: &'static str) {
    let v = load(file);
    let mut tally = Tally::new(file);
    for group in v["testGroups"].as_array().unwrap() {
        let key = group.get("public").map(PublicKey::from_jwk);
        for t in group["tests"].as_array().unwrap() {
            let jws = match t.get("jws") {
                Some(Value::String(s)) => s.clone(),
                // The JSON serialisation arrives as an object: feed its text to the parser.
                Some(other) => other.to_string(),
                // JWE entries of json_web_crypto_test.json: T20 covers JWE.
                None => continue,
            };
            let outcome = match &key {
                None => Err(TokenError::UnsupportedKeyType),
                Some(Err(e)) => Err(e.clone()),
                Some(Ok(k)) => {
                    CompactJws::parse(&jws, &Limits::default()).and_then(|j| j.verify(k, &ALL))
                }
            };
            let expect =
                t["result"] == "valid" && claimed_alg(&jws).is_some_and(|a| allowed_name(&a));
            tally.record(t, expect, outcome);
        }
    }
    tally.finish();
}

/// SECURITY-TESTS.md T23: json_web_signature_test.json.
#[test]
fn t23_wycheproof_json_web_signature() {
    jws_file("json_web_signature_test.json");
}

/// SECURITY-TESTS.md T23: the JWS part of json_web_crypto_test.json.
#[test]
fn t23_wycheproof_json_web_crypto() {
    jws_file("json_web_crypto_test.json");
}

/// SECURITY-TESTS.md T09: json_web_key_test.json. The group's key set (public, else private)
/// loads through `KeySet`; every `invalid` vector is refused, and `oct` keys are refused even
/// where the vector is `valid`.
#[test]
fn t09_wycheproof_json_web_key() {
    let file = "json_web_key_test.json";
    let v = load(file);
    let mut tally = Tally::new(file);
    for group in v["testGroups"].as_array().unwrap() {
        let doc = group.get("public").unwrap_or(&group["private"]);
        let doc = if doc.get("keys").is_some() {
            doc.clone()
        } else {
            json!({"keys": [doc]})
        };
        let set = KeySet::from_jwks_json(doc.to_string().as_bytes()).map(|(s, _)| s);
        for t in group["tests"].as_array().unwrap() {
            let jws = t["jws"].as_str().unwrap();
            let outcome = set.clone().and_then(|set| {
                let jwt = CompactJws::parse(jws, &Limits::default())?;
                let kid = jwt.header.kid.clone().ok_or(TokenError::UnknownKey)?;
                jwt.verify(set.get(&kid).ok_or(TokenError::UnknownKey)?, &ALL)
            });
            let expect =
                t["result"] == "valid" && claimed_alg(jws).is_some_and(|a| allowed_name(&a));
            tally.record(t, expect, outcome);
        }
    }
    tally.finish();
}

/// A P-256 JWK from Wycheproof's `publicKey` (hex affine coordinates), for groups without one.
fn p256_jwk(pk: &Value) -> Option<Value> {
    let coord = |name: &str| -> Option<String> {
        let raw = hex(pk[name].as_str()?);
        let trimmed: Vec<u8> = raw.iter().copied().skip_while(|&b| b == 0).collect();
        if trimmed.len() > 32 {
            return None;
        }
        let mut out = vec![0u8; 32 - trimmed.len()];
        out.extend(trimmed);
        Some(b64::encode(&out))
    };
    Some(json!({"kty": "EC", "crv": "P-256", "x": coord("wx")?, "y": coord("wy")?}))
}

/// Raw-signature vectors: verify `msg`/`sig` with the group key through `verify_raw`.
/// `der_only` marks the DER file, whose signatures must all be refused as JWS input.
fn raw_file(file: &'static str, der_only: bool) {
    let v = load(file);
    let mut tally = Tally::new(file);
    for group in v["testGroups"].as_array().unwrap() {
        let jwk = group
            .get("publicKeyJwk")
            .cloned()
            .or_else(|| p256_jwk(&group["publicKey"]));
        let key = jwk.as_ref().map(PublicKey::from_jwk);
        for t in group["tests"].as_array().unwrap() {
            let msg = hex(t["msg"].as_str().unwrap());
            let sig = hex(t["sig"].as_str().unwrap());
            let outcome = match &key {
                Some(Ok(k)) => k.verify_raw(&msg, &sig),
                Some(Err(e)) => Err(e.clone()),
                None => Err(TokenError::BadKeyMaterial),
            };
            let expect = !der_only && t["result"] == "valid";
            tally.record(t, expect, outcome);
        }
    }
    tally.finish();
}

/// SECURITY-TESTS.md T23: ecdsa_secp256r1_sha256_p1363_test.json (ES256's r‖s form).
#[test]
fn t23_wycheproof_ecdsa_p256_p1363() {
    raw_file("ecdsa_secp256r1_sha256_p1363_test.json", false);
}

/// SECURITY-TESTS.md T23: ed25519_test.json.
#[test]
fn t23_wycheproof_ed25519() {
    raw_file("ed25519_test.json", false);
}

/// SECURITY-TESTS.md T23: ecdsa_secp256r1_sha256_test.json. DER signatures are never valid JWS
/// ES256 signatures, so every vector, `valid` ones included, must be refused.
#[test]
fn t23_wycheproof_ecdsa_p256_der_refused() {
    raw_file("ecdsa_secp256r1_sha256_test.json", true);
}

/// SECURITY-TESTS.md T09: the ROCA key of json_web_key_test.json is refused for its fingerprint
/// (not for some other defect), and the RS256 key beside it is not a false positive.
#[test]
fn t09_roca_fingerprint_detected() {
    let v = load("json_web_key_test.json");
    let groups = v["testGroups"].as_array().unwrap();
    let group =
        |c: &str| groups.iter().find(|g| g["comment"] == c).unwrap()["public"]["keys"][0].clone();
    assert_eq!(
        PublicKey::from_jwk(&group("jws_rsa_roca_key")).err(),
        Some(TokenError::RsaRocaVulnerable)
    );
    assert!(PublicKey::from_jwk(&group("rs256")).is_ok());
}
