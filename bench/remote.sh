#!/usr/bin/env bash
# push and pull side by side with rclone, against one moto S3 server on localhost. For each data
# shape (a few large files per node, then tens of thousands of small ones), one run of each:
#   1. first push of a snapshot    vs `rclone sync` of its directory to the same server;
#   2. push after one simulated suite (a second snapshot) vs `rclone sync` of that one onto
#      the first's copy (rclone then sends the changed files whole);
#   3. pull into an empty store    vs `rclone copy` of the snapshot back into an empty folder;
#   4. the second snapshot pushed to a file:// archive: how much the archive grows;
#   5. a second local snapshot: how much the local store grows (filesystem mode).
#
# Usage: bench/remote.sh [SIZE] [NODES] [SHAPES]   (default 1G 4 "large small")
# Needs moto[server] (/opt/stagesnap-moto, scripts/setup.sh), rclone and python3. Writes
# bench/results/remote.md and prints it. Bytes are what went over the wire: stagesnap's own
# count (compressed packs, indexes, snapshot objects) and rclone's stats.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
SIZE=${1:-1G}
NODES=${2:-4}
SHAPES=${3:-large small}
WORK=$PWD/bench/work/remote
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
rclone mkdir moto:bench

now() { date +%s.%N; }
# Seconds and bytes of one rclone run, from its JSON log's final stats: "SECONDS BYTES".
rclone_run() {
  local t0 t1
  t0=$(now)
  rclone "$@" --use-json-log --stats 1000h --stats-log-level NOTICE -v 2>"$WORK/rclone.log" >/dev/null
  t1=$(now)
  python3 - "$t0" "$t1" "$WORK/rclone.log" <<'PY'
import json, sys
stats = [json.loads(l)["stats"] for l in open(sys.argv[3]) if '"stats"' in l]
print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f} {stats[-1]['bytes'] if stats else 0}")
PY
}
# Seconds and one number of a stagesnap --json run: "SECONDS VALUE".
snap_run() {
  local key=$1 t0 t1
  shift
  t0=$(now)
  "$SNAP" "$@" --json >"$WORK/snap.json"
  t1=$(now)
  python3 -c "import json,sys; d=json.load(open('$WORK/snap.json')); print(f'{$t1-$t0:.2f} {d[\"$key\"]}')"
}
du_b() { du -sb "$1" | cut -f1; }

echo "# push and pull vs rclone" >"$OUT"
{
  echo
  echo "bench/remote.sh $SIZE $NODES \"$SHAPES\" on $(bench_machine "$PWD"); moto $("${MOTO%/*}/pip" show moto 2>/dev/null | awk '/^Version/ {print $2}'), $(rclone version | head -1)."
  echo "One run each; seconds are wall-clock, bytes those sent or received."
} >>"$OUT"

for shape in $SHAPES; do
  rm -rf "$WORK"
  mkdir -p "$WORK"
  generated=$("$SAMPLE" generate "$WORK/a" --nodes "$NODES" --size "$SIZE" --shape "$shape" --files 20000)
  "$SAMPLE" generate "$WORK/b" --nodes "$NODES" --size "$SIZE" --shape "$shape" --files 20000 >/dev/null
  cfg_a=$WORK/a/stage-env/stage-env.cfg
  cfg_b=$WORK/b/stage-env/stage-env.cfg
  S3="-s remote=s3://bench/$shape -s remote_endpoint=$ENDPOINT -s auto_cleanup=false"
  A="-q -c $cfg_a $S3"
  B="-q -c $cfg_b $S3"
  snaps_a=$WORK/a/testing/snapshots
  data_bytes=$(du_b "$WORK/a/testing/cache/data")

  "$SNAP" $A create clean_state
  read -r push1_s push1_b < <(snap_run bytes_uploaded $A push clean_state)
  read -r rsync1_s rsync1_b < <(rclone_run sync "$snaps_a/clean_state" "moto:bench/rclone-$shape/snap")

  store_before=$(du_b "$snaps_a")
  suite=$("$SAMPLE" suite "$WORK/a")
  "$SNAP" $A create after
  store_growth=$(( $(du_b "$snaps_a") - store_before ))
  changed=$(python3 - "$snaps_a" <<'PY'
import json, sys
sys.path.insert(0, "")
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
  read -r push2_s push2_b < <(snap_run bytes_uploaded $A push after)
  push2_read=$(python3 -c "import json; print(json.load(open('$WORK/snap.json'))['bytes_read'])")
  read -r rsync2_s rsync2_b < <(rclone_run sync "$snaps_a/after" "moto:bench/rclone-$shape/snap")

  read -r pull_s pull_b < <(snap_run bytes_downloaded $B pull after)
  rm -rf "$WORK/back"
  read -r copy_s copy_b < <(rclone_run copy "moto:bench/rclone-$shape/snap" "$WORK/back")

  mkdir -p "$WORK/archive"
  F="-q -c $cfg_a -s remote=file://$WORK/archive"
  "$SNAP" $F push clean_state >/dev/null
  archive1=$(du_b "$WORK/archive")
  "$SNAP" $F push after >/dev/null
  archive_growth=$(( $(du_b "$WORK/archive") - archive1 ))

  python3 - "$shape" "$generated" "$suite" "$data_bytes" "$changed" "$store_growth" \
    "$push1_s" "$push1_b" "$rsync1_s" "$rsync1_b" "$push2_s" "$push2_b" "$rsync2_s" "$rsync2_b" \
    "$pull_s" "$pull_b" "$copy_s" "$copy_b" "$archive1" "$archive_growth" "$push2_read" >>"$OUT" <<'PY'
import sys
(shape, generated, suite, data, changed, growth, p1s, p1b, r1s, r1b, p2s, p2b, r2s, r2b,
 ps, pb, cs, cb, a1, ag, p2r) = sys.argv[1:]
mib = lambda b: f"{int(b) / 2**20:.1f} MiB"
ratio = lambda a, b: f"{float(a) / float(b):.2f}" if float(b) else "-"
print(f"\n## {shape} shape\n\n{generated}; then {suite}\n")
print("| step | stagesnap s | stagesnap bytes | rclone s | rclone bytes | time ratio | bytes ratio |")
print("|---|---|---|---|---|---|---|")
print(f"| first push / `rclone sync` | {p1s} | {mib(p1b)} | {r1s} | {mib(r1b)} | {ratio(p1s, r1s)} | {ratio(p1b, r1b)} |")
print(f"| push after a suite / `rclone sync` onto the first | {p2s} | {mib(p2b)} | {r2s} | {mib(r2b)} | {ratio(p2s, r2s)} | {ratio(p2b, r2b)} |")
print(f"| pull into an empty store / `rclone copy` back | {ps} | {mib(pb)} | {cs} | {mib(cb)} | {ratio(ps, cs)} | {ratio(pb, cb)} |")
print()
print(f"- second push vs first: {ratio(p2b, p1b)} of the bytes, {ratio(p2s, p1s)} of the time; it read {mib(p2r)} of the snapshot's files (the rest unchanged by the manifests).")
print(f"- file:// archive: {mib(a1)} for the first snapshot of {mib(data)} of data; the second grew it by {mib(ag)} ({ratio(ag, data)} of the data).")
print(f"- second local snapshot (filesystem mode): the store grew by {mib(growth)}, {ratio(growth, changed)} times the {mib(changed)} of files the suite changed.")
PY
done
cat "$OUT"
