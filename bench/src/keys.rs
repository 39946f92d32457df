//! The bench issuer's keys (RSA-2048 for RS256, Ed25519 for EdDSA), its JWKS, and the minting
//! of GitHub Actions-shaped subject tokens, each with its own `jti` (the broker refuses replays).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use firebreak_token::{Algorithm, SigningKey, random_b64url};
use serde_json::{Value, json};

use firebreak_server::form::encode_pairs;

/// The tool audience the bench agent is granted.
pub const TOOL_AUDIENCE: &str = "https://tools.bench.invalid/mcp";
/// Key id of the RSA key.
pub const RSA_KID: &str = "bench-rs256";
/// Key id of the Ed25519 key.
pub const ED_KID: &str = "bench-eddsa";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Subject-token lifetime: long enough to pre-mint a whole run (the broker config sets
/// `max_token_age` to match).
const SUBJECT_TTL_S: i64 = 3 * 3600;

/// Subject-token algorithm under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Alg {
    /// RSA-2048 PKCS#1 v1.5 (GitHub Actions, most IdPs).
    Rs256,
    /// Ed25519.
    Eddsa,
}

impl Alg {
    /// The name used in metric names.
    pub fn tag(self) -> &'static str {
        match self {
            Alg::Rs256 => "rs256",
            Alg::Eddsa => "eddsa",
        }
    }
    /// The CLI value.
    pub fn arg(self) -> &'static str {
        self.tag()
    }
}

/// A signer for one algorithm.
pub enum Signer {
    /// RSA.
    Rsa(RsaKeyPair),
    /// Ed25519 through firebreak-token.
    Ed(SigningKey),
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Generates both keys and writes their PKCS#8 documents into `dir`; returns the JWKS.
pub fn generate(dir: &Path) -> Value {
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA-2048 key generation");
    let der = rsa.as_der().expect("RSA PKCS#8");
    std::fs::write(dir.join("rs256.pk8"), der.as_ref()).expect("write rs256.pk8");
    let ed = SigningKey::generate(Algorithm::EdDsa).expect("Ed25519 key generation");
    std::fs::write(dir.join("eddsa.pk8"), ed.pkcs8_der()).expect("write eddsa.pk8");
    let ed = SigningKey::from_pkcs8(Algorithm::EdDsa, ED_KID.into(), ed.pkcs8_der())
        .expect("reload Ed25519");
    let public = rsa.public_key();
    let rsa_jwk = json!({
        "kty": "RSA",
        "n": b64(public.modulus().big_endian_without_leading_zero()),
        "e": b64(public.exponent().big_endian_without_leading_zero()),
        "kid": RSA_KID,
        "alg": "RS256",
        "use": "sig",
    });
    json!({ "keys": [rsa_jwk, ed.public_key().to_jwk()] })
}

/// Loads the signer for `alg` from `dir`.
pub fn load(dir: &Path, alg: Alg) -> Signer {
    let der = std::fs::read(dir.join(format!("{}.pk8", alg.tag()))).expect("read key file");
    match alg {
        Alg::Rs256 => Signer::Rsa(RsaKeyPair::from_pkcs8(&der).expect("RSA PKCS#8")),
        Alg::Eddsa => Signer::Ed(
            SigningKey::from_pkcs8(Algorithm::EdDsa, ED_KID.into(), &der).expect("Ed25519 PKCS#8"),
        ),
    }
}

fn now_s() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs(),
    )
    .expect("time fits")
}

fn claims(issuer: &str, audience: &str) -> Value {
    let now = now_s();
    json!({
        "iss": issuer,
        "aud": audience,
        "sub": "repo:acme/api:ref:refs/heads/main",
        "repository": "acme/api",
        "repository_id": "123456",
        "repository_owner": "acme",
        "ref": "refs/heads/main",
        "environment": "production",
        "event_name": "push",
        "workflow_ref": "acme/api/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_ref": "acme/api/.github/workflows/deploy.yml@refs/heads/main",
        "runner_environment": "github-hosted",
        "jti": random_b64url(16),
        "iat": now,
        "nbf": now,
        "exp": now + SUBJECT_TTL_S,
    })
}

impl Signer {
    /// One fresh subject token (new `jti`).
    pub fn mint(&self, issuer: &str, audience: &str) -> String {
        let claims = claims(issuer, audience);
        match self {
            Signer::Ed(k) => k.sign_jwt("JWT", &claims).expect("Ed25519 sign"),
            Signer::Rsa(kp) => {
                let header = json!({ "alg": "RS256", "typ": "JWT", "kid": RSA_KID });
                let mut token = b64(&serde_json::to_vec(&header).expect("header json"));
                token.push('.');
                token.push_str(&b64(&serde_json::to_vec(&claims).expect("claims json")));
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    token.as_bytes(),
                    &mut sig,
                )
                .expect("RSA sign");
                token.push('.');
                token.push_str(&b64(&sig));
                token
            }
        }
    }
}

/// The exchange request body for one subject token: exactly what a CI job would send.
pub fn exchange_form(subject_token: &str) -> String {
    encode_pairs([
        ("grant_type", EXCHANGE),
        ("subject_token", subject_token),
        ("subject_token_type", JWT_TYPE),
        ("audience", TOOL_AUDIENCE),
        ("scope", "repo:read"),
    ])
}

/// `mint` subcommand: `count` exchange bodies, one per line, on `threads` threads, into `out`.
pub fn mint_cmd(
    dir: &Path,
    alg: Alg,
    issuer: &str,
    audience: &str,
    count: usize,
    threads: usize,
    out: &Path,
) {
    let signer = load(dir, alg);
    let threads = threads.max(1);
    let per = count.div_ceil(threads);
    let parts: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let n = per.min(count.saturating_sub(i * per));
                let signer = &signer;
                s.spawn(move || {
                    let mut buf = String::with_capacity(n * 1400);
                    for _ in 0..n {
                        buf.push_str(&exchange_form(&signer.mint(issuer, audience)));
                        buf.push('\n');
                    }
                    buf
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("mint thread"))
            .collect()
    });
    std::fs::write(out, parts.concat()).expect("write minted tokens");
}
