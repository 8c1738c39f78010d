#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (redis-server,
# Debian's chromium, nginx, the browser-test npm packages), then runs lint, Rust unit and integration
# tests, the Python helper and example tests (Django, FastAPI, nginx) against real hubs, and the
# headless-browser tests.
# Fails loudly (never skips) when something cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }
die() { printf '\nscripts/test.sh: %s\n' "$*" >&2; exit 1; }

apt_updated=0
need_pkg() { # need_pkg <command> <debian package>
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing $2 (needed by the tests)"
    if [ $apt_updated = 0 ]; then apt-get update -qq || die "apt-get update failed"; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null || die "could not install $2"
  fi
  command -v "$1" >/dev/null 2>&1 || die "$1 is missing: install it (Debian: sudo apt-get install $2) and run again"
}

need_pkg redis-server redis-server
need_pkg openssl openssl
need_pkg chromium chromium
need_pkg node nodejs
need_pkg npm npm
need_pkg python3 python3
need_pkg nginx nginx

say "Python test clients (pinned, into .deps/python)"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --upgrade \
  --target .deps/python -r tests/python/requirements.txt || die "could not install tests/python/requirements.txt"
export PYTHONPATH="$PWD/.deps/python${PYTHONPATH:+:$PYTHONPATH}"

say "format and lints"
cargo fmt --all -- --check || die "cargo fmt --check failed: run cargo fmt"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "build"
cargo build --locked --bins --examples

say "Rust unit and integration tests"
cargo test --locked --all-targets

say "Python helper and example tests (against real hubs)"
WSHUB_BIN="$PWD/target/debug/wshub" python3 -m unittest discover -s tests/python -v

say "fuzz targets (short run; scripts/fuzz.sh runs longer)"
scripts/fuzz.sh --seconds 30 --cases 500

say "soak (CI variant, about 90 s; scripts/soak.sh runs 10 minutes)"
scripts/soak.sh --ci --hub-bin "$PWD/target/debug/wshub"

say "browser tests (headless Debian chromium)"
(
  cd tests/browser
  export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
  npm ci --no-audit --no-fund --loglevel=error
  WSHUB_BIN="$OLDPWD/target/debug/wshub" npm test
)

say "all test suites passed"
