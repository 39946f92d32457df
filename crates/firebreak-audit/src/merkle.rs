//! RFC 9162 §2.1 Merkle tree over SHA-256: tree hash, inclusion and consistency proofs with their
//! verifiers, and a compact incremental tree. Leaves here are always *leaf hashes*
//! (`leaf_hash(data)`), so a caller holding a chain keeps 32 bytes per record.
//!
//! The verifiers follow RFC 9162 §2.1.3.2 and §2.1.4.2 step by step, plus the edge cases
//! transparency-dev/merkle settles (equal sizes need an empty proof and equal roots; size 0 is
//! consistent with anything, with an empty proof).

use crate::{AuditError, sha256};
use aws_lc_rs::digest::{Context, SHA256};

/// RFC 9162 leaf hash: SHA-256(0x00 ‖ data).
pub fn leaf_hash(data: &[u8]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(data);
    finish(ctx)
}

/// RFC 9162 interior node hash: SHA-256(0x01 ‖ l ‖ r).
pub fn node_hash(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(l);
    ctx.update(r);
    finish(ctx)
}

fn finish(ctx: Context) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The largest power of two strictly below `n` (for `n >= 2`): RFC 9162's split point `k`.
fn split_point(n: usize) -> usize {
    let p = n.next_power_of_two();
    if p == n { n / 2 } else { p / 2 }
}

/// RFC 9162 Merkle tree hash over leaf hashes; the empty tree's is SHA-256("").
pub fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves {
        [] => sha256(b""),
        [only] => *only,
        _ => match leaves.split_at_checked(split_point(leaves.len())) {
            Some((l, r)) => node_hash(&root(l), &root(r)),
            // Unreachable: the split point is below the length.
            None => sha256(b""),
        },
    }
}

fn usize_of(n: u64, size: u64) -> Result<usize, AuditError> {
    usize::try_from(n).map_err(|_| AuditError::MerkleIndexOutOfRange { index: n, size })
}

fn size_of(leaves: &[[u8; 32]]) -> u64 {
    u64::try_from(leaves.len()).unwrap_or(u64::MAX)
}

/// The inclusion proof (RFC 9162 §2.1.3.1 `PATH`) of leaf `index` in the tree of `leaves`.
///
/// # Errors
/// [`AuditError::MerkleIndexOutOfRange`] if `index >= leaves.len()`.
pub fn inclusion_proof(index: u64, leaves: &[[u8; 32]]) -> Result<Vec<[u8; 32]>, AuditError> {
    let size = size_of(leaves);
    let m = usize_of(index, size)?;
    if m >= leaves.len() {
        return Err(AuditError::MerkleIndexOutOfRange { index, size });
    }
    let mut proof = Vec::new();
    path(m, leaves, &mut proof);
    Ok(proof)
}

// PATH(m, D[n]); pushes bottom-up, as RFC 9162 lists the proof. Caller keeps m < leaves.len().
fn path(m: usize, leaves: &[[u8; 32]], proof: &mut Vec<[u8; 32]>) {
    if leaves.len() < 2 {
        return;
    }
    let k = split_point(leaves.len());
    let Some((l, r)) = leaves.split_at_checked(k) else {
        return;
    };
    if m < k {
        path(m, l, proof);
        proof.push(root(r));
    } else {
        path(m - k, r, proof);
        proof.push(root(l));
    }
}

/// The consistency proof (RFC 9162 §2.1.4.1 `PROOF`) between the tree of the first `m` leaves
/// and the tree of all of `leaves`. Empty when `m` is 0 or `leaves.len()`.
///
/// # Errors
/// [`AuditError::MerkleSizesOutOfOrder`] if `m > leaves.len()`.
pub fn consistency_proof(m: u64, leaves: &[[u8; 32]]) -> Result<Vec<[u8; 32]>, AuditError> {
    let n = size_of(leaves);
    let first = usize_of(m, n)?;
    if first > leaves.len() {
        return Err(AuditError::MerkleSizesOutOfOrder {
            first: m,
            second: n,
        });
    }
    let mut proof = Vec::new();
    if first > 0 {
        subproof(first, leaves, true, &mut proof);
    }
    Ok(proof)
}

// SUBPROOF(m, D[n], b), for 0 < m <= n.
fn subproof(m: usize, leaves: &[[u8; 32]], complete: bool, proof: &mut Vec<[u8; 32]>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            proof.push(root(leaves));
        }
        return;
    }
    let k = split_point(n);
    let Some((l, r)) = leaves.split_at_checked(k) else {
        return;
    };
    if m <= k {
        subproof(m, l, complete, proof);
        proof.push(root(r));
    } else {
        subproof(m - k, r, false, proof);
        proof.push(root(l));
    }
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2) of `leaf` (a leaf hash) at `index` in the tree
/// of `size` leaves whose root is `root`.
///
/// # Errors
/// [`AuditError::MerkleIndexOutOfRange`], [`AuditError::MerkleProofLength`] or
/// [`AuditError::MerkleRootMismatch`].
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &[u8; 32],
    proof: &[[u8; 32]],
    root: &[u8; 32],
) -> Result<(), AuditError> {
    if index >= size {
        return Err(AuditError::MerkleIndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(AuditError::MerkleProofLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(AuditError::MerkleProofLength);
    }
    if r != *root {
        return Err(AuditError::MerkleRootMismatch);
    }
    Ok(())
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2) between the tree of size `m` with root
/// `root_m` and the tree of size `n` with root `root_n`.
///
/// # Errors
/// [`AuditError::MerkleSizesOutOfOrder`], [`AuditError::MerkleProofLength`] or
/// [`AuditError::MerkleRootMismatch`].
pub fn verify_consistency(
    m: u64,
    n: u64,
    root_m: &[u8; 32],
    root_n: &[u8; 32],
    proof: &[[u8; 32]],
) -> Result<(), AuditError> {
    if m > n {
        return Err(AuditError::MerkleSizesOutOfOrder {
            first: m,
            second: n,
        });
    }
    if m == n {
        if !proof.is_empty() {
            return Err(AuditError::MerkleProofLength);
        }
        return if root_m == root_n {
            Ok(())
        } else {
            Err(AuditError::MerkleRootMismatch)
        };
    }
    if m == 0 {
        // Every tree extends the empty tree; a proof of that is meaningless, so none is accepted.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(AuditError::MerkleProofLength)
        };
    }
    // Step 1: an empty proof never proves a proper extension.
    if proof.is_empty() {
        return Err(AuditError::MerkleProofLength);
    }
    // Step 2: a first tree that is a complete subtree is its own first proof element.
    let mut path = proof.iter();
    let seed = if m.is_power_of_two() {
        Some(root_m)
    } else {
        path.next()
    };
    let Some(seed) = seed else {
        return Err(AuditError::MerkleProofLength);
    };
    let (mut fnode, mut snode) = (m - 1, n - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*seed, *seed);
    for c in path {
        if snode == 0 {
            return Err(AuditError::MerkleProofLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(AuditError::MerkleProofLength);
    }
    if fr != *root_m || sr != *root_n {
        return Err(AuditError::MerkleRootMismatch);
    }
    Ok(())
}

/// Incremental tree: O(log n) memory, push leaf hashes, root at any size.
#[derive(Clone, Debug, Default)]
pub struct CompactTree {
    // INVARIANT: `peaks[i]` is the root of a perfect subtree, one per set bit of `size`, largest
    // (leftmost) first, so the tree hash is the right-to-left fold of the peaks.
    peaks: Vec<[u8; 32]>,
    size: u64,
}

impl CompactTree {
    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: [u8; 32]) {
        let mut h = leaf;
        let mut s = self.size;
        while s & 1 == 1 {
            let Some(left) = self.peaks.pop() else { break };
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.peaks.push(h);
        self.size = self.size.saturating_add(1);
    }

    /// The number of leaves pushed.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RFC 9162 tree hash of the leaves pushed so far.
    pub fn root(&self) -> [u8; 32] {
        fold_peaks(&self.peaks)
    }

    /// The frontier: the roots of the perfect subtrees, largest (leftmost) first. With
    /// [`CompactTree::size`] it is all a writer needs to keep computing roots, so a store can
    /// persist it beside the chain head instead of re-reading every leaf.
    pub fn frontier(&self) -> &[[u8; 32]] {
        &self.peaks
    }

    /// Rebuilds a tree from [`CompactTree::size`] and [`CompactTree::frontier`]; `None` when the
    /// frontier cannot belong to a tree of that size (one peak per set bit of `size`).
    pub fn from_frontier(size: u64, peaks: Vec<[u8; 32]>) -> Option<Self> {
        (u64::try_from(peaks.len()).ok()? == u64::from(size.count_ones()))
            .then_some(Self { peaks, size })
    }
}

fn fold_peaks(peaks: &[[u8; 32]]) -> [u8; 32] {
    let mut it = peaks.iter().rev();
    let Some(last) = it.next() else {
        return sha256(b"");
    };
    it.fold(*last, |acc, p| node_hash(p, &acc))
}

/// Every perfect subtree hash of a growing tree, so the root of any prefix costs O(log n): what
/// the verifier needs when a checkpoint covers fewer records than it has read. 64 bytes a leaf.
#[derive(Debug, Default)]
pub(crate) struct PrefixTree {
    // INVARIANT: `levels[h][i]` is the hash of the perfect subtree of 2^h leaves starting at leaf
    // i·2^h; level 0 holds the leaf hashes.
    levels: Vec<Vec<[u8; 32]>>,
}

impl PrefixTree {
    pub(crate) fn push(&mut self, leaf: [u8; 32]) {
        let mut h = leaf;
        let mut level = 0usize;
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            let Some(row) = self.levels.get_mut(level) else {
                return;
            };
            row.push(h);
            if row.len() % 2 == 1 {
                return;
            }
            let (Some(r), Some(l)) = (row.last(), row.iter().rev().nth(1)) else {
                return;
            };
            h = node_hash(l, r);
            level = level.saturating_add(1);
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| size_of(l))
    }

    /// The tree hash of the first `m` leaves; `None` if `m` exceeds the size.
    pub(crate) fn prefix_root(&self, m: u64) -> Option<[u8; 32]> {
        if m > self.size() {
            return None;
        }
        let mut peaks = Vec::new();
        let mut offset = 0u64;
        for h in (0..64u32).rev() {
            let width = 1u64.checked_shl(h)?;
            if m & width != 0 {
                let index = usize::try_from(offset >> h).ok()?;
                peaks.push(*self.levels.get(usize::try_from(h).ok()?)?.get(index)?);
                offset = offset.checked_add(width)?;
            }
        }
        Some(fold_peaks(&peaks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn frontier_round_trips() {
        let mut t = CompactTree::default();
        for i in 0u8..13 {
            t.push(leaf_hash(&[i]));
            let back = CompactTree::from_frontier(t.size(), t.frontier().to_vec()).unwrap();
            assert_eq!(back.root(), t.root());
            let mut a = back.clone();
            let mut b = t.clone();
            a.push([7; 32]);
            b.push([7; 32]);
            assert_eq!(a.root(), b.root());
        }
        assert!(CompactTree::from_frontier(3, vec![[0; 32]]).is_none());
    }

    #[test]
    fn compact_and_prefix_trees_agree_with_root() {
        let all = leaves(70);
        let mut compact = CompactTree::default();
        let mut prefix = PrefixTree::default();
        assert_eq!(compact.root(), root(&[]));
        for (i, l) in all.iter().enumerate() {
            compact.push(*l);
            prefix.push(*l);
            assert_eq!(compact.root(), root(&all[..=i]), "compact at {}", i + 1);
        }
        for m in 0..=70u64 {
            assert_eq!(
                prefix.prefix_root(m),
                Some(root(&all[..m as usize])),
                "prefix {m}"
            );
        }
        assert_eq!(prefix.prefix_root(71), None);
    }

    #[test]
    fn proofs_round_trip() {
        let all = leaves(13);
        for n in 1..=13usize {
            let r = root(&all[..n]);
            for i in 0..n as u64 {
                let p = inclusion_proof(i, &all[..n]).unwrap();
                verify_inclusion(i, n as u64, &all[i as usize], &p, &r).unwrap();
            }
            for m in 0..=n as u64 {
                let p = consistency_proof(m, &all[..n]).unwrap();
                let rm = root(&all[..m as usize]);
                verify_consistency(m, n as u64, &rm, &r, &p).unwrap();
            }
        }
    }
}
