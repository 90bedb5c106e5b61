#!/usr/bin/env bash
# What manifests cost: the manifest step of `create` (walk + blake3 of every file + write),
# the check at the end of `restore` at each restore_verify level, `status` and `verify`.
#
# Usage: bench/manifest.sh [SIZE] [RUNS]     e.g. bench/manifest.sh 2700M 3
# Needs root (the sample data is root-owned like a real stage network's), rsync and bc.
# One markdown table per shape (a few large files per node, then 20,000 small ones): medians of
# RUNS runs, in seconds. Writes bench/results/manifest.md and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
SIZE=${1:-2700M}
RUNS=${2:-3}
WORK=$PWD/bench/work/manifest
OUT=bench/results/manifest.md

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (the data is root-owned)" >&2; exit 1; }
bench_need rsync bc
bench_build

median() { sort -g | awk '{v[NR]=$1} END {printf "%.3f\n", (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
# The seconds= field of log event $1 in the stderr text on stdin.
field() { grep -o "$1 .*" | grep -o 'seconds=[0-9.]*' | head -1 | cut -d= -f2; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

bench_shape() {
  local shape=$1; shift
  rm -rf "$WORK"
  "$SAMPLE" generate "$WORK" --nodes 7 --size "$SIZE" --shape "$shape" "$@" >/dev/null
  local cfg="$WORK/stage-env/stage-env.cfg"
  local summary
  summary=$(find "$WORK/testing/cache/data" -type f | wc -l)" files, $(du -sh --apparent-size "$WORK/testing/cache/data" | cut -f1)"
  declare -A t=()
  add() { t[$1]+="$2 "; }
  for _ in $(seq "$RUNS"); do
    local s err
    s=$(now); err=$("$SNAP" -c "$cfg" create --force 2>&1 >/dev/null)
    add create "$(since "$s")"; add create_manifest "$(field manifest_written <<<"$err")"
    for level in none metadata full; do
      "$SAMPLE" suite "$WORK" >/dev/null
      s=$(now); err=$("$SNAP" -c "$cfg" restore --verify "$level" 2>&1 >/dev/null)
      add "restore_$level" "$(since "$s")"
      [ "$level" = none ] || add "restore_check_$level" "$(field restore_verified <<<"$err")"
    done
    "$SAMPLE" suite "$WORK" >/dev/null
    s=$(now); "$SNAP" -c "$cfg" status >/dev/null 2>&1 || true; add status "$(since "$s")"
    s=$(now); "$SNAP" -c "$cfg" status --full >/dev/null 2>&1 || true; add status_full "$(since "$s")"
    s=$(now); "$SNAP" -c "$cfg" verify >/dev/null 2>&1; add verify "$(since "$s")"
    "$SNAP" -c "$cfg" restore >/dev/null 2>&1
  done
  m() { tr ' ' '\n' <<<"${t[$1]}" | grep . | median; }
  echo
  echo "### shape $shape: $summary, 7 nodes, medians of $RUNS runs (s)"
  echo
  echo "| operation | seconds |"
  echo "|---|---|"
  echo "| create (rsync copy + manifest) | $(m create) |"
  echo "| … of which the manifest (walk, blake3 of every file, write) | $(m create_manifest) |"
  echo "| restore after a suite, restore_verify = none | $(m restore_none) |"
  echo "| restore after a suite, restore_verify = metadata (default) | $(m restore_metadata) |"
  echo "| … of which the check | $(m restore_check_metadata) |"
  echo "| restore after a suite, restore_verify = full | $(m restore_full) |"
  echo "| … of which the check | $(m restore_check_full) |"
  echo "| status after a suite (hashes only same-size files with a new mtime) | $(m status) |"
  echo "| status --full after a suite | $(m status_full) |"
  echo "| verify (read back and hash the whole snapshot) | $(m verify) |"
}

mkdir -p "$WORK" bench/results
{
  echo "# Manifest costs ($(date -u +%Y-%m-%d), bench/manifest.sh $SIZE $RUNS)"
  echo
  bench_machine "$WORK"
  echo
  bench_shape large
  bench_shape small --files 20000
} | tee "$OUT"
rm -rf "$WORK"
