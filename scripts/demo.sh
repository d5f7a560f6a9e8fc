#!/usr/bin/env bash
# The main job: build libpdb and run the demo in Debian's sqlite3 shell.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v sqlite3 >/dev/null; then
  apt-get update -qq && apt-get install -y -qq sqlite3 >/dev/null
fi
cargo build --release -p pdb
db=$(mktemp -d)/demo.db
sqlite3 "$db" < examples/demo.sql
rm -rf "$(dirname "$db")"
