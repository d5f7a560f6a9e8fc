#!/usr/bin/env bash
# Every test of the project, in the order a failure is cheapest to find.
# Needs: libclang-dev (bindgen for rusqlite's session feature), Debian's sqlite3 CLI,
# and pytest for Debian's /usr/bin/python3 — .ci/run installs them.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== build libpdb (release)"
cargo build --release -p pdb

echo "== Rust: unit tests, integration tests against the session extension"
cargo test --workspace

echo "== Python host (Debian's python3 and SQLite 3.40)"
/usr/bin/python3 -m pytest tests/python -q

echo "== sqlite3 CLI host (Debian's sqlite3 3.40, its .session command as reference)"
bash tests/cli/test_cli.sh

echo "== oldest supported host: SQLite 3.37.0"
cargo run -q --manifest-path tests/hosts/sqlite-3.37/Cargo.toml

echo "== fuzz (brief)"
bash scripts/fuzz-quick.sh "${PDB_FUZZ_SECONDS:-20}"
