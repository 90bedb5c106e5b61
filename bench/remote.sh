#!/usr/bin/env bash
# push and pull side by side with rclone, against one moto S3 server on localhost. For each data
# shape (a few large files per node, then tens of thousands of small ones), ROUNDS interleaved
# rounds of:
#   1. a second local snapshot after one simulated suite: how much the local store grows
#      (filesystem mode; the previous round's second snapshot is deleted first);
#   2. first push of a snapshot    vs `rclone sync` of its directory to the same server;
#   3. push of the second snapshot vs `rclone sync` of it onto the first's copy (rclone then
#      sends the changed files whole);
#   4. pull into an empty store    vs `rclone copy` of the snapshot back into an empty folder;
#   5. both snapshots pushed to an empty file:// archive: how much the second grows it.
# Each round uses fresh remote prefixes, store and folders, and alternates which tool goes first,
# so load from other work on a shared machine lands on both tools alike; the report gives medians
# and min–max over the rounds, and ratios of medians.
# Cache: warm for both. The snapshot's files are read from the page cache (they were just
# written; nothing drops caches between runs) and moto serves objects from memory.
#
# Usage: bench/remote.sh [SIZE] [NODES] [SHAPES] [ROUNDS]   (default 1G 4 "large small" 5)
# Needs moto[server] (/opt/stagesnap-moto, scripts/setup.sh), rclone and python3. Writes
# bench/results/remote.md and prints it. Bytes are what went over the wire: stagesnap's own
# count (compressed packs, indexes, snapshot objects) and rclone's stats.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
SIZE=${1:-1G}
NODES=${2:-4}
SHAPES=${3:-large small}
ROUNDS=${4:-5}
WORK=$PWD/bench/work/remote
# One line per measurement: shape step tool round seconds bytes.
SAMPLES=$PWD/bench/work/remote-samples.tsv
OUT=bench/results/remote.md
MOTO=/opt/stagesnap-moto/bin/moto_server
[ -x "$MOTO" ] || MOTO=$(command -v moto_server || true)
[ -n "$MOTO" ] || { echo "bench: moto_server is not installed (scripts/setup.sh)" >&2; exit 3; }
bench_need rclone python3
bench_build

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
# Plain http on localhost; a CA bundle set for other uses makes Debian's rclone refuse to start.
unset AWS_CA_BUNDLE
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$MOTO" -H 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
MOTO_PID=$!
trap 'kill $MOTO_PID 2>/dev/null || true' EXIT
until python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT))" 2>/dev/null; do sleep 0.2; done
ENDPOINT=http://127.0.0.1:$PORT
# rclone's remote "moto", from the environment.
export RCLONE_CONFIG_MOTO_TYPE=s3 RCLONE_CONFIG_MOTO_PROVIDER=Other RCLONE_CONFIG_MOTO_ENDPOINT=$ENDPOINT
export RCLONE_CONFIG_MOTO_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
rclone -q mkdir moto:bench

now() { date +%s.%N; }
# Appends one sample: record SHAPE STEP TOOL ROUND T0 T1 BYTES.
record() {
  python3 -c "import sys; print('\t'.join(sys.argv[1:4] + [sys.argv[4], f'{float(sys.argv[6]) - float(sys.argv[5]):.3f}', sys.argv[7]]))" "$@" >>"$SAMPLES"
}
# One rclone run, recorded with the bytes of its JSON log's final stats: rclone_run STEP ARGS...
rclone_run() {
  local step=$1 t0 t1
  shift
  t0=$(now)
  rclone "$@" --use-json-log --stats 1000h --stats-log-level NOTICE -v 2>"$WORK/rclone.log" >/dev/null
  t1=$(now)
  record "$shape" "$step" rclone "$round" "$t0" "$t1" "$(python3 - "$WORK/rclone.log" <<'PY'
import json, sys
stats = [json.loads(l)["stats"] for l in open(sys.argv[1]) if '"stats"' in l]
print(stats[-1]["bytes"] if stats else 0)
PY
)"
}
# One stagesnap --json run, recorded with one number of its output: snap_run STEP KEY ARGS...
snap_run() {
  local step=$1 key=$2 t0 t1
  shift 2
  t0=$(now)
  "$SNAP" "$@" --json >"$WORK/snap.json"
  t1=$(now)
  record "$shape" "$step" stagesnap "$round" "$t0" "$t1" "$(python3 -c "import json; print(json.load(open('$WORK/snap.json'))['$key'])")"
}
du_b() { du -sb "$1" | cut -f1; }
# Runs the stagesnap and the rclone side of one step, the order alternating with the round.
pair() {
  if [ $((round % 2)) = 1 ]; then "$1"; "$2"; else "$2"; "$1"; fi
}

load_before=$(uptime)
rm -f "$SAMPLES"
for shape in $SHAPES; do
  rm -rf "$WORK"
  mkdir -p "$WORK"
  generated=$("$SAMPLE" generate "$WORK/a" --nodes "$NODES" --size "$SIZE" --shape "$shape" --files 20000)
  "$SAMPLE" generate "$WORK/b" --nodes "$NODES" --size "$SIZE" --shape "$shape" --files 20000 >/dev/null
  cfg_a=$WORK/a/stage-env/stage-env.cfg
  cfg_b=$WORK/b/stage-env/stage-env.cfg
  snaps_a=$WORK/a/testing/snapshots
  snaps_b=$WORK/b/testing/snapshots
  data_bytes=$(du_b "$WORK/a/testing/cache/data")

  "$SNAP" -q -c "$cfg_a" create clean_state >/dev/null
  suite=$("$SAMPLE" suite "$WORK/a")
  round=0
  "$SNAP" -q -c "$cfg_a" create after >/dev/null
  changed=$(python3 - "$snaps_a" <<'PY'
import json, sys
a = {}
for name in ("clean_state", "after"):
    a[name] = {}
    for line in open(f"{sys.argv[1]}/{name}/manifest.jsonl").read().splitlines()[1:]:
        e = json.loads(line)
        if e["type"] == "file":
            a[name][json.dumps(e["path"])] = (e.get("blake3"), e.get("size", 0))
print(sum(s for p, (h, s) in a["after"].items() if a["clean_state"].get(p, (None,))[0] != h))
PY
)
  echo -e "$shape\tmeta\t-\t0\t$data_bytes\t$changed\t$generated\t$suite" >>"$SAMPLES"

  for round in $(seq 1 "$ROUNDS"); do
    echo "bench: $shape shape, round $round of $ROUNDS" >&2
    S3="-s remote=s3://bench/$shape-$round -s remote_endpoint=$ENDPOINT -s auto_cleanup=false"
    A="-q -c $cfg_a $S3"
    B="-q -c $cfg_b $S3"
    RC=moto:bench/rclone-$shape-$round

    "$SNAP" -q -c "$cfg_a" delete after >/dev/null
    store_before=$(du_b "$snaps_a")
    t0=$(now)
    "$SNAP" -q -c "$cfg_a" create after >/dev/null
    t1=$(now)
    record "$shape" local stagesnap "$round" "$t0" "$t1" $(( $(du_b "$snaps_a") - store_before ))

    push1() { snap_run push1 bytes_uploaded $A push clean_state; }
    sync1() { rclone_run push1 sync "$snaps_a/clean_state" "$RC"; }
    pair push1 sync1
    push2() {
      snap_run push2 bytes_uploaded $A push after
      record "$shape" push2-read stagesnap "$round" 0 0 "$(python3 -c "import json; print(json.load(open('$WORK/snap.json'))['bytes_read'])")"
    }
    sync2() { rclone_run push2 sync "$snaps_a/after" "$RC"; }
    pair push2 sync2
    rm -rf "$snaps_b" "$WORK/back"
    pull() { snap_run pull bytes_downloaded $B pull after; }
    copy() { rclone_run pull copy "$RC" "$WORK/back"; }
    pair pull copy

    rm -rf "$WORK/archive"
    mkdir -p "$WORK/archive"
    F="-q -c $cfg_a -s remote=file://$WORK/archive"
    "$SNAP" $F push clean_state >/dev/null
    archive1=$(du_b "$WORK/archive")
    t0=$(now)
    "$SNAP" $F push after >/dev/null
    t1=$(now)
    record "$shape" archive1 stagesnap "$round" 0 0 "$archive1"
    record "$shape" archive2 stagesnap "$round" "$t0" "$t1" $(( $(du_b "$WORK/archive") - archive1 ))

    # Moto keeps every object in memory: drop this round's before the next.
    rclone -q purge "moto:bench/$shape-$round"
    rclone -q purge "$RC"
  done
done
rm -rf "$WORK"

python3 - "$SAMPLES" "$SIZE" "$NODES" "$SHAPES" "$ROUNDS" "$(bench_machine "$PWD")" \
  "$("${MOTO%/*}/pip" show moto 2>/dev/null | awk '/^Version/ {print $2}')" "$(rclone version | head -1)" \
  "$load_before" "$(uptime)" >"$OUT" <<'PY'
import statistics, sys
from collections import defaultdict
samples, size, nodes, shapes, rounds, machine, moto, rclone, load0, load1 = sys.argv[1:]
runs, meta = defaultdict(list), {}
for line in open(samples):
    shape, step, tool, rnd, *rest = line.rstrip("\n").split("\t")
    if step == "meta":
        meta[shape] = rest
    else:
        runs[shape, step, tool].append((float(rest[0]), int(rest[1])))
med = lambda xs: statistics.median(xs)
secs = lambda k: [s for s, _ in runs[k]]
nbytes = lambda k: med([b for _, b in runs[k]])
mib = lambda b: f"{b / 2**20:.1f} MiB"
ratio = lambda a, b: f"{a / b:.2f}" if b else "-"
def spread(k):
    s = secs(k)
    return f"{med(s):.2f} ({min(s):.2f}–{max(s):.2f})"
print("# push and pull vs rclone\n")
print(f'bench/remote.sh {size} {nodes} "{shapes}" {rounds} on {machine}; moto {moto}, {rclone}.')
print(f"{rounds} interleaved rounds (fresh remote prefixes, store and folders each round; the tool going first alternates);")
print("seconds are wall-clock, median (min–max); bytes those sent or received (median); ratios are of medians.")
print("Cache warm for both tools: the snapshot files are read from the page cache, moto serves from memory.\n")
print(f"Load before: `{load0.strip()}`  \nLoad after: `{load1.strip()}`")
for shape in shapes.split():
    data, changed, generated, suite = meta[shape]
    data, changed = int(data), int(changed)
    print(f"\n## {shape} shape\n\n{generated}; then {suite}\n")
    print("| step | stagesnap s | stagesnap bytes | rclone s | rclone bytes | time ratio | bytes ratio |")
    print("|---|---|---|---|---|---|---|")
    for step, label in (("push1", "first push / `rclone sync`"),
                        ("push2", "push after a suite / `rclone sync` onto the first"),
                        ("pull", "pull into an empty store / `rclone copy` back")):
        s, r = (shape, step, "stagesnap"), (shape, step, "rclone")
        print(f"| {label} | {spread(s)} | {mib(nbytes(s))} | {spread(r)} | {mib(nbytes(r))} "
              f"| {ratio(med(secs(s)), med(secs(r)))} | {ratio(nbytes(s), nbytes(r))} |")
    p1, p2 = (shape, "push1", "stagesnap"), (shape, "push2", "stagesnap")
    a2, local = (shape, "archive2", "stagesnap"), (shape, "local", "stagesnap")
    growth = [b for _, b in runs[local]]
    print()
    print(f"- second push vs first: {ratio(nbytes(p2), nbytes(p1))} of the bytes, {ratio(med(secs(p2)), med(secs(p1)))} of the time "
          f"(medians); it read {mib(nbytes((shape, 'push2-read', 'stagesnap')))} of the snapshot's files (the rest unchanged by the manifests).")
    print(f"- file:// archive: {mib(nbytes((shape, 'archive1', 'stagesnap')))} for the first snapshot of {mib(data)} of data; "
          f"the second grew it by {mib(nbytes(a2))} ({ratio(nbytes(a2), data)} of the data) in {spread(a2)} s.")
    print(f"- second local snapshot (filesystem mode): the store grew by {mib(med(growth))} ({mib(min(growth))}–{mib(max(growth))}), "
          f"{ratio(med(growth), changed)} times the {mib(changed)} of files the suite changed; created in {spread(local)} s.")
PY
cat "$OUT"
