#!/usr/bin/env bash
# A short run of every cargo-fuzz target in fuzz/, for CI: each target starts from its
# seeds (fuzz/seeds/<target>/, copied into fuzz/corpus/<target>/ so that the seeds stay
# as committed) and runs for SECONDS_PER_TARGET. Exits non-zero, naming the crash file,
# when any target fails.
#
# Usage: bash scripts/fuzz-quick.sh [SECONDS_PER_TARGET]   (default 20)
# PDB_FUZZ_SANITIZER=address selects AddressSanitizer (default: none, see below).
#
# Needs only a stable Rust toolchain and crates.io: cargo-fuzz is installed on first
# use. Reproduce a failure with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none TARGET fuzz/artifacts/TARGET/FILE
# from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-20}
if ! [[ $secs =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: bash scripts/fuzz-quick.sh [SECONDS_PER_TARGET]" >&2
    exit 2
fi

# No sanitizer by default. What the targets exercise is safe Rust (pdb-client forbids
# unsafe code), whose bugs surface as panics with or without one, and SQLite's C code,
# which cargo-fuzz does not instrument either way. AddressSanitizer does build and run
# on stable with RUSTC_BOOTSTRAP=1, but it made these targets 4 times slower (20 s from
# the seeds: apply ran 9,800 inputs against 41,800, decode 200,000 against 830,000) and
# the cold build half again as long, which in a short run costs more than it could add.
sanitizer=${PDB_FUZZ_SANITIZER:-none}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes nightly-only flags to rustc (-Zsanitizer, sanitizer coverage
# options); RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. It is set only for
# cargo-fuzz, not for the install above, so that no dependency of cargo-fuzz itself
# mistakes stable for nightly.
fuzz() { RUSTC_BOOTSTRAP=1 cargo fuzz "$@"; }

# cargo-fuzz builds for x86_64-unknown-linux-gnu unless told otherwise; build for the
# host so that the binaries are where this script looks for them.
host=$(rustc -vV | sed -n 's/^host: //p')
echo "== building fuzz targets (sanitizer: $sanitizer, target: $host)"
if ! fuzz build --sanitizer "$sanitizer" --target "$host"; then
    if [[ $sanitizer == none ]]; then
        exit 1
    fi
    echo "fuzz-quick: the $sanitizer sanitizer build failed; falling back to none" >&2
    sanitizer=none
    fuzz build --sanitizer none --target "$host"
fi

bin_dir=fuzz/target/$host/release
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
summary=()
failed=0
# Assigned first so that a failing `cargo fuzz list` stops the script instead of
# running nothing and passing.
targets=$(fuzz list)
if [[ -z $targets ]]; then
    echo "fuzz-quick: cargo fuzz list found no targets" >&2
    exit 1
fi
for target in $targets; do
    corpus=fuzz/corpus/$target
    artifacts=fuzz/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    if [[ -d fuzz/seeds/$target ]]; then
        cp fuzz/seeds/"$target"/* "$corpus"/
    fi
    log=$logs/$target.log
    echo "== fuzzing $target for ${secs}s"
    status=0
    # -timeout: an input that takes seconds is a hang worth reporting, not noise.
    "$bin_dir/$target" "$corpus" -dict=fuzz/changeset.dict -max_total_time="$secs" \
        -timeout=10 -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1 ||
        status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    # A target that fails while loading its corpus prints no coverage line.
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2 || true)
    entries=$(find "$corpus" -type f | wc -l)
    if [[ $status -eq 0 ]]; then
        summary+=("$target: ok, ${runs:-?} inputs in ${secs}s, coverage ${cov:-?}, corpus $entries")
    else
        failed=1
        crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        # The panic message and the location of the failing check.
        grep -E -A 3 "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | head -n 30 >&2 || true
        summary+=("$target: FAILED (exit $status), input: ${crash:-none written, see log above}")
        if [[ -z $crash ]]; then
            tail -n 40 "$log" >&2
        fi
    fi
done

echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
if [[ $failed -ne 0 ]]; then
    echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $sanitizer TARGET FILE" >&2
    exit 1
fi
