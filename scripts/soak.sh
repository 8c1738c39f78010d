#!/usr/bin/env bash
# Soak test: starts the real hub binary on a free loopback port and runs honest and hostile
# clients against it for a bounded time (default 10 minutes; --quick 1 minute; --ci 60 s, about 90 s in all),
# then checks that every honest client got exactly what the protocol promises (no loss, no
# undocumented duplicate, no leak), that the hub's RSS stayed under the printed bound and its file
# descriptors returned to the baseline. Exits non-zero on any violation. See scripts/soak.py
# (--help) for the options; hub flags go after `--`, e.g.
#   scripts/soak.sh --quick -- --max-queue-bytes 1048576
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d .deps/python/websockets ]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --target .deps/python -r tests/python/requirements.txt
fi
export PYTHONPATH="$PWD/.deps/python${PYTHONPATH:+:$PYTHONPATH}"
# Thousands of sockets in one process (and in the hub, which inherits the limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 scripts/soak.py "$@"
