#!/usr/bin/env python3
"""Independent checker for Firebreak audit exports, written from docs/audit-format.md alone.

Usage: verify_export.py EXPORT.jsonl AUDIT_KEY.jwk
Needs Python 3.8+ and `cryptography` (Ed25519 only). Exit 0 and counts on stdout when the export
verifies; exit 1 and one line on stderr naming the first failure otherwise. It is an interop
cross-check of the Rust verifier (STYLE.md §9), not a replacement: it holds every leaf in memory.
"""
import base64, hashlib, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

def es_number(x):
    """ECMAScript Number::toString: Python's repr gives the same (shortest, closest) digits."""
    x = float(x)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError("non-finite number")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    # n: position of the decimal point relative to the first significant digit.
    n = int(exp or 0) + len(whole) - (len(whole + frac) - len(digits))
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    return sign + digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))

def jcs(v):
    """RFC 8785 canonical JSON."""
    if v is None or isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return es_number(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    keys = sorted(v, key=lambda k: k.encode("utf-16-be"))
    return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + jcs(v[k]) for k in keys) + "}"

def sha(b):
    return hashlib.sha256(b).digest()

def mth(leaves):
    """RFC 9162 Merkle tree hash over leaf hashes."""
    if not leaves:
        return sha(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return sha(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))

def b64u(s):
    if "=" in s:
        raise ValueError("padded base64url")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)

def main(export, jwk_path):
    jwk = json.load(open(jwk_path))
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or "d" in jwk:
        fail("key: not a public Ed25519 JWK")
    thumb_input = '{"crv":"Ed25519","kty":"OKP","x":"%s"}' % jwk["x"]
    kid = base64.urlsafe_b64encode(sha(thumb_input.encode())).rstrip(b"=").decode()
    pub = Ed25519PublicKey.from_public_bytes(b64u(jwk["x"]))
    chains, pending = {}, []
    for ln, line in enumerate(open(export, "rb"), 1):
        if not line.strip():
            continue
        try:
            o = json.loads(line)
            assert isinstance(o, dict)
        except Exception as e:
            fail(f"line {ln}: not a JSON object: {e}")
        c = chains.setdefault(o.get("chain"), {"n": 0, "last": "0" * 64, "leaves": [], "anchored": 0})
        name = o.get("chain")
        if o.get("kind") == "checkpoint":
            size = o["tree_size"]
            signed = dict(o)
            sig = b64u(signed.pop("signature"))
            if o["key_id"] != kid:
                fail(f"chain {name} checkpoint at tree_size {size}: signature not by a trusted key")
            try:
                pub.verify(sig, jcs(signed).encode())
            except Exception:
                fail(f"chain {name} checkpoint at tree_size {size}: signature not by a trusted key")
            pending.append((name, size, o["root"]))
        else:
            seq = o["seq"]
            if o["v"] != 1:
                fail(f"chain {name} seq {seq}: unknown format version {o['v']}")
            if seq != c["n"] + 1:
                fail(f"chain {name} seq {c['n'] + 1}: gap or out of order (found {seq})")
            claimed = o.pop("hash")
            leaf = jcs(o).encode()
            if sha(leaf).hex() != claimed:
                fail(f"chain {name} seq {seq}: record hash mismatch")
            if o["prev_hash"] != c["last"]:
                fail(f"chain {name} seq {seq}: prev_hash mismatch")
            c["n"], c["last"] = seq, claimed
            c["leaves"].append(sha(b"\x00" + leaf))
        # A checkpoint is checked as soon as its chain has the records it covers.
        still = []
        for (cn, size, root) in pending:
            ch = chains[cn]
            if size > ch["n"]:
                still.append((cn, size, root))
            elif mth(ch["leaves"][:size]).hex() != root:
                fail(f"chain {cn} checkpoint at tree_size {size}: root mismatch")
            else:
                ch["anchored"] = max(ch["anchored"], size)
        pending = still
    for (cn, size, _) in pending:
        fail(f"chain {cn} checkpoint tree_size {size} > log length {chains[cn]['n']}")
    for name, c in chains.items():
        print(f"chain {name}: {c['n']} records, {c['n'] - c['anchored']} unanchored")

if __name__ == "__main__":
    if len(sys.argv) != 3:
        fail(__doc__.strip().splitlines()[2])
    main(sys.argv[1], sys.argv[2])
