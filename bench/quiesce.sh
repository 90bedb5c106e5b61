#!/usr/bin/env bash
# What a restore under running node containers costs with the default quiesce (auto: kill,
# restore, start all, wait until they run), against the floor for restarting the containers
# the same way (a bare parallel `docker kill` + `docker start`) and the harness's way (`docker
# stop` all, a restore with quiesce = none, `docker start` all, one after the other), in one
# hyperfine run. 7 containers of the local busybox image (scripts/setup.sh builds it), each
# with its node directory of a generated sample environment bind-mounted, logging five times
# a second like a node. Every run starts after one simulated suite (`stage-sample suite`,
# hyperfine's --prepare, not timed, ending with `sync`).
#
# Usage: bench/quiesce.sh [RUNS] [SIZE] [SHAPE]   (default 10 3G large)
# Needs root (the data is root-owned like a real stage network's), a running dockerd, curl,
# hyperfine and python3. Writes bench/results/quiesce.md and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RUNS=${1:-10}
SIZE=${2:-3G}
SHAPE=${3:-large}
NODES=7
WORK=$PWD/bench/work/quiesce
OUT=bench/results/quiesce.md
IMAGE=stagesnap-test:busybox
PREFIX=stagesnap-bench-q

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (the node data is root-owned)" >&2; exit 1; }
bench_need hyperfine docker curl python3
bench_need_image "$IMAGE"
bench_build
bench_containers
cleanup
mkdir -p "$WORK" "$(dirname "$OUT")"

env=$WORK/env
generated=$("$SAMPLE" generate "$env" --nodes "$NODES" --size "$SIZE" --shape "$SHAPE")
data=$env/testing/cache/data
for n in $(seq "$NODES"); do
  docker run -d --init --name "$PREFIX-$n" -v "$data/node$n:/opt/cellframe-node/var" "$IMAGE" \
    sh -c 'while true; do echo tick >> /opt/cellframe-node/var/log/cellframe-node.log; sleep 0.2; done' \
    >/dev/null
done

s="$SNAP -q -c $env/stage-env/stage-env.cfg -s auto_cleanup=false -s container_name=$PREFIX-{n}"
suite="$SAMPLE suite $env"
$s create q
suite_line=$($suite)
$s restore q

# The floors, as scripts: one docker CLI process per container, all at once; and the same
# through the daemon's socket (curl), which stagesnap speaks.
cat >"$WORK/kill-start-cli.sh" <<EOF
for c in $NAMES; do docker kill \$c >/dev/null & done; wait
for c in $NAMES; do docker start \$c >/dev/null & done; wait
EOF
cat >"$WORK/kill-start-api.sh" <<EOF
api() { curl -sf --unix-socket /var/run/docker.sock -X POST "http://docker/containers/\$1/\$2" >/dev/null; }
for c in $NAMES; do api \$c kill & done; wait
for c in $NAMES; do api \$c start & done; wait
EOF
harness="docker stop $NAMES >/dev/null && $s -s quiesce=none restore q && docker start $NAMES >/dev/null"

hyperfine --runs "$RUNS" --style basic --export-json "$WORK/quiesce.json" \
  -p "$suite; sync" -n "stagesnap restore (quiesce = auto)" "$s restore q" \
  -p "sync" -n "stagesnap restore (quiesce = auto), nothing changed" "$s restore q" \
  -p "$suite; sync" -n "bare parallel docker kill + docker start (CLI)" "bash $WORK/kill-start-cli.sh" \
  -p "$suite; sync" -n "bare parallel kill + start (API socket, curl)" "bash $WORK/kill-start-api.sh" \
  -p "$suite; sync" -n "harness: docker stop all, restore (quiesce = none), docker start all" "$harness" >&2

# The same three ways again, interleaved round by round (this machine is shared, and its load
# drifts over the minutes hyperfine spends on one command), each after a suite, with phases:
# stagesnap's own (its quiesce_phases debug event) and the harness's, timed around its steps.
now() { date +%s.%N; }
for i in $(seq "$RUNS"); do
  $suite >/dev/null; sync
  t0=$(now)
  $SNAP -v -c "$env/stage-env/stage-env.cfg" -s auto_cleanup=false -s "container_name=$PREFIX-{n}" restore q 2>"$WORK/log" >/dev/null
  t1=$(now)
  echo "auto total=$(echo "$t1 - $t0" | bc) $(grep -o 'quiesce_phases .*' "$WORK/log")"
  $suite >/dev/null; sync
  t0=$(now)
  bash "$WORK/kill-start-cli.sh"
  t1=$(now)
  echo "floor total=$(echo "$t1 - $t0" | bc)"
  $suite >/dev/null; sync
  t0=$(now)
  # shellcheck disable=SC2086
  docker stop $NAMES >/dev/null
  t1=$(now)
  $s -s quiesce=none restore q >/dev/null
  t2=$(now)
  # shellcheck disable=SC2086
  docker start $NAMES >/dev/null
  t3=$(now)
  echo "harness total=$(echo "$t3 - $t0" | bc) quiesce=$(echo "$t1 - $t0" | bc) work=$(echo "$t2 - $t1" | bc) resume=$(echo "$t3 - $t2" | bc)"
done >"$WORK/phases.txt"

# What the floor is made of, through the daemon's socket: for one container and for all at once,
# how long until no process is left in the container's cgroup (cgroup.events on v2, cgroup.procs
# on v1), until docker answers the kill (it then has torn down the network and mounts), and how
# long a start takes; and the harness's start, one container after another.
# shellcheck disable=SC2086
python3 - "$RUNS" $NAMES >"$WORK/floor.txt" <<'EOF'
import json, os, socket, statistics, sys, threading, time

def api(method, path):
    s = socket.socket(socket.AF_UNIX)
    s.connect("/var/run/docker.sock")
    s.sendall(f"{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n".encode())
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    return reply.split(b"\r\n\r\n", 1)[1]

def populated(name):
    c = json.loads(api("GET", f"/containers/{name}/json"))
    line = next(l for l in open(f"/proc/{c['State']['Pid']}/cgroup") if c["Id"] in l)
    hierarchy, controllers, path = line.strip().split(":", 2)
    if not controllers:
        d = next(r + path for r in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified") if os.path.exists(r + path + "/cgroup.events"))
        return lambda: "populated 1" in open(d + "/cgroup.events").read()
    d = "/sys/fs/cgroup/" + controllers.replace("name=", "") + path
    return lambda: bool(open(d + "/cgroup.procs").read().strip())

def at_once(names, verb, watch):
    """Seconds until the last answer, and until the last cgroup is empty (watch)."""
    probes = [populated(n) for n in names] if watch else []
    answered, gone = [], []
    t0 = time.time()
    def ask(n):
        api("POST", f"/containers/{n}/{verb}")
        answered.append(time.time() - t0)
    def poll(p):
        while True:
            try:
                if not p():
                    break
            except OSError:  # the group removed: empty
                break
            time.sleep(0.002)
        gone.append(time.time() - t0)
    threads = [threading.Thread(target=ask, args=(n,)) for n in names]
    threads += [threading.Thread(target=poll, args=(p,)) for p in probes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(answered), max(gone) if gone else None

runs, names = int(sys.argv[1]), sys.argv[2:]
rows = {}
def add(key, v):
    rows.setdefault(key, []).append(v)
for _ in range(runs):
    answered, gone = at_once(names[:1], "kill", True)
    add("one: processes gone", gone); add("one: kill answered", answered)
    time.sleep(0.3)
    add("one: start", at_once(names[:1], "start", False)[0])
    time.sleep(0.3)
    answered, gone = at_once(names, "kill", True)
    add(f"all {len(names)} at once: processes gone", gone); add(f"all {len(names)} at once: kill answered", answered)
    time.sleep(0.3)
    add(f"all {len(names)} at once: start", at_once(names, "start", False)[0])
    time.sleep(0.3)
    at_once(names, "kill", False)
    time.sleep(0.3)
    t0 = time.time()
    for n in names:
        api("POST", f"/containers/{n}/start")
    add(f"all {len(names)}, one after another: start", time.time() - t0)
    time.sleep(0.3)
for key, v in rows.items():
    print(f"| {key} | {statistics.median(v):.3f} | {min(v):.3f}–{max(v):.3f} |")
EOF

python3 - "$WORK/quiesce.json" "$WORK/phases.txt" "$WORK/floor.txt" >"$OUT" <<EOF
import json, re, statistics, sys
results = json.load(open(sys.argv[1]))["results"]
med = [statistics.median(r["times"]) for r in results]
rows = [(r["command"], m, min(r["times"]), max(r["times"])) for r, m in zip(results, med)]
phases = {}
for line in open(sys.argv[2]):
    who = line.split()[0]
    for k, v in re.findall(r"(total|quiesce|work|resume)=([0-9.]+)", line):
        phases.setdefault(who, {}).setdefault(k, []).append(float(v))
print("# Quiesce: a restore under running node containers")
print()
print("$(date -u +%Y-%m-%d), bench/quiesce.sh $RUNS $SIZE $SHAPE.")
print("Machine: $(bench_machine "$PWD/bench"). $(docker version --format 'Docker {{.Server.Version}}'); $(hyperfine --version).")
print("$NODES containers of $IMAGE (\`--init\`, a shell loop appending to the node log five times a")
print("second), each with its node directory bind-mounted. Sample: $generated.")
print("Each run follows one simulated suite ($suite_line), run by hyperfine's --prepare")
print("(not timed, ending with \`sync\`). Medians of $RUNS runs, one hyperfine run, so the rows compare.")
print()
print("| method | median (s) | min–max (s) |")
print("|---|---|---|")
for name, m, lo, hi in rows:
    print(f"| {name} | {m:.3f} | {lo:.3f}–{hi:.3f} |")
print()
print(f"- stagesnap restore ÷ bare parallel docker kill + start (CLI): **{med[0] / med[2]:.2f}×** (target ≤ 1.25)")
print(f"- stagesnap restore ÷ bare parallel kill + start (API socket): {med[0] / med[3]:.2f}×")
print(f"- stagesnap restore ÷ the harness's way: **{med[0] / med[4]:.2f}×** (target ≤ 0.6)")
print(f"- stagesnap restore with nothing to restore ÷ bare parallel docker kill + start (CLI): {med[1] / med[2]:.2f}× (what stagesnap adds to the floor besides restoring)")
print()
print("The same, interleaved: $RUNS rounds of (suite, stagesnap restore, suite, bare kill + start,")
print("suite, harness), so that the machine's drifting load falls on all three alike. Medians")
print("(seconds); stagesnap's phases from its \`quiesce_phases\` debug event (stop = kill all until")
print("no process is left in any container, nodes being restored meanwhile; restore = until the")
print("restore and its check end, while docker tears the containers down; start = from then until")
print("each runs, each started once docker has answered its kill), the harness's timed around its")
print("three commands.")
print()
print("| way | total | stop | restore | start |")
print("|---|---|---|---|---|")
cell = lambda p, k: f"{statistics.median(p[k]):.3f}" if k in p else "–"
for who, label in (("auto", "stagesnap restore (quiesce = auto)"), ("floor", "bare parallel docker kill + docker start (CLI)"), ("harness", "harness")):
    p = phases.get(who, {})
    print(f"| {label} | " + " | ".join(cell(p, k) for k in ("total", "quiesce", "work", "resume")) + " |")
t = {who: statistics.median(p["total"]) for who, p in phases.items()}
print()
print(f"- interleaved: stagesnap restore ÷ bare kill + start: **{t['auto'] / t['floor']:.2f}×**; ÷ the harness's way: **{t['auto'] / t['harness']:.2f}×**")
print()
print("What the floor is made of: the docker daemon's kill and start through its socket, for one")
print("container and for all $NODES at once, with the moment no process is left in the containers'")
print("cgroups; the harness's start, one after another. Medians of $RUNS rounds (seconds).")
print()
print("| step | median | min–max |")
print("|---|---|---|")
print(open(sys.argv[3]).read(), end="")
EOF
cat "$OUT"
