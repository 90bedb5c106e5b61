#!/usr/bin/env bash
# What restores and creates cost, side by side with the plain tools, in one hyperfine run per
# question so the numbers in a table compare (this machine is noisy: compare ratios, not runs).
# Two shapes of sample environment (stage-sample): large (7 nodes, a few big files each) and
# small (7 nodes, tens of thousands of small files). For each:
#   on the root disk: create (filesystem, squashfs none) against cp -a and rsync; restore after
#     one simulated suite in every mode and strategy against the plain rsync delta, the
#     original's way (remove the data, then rsync -a) and plain unsquashfs into an empty
#     directory; a restore when nothing changed against a stat walk (find -printf);
#   on a loop-mounted XFS image (reflink=1): reflink create against a real copy (cp -a
#     --reflink=never: coreutils 9 cp clones by itself where it can) and cp -a --reflink=always,
#     and filesystem create; reflink restore against the plain rsync delta on that filesystem.
# Then the ratios the targets are stated in, a markdown table and a chart (PNG, gnuplot).
#
# Usage: bench/speed.sh [RUNS] [SHAPES] [LARGE_SIZE] [SMALL_SIZE] [SMALL_FILES]
#        (default 3 "large small" 3G 1G 50000)
# Needs root (loop mounts; the data is root-owned like a real stage network's), rsync,
# squashfs-tools, xfsprogs, hyperfine, python3 and gnuplot (scripts/setup.sh installs them).
# Writes bench/results/speed.md and bench/results/speed.png and prints the table. The large
# shape takes about ten minutes on a 2-core VM, the small one about as long.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RUNS=${1:-3}
SHAPES=${2:-large small}
LARGE_SIZE=${3:-3G}
SMALL_SIZE=${4:-1G}
SMALL_FILES=${5:-50000}
WORK=$PWD/bench/work/speed
OUT=bench/results/speed.md
CHART=bench/results/speed.png

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (loop mounts)" >&2; exit 1; }
bench_need hyperfine mksquashfs unsquashfs rsync python3 gnuplot mkfs.xfs taskset
bench_build

cleanup() {
  mountpoint -q "$WORK/xfs" 2>/dev/null && umount "$WORK/xfs"
  rm -rf "$WORK"
}
trap cleanup EXIT

# hyperfine with this script's settings; $1 names the JSON file, the rest are its arguments.
timed() {
  local name=$1; shift
  hyperfine --runs "$RUNS" --style basic --export-json "$WORK/$name.json" "$@" >&2
}

# The median seconds of the log event $2 over $RUNS creates run by the command $1.
event_seconds() {
  local i out
  for i in $(seq "$RUNS"); do
    out=$($1 2>&1 >/dev/null)
    grep -o "$2 .*" <<<"$out" | grep -o 'seconds=[0-9.]*' | head -1 | cut -d= -f2
  done | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'
}

bench_shape() {
  local shape=$1 size=$2
  local env=$WORK/$shape
  rm -rf "$env"
  mkdir -p "$env"
  local generated
  generated=$("$SAMPLE" generate "$env" --nodes 7 --size "$size" --shape "$shape" --files "$SMALL_FILES")
  local cfg=$env/stage-env/stage-env.cfg data=$env/testing/cache/data
  local snaps=$env/testing/snapshots
  local s="$SNAP -q -c $cfg -s auto_cleanup=false -s squashfs_compression=none"
  local suite="$SAMPLE suite $env"

  # Create. Each run starts without the snapshot (removing the old one is not timed).
  timed "$shape-create" \
    -p "$s delete fs || true" -n "stagesnap create (filesystem)" "$s -s mode=filesystem create fs" \
    -p "$s delete sq || true" -n "stagesnap create (squashfs)" "$s -s mode=squashfs create sq" \
    -p "rm -rf $WORK/copy" -n "cp -a" "cp -a $data $WORK/copy" \
    -p "rm -rf $WORK/copy" -n "rsync -aHAXS" "rsync -aHAXS --numeric-ids $data/ $WORK/copy/"
  rm -rf "$WORK/copy"
  local manifest create
  manifest=$(event_seconds "$SNAP -c $cfg -s auto_cleanup=false create fs --force" manifest_written)
  create=$(event_seconds "$SNAP -c $cfg -s auto_cleanup=false create fs --force" snapshot_created)

  # Restore after one suite. Plain rsync (which fills holes without -S), plain unsquashfs and
  # the original's way go last; a stagesnap restore then brings the exact state back. Every
  # prepare ends with `sync`: the writeback of what the previous command wrote otherwise lands
  # in whichever command runs next (plain unsquashfs measured 0.9-6.6 s without it).
  local suite_line
  suite_line=$($suite)
  $s restore fs >/dev/null
  local dirty="$suite; sync"
  timed "$shape-restore" \
    -p "$dirty" -n "stagesnap restore (filesystem)" "$s restore fs" \
    -p "$dirty" -n "stagesnap restore (filesystem), one core" "taskset -c 0 $s restore fs" \
    -p "$dirty" -n "stagesnap restore (squashfs mount)" "$s -s squashfs_restore=mount restore sq" \
    -p "$dirty" -n "stagesnap restore (squashfs extract)" "$s -s squashfs_restore=extract restore sq" \
    -p "rm -rf $WORK/empty; sync" -n "plain unsquashfs into an empty dir" "unsquashfs -q -n -d $WORK/empty $snaps/sq/payload/image.sqfs" \
    -p "$dirty" -n "plain rm -rf, then unsquashfs" "rm -rf $data && unsquashfs -q -n -f -d $env/testing/cache $snaps/sq/payload/image.sqfs data" \
    -p "$dirty" -n "plain rsync delta" "rsync -aHAX --numeric-ids --delete $snaps/fs/payload/data/ $data/" \
    -p "$dirty" -n "original's way (rm -rf, rsync -a)" "rm -rf $data && rsync -a $snaps/fs/payload/data/ $data/"
  rm -rf "$WORK/empty"
  $s restore fs >/dev/null
  # A restore when nothing changed against a stat walk: milliseconds each on the large shape,
  # so without a shell (hyperfine's correction for its startup is about as large as the
  # command) and ten times as many runs.
  sync
  hyperfine -N --warmup 3 --runs $((RUNS * 10)) --style basic --export-json "$WORK/$shape-idle.json" \
    -n "stagesnap restore, nothing changed" "$s restore fs" \
    -n "stat walk (find -printf)" "find $data -printf '%s %T@ %m %U %G\n'" >&2

  # Reflink, on a loop-mounted XFS image big enough for the data, a copy and the churn.
  local bytes
  bytes=$(du -sb "$data" | cut -f1)
  local image=$WORK/xfs.img mnt=$WORK/xfs
  rm -f "$image"
  truncate -s $((bytes * 5 + (2 << 30))) "$image"
  mkfs.xfs -q -m reflink=1 "$image"
  mkdir -p "$mnt"
  mount -o loop "$image" "$mnt"
  local xenv=$mnt/env
  "$SAMPLE" generate "$xenv" --nodes 7 --size "$size" --shape "$shape" --files "$SMALL_FILES" >/dev/null
  local xcfg=$xenv/stage-env/stage-env.cfg xdata=$xenv/testing/cache/data
  local xs="$SNAP -q -c $xcfg -s auto_cleanup=false"
  local xsuite="$SAMPLE suite $xenv"
  timed "$shape-xfs-create" \
    -p "$xs delete rl || true" -n "stagesnap create (reflink)" "$xs -s mode=reflink create rl" \
    -p "$xs delete fs || true" -n "stagesnap create (filesystem)" "$xs -s mode=filesystem create fs" \
    -p "rm -rf $mnt/copy" -n "cp -a --reflink=never" "cp -a --reflink=never $xdata $mnt/copy" \
    -p "rm -rf $mnt/copy" -n "cp -a --reflink=always" "cp -a --reflink=always $xdata $mnt/copy"
  rm -rf "$mnt/copy"
  $xs delete fs >/dev/null
  $xsuite >/dev/null
  $xs restore rl >/dev/null
  timed "$shape-xfs-restore" \
    -p "$xsuite" -n "stagesnap restore (reflink)" "$xs restore rl" \
    -p "true" -n "stagesnap restore (reflink), nothing changed" "$xs restore rl" \
    -p "$xsuite" -n "plain rsync delta" "rsync -aHAX --numeric-ids --delete $xenv/testing/snapshots/rl/payload/data/ $xdata/"
  umount "$mnt"
  rm -f "$image"

  python3 bench/speed.py summarize "$WORK" "$shape" "$generated" "$suite_line" "$manifest" "$create" >>"$OUT"
  rm -rf "$env"
}

mkdir -p "$WORK" "$(dirname "$OUT")"
{
  echo "# Speed: restore and create, side by side with the plain tools"
  echo
  echo "$(date -u +%Y-%m-%d), bench/speed.sh $RUNS \"$SHAPES\" $LARGE_SIZE $SMALL_SIZE $SMALL_FILES."
  echo "Machine: $(bench_machine "$PWD/bench"). $(rsync --version | head -1 | tr -s ' ');" \
    "$(mksquashfs -version 2>&1 | head -1); $(hyperfine --version)."
  echo "Medians of $RUNS runs (hyperfine, warm page cache); each table is one hyperfine run, so"
  echo "its rows compare. Restores run after one simulated suite (\`stage-sample suite\`, run by"
  echo "hyperfine's --prepare and not timed), each prepare ending with \`sync\`. Creates start"
  echo "without the snapshot. A restore when nothing changed and the stat walk it is compared"
  echo "with take milliseconds: they run $((RUNS * 10)) times each, without a shell."
} >"$OUT"
for shape in $SHAPES; do
  case $shape in
    large) bench_shape large "$LARGE_SIZE" ;;
    small) bench_shape small "$SMALL_SIZE" ;;
    *) echo "bench: unknown shape $shape" >&2; exit 2 ;;
  esac
done
python3 bench/speed.py chart "$WORK" "$CHART" $SHAPES
echo >>"$OUT"
echo "![restore and create times]($(basename "$CHART"))" >>"$OUT"
cat "$OUT"
