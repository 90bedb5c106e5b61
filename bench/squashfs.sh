#!/usr/bin/env bash
# squashfs mode side by side with filesystem mode and with the plain tools. For each data shape
# (a few large files per node, then tens of thousands of small ones), one hyperfine run per
# question, so the numbers in a table compare (this machine is noisy: compare ratios, not runs):
#   1. create: filesystem mode and squashfs with each compressor the installed build has; the
#      stored size and its ratio to the data;
#   2. restore after one simulated suite: filesystem mode, squashfs `extract` and `mount` with
#      each compressor, plain `rsync -aHAX --numeric-ids --delete` of the same trees, and plain
#      `unsquashfs` of each image into an empty directory.
#
# Usage: bench/squashfs.sh [SIZE] [NODES] [RUNS] [SHAPES]   (default 1G 7 3 "large small")
# Needs root (loop mounts; the data is root-owned like a real stage network's), squashfs-tools,
# rsync, hyperfine and python3. Writes bench/results/squashfs.md and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
SIZE=${1:-1G}
NODES=${2:-7}
RUNS=${3:-3}
SHAPES=${4:-large small}
WORK=$PWD/bench/work/squashfs
OUT=bench/results/squashfs.md

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (loop mounts)" >&2; exit 1; }
bench_need hyperfine mksquashfs unsquashfs rsync python3
bench_build

COMPRESSORS=(none)
help=$(mksquashfs -help 2>&1 || true)
for c in gzip lzo xz zstd lz4; do
  grep -Eq "^[[:space:]]+$c( \(default\))?$" <<<"$help" && COMPRESSORS+=("$c")
done

bench_shape() {
  local shape=$1
  rm -rf "$WORK"
  mkdir -p "$WORK"
  local generated
  generated=$("$SAMPLE" generate "$WORK/env" --nodes "$NODES" --size "$SIZE" --shape "$shape" --files 20000)
  local cfg=$WORK/env/stage-env/stage-env.cfg data=$WORK/env/testing/cache/data
  local snaps=$WORK/env/testing/snapshots
  # -q: only errors; no pruning while the benchmark keeps one snapshot per compressor.
  local s="$SNAP -q -c $cfg -s auto_cleanup=false"

  # 1. create
  local create=(-n filesystem "$s -s mode=filesystem create fs --force")
  for c in "${COMPRESSORS[@]}"; do
    create+=(-n "squashfs $c" "$s -s mode=squashfs -s squashfs_compression=$c create sq-$c --force")
  done
  hyperfine --runs "$RUNS" --style basic --export-json "$WORK/create.json" "${create[@]}" >&2
  $s list --json >"$WORK/list.json"

  # 2. restore after a suite. Each timed command starts from the same dirty state: the clean
  # tree (every restore brings it back) plus one suite, written back to disk (`sync`: else
  # the writeback of one command lands in the next). Plain rsync goes after the stagesnap
  # restores (without -S it fills holes); unsquashfs into an empty dir leaves the data alone.
  # The plain way to do what the mount restore does: mount the image, rsync the delta.
  local suite_line
  suite_line=$("$SAMPLE" suite "$WORK/env")
  $s restore fs >/dev/null
  local dirty="$SAMPLE suite $WORK/env; sync"
  local plain_mounted=zstd
  [[ " ${COMPRESSORS[*]} " == *" zstd "* ]] || plain_mounted=none
  mkdir -p "$WORK/mnt"
  local restore=(-p "$dirty" -n "filesystem" "$s restore fs")
  for c in "${COMPRESSORS[@]}"; do
    restore+=(-p "$dirty" -n "squashfs extract $c" "$s -s squashfs_restore=extract restore sq-$c")
  done
  for c in "${COMPRESSORS[@]}"; do
    restore+=(-p "$dirty" -n "squashfs mount $c" "$s -s squashfs_restore=mount restore sq-$c")
  done
  restore+=(-p "$dirty" -n "plain rsync" "rsync -aHAX --numeric-ids --delete $snaps/fs/payload/data/ $data/")
  restore+=(-p "$dirty" -n "plain mount + rsync $plain_mounted"
    "mount -o loop,ro $snaps/sq-$plain_mounted/payload/image.sqfs $WORK/mnt && rsync -aHAX --numeric-ids --delete $WORK/mnt/data/ $data/; umount $WORK/mnt")
  for c in "${COMPRESSORS[@]}"; do
    restore+=(-p "rm -rf $WORK/empty; sync" -n "plain unsquashfs $c" "unsquashfs -q -n -d $WORK/empty $snaps/sq-$c/payload/image.sqfs")
  done
  hyperfine --runs "$RUNS" --style basic --export-json "$WORK/restore.json" "${restore[@]}" >&2

  python3 - "$WORK" "$shape" "$generated" "$suite_line" >>"$OUT" <<'PY'
import json, sys
work, shape, generated, suite = sys.argv[1:]
def results(name):
    return {r["command"]: r for r in json.load(open(f"{work}/{name}.json"))["results"]}
create, restore = results("create"), results("restore")
snaps = {s["name"]: s for s in json.load(open(f"{work}/list.json"))["snapshots"]}
mib = lambda b: f"{b / 2**20:,.0f} MiB"
sec = lambda r: f"{r['median']:.2f}"
base = restore["filesystem"]["median"]
data = generated.strip().split(": ", 1)[1]
print(f"\n## Shape {shape}: {data}\n")
print(f"One suite: {suite.strip().removeprefix('suite: ')}.\n")
print("Restore after a suite:\n")
print("| method | median (s) | min–max (s) | × filesystem mode |")
print("|---|---|---|---|")
for name, r in restore.items():
    print(f"| {name} | {sec(r)} | {r['min']:.2f}–{r['max']:.2f} | {r['median'] / base:.2f} |")
print("\nPer compressor (create and restore medians in seconds):\n")
print("| compressor | create | stored | stored / data | restore extract | restore mount | plain unsquashfs |")
print("|---|---|---|---|---|---|---|")
fs = snaps["fs"]
print(f"| filesystem mode (rsync copy) | {sec(create['filesystem'])} | {mib(fs['stored_bytes'])} | {fs['ratio']:.2f} | – | {sec(restore['filesystem'])} (delta) | – |")
for name in create:
    if name.startswith("squashfs "):
        c = name.split()[1]
        s = snaps[f"sq-{c}"]
        print(
            f"| {c} | {sec(create[name])} | {mib(s['stored_bytes'])} | {s['ratio']:.2f} | "
            f"{sec(restore[f'squashfs extract {c}'])} | {sec(restore[f'squashfs mount {c}'])} | "
            f"{sec(restore[f'plain unsquashfs {c}'])} |"
        )
PY
  rm -rf "$WORK"
}

mkdir -p "$(dirname "$OUT")"
{
  echo "# squashfs benchmark"
  echo
  echo "$(date -u +%Y-%m-%d), $(bench_machine "$PWD/bench"). $(mksquashfs -version 2>&1 | head -1);" \
    "$(rsync --version | head -1 | tr -s ' '). $NODES nodes, $SIZE of data per shape; medians of" \
    "$RUNS runs (hyperfine), warm page cache; each table is one hyperfine run."
} >"$OUT"
for shape in $SHAPES; do
  bench_shape "$shape"
done
cat "$OUT"
