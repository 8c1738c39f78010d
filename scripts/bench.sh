#!/usr/bin/env bash
# Builds wshub and wshub-bench in release mode (and the reference Go hub into target/go-hub if it
# is missing), then runs the standard benchmark suite (issue 7):
#   10k clients: connect rate + idle RSS, fan-out paced at 2 and 20 events/s, a burst,
#   targeted delivery to 10k JWT users, the /notify API, the max-clients run (fd limit - 100),
#   the kernel-floor probe, and the paced fan-out through 2 cluster nodes + a Redis it starts
#   (needs redis-server in PATH; the Go hub has no cluster mode).
# Writes target/bench/results.json and target/bench/results.md (hub logs in target/bench/logs/).
#
# Usage: scripts/bench.sh [--compare] [--quick] [any other wshub-bench option]
#   --compare   also run every scenario against the Go hub, alternating, and report wshub/go ratios
#   --quick     smoke run (1000 clients, few events), under a minute
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bins

needs_go=0
for arg in "$@"; do
  case "$arg" in
    --compare|--targets=*go*) needs_go=1 ;;
  esac
done
if [ "$needs_go" = 1 ] && [ ! -x target/go-hub ]; then
  go_build=../shared/peers/go-hub/build.sh
  [ -x "$go_build" ] || go_build=/work/shared/peers/go-hub/build.sh
  "$go_build" "$PWD/target/go-hub"
fi

mkdir -p target/bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec target/release/wshub-bench \
  --hub-bin target/release/wshub \
  --go-hub-bin target/go-hub \
  --json target/bench/results.json \
  --md target/bench/results.md \
  --log-dir target/bench/logs \
  "$@"
