#!/usr/bin/env bash
# Runs wshub, building it first (cargo build --release) when the binary is missing or older than
# any source: src/, static/, Cargo.toml or Cargo.lock. Every argument goes to wshub unchanged:
#   ./start.sh --addr 0.0.0.0:8080 --jwt-secret "$SECRET"
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${CARGO_TARGET_DIR:-$root/target}/release/wshub

sources=()
for path in src static Cargo.toml Cargo.lock; do
  [[ -e $root/$path ]] && sources+=("$root/$path")
done

if [[ ! -x $bin || -n $(find "${sources[@]}" -newer "$bin" -print -quit) ]]; then
  cargo build --release --manifest-path "$root/Cargo.toml" >&2
fi
exec "$bin" "$@"
