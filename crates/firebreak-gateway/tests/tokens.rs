//! T01–T22 and X08 at the gateway (SECURITY-TESTS.md): hostile access tokens, most of them
//! signed with the broker's real signing key, so that every refusal below is the claim or header
//! check's doing and not a bad signature's. Each test first proves that the same forging path,
//! left unmodified, is accepted (`Forge::new`).
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]

#[allow(
    unused_imports,
    reason = "the shared harness re-exports more than this file uses"
)]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use firebreak_token::SigningKey;
use serde_json::{Value, json};

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A gateway stack and the broker's active signing key, with a real token's claims to vary.
struct Forge {
    s: Stack,
    key: SigningKey,
    claims: Value,
}

impl Forge {
    async fn new() -> Self {
        let s = Stack::start().await;
        let key = s.h.broker.keys().active().clone();
        let claims = claims_of(&s.h.token(TOOLS, None).await);
        let f = Self { s, key, claims };
        // The forging path itself is sound: the real claims, re-signed, pass.
        let t = f.sign(&f.header(), &f.claims);
        assert_eq!(
            f.status(&t).await,
            200,
            "the unmodified forged token passes"
        );
        f
    }

    fn header(&self) -> Value {
        json!({"alg": self.key.alg().as_str(), "typ": "at+jwt", "kid": self.key.kid()})
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        self.key
            .sign_raw(header, &serde_json::to_vec(claims).unwrap())
            .unwrap()
    }

    fn sign_bytes(&self, header: &[u8], payload: &[u8]) -> String {
        self.key.sign_raw_bytes(header, payload).unwrap()
    }

    /// The real claims with `k` set to `v` (or removed when `v` is `None`).
    fn with(&self, k: &str, v: Option<Value>) -> Value {
        let mut c = self.claims.clone();
        match v {
            Some(v) => c[k] = v,
            None => {
                c.as_object_mut().unwrap().remove(k);
            }
        }
        c
    }

    async fn status(&self, token: &str) -> u16 {
        self.s.get("/tools/a", token).await.status
    }

    /// `token` gets 401 `invalid_token` (or `reason`), and the upstream saw nothing new.
    async fn refused(&self, what: &str, token: &str, reason: &str) {
        let before = self.s.upstream.count();
        let r = self.s.get("/tools/a", token).await;
        assert_eq!(
            r.status,
            401,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["reason"], reason, "{what}");
        assert!(
            www(&r).contains("error=\"invalid_token\""),
            "{what}: {}",
            www(&r)
        );
        assert_eq!(
            self.s.upstream.count(),
            before,
            "{what} reached the upstream"
        );
    }

    async fn invalid(&self, what: &str, token: &str) {
        self.refused(what, token, "invalid_token").await;
    }

    fn now(&self) -> i64 {
        self.s.h.now().as_secs()
    }
}

#[tokio::test]
async fn t01_alg_none_in_every_spelling_is_refused() {
    let f = Forge::new().await;
    let payload = b64(&serde_json::to_vec(&f.claims).unwrap());
    for alg in ["none", "None", "NONE"] {
        let header = b64(&serde_json::to_vec(
            &json!({"alg": alg, "typ": "at+jwt", "kid": f.key.kid()}),
        )
        .unwrap());
        for sig in ["", "c2lnbmF0dXJl"] {
            f.invalid(
                &format!("alg {alg} sig {sig:?}"),
                &format!("{header}.{payload}.{sig}"),
            )
            .await;
        }
    }
}

#[tokio::test]
async fn t02_hmac_keyed_with_the_brokers_public_key_is_refused() {
    let f = Forge::new().await;
    let jwk = f.key.public_key().to_jwk();
    let x = jwk["x"].as_str().unwrap_or_default().to_owned();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&x)
        .unwrap_or_default();
    let secrets: Vec<Vec<u8>> = vec![
        raw.clone(),
        x.into_bytes(),
        jwk.to_string().into_bytes(),
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&raw)
        )
        .into_bytes(),
    ];
    let payload = b64(&serde_json::to_vec(&f.claims).unwrap());
    for (alg, h) in [
        ("HS256", aws_lc_rs::hmac::HMAC_SHA256),
        ("HS384", aws_lc_rs::hmac::HMAC_SHA384),
        ("HS512", aws_lc_rs::hmac::HMAC_SHA512),
    ] {
        for secret in &secrets {
            let header = b64(&serde_json::to_vec(
                &json!({"alg": alg, "typ": "at+jwt", "kid": f.key.kid()}),
            )
            .unwrap());
            let input = format!("{header}.{payload}");
            let tag =
                aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(h, secret), input.as_bytes());
            f.invalid(alg, &format!("{input}.{}", b64(tag.as_ref())))
                .await;
        }
    }
}

#[tokio::test]
async fn t03_psychic_and_malleable_signatures_are_refused() {
    let f = Forge::new().await;
    let good = f.sign(&f.header(), &f.claims);
    let input = good.rsplit_once('.').unwrap().0.to_owned();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(good.rsplit_once('.').unwrap().1)
        .unwrap();
    // Ed25519 group order L (little-endian), and P-256 n (big-endian).
    let l: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let n: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc,
        0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
    ];
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("all zero", vec![0; 64]),
        ("too short", sig[..63].to_vec()),
        ("too long", [sig.clone(), vec![0]].concat()),
        ("empty", Vec::new()),
    ];
    // S + L: the same signature in a malleated form (Ed25519 must check S < L).
    let mut s_plus_l = sig.clone();
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(s_plus_l[32 + i]) + u16::from(l[i]) + carry;
        s_plus_l[32 + i] = (v & 0xff) as u8;
        carry = v >> 8;
    }
    cases.push(("S + L", s_plus_l));
    cases.push(("r = s = n", [n, n].concat()));
    cases.push(("DER-encoded", {
        let mut der = vec![0x30, 0x44, 0x02, 0x20];
        der.extend_from_slice(&sig[..32]);
        der.extend_from_slice(&[0x02, 0x20]);
        der.extend_from_slice(&sig[32..]);
        der
    }));
    for (what, bytes) in cases {
        f.invalid(what, &format!("{input}.{}", b64(&bytes))).await;
    }
    // The other allowed algorithm with r = s = 0 under the broker's kid.
    let other = match f.key.alg().as_str() {
        "EdDSA" => "ES256",
        _ => "EdDSA",
    };
    let header = b64(&serde_json::to_vec(
        &json!({"alg": other, "typ": "at+jwt", "kid": f.key.kid()}),
    )
    .unwrap());
    let payload = input.split_once('.').unwrap().1;
    f.invalid(
        "alg switched to the other allowed algorithm",
        &format!("{header}.{payload}.{}", b64(&[0; 64])),
    )
    .await;
}

#[tokio::test]
async fn t04_embedded_jwk_is_refused_outright() {
    let f = Forge::new().await;
    let attacker = SigningKey::generate(f.key.alg()).unwrap();
    let mut header = f.header();
    header["jwk"] = attacker.public_key().to_jwk();
    // Signed by the attacker with the jwk naming the attacker's key...
    f.invalid(
        "attacker's key in jwk",
        &attacker
            .sign_raw(&header, &serde_json::to_vec(&f.claims).unwrap())
            .unwrap(),
    )
    .await;
    // ...and even signed by the broker's own key: a token carrying jwk, or x5c, is not ours.
    f.invalid("broker-signed with jwk", &f.sign(&header, &f.claims))
        .await;
    let mut x5c = f.header();
    x5c["x5c"] = json!(["MIIB"]);
    f.invalid("broker-signed with x5c", &f.sign(&x5c, &f.claims))
        .await;
}

#[tokio::test]
async fn t05_jku_and_x5u_are_never_fetched() {
    let f = Forge::new().await;
    let hits = Arc::new(AtomicUsize::new(0));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = format!("http://{}/jwks.json", l.local_addr().unwrap());
    let h2 = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((_c, _)) = l.accept().await {
            h2.fetch_add(1, Ordering::SeqCst);
        }
    });
    for member in ["jku", "x5u"] {
        for url in [at.as_str(), "http://169.254.169.254/latest/meta-data/"] {
            let mut header = f.header();
            header[member] = json!(url);
            f.invalid(member, &f.sign(&header, &f.claims)).await;
        }
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "jku/x5u listener contacted");
}

#[tokio::test]
async fn t06_hostile_kids_are_unknown_keys() {
    let f = Forge::new().await;
    let long = "k".repeat(10 * 1024);
    for kid in [
        json!("../../../../dev/null"),
        json!("' OR '1'='1"),
        json!("a\u{0}b"),
        json!(long),
        json!(42),
        json!({"kid": "x"}),
    ] {
        let mut header = f.header();
        header["kid"] = kid.clone();
        f.invalid(
            &format!("kid {:.40}", kid.to_string()),
            &f.sign(&header, &f.claims),
        )
        .await;
    }
}

#[tokio::test]
async fn t07_a_flood_of_unknown_kids_does_not_amplify_jwks_fetches() {
    let f = Forge::new().await;
    let tokens = f.s.enforcer.tokens().unwrap();
    let before = tokens.jwks_fetches();
    let f = Arc::new(f);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let f = Arc::clone(&f);
        tasks.push(tokio::spawn(async move {
            let mut header = f.header();
            header["kid"] = json!(format!(
                "unknown-kid-{i}-{}",
                firebreak_token::random_b64url(6)
            ));
            f.status(&f.sign(&header, &f.claims)).await
        }));
    }
    // A valid token during the flood still passes within 2 s.
    let valid = f.sign(&f.header(), &f.claims);
    let start = tokio::time::Instant::now();
    assert_eq!(f.status(&valid).await, 200);
    assert!(start.elapsed() < Duration::from_secs(2));
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let fetched = f.s.enforcer.tokens().unwrap().jwks_fetches() - before;
    assert!(
        fetched <= 1,
        "{fetched} JWKS fetches for 1,000 unknown kids"
    );
}

#[tokio::test]
async fn t08_t15_another_issuer_or_a_near_miss_of_ours_is_refused() {
    let f = Forge::new().await;
    let ours = f.claims["iss"].as_str().unwrap().to_owned();
    let upper = ours.replace("127.0.0.1", "LOCALHOST");
    let mut near = vec![
        format!("{ours}/"),
        format!("{ours}/extra"),
        ours.replacen("http", "https", 1),
        upper,
        ours.replace('.', "\u{2024}"),
        f.s.h.issuer.url.clone(),
    ];
    if let Some(rest) = ours.strip_prefix("http://") {
        near.push(format!("HTTP://{rest}"));
    }
    for iss in near {
        f.invalid(
            &format!("iss {iss}"),
            &f.sign(&f.header(), &f.with("iss", Some(json!(iss)))),
        )
        .await;
    }
    // A token of the federated issuer itself (its own key and kid), whatever it claims.
    f.invalid("the OIDC issuer's token", &f.s.h.subject_for("acme/api"))
        .await;
}

#[tokio::test]
async fn t10_every_required_claim_is_required() {
    let f = Forge::new().await;
    for k in ["exp", "iat", "iss", "aud", "sub", "jti"] {
        f.invalid(
            &format!("without {k}"),
            &f.sign(&f.header(), &f.with(k, None)),
        )
        .await;
    }
}

#[tokio::test]
async fn t11_time_claims_of_the_wrong_type_are_errors() {
    let f = Forge::new().await;
    for k in ["exp", "nbf", "iat"] {
        for v in [
            json!("9999999999"),
            json!(true),
            json!(null),
            json!([1]),
            json!({"t": 1}),
        ] {
            f.invalid(
                &format!("{k} = {v}"),
                &f.sign(&f.header(), &f.with(k, Some(v.clone()))),
            )
            .await;
        }
    }
}

#[tokio::test]
async fn t12_exp_leeway_is_applied_once_and_overflow_is_refused() {
    let f = Forge::new().await;
    let now = f.now();
    let old = |exp: i64| {
        let mut c = f.with("exp", Some(json!(exp)));
        c["iat"] = json!(now - 300);
        c["nbf"] = json!(now - 300);
        c
    };
    let r =
        f.s.get("/tools/a", &f.sign(&f.header(), &old(now - 61)))
            .await;
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("token_expired"))
    );
    assert_eq!(
        f.status(&f.sign(&f.header(), &old(now - 59))).await,
        200,
        "59 s past exp is within the 60 s leeway"
    );
    for v in [json!(1e300), json!(9_223_372_036_854_775_808u64), json!(-1)] {
        let t = f.sign(&f.header(), &f.with("exp", Some(v.clone())));
        assert_eq!(f.status(&t).await, 401, "exp {v}");
    }
}

#[tokio::test]
async fn t13_nbf_or_iat_in_the_future_is_refused() {
    let f = Forge::new().await;
    let now = f.now();
    for k in ["nbf", "iat"] {
        let mut c = f.with(k, Some(json!(now + 61)));
        c["exp"] = json!(now + 600);
        let r = f.s.get("/tools/a", &f.sign(&f.header(), &c)).await;
        assert_eq!(r.status, 401, "{k} in the future");
        assert_eq!(
            f.s.upstream.count(),
            1,
            "only Forge::new's call reached upstream"
        );
    }
}

#[tokio::test]
async fn t14_an_array_aud_is_refused_even_holding_our_audience() {
    let f = Forge::new().await;
    for aud in [json!([TOOLS, "other"]), json!([TOOLS])] {
        f.invalid(
            &format!("aud {aud}"),
            &f.sign(&f.header(), &f.with("aud", Some(aud.clone()))),
        )
        .await;
    }
}

#[tokio::test]
async fn t16_crit_is_refused_in_every_form() {
    let f = Forge::new().await;
    for (crit, extra) in [
        (json!(["x-unknown"]), Some(("x-unknown", json!(1)))),
        (json!(["x-absent"]), None),
        (json!([]), None),
        (json!("x-unknown"), Some(("x-unknown", json!(1)))),
        (json!(["b64"]), Some(("b64", json!(false)))),
    ] {
        let mut header = f.header();
        header["crit"] = crit.clone();
        if let Some((k, v)) = extra {
            header[k] = v;
        }
        f.invalid(&format!("crit {crit}"), &f.sign(&header, &f.claims))
            .await;
    }
}

#[tokio::test]
async fn t17_duplicate_json_members_are_refused_on_the_parse_path_used() {
    let f = Forge::new().await;
    let alg = f.key.alg().as_str();
    let kid = f.key.kid();
    let payload = serde_json::to_vec(&f.claims).unwrap();
    let dup_header =
        format!(r#"{{"alg":"{alg}","alg":"none","typ":"at+jwt","kid":"{kid}"}}"#).into_bytes();
    f.invalid("duplicate alg", &f.sign_bytes(&dup_header, &payload))
        .await;
    let header = serde_json::to_vec(&f.header()).unwrap();
    let body = String::from_utf8(payload).unwrap();
    let inner = body.strip_suffix('}').unwrap();
    let dup_sub = format!(r#"{inner},"sub":"other-bot"}}"#);
    f.invalid("duplicate sub", &f.sign_bytes(&header, dup_sub.as_bytes()))
        .await;
    let dup_aud = format!(r#"{inner},"\u0061ud":"https://other.example/"}}"#);
    f.invalid(
        "aud twice, once escaped",
        &f.sign_bytes(&header, dup_aud.as_bytes()),
    )
    .await;
}

#[tokio::test]
async fn t18_non_canonical_base64url_is_refused() {
    let f = Forge::new().await;
    let good = f.sign(&f.header(), &f.claims);
    let parts: Vec<&str> = good.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    // A signature's last char with non-zero unused bits: 64 bytes encode to 86 chars, 4 spare bits.
    let last = s.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).unwrap();
    let sloppy = alphabet
        .chars()
        .nth((idx & !0xf) | ((idx + 1) & 0xf))
        .unwrap();
    let bom_header = b64(&[
        b"\xef\xbb\xbf".as_slice(),
        &serde_json::to_vec(&f.header()).unwrap(),
    ]
    .concat());
    let cases = vec![
        ("padding", format!("{h}.{p}.{s}==")),
        (
            // Set outright: a random signature need not contain `-` or `_` to swap.
            "plus",
            format!("{h}.{p}.+{}", &s[1..]),
        ),
        ("slash", format!("{h}.{p}./{}", &s[1..])),
        ("whitespace", format!("{h}.{p} .{s}")),
        ("CRLF", format!("{h}.{}\r\n{}.{s}", &p[..4], &p[4..])),
        (
            "non-zero unused bits",
            format!("{h}.{p}.{}{sloppy}", &s[..s.len() - 1]),
        ),
        ("two segments", format!("{h}.{p}")),
        ("four segments", format!("{h}.{p}.{s}.{s}")),
        ("empty segment", format!("{h}..{s}")),
        (
            "BOM in the header",
            f.sign_bytes(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(&bom_header)
                    .unwrap(),
                &serde_json::to_vec(&f.claims).unwrap(),
            ),
        ),
        (
            "non-UTF-8 payload",
            f.sign_bytes(
                &serde_json::to_vec(&f.header()).unwrap(),
                b"{\"sub\":\"\xff\"}",
            ),
        ),
        (
            "header is an array",
            f.sign_bytes(b"[\"EdDSA\"]", &serde_json::to_vec(&f.claims).unwrap()),
        ),
        (
            "header is a string",
            f.sign_bytes(b"\"EdDSA\"", &serde_json::to_vec(&f.claims).unwrap()),
        ),
    ];
    for (what, token) in cases {
        if what == "non-zero unused bits" && sloppy == last {
            continue;
        }
        // Some of these are not even valid header values; they must still not get through.
        let auth = format!("Bearer {token}");
        let before = f.s.upstream.count();
        let r = match http::HeaderValue::from_str(&auth) {
            Ok(_) => f.s.get("/tools/a", &token).await,
            Err(_) => continue,
        };
        assert!(r.status == 401 || r.status == 400, "{what}: {}", r.status);
        assert_eq!(f.s.upstream.count(), before, "{what}");
    }
}

#[tokio::test]
async fn t19_oversized_and_deeply_nested_tokens_are_refused_without_harm() {
    let f = Forge::new().await;
    // 17 KiB of token in the Authorization header.
    let mut c = f.claims.clone();
    c["pad"] = json!("p".repeat(17 * 1024));
    f.invalid("17 KiB token", &f.sign(&f.header(), &c)).await;
    // 10,000 levels of nesting: refused, no stack overflow.
    let deep = format!("{}{}{}", "[".repeat(10_000), "1", "]".repeat(10_000));
    let header = serde_json::to_vec(&f.header()).unwrap();
    let body = serde_json::to_string(&f.claims).unwrap();
    let payload = format!(r#"{},"deep":{deep}}}"#, body.strip_suffix('}').unwrap());
    f.invalid("10,000 levels", &f.sign_bytes(&header, payload.as_bytes()))
        .await;
}

#[tokio::test]
async fn t20_jwe_nested_jwt_and_json_serialisation_are_refused() {
    let f = Forge::new().await;
    let jwe_header = b64(br#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#);
    f.invalid("five-segment JWE", &format!("{jwe_header}.YQ.YQ.YQ.YQ"))
        .await;
    let pbes2 =
        b64(br#"{"alg":"PBES2-HS256+A128KW","enc":"A128GCM","p2c":2147483647,"p2s":"c2FsdA"}"#);
    f.invalid("PBES2 with a huge p2c", &format!("{pbes2}.YQ.YQ.YQ.YQ"))
        .await;
    let inner = f.sign(&f.header(), &f.claims);
    let mut cty = f.header();
    cty["cty"] = json!("JWT");
    f.invalid(
        "cty JWT wrapping a JWT",
        &f.sign_bytes(&serde_json::to_vec(&cty).unwrap(), inner.as_bytes()),
    )
    .await;
    let mut cty_claims = f.header();
    cty_claims["cty"] = json!("JWT");
    f.invalid("cty JWT over claims", &f.sign(&cty_claims, &f.claims))
        .await;
    let parts: Vec<&str> = inner.split('.').collect();
    let json_serialised =
        json!({"payload": parts[1], "protected": parts[0], "signature": parts[2]}).to_string();
    let r = f.s.get("/tools/a", &json_serialised).await;
    assert_eq!(r.status, 401, "JWS JSON serialisation");
}

#[tokio::test]
async fn t21_rsa_and_other_algorithms_are_not_accepted_at_the_gateway() {
    // The gateway trusts only the broker's EdDSA/ES256 keys; an RS256 token under the broker's
    // kid (or any other algorithm name) is refused before the signature is looked at.
    let f = Forge::new().await;
    let payload = b64(&serde_json::to_vec(&f.claims).unwrap());
    for alg in ["RS256", "PS256", "ES384", "ES512", "ES256K", "Ed25519"] {
        let header = b64(&serde_json::to_vec(
            &json!({"alg": alg, "typ": "at+jwt", "kid": f.key.kid()}),
        )
        .unwrap());
        f.invalid(alg, &format!("{header}.{payload}.{}", b64(&[7; 256])))
            .await;
    }
}

#[tokio::test]
async fn t22_id_tokens_dpop_proofs_and_retyped_tokens_are_not_access_tokens() {
    let f = Forge::new().await;
    for typ in [None, Some("JWT"), Some("dpop+jwt"), Some("id_token+jwt")] {
        let mut header = f.header();
        match typ {
            Some(t) => header["typ"] = json!(t),
            None => {
                header.as_object_mut().unwrap().remove("typ");
            }
        }
        f.invalid(&format!("typ {typ:?}"), &f.sign(&header, &f.claims))
            .await;
    }
    // The broker's JWKS never publishes the audit checkpoint key.
    let jwks =
        f.s.h
            .http
            .send("GET", &format!("{}/jwks.json", f.s.h.url), &[], "")
            .await
            .json();
    let audit =
        f.s.h
            .http
            .send("GET", &format!("{}/v1/audit/key", f.s.h.url), &[], "")
            .await
            .json();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(!keys.is_empty());
    assert!(
        keys.iter().all(|k| k["x"] != audit["x"]),
        "audit key in /jwks.json"
    );
}

#[tokio::test]
async fn x08_a_shared_audience_with_another_tenants_claims_gets_403() {
    // A misconfigured shared audience lets the token past the audience check; its tenant or
    // environment claim differs from the route's target, so the gateway still refuses, 403.
    let f = Forge::new().await;
    for (k, v) in [("tenant", "globex"), ("env", "staging")] {
        let t = f.sign(&f.header(), &f.with(k, Some(json!(v))));
        let r = f.s.get("/tools/a", &t).await;
        assert_eq!(
            (r.status, r.json()["reason"].as_str()),
            (403, Some("cross_environment")),
            "{k} = {v}"
        );
    }
    assert_eq!(f.s.upstream.count(), 1);
}

#[tokio::test]
async fn t09_poisoned_keys_in_the_brokers_jwks_are_dropped_and_the_good_key_works() {
    // The gateway's verifier pointed at a JWKS we control (a stand-in broker): bad keys beside
    // the good one are dropped at load; tokens naming them are refused, the good key verifies.
    let broker = firebreak_testkit::TestIssuer::start(firebreak_token::Algorithm::EdDsa).await;
    let good = broker.key().public_key().to_jwk();
    let x = good["x"].clone();
    let mut keys = vec![good.clone()];
    keys.push(json!({"kty": "oct", "kid": "oct", "k": "c2VjcmV0"}));
    keys.push(json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "enc", "use": "enc"}));
    keys.push(json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "alg", "alg": "ES256"}));
    keys.push(json!({"kty": "EC", "crv": "P-256", "kid": "off-curve", "x": b64(&[1; 32]), "y": b64(&[2; 32])}));
    keys.push(json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "dup"}));
    keys.push(json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[9; 32]), "kid": "dup"}));
    keys.push(
        json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ops", "key_ops": ["encrypt"]}),
    );
    keys.push(json!({"kty": "RSA", "kid": "rsa-1024", "n": b64(&[0xc5; 128]), "e": "AQAB"}));
    keys.push(json!({"kty": "RSA", "kid": "rsa-e1", "n": b64(&[0xc5; 256]), "e": "AQ"}));
    broker.set_jwks(json!({ "keys": keys }));
    let clock =
        firebreak_core::ManualClock::new(firebreak_core::UnixTime::from_secs(1_800_000_000));
    let v = firebreak_enforce::TokenVerifier::new(
        broker.url.clone(),
        format!("{}/jwks.json", broker.url),
        true,
        60,
        Arc::new(clock),
    );
    let claims = json!({
        "iss": broker.url, "sub": "deploy-bot", "aud": TOOLS, "exp": 1_800_000_300i64,
        "iat": 1_800_000_000i64, "jti": "t_1", "sid": "s_1", "tenant": "acme", "env": "production",
    });
    let sign = |kid: &str| {
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
        broker
            .key()
            .sign_raw(&header, &serde_json::to_vec(&claims).unwrap())
            .unwrap()
    };
    let ok = v.verify(&sign(broker.key().kid()), TOOLS).await;
    assert!(ok.is_ok(), "the good key: {ok:?}");
    for kid in [
        "oct",
        "enc",
        "alg",
        "off-curve",
        "dup",
        "ops",
        "rsa-1024",
        "rsa-e1",
    ] {
        let r = v.verify(&sign(kid), TOOLS).await;
        assert!(
            matches!(r, Err(firebreak_enforce::TokenRefusal::Invalid(_))),
            "kid {kid}: {r:?}"
        );
    }
    // The good key still works after the refusals.
    assert!(v.verify(&sign(broker.key().kid()), TOOLS).await.is_ok());
}
