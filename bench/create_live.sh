#!/usr/bin/env bash
# What a create costs under busy node containers, and how long it pauses them: 7 containers
# of the local busybox image (scripts/setup.sh builds it), each with its node directory of a
# generated sample bind-mounted, appending to its log and rewriting 64 random 4 KiB pages of
# its database file every second. Round by round (the machine is shared and its load drifts),
# `cp -a` of the data and `stagesnap create` (quiesce = pause, filesystem mode) run under the
# same writes, the snapshot of the round before deleted untimed; the create's own
# `paused_seconds` says how long the nodes were paused. Large and small sample shapes.
#
# Usage: bench/create_live.sh [RUNS] [SIZE] [SHAPES]   (default 5 3G "large small")
# Needs root (the data is root-owned like a real stage network's), a running dockerd and
# python3. Writes bench/results/create_live.md and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RUNS=${1:-5}
SIZE=${2:-3G}
SHAPES=${3:-large small}
NODES=7
WORK=$PWD/bench/work/create_live
OUT=bench/results/create_live.md
IMAGE=stagesnap-test:busybox
PREFIX=stagesnap-bench-cl

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (the node data is root-owned)" >&2; exit 1; }
bench_need docker python3 bc
bench_need_image "$IMAGE"
bench_build
bench_containers
mkdir -p "$(dirname "$OUT")"

# A node: its log line, then 64 random pages of its database, every second.
NODE='cd /opt/cellframe-node/var && db=lib/global_db/mdbx.dat && pages=$(( $(stat -c %s $db) / 4096 ))
while true; do
  echo "tick $(date +%s)" >> log/cellframe-node.log
  j=0
  while [ $j -lt 64 ]; do
    dd if=/dev/urandom of=$db bs=4096 count=1 seek=$(( (RANDOM * 32768 + RANDOM) % pages )) conv=notrunc 2>/dev/null
    j=$((j + 1))
  done
  sleep 1
done'

now() { date +%s.%N; }
rounds=$PWD/bench/work/create_live_rounds.txt
samples=$PWD/bench/work/create_live_samples.txt
rm -f "$rounds" "$samples"
for shape in $SHAPES; do
  cleanup
  mkdir -p "$WORK"
  env=$WORK/env
  generated=$("$SAMPLE" generate "$env" --nodes "$NODES" --size "$SIZE" --shape "$shape")
  echo "$shape: $generated" >>"$samples"
  data=$env/testing/cache/data
  for n in $(seq "$NODES"); do
    docker run -d --init --name "$PREFIX-$n" -v "$data/node$n:/opt/cellframe-node/var" "$IMAGE" \
      sh -c "$NODE" >/dev/null
  done
  s="$SNAP -c $env/stage-env/stage-env.cfg -s auto_cleanup=false -s quiesce=pause -s mode=filesystem -s container_name=$PREFIX-{n}"
  sleep 2
  for i in $(seq "$RUNS"); do
    rm -rf "$WORK/cp"
    $s -q delete live >/dev/null 2>&1 || true
    sync
    t0=$(now)
    cp -a "$data" "$WORK/cp"
    t1=$(now)
    rm -rf "$WORK/cp"
    sync
    t2=$(now)
    $s --json create live >"$WORK/created.json" 2>"$WORK/log"
    t3=$(now)
    python3 - "$WORK/created.json" "$WORK/log" "$shape" "$(echo "$t1 - $t0" | bc)" "$(echo "$t3 - $t2" | bc)" <<'EOF'
import json, re, sys
created = json.load(open(sys.argv[1]))
log = open(sys.argv[2]).read()
second = re.search(r"second_pass_compared compared=(\d+) files=(\d+) bytes=(\d+)", log)
print(sys.argv[3], f"cp={sys.argv[4]}", f"create={sys.argv[5]}", f"paused={created['paused_seconds']}",
      "compared=%s rewritten=%s bytes=%s" % second.groups())
EOF
  done >>"$rounds"
  # shellcheck disable=SC2086
  docker rm -f $NAMES >/dev/null
done

python3 - "$rounds" "$samples" >"$OUT" <<EOF
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    shape, *fields = line.split()
    r = dict(f.split("=") for f in fields)
    rows.setdefault(shape, []).append({k: float(v) for k, v in r.items()})
print("# Create under busy node containers: paused time and cost against cp -a")
print()
print("$(date -u +%Y-%m-%d), bench/create_live.sh $RUNS $SIZE \"$SHAPES\".")
print("Machine: $(bench_machine "$PWD/bench"). $(docker version --format 'Docker {{.Server.Version}}'); $(rsync --version | head -1).")
print("$NODES containers of $IMAGE, each appending to its log and rewriting 64 random 4 KiB pages of its")
print("database file (busybox dd conv=notrunc) every second, during both the cp -a and the create.")
print("Samples: " + "; ".join(l.strip() for l in open(sys.argv[2])) + ".")
print("Each round: cp -a of the data (then removed), then stagesnap create (filesystem mode,")
print("quiesce = pause; the previous round's snapshot deleted untimed), both after sync, page cache warm.")
print("paused = the create's paused_seconds (first docker pause asked to last unpause done).")
print()
print("| shape | cp -a (s) | create (s) | create ÷ cp -a | paused median (s) | paused max (s) | files compared in the pause | bytes rewritten |")
print("|---|---|---|---|---|---|---|---|")
for shape, rs in rows.items():
    med = lambda k: statistics.median(r[k] for r in rs)
    print(f"| {shape} | {med('cp'):.3f} | {med('create'):.3f} | **{med('create') / med('cp'):.2f}×** | **{med('paused'):.3f}** | {max(r['paused'] for r in rs):.3f} | {med('compared'):.0f} | {med('bytes') / 2**20:.1f} MiB |")
print()
print(f"Medians of {len(next(iter(rows.values())))} rounds per shape. Targets: paused ≤ 0.5 s on the large shape; create ≤ 1.25× cp -a.")
EOF
rm -f "$rounds" "$samples"
cat "$OUT"
