#!/usr/bin/env bash
# Every benchmark, by README.md's own commands (taken from the table in
# tests/python/readme_commands.py, which is checked against README), so what users type
# is what runs here.
#
#   bash scripts/bench.sh           the full settings README's figures come from (long)
#   bash scripts/bench.sh --quick   tiny settings, seconds each: every benchmark must
#                                   still build, exit 0 and print its ratio lines (CI)
#
# Targets missed are reported by the benchmarks, not failed here: at tiny sizes and on a
# shared machine the figures mean nothing, only that the programs still work.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=false
case "${1:-}" in
  --quick) quick=true ;;
  "") ;;
  *) echo "usage: bash scripts/bench.sh [--quick]" >&2; exit 2 ;;
esac

# settings LABEL: sets `vars` (quick environment), `args` (quick arguments) and `ratios`
# (extended regexes, each must match a line of the output) for one benchmark.
settings() {
  vars=() args="" ratios=()
  case "$1" in
    capture)
      args="-- --rows 2000 --reps 1"
      ratios=('^W1 insert .* [0-9.]+x ' '^W2 update .* [0-9.]+x ' '^W3 delete .* [0-9.]+x ')
      ;;
    witness)
      vars=(PDB_BENCH_SECS=1 PDB_BENCH_WARMUP=0.3)
      ratios=('^A 1x16 clients +[0-9]+ ' '^B 64x64 clients +[0-9]+ '
              '^commits per history fsync +[0-9.]+ +[0-9.]+')
      ;;
    projections)
      vars=(PDB_BENCH_SECS=1 PDB_BENCH_LAG_SECS=1 PDB_BENCH_ROWS=3000 PDB_BENCH_ROUNDS=1)
      ratios=('^  ratio with 3 projections / none: [0-9.]+x' '^lag from certificate .* p50 [0-9.]+ ms'
              '^search backfill of .* ratio [0-9.]+x' '^search read over .* p50 [0-9.]+ ms')
      ;;
    apply)
      vars=(PDB_APPLY_COMMITS=20 PDB_APPLY_CHANGES=20 PDB_APPLY_REPS=1)
      ratios=('^ratio pdb/session [0-9.]+x')
      ;;
    sync)
      vars=(PDB_SYNC_LATENCY_N=5 PDB_SYNC_LATENCY_WARMUP=1 PDB_SYNC_HISTORY_MB=1
            PDB_SYNC_APPLY_COMMITS=20 PDB_SYNC_APPLY_CHANGES=20 PDB_SYNC_REPS=1)
      ratios=('^pdb_commit\(\) on A -> row visible on B +[0-9.]+ ' '^peak RSS growth [0-9.]+ MB'
              '^rebase::integrate \(no HTTP\) .* [0-9.]+x ' '^pdb_pull\(\) over HTTP .* [0-9.]+x ')
      ;;
    snapshot)
      vars=(PDB_SNAP_ROWS=2000 PDB_SNAP_COMMIT_ROWS=500 PDB_SNAP_REPS=1 PDB_SNAP_CHILD_LIMIT_S=120)
      ratios=('^snapshot / physical +[0-9.]+x' '^replay / snapshot +[0-9.]+x'
              '^peak RSS growth [0-9.]+ MB')
      ;;
    *)
      echo "scripts/bench.sh: no settings for benchmark '$1'; add them to settings()" >&2
      return 1
      ;;
  esac
}

commands=$(/usr/bin/python3 tests/python/readme_commands.py bench)
[ -n "$commands" ] || { echo "scripts/bench.sh: README lists no benchmark" >&2; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
failed=0
while IFS=$'\t' read -r label command; do
  settings "$label"
  run=$command
  if $quick; then
    [ -z "$args" ] || run="$command $args"
  else
    vars=()
  fi
  echo "== bench $label: ${vars[*]:+${vars[*]} }$run"
  start=$SECONDS
  status=0
  env "${vars[@]}" bash -c "$run" >"$log" 2>&1 </dev/null || status=$?
  missing=()
  for re in "${ratios[@]}"; do
    grep -Eq "$re" "$log" || missing+=("$re")
  done
  if [ "$status" -ne 0 ] || [ ${#missing[@]} -gt 0 ]; then
    cat "$log"
    [ "$status" -eq 0 ] || echo "FAILED: bench $label exited $status" >&2
    for re in "${missing[@]}"; do echo "FAILED: bench $label printed no line matching /$re/" >&2; done
    failed=1
  elif $quick; then
    # The ratio lines only: the whole report is for full runs.
    for re in "${ratios[@]}"; do grep -E "$re" "$log" | sed 's/^/   /'; done
  else
    cat "$log"
  fi
  echo "   ($((SECONDS - start)) s)"
done <<<"$commands"
exit "$failed"
