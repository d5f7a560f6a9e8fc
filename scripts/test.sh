#!/usr/bin/env bash
# Every test of the project, in the order a failure is cheapest to find.
# Needs: libclang-dev (bindgen for rusqlite's session feature), Debian's sqlite3 CLI,
# and pytest for Debian's /usr/bin/python3 — .ci/run installs them.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== README: every command in its sh blocks is run by a test or the quick benchmarks"
/usr/bin/python3 tests/python/readme_commands.py check

echo "== build libpdb (release)"
cargo build --release -p personaldb

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

# Last: the release benchmarks' first build is the slowest step here (minutes, once).
echo "== README's benchmark commands, tiny settings (every bench builds, runs, prints its ratios)"
bash scripts/bench.sh --quick

echo "== README's demo: two devices sync offline edits through a witness and converge"
# Its own checks fail it if the devices differ; its narration is shown only then.
demo_log=$(mktemp)
bash scripts/demo.sh >"$demo_log" 2>&1 || { cat "$demo_log"; exit 1; }
rm -f "$demo_log"
