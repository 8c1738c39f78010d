#!/usr/bin/env bash
# Runs the property-based fuzz targets in fuzz/ (client frames, the /notify body, channel names
# and subscribe permissions, JWT claims) with fresh random seeds until a time budget is spent.
#
#   scripts/fuzz.sh                 # 3 minutes
#   scripts/fuzz.sh --seconds 30    # a short run (scripts/test.sh)
#   scripts/fuzz.sh --cases 5000    # cases per property per round (default 2000)
#
# proptest records each failure's seed in fuzz/tests/*.proptest-regressions, and every later
# run tries those first; a failure found here also becomes a regression test in the server
# crate (tests/fuzz_regressions.rs). Exits non-zero on the first failing round.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=180
cases=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --cases) cases="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "scripts/fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

cargo test --locked -p wshub-fuzz --no-run -q
log=$(mktemp)
trap 'rm -f "$log"' EXIT
deadline=$(( $(date +%s) + seconds ))
round=0
while :; do
  round=$((round + 1))
  printf '==> fuzz round %d (%d cases per property)\n' "$round" "$cases"
  # A fresh seed every round (proptest picks one at random unless told otherwise). The panic
  # lines of a caught panic are noise next to proptest's own report of the failing input.
  status=0
  PROPTEST_CASES="$cases" RUST_BACKTRACE=0 cargo test --locked -q --no-fail-fast -p wshub-fuzz >"$log" 2>&1 || status=$?
  grep -Ev '^(attempt to add with overflow|thread .* panicked at src/)' "$log" || true
  if [ "$status" != 0 ]; then
    echo "scripts/fuzz.sh: round $round found a failure (above); its seed is in fuzz/tests/*.proptest-regressions" >&2
    exit 1
  fi
  [ "$(date +%s)" -lt "$deadline" ] || break
done
echo "scripts/fuzz.sh: $round rounds without a failure"
