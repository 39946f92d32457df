//! Third-party vectors (../shared/vectors): RFC 8785 canonical JSON and RFC 6962/9162 Merkle
//! proofs. One loop per suite; each failure names its file and line or case.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed step should stop the test loudly"
)]

use firebreak_audit::{canonicalize, merkle};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors")
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect()
}

fn hash32(s: &str) -> [u8; 32] {
    unhex(s)
        .try_into()
        .unwrap_or_else(|_| panic!("not 32 bytes: {s}"))
}

fn hashes(v: &Value) -> Vec<[u8; 32]> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| hash32(h.as_str().unwrap()))
        .collect()
}

/// SECURITY-TESTS.md A08: every `input/*.json` canonicalises to exactly `output/*.json`, and all
/// 10,000 ES6 number serialisations match.
#[test]
fn a08_jcs_vectors() {
    let dir = vectors().join("jcs");
    let mut files = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir.join("input"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for input in entries {
        let name = input.file_name().unwrap().to_owned();
        let want = std::fs::read(dir.join("output").join(&name)).unwrap();
        let value: Value = serde_json::from_slice(&std::fs::read(&input).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        let got = canonicalize(&value).unwrap();
        if got != want {
            failures.push(format!(
                "jcs/input/{}: got {:?}, want {:?}",
                name.to_string_lossy(),
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            ));
        }
        files += 1;
    }
    assert_eq!(files, 6, "expected the 6 upstream JCS cases");

    let numbers = std::fs::read_to_string(dir.join("es6testfile10k.txt")).unwrap();
    let mut lines = 0;
    for (i, line) in numbers.lines().enumerate() {
        let (bits, want) = line
            .split_once(',')
            .unwrap_or_else(|| panic!("line {}: {line}", i + 1));
        let f = f64::from_bits(u64::from_str_radix(bits, 16).unwrap());
        let value = Value::from(serde_json::Number::from_f64(f).unwrap());
        let got = String::from_utf8(canonicalize(&value).unwrap()).unwrap();
        if got != want {
            failures.push(format!(
                "es6testfile10k.txt line {}: {bits} gave {got}, want {want}",
                i + 1
            ));
        }
        lines += 1;
    }
    assert_eq!(lines, 10_000, "expected 10,000 number lines");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// SECURITY-TESTS.md A09: roots, reference and derived inclusion and consistency proofs match,
/// and every 32-byte verifier probe gives the result its `want_err` says.
#[test]
fn a09_merkle_vectors() {
    let path = vectors().join("merkle/rfc6962_vectors.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut failures = Vec::new();
    let mut cases = 0;

    let leaves: Vec<Vec<u8>> = v["leaves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| unhex(l.as_str().unwrap()))
        .collect();
    let leaf_hashes = hashes(&v["leaf_hashes"]);
    for (i, (data, want)) in leaves.iter().zip(&leaf_hashes).enumerate() {
        if merkle::leaf_hash(data) != *want {
            failures.push(format!("leaf_hashes[{i}]"));
        }
        cases += 1;
    }

    let mut compact = merkle::CompactTree::default();
    let mut compact_roots = vec![compact.root()];
    for l in &leaf_hashes {
        compact.push(*l);
        compact_roots.push(compact.root());
    }
    for r in v["roots"].as_array().unwrap() {
        let size = r["tree_size"].as_u64().unwrap() as usize;
        let want = hash32(r["root"].as_str().unwrap());
        if merkle::root(&leaf_hashes[..size]) != want {
            failures.push(format!("roots: tree_size {size}"));
        }
        if compact_roots[size] != want {
            failures.push(format!("roots: CompactTree at tree_size {size}"));
        }
        cases += 1;
    }

    for set in ["inclusion_proofs", "derived_inclusion_proofs"] {
        for (i, p) in v[set].as_array().unwrap().iter().enumerate() {
            let index = p["leaf_index"].as_u64().unwrap();
            let size = p["tree_size"].as_u64().unwrap();
            let want = hashes(&p["proof"]);
            let tree = &leaf_hashes[..size as usize];
            let got = merkle::inclusion_proof(index, tree).unwrap();
            if got != want {
                failures.push(format!("{set}[{i}]: proof of {index} in {size} differs"));
            }
            let root = merkle::root(tree);
            if let Err(e) =
                merkle::verify_inclusion(index, size, &leaf_hashes[index as usize], &want, &root)
            {
                failures.push(format!("{set}[{i}]: verify failed: {e}"));
            }
            cases += 1;
        }
    }

    for set in ["consistency_proofs", "derived_consistency_proofs"] {
        for (i, p) in v[set].as_array().unwrap().iter().enumerate() {
            let m = p["size1"].as_u64().unwrap();
            let n = p["size2"].as_u64().unwrap();
            let want = hashes(&p["proof"]);
            let got = merkle::consistency_proof(m, &leaf_hashes[..n as usize]).unwrap();
            if got != want {
                failures.push(format!("{set}[{i}]: proof {m} -> {n} differs"));
            }
            let rm = merkle::root(&leaf_hashes[..m as usize]);
            let rn = merkle::root(&leaf_hashes[..n as usize]);
            if let Err(e) = merkle::verify_consistency(m, n, &rm, &rn, &want) {
                failures.push(format!("{set}[{i}]: verify failed: {e}"));
            }
            cases += 1;
        }
    }

    let mut probes = 0;
    let mut skipped = 0;
    for p in v["inclusion_probes"].as_array().unwrap() {
        if p["all_hashes_32_bytes"] == false {
            skipped += 1;
            continue;
        }
        let got = merkle::verify_inclusion(
            p["leaf_index"].as_u64().unwrap(),
            p["tree_size"].as_u64().unwrap(),
            &hash32(p["leaf_hash"].as_str().unwrap()),
            &hashes(&p["proof"]),
            &hash32(p["root"].as_str().unwrap()),
        );
        if got.is_err() != p["want_err"].as_bool().unwrap() {
            failures.push(format!(
                "inclusion probe {} ({}): got {got:?}",
                p["file"], p["desc"]
            ));
        }
        probes += 1;
    }
    for p in v["consistency_probes"].as_array().unwrap() {
        if p["all_hashes_32_bytes"] == false {
            skipped += 1;
            continue;
        }
        let got = merkle::verify_consistency(
            p["size1"].as_u64().unwrap(),
            p["size2"].as_u64().unwrap(),
            &hash32(p["root1"].as_str().unwrap()),
            &hash32(p["root2"].as_str().unwrap()),
            &hashes(&p["proof"]),
        );
        if got.is_err() != p["want_err"].as_bool().unwrap() {
            failures.push(format!(
                "consistency probe {} ({}): got {got:?}",
                p["file"], p["desc"]
            ));
        }
        probes += 1;
    }
    assert!(
        cases > 0 && probes > 0,
        "no Merkle cases loaded from {}",
        path.display()
    );
    assert_eq!(probes + skipped, 196, "expected the 196 upstream probes");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
