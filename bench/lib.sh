# Shared helpers for the bench/*.sh scripts. Source it from the repository root:
#   cd "$(dirname "$0")/.." && source bench/lib.sh
# Benchmarks run on demand, never from the tests; their work trees go to bench/work (gitignored).

# Fails (exit 3) naming the first missing program.
bench_need() {
  local p
  for p in "$@"; do
    command -v "$p" >/dev/null 2>&1 || {
      echo "bench: $p is not installed (scripts/setup.sh installs what the benchmarks use)" >&2
      exit 3
    }
  done
}

# Fails (exit 3) when the docker image $1 (scripts/setup.sh builds it) is missing.
bench_need_image() {
  docker image inspect "$1" >/dev/null 2>&1 || {
    echo "bench: image $1 is missing: run scripts/setup.sh" >&2
    exit 3
  }
}

# Names the bench's containers ($PREFIX-1 … $PREFIX-$NODES) in NAMES, and defines `cleanup`,
# which removes them and $WORK, run on exit. PREFIX gets the bench's pid, so two benches on one
# machine never remove each other's containers.
bench_containers() {
  PREFIX=$PREFIX-$$
  NAMES=$(seq -f "$PREFIX-%g" "$NODES" | xargs)
  trap cleanup EXIT
}
cleanup() {
  # shellcheck disable=SC2086
  docker rm -f $NAMES >/dev/null 2>&1 || true
  rm -rf "$WORK"
}

# Builds the release binaries of stagesnap and of the dev tool stage-sample (crates/stage-sample);
# sets BIN (their folder), SNAP (stagesnap) and SAMPLE (stage-sample).
bench_build() {
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
  cargo build --release --quiet -p stagesnap -p stage-sample
  BIN=$(cd "$CARGO_TARGET_DIR/release" && pwd)
  SNAP=$BIN/stagesnap
  SAMPLE=$BIN/stage-sample
}

# One line describing the machine and the disk holding $1, for result files.
bench_machine() {
  local dev fs kind journal
  read -r dev fs < <(df -T "$1" | awk 'NR == 2 {print $1, $2}')
  kind="block device"
  case "$(basename "$dev")" in
    vd*) kind="virtio block device" ;;
    nvme*) kind="NVMe device" ;;
    sd*) kind="SCSI/SATA device" ;;
  esac
  journal=""
  if [ "$fs" = ext4 ]; then
    if ls /proc/fs/jbd2 2>/dev/null | grep -q "^$(basename "$dev")-"; then
      journal=" with a journal"
    else
      journal=" without a journal"
    fi
  fi
  printf '%s cores (%s), %s GiB RAM, %s%s on %s (%s), Linux %s' \
    "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
    "$(free -g | awk '/^Mem:/ {print $2}')" "$fs" "$journal" "$dev" "$kind" "$(uname -r)"
}
