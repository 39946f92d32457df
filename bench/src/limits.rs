//! `limits`: single-thread crypto ceilings, run in a child pinned to the servers' core. Same
//! shapes as `../shared/bench/limits` (aws-lc-rs, a 493-byte at+jwt signing input, pre-parsed
//! public keys). Prints one JSON object: `{"name": [ops/s per round, …], …}`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ED25519, Ed25519KeyPair, KeyPair as _, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256,
    RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents,
};
use serde_json::{Map, Value};

/// The names this module measures, in output order.
pub const NAMES: [&str; 3] = ["ed25519_verify", "ed25519_sign", "rs256_verify"];

fn time_ops(secs: f64, mut op: impl FnMut()) -> f64 {
    // Batches of 16 keep the clock out of the loop.
    for _ in 0..64 {
        op();
    }
    let start = Instant::now();
    let budget = Duration::from_secs_f64(secs);
    let mut n: u64 = 0;
    while start.elapsed() < budget {
        for _ in 0..16 {
            op();
        }
        n += 16;
    }
    #[allow(clippy::cast_precision_loss, reason = "op counts are far below 2^52")]
    let r = n as f64 / start.elapsed().as_secs_f64();
    r
}

/// Runs `rounds` interleaved rounds of `secs` seconds per figure; prints the JSON object.
pub fn limits_cmd(secs: f64, rounds: usize) {
    let rng = SystemRandom::new();
    let msg = vec![b'a'; 493];
    let ed = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("ed25519 gen")
            .as_ref(),
    )
    .expect("ed25519 load");
    let ed_sig = ed.sign(&msg);
    let ed_pub = ParsedPublicKey::new(&ED25519, ed.public_key().as_ref()).expect("ed25519 public");
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa gen");
    let mut rsa_sig = vec![0u8; rsa.public_modulus_len()];
    rsa.sign(&RSA_PKCS1_SHA256, &rng, &msg, &mut rsa_sig)
        .expect("rsa sign");
    let n = rsa
        .public_key()
        .modulus()
        .big_endian_without_leading_zero()
        .to_vec();
    let e = rsa
        .public_key()
        .exponent()
        .big_endian_without_leading_zero()
        .to_vec();
    let rsa_pub = RsaPublicKeyComponents {
        n: n.as_slice(),
        e: e.as_slice(),
    }
    .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
    .expect("rsa public");
    let mut out: Map<String, Value> = NAMES
        .iter()
        .map(|n| ((*n).to_owned(), Value::Array(Vec::new())))
        .collect();
    for _ in 0..rounds.max(1) {
        let figures = [
            time_ops(secs, || {
                ed_pub
                    .verify_sig(black_box(&msg), black_box(ed_sig.as_ref()))
                    .expect("ed25519 verify");
            }),
            time_ops(secs, || {
                black_box(ed.sign(black_box(&msg)));
            }),
            time_ops(secs, || {
                rsa_pub
                    .verify_sig(black_box(&msg), black_box(&rsa_sig))
                    .expect("rsa verify");
            }),
        ];
        for (name, v) in NAMES.iter().zip(figures) {
            if let Some(Value::Array(a)) = out.get_mut(*name) {
                a.push(Value::from((v * 10.0).round() / 10.0));
            }
        }
    }
    println!("{}", Value::Object(out));
}
