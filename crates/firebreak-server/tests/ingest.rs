//! `POST /v1/audit/ingest`: a standalone gateway's chain, verified before it is stored.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed step should stop the test loudly"
)]

mod common;

use common::*;
use firebreak_audit::{AuditKey, ChainHead, VerifyOptions, seal, sign_checkpoint, verify_items};
use firebreak_testkit::UnixTime;
use serde_json::{Value, json};

const GW_SECRET: &str = "gw-secret";

fn gw_client(key: &AuditKey) -> String {
    let jwk = key.public().to_jwk();
    format!(
        "\n[[client]]\nid = \"gw-1\"\nsecret_sha256 = \"{}\"\nroles = [\"stream\"]\naudit_key = {{ kty = \"OKP\", crv = \"Ed25519\", x = \"{}\" }}\n",
        firebreak_token::sha256_hex(GW_SECRET.as_bytes()),
        jwk["x"].as_str().unwrap()
    )
}

/// `n` records of chain `chain` continuing `head`, and the leaf hashes.
fn records(chain: &str, head: &mut ChainHead, n: u64, leaves: &mut Vec<[u8; 32]>) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut f = serde_json::Map::new();
        f.insert("kind".into(), json!("decision"));
        f.insert("decision".into(), json!("allow"));
        f.insert("session".into(), json!(format!("s_gw{i}")));
        let s = seal(
            f,
            chain,
            UnixTime::from_secs(1_800_000_000 + i as i64),
            head,
        )
        .unwrap();
        *head = ChainHead {
            seq: s.seq,
            hash: s.hash.clone(),
        };
        leaves.push(s.leaf_hash);
        out.push(s.json);
    }
    out
}

#[tokio::test]
async fn ingest_verifies_and_stores_a_gateway_chain() {
    let key = AuditKey::generate().unwrap();
    let h = Harness::start_with(&gw_client(&key), None, None).await;
    let url = format!("{}/v1/audit/ingest", h.url);
    let auth = basic("gw-1", GW_SECRET);
    let post = |body: String, auth: Option<String>| {
        let (http, url) = (h.http.clone(), url.clone());
        async move {
            let mut hd = vec![("content-type".to_owned(), "application/x-ndjson".to_owned())];
            if let Some(a) = auth {
                hd.push(("authorization".to_owned(), a));
            }
            let refs: Vec<(&str, &str)> =
                hd.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            http.send("POST", &url, &refs, body).await
        }
    };
    let mut head = ChainHead::genesis();
    let mut leaves = Vec::new();
    let mut lines = records("gw-1", &mut head, 5, &mut leaves);
    let cp = sign_checkpoint(
        "gw-1",
        5,
        &firebreak_audit::merkle::root(&leaves),
        UnixTime::from_secs(1_800_000_010),
        &key,
    )
    .unwrap();
    lines.push(cp.to_string());
    let body = lines.join("\n");
    let r = post(body.clone(), Some(auth.clone())).await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(
        r.json(),
        json!({ "chain": "gw-1", "accepted": 5, "head_seq": 5 })
    );
    // A retry of the same batch is accepted and adds nothing.
    let r = post(body, Some(auth.clone())).await;
    assert_eq!(r.json()["accepted"], 0);

    // Refusals: a broken link, a checkpoint by another key, another chain's name.
    let mut bad_head = ChainHead {
        seq: 5,
        hash: "f".repeat(64),
    };
    let mut l2 = leaves.clone();
    let broken = records("gw-1", &mut bad_head, 1, &mut l2).join("\n");
    let r = post(broken, Some(auth.clone())).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["detail"], "audit_chain_rejected");
    let mut h2 = head.clone();
    let mut l3 = leaves.clone();
    let mut more = records("gw-1", &mut h2, 2, &mut l3);
    let other = AuditKey::generate().unwrap();
    more.push(
        sign_checkpoint(
            "gw-1",
            7,
            &firebreak_audit::merkle::root(&l3),
            UnixTime::from_secs(1_800_000_020),
            &other,
        )
        .unwrap()
        .to_string(),
    );
    assert_eq!(post(more.join("\n"), Some(auth.clone())).await.status, 400);
    let mut hb = ChainHead::genesis();
    let mut lb = Vec::new();
    let as_broker = records("broker", &mut hb, 1, &mut lb).join("\n");
    assert_eq!(post(as_broker, Some(auth.clone())).await.status, 400);
    // Authentication: none, or a client without the stream role.
    assert_eq!(post("{}".into(), None).await.status, 401);
    assert_eq!(
        post("{}".into(), Some(basic("rs-tools", CLIENT_SECRET)))
            .await
            .status,
        403
    );

    // The stored chain verifies under the gateway's key, the broker's under the pinned key.
    let admin = format!("Bearer {}", h.admin);
    let export = h
        .http
        .get(
            &format!("{}/v1/audit/export?chain=gw-1", h.url),
            &[("authorization", &admin)],
        )
        .await;
    let items: Vec<Value> = String::from_utf8_lossy(&export.body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let report = verify_items(
        &items,
        &VerifyOptions {
            keys: &[key.public()],
            strict: true,
        },
    )
    .unwrap();
    assert_eq!((report.records, report.checkpoints), (5, 1));
    // The broker's key does not vouch for the gateway's chain.
    let pinned = firebreak_server::audit::pinned_public(&h.dir.path().join("data")).unwrap();
    assert!(
        verify_items(
            &items,
            &VerifyOptions {
                keys: &[pinned],
                strict: false
            }
        )
        .is_err()
    );
}
