#!/usr/bin/env bash
# Cluster chaos run (docs/RELIABILITY.md): three wshub nodes on a real redis-server, publishers
# and resuming clients on every node, and faults injected at random for a bounded time:
# CLIENT KILL TYPE pubsub, Redis restarts with and without its data, DEBUG SLEEP stalls, node
# SIGKILLs and client reconnects. Prints the faults injected, events accepted and delivered,
# lost and duplicated; fails on any silent loss or duplicate.
#
#   scripts/chaos-cluster.sh            # 10 minutes of faults
#   scripts/chaos-cluster.sh --quick    # 25 seconds (what CI runs in tests/cluster_chaos.rs)
#   scripts/chaos-cluster.sh --secs 120 [--seed N]
#
# It is the suite's fault-injection test (tests/cluster_chaos.rs) run longer: one
# implementation, so the script and CI check the same thing.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=600
seed=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) secs=25 ;;
    --secs) secs="$2"; shift ;;
    --seed) seed="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "chaos-cluster.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
command -v redis-server >/dev/null || { echo "chaos-cluster.sh: redis-server is not on PATH" >&2; exit 1; }

export WSHUB_CHAOS_SECS="$secs"
[ -n "$seed" ] && export WSHUB_CHAOS_SEED="$seed"
echo "chaos-cluster: ${secs}s of faults${seed:+, seed $seed}"
cargo test --locked --test cluster_chaos -- --nocapture 2>&1 | grep --line-buffered -E '^chaos:|panicked|test result|lost|twice'
