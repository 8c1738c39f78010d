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

# Say what is about to happen before a build: a first release build compiles about 240 crates
# (measured on a 2-core machine: see "Build time" in README.md).
if [[ ! -x $bin || -n $(find "${sources[@]}" -newer "$bin" -print -quit) ]]; then
  if [[ -x $bin ]]; then
    echo "start.sh: sources changed since the last build: rebuilding wshub (release): only what changed is compiled again" >&2
  else
    {
      echo "start.sh: first start: building wshub in release mode (cargo build --release --bin wshub)."
      echo "  It compiles wshub and about 240 dependency crates once: about 9 CPU-minutes,"
      echo "  so 5 to 10 minutes on 2 idle cores, less with more. Later starts skip this."
      echo "  Progress follows (cargo shows [done/total] on a terminal)."
    } >&2
  fi
  started=$SECONDS
  cargo build --release --locked --bin wshub --manifest-path "$root/Cargo.toml" >&2
  echo "start.sh: built in $((SECONDS - started)) s: $bin" >&2
fi
exec "$bin" "$@"
