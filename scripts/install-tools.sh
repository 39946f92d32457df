#!/usr/bin/env bash
# Installs what .ci/run needs beyond the Rust toolchain: cargo-deny (from crates.io, pinned).
# Idempotent: a tool already at the wanted version is left alone.
set -euo pipefail
want_deny=0.20.2
if ! command -v cargo-deny >/dev/null 2>&1 || [[ $(cargo-deny --version 2>/dev/null) != *"$want_deny"* ]]; then
  echo "installing cargo-deny $want_deny" >&2
  cargo install cargo-deny --version "$want_deny" --locked >&2
fi
