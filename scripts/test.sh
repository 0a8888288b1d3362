#!/usr/bin/env bash
# Runs every test of the repository:
#   1. cargo build --workspace --bins      (the kalam-server binary the tests start)
#   2. the Python venv with tests/python/requirements.txt (pyarrow, ADBC, ... and moto, the
#      local S3 server that the Rust S3 tests start)
#   3. Rust tests: cargo nextest (if installed) + doctests, else cargo test
#   4. Python interop tests (tests/python) in that venv, against the freshly built binary
# Both the Rust and the Python part always run; the script exits non-zero if either fails.
#
# Environment:
#   CARGO_TARGET_DIR  where cargo builds (default: <repo>/target)
#   VENV              Python virtualenv to create/reuse (default: $HOME/.cache/kalam-venv)
#   PYTHON            interpreter used to create the venv (default: python3)
#   KALAM_MOTO_SERVER moto_server the Rust S3 tests start (default: $VENV/bin/moto_server)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET_DIR in
  /*) ;;
  *) TARGET_DIR=$ROOT/$TARGET_DIR ;;
esac
SERVER_BIN=$TARGET_DIR/debug/kalam-server
VENV=${VENV:-$HOME/.cache/kalam-venv}

echo "==> cargo build --workspace --bins"
cargo build --workspace --bins

# End-to-end tests (Rust and Python) start this binary; the Rust ones also run the CLI.
export KALAM_SERVER_BIN=$SERVER_BIN
export KALAM_CLI_BIN=$TARGET_DIR/debug/kalam

echo "==> Python venv ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
# The Python client package (clients/python), tested by tests/python/test_live.py.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e clients/python
export KALAM_MOTO_SERVER=${KALAM_MOTO_SERVER:-$VENV/bin/moto_server}

# Each runner's output is also kept so that its closing summary can be repeated at the end.
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT

echo "==> Rust tests"
rust_status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-tests=warn 2>&1 | tee "$LOGS/rust" || rust_status=$?
  # nextest does not run doctests.
  cargo test --workspace --doc || rust_status=$?
else
  cargo test --workspace 2>&1 | tee "$LOGS/rust" || rust_status=$?
fi

echo "==> Python interop tests"
py_status=0
"$VENV/bin/python" -m pytest tests/python -q 2>&1 | tee "$LOGS/python" || py_status=$?

echo "==> Summary"
grep -E '^ *Summary |^test result:' "$LOGS/rust" | tail -n 1 || echo "Rust: no summary line (exit $rust_status)"
tail -n 1 "$LOGS/python"

if [ "$rust_status" -ne 0 ] || [ "$py_status" -ne 0 ]; then
  exit 1
fi
