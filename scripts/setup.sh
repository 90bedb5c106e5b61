#!/usr/bin/env bash
# Installs what stagesnap's tests, demo and benchmarks use on Debian, starts a docker daemon
# if none answers, and builds the local test image (no registry is needed).
# Idempotent: run it as often as you like. Needs root (or sudo) for apt and dockerd.
set -euo pipefail

# gcc and libc6-dev: the linker Rust uses, and the C compiler that builds the bundled zstd and
# liblzma (squashfs image reading).
packages=(gcc libc6-dev rsync squashfs-tools docker.io busybox-static xfsprogs btrfs-progs hyperfine attr acl python3 python3-venv util-linux e2fsprogs gnuplot-nox rclone)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install a Rust toolchain >= 1.89 (https://rustup.rs) and run again" >&2
    exit 3
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A docker daemon: systemd may not run here, so start dockerd by hand when none answers.
if ! docker info >/dev/null 2>&1; then
    echo "setup: starting dockerd" >&2
    $SUDO sh -c 'nohup dockerd >/var/log/stagesnap-dockerd.log 2>&1 &'
    for _ in $(seq 1 100); do
        docker info >/dev/null 2>&1 && break
        sleep 0.2
    done
    if ! docker info >/dev/null 2>&1; then
        echo "setup: dockerd did not come up; see /var/log/stagesnap-dockerd.log" >&2
        tail -20 /var/log/stagesnap-dockerd.log >&2 || true
        exit 1
    fi
fi

# moto_server, the S3 server that tests/remote.rs and bench/remote.sh start on localhost, in a
# venv of its own (Debian's python refuses pip installs into the system, PEP 668).
moto=/opt/stagesnap-moto
if [ ! -x "$moto/bin/moto_server" ]; then
    echo "setup: installing moto[server] into $moto" >&2
    $SUDO python3 -m venv "$moto"
    $SUDO "$moto/bin/pip" install -q 'moto[server]'
fi

# The test image: a busybox rootfs imported as an image, since no registry is reachable.
image=stagesnap-test:busybox
if ! docker image inspect "$image" >/dev/null 2>&1; then
    echo "setup: building $image" >&2
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,tmp,proc,sys,dev,etc,opt/cellframe-node/var}
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in $("$rootfs/bin/busybox" --list); do
        [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
    echo 'root:x:0:' >"$rootfs/etc/group"
    tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/sh"]' - "$image" >/dev/null
fi
echo "setup: ready (moto $("$moto/bin/pip" show moto | awk '/^Version/ {print $2}'), rsync $(rsync --version | head -1 | awk '{print $3}'), $(mksquashfs -version 2>&1 | head -1), docker $(docker version --format '{{.Server.Version}}'))" >&2
