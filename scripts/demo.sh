#!/usr/bin/env bash
# The main job on a sample environment generated on the spot: snapshot the clean state,
# let a simulated test suite dirty it, restore it, and prove the restore exact.
#   scripts/demo.sh [--nodes N] [--size SIZE] [--mode filesystem|squashfs|...] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=7 size=500M mode=filesystem keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) nodes=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --mode) mode=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--nodes N] [--size SIZE] [--mode MODE] [--keep]" >&2; exit 2 ;;
    esac
done

scripts/setup.sh
cargo build --release --locked --quiet -p stagesnap -p stage-sample
bin=$PWD/target/release
root=$(mktemp -d /tmp/stagesnap-demo.XXXXXX)
[ "$keep" = 1 ] || trap 'rm -rf "$root"' EXIT

step() { printf '\n== %s\n' "$*" >&2; }

step "generate a sample stage environment ($nodes nodes, $size) in $root"
"$bin/stage-sample" generate "$root" --nodes "$nodes" --size "$size" --mode "$mode"
cd "$root/stage-env"
export PATH="$bin:$PATH"

step "stagesnap doctor"
stagesnap doctor

step "stagesnap create (the clean state, once)"
stagesnap create
before=$(python3 "$OLDPWD/tests/tools/treestate.py" "$root/testing/cache/data" | sha256sum)

for suite in 1 2 3; do
    step "test suite $suite dirties the data"
    stage-sample suite "$root" --seed "$suite"
    step "stagesnap restore (before the next suite)"
    stagesnap restore
    after=$(python3 "$OLDPWD/tests/tools/treestate.py" "$root/testing/cache/data" | sha256sum)
    if [ "$before" != "$after" ]; then
        echo "demo: the restored data differs from the snapshot" >&2
        exit 1
    fi
    echo "restored tree is identical to the clean state (types, modes, owners, times, xattrs, content)" >&2
done

step "stagesnap list"
stagesnap list
[ "$keep" = 1 ] && echo "environment kept in $root" >&2
exit 0
