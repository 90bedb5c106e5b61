#!/usr/bin/env python3
"""Tables, target ratios and the chart of bench/speed.sh, from hyperfine's JSON exports.

  speed.py summarize WORK SHAPE GENERATED SUITE MANIFEST_S CREATE_S   (markdown on stdout)
  speed.py chart WORK PNG SHAPE...                                      (gnuplot PNG)
"""

import json
import subprocess
import sys


def results(work, name):
    with open(f"{work}/{name}.json") as f:
        return {r["command"]: r for r in json.load(f)["results"]}


def median(r):
    return r["median"]


def table(title, runs, base_name, digits=3):
    base = median(runs[base_name])
    print(f"\n{title}\n")
    print(f"| method | median (s) | min–max (s) | × {base_name} |")
    print("|---|---|---|---|")
    for name, r in runs.items():
        m, lo, hi = median(r), r["min"], r["max"]
        print(f"| {name} | {m:.{digits}f} | {lo:.{digits}f}–{hi:.{digits}f} | {m / base:.2f} |")


def target(label, ratio, limit, at_most, applies=True):
    """A table row; `applies` is False where the issue states the target for another shape."""
    met = ratio <= limit if at_most else ratio >= limit
    sign = "≤" if at_most else "≥"
    if not applies:
        return f"| {label} | {ratio:.2f} | ({sign} {limit} on the large shape) | – |"
    return f"| {label} | {ratio:.2f} | {sign} {limit} | {'yes' if met else '**no**'} |"


def summarize(work, shape, generated, suite, manifest_s, create_s):
    create, restore = results(work, f"{shape}-create"), results(work, f"{shape}-restore")
    idle = results(work, f"{shape}-idle")
    xcreate, xrestore = results(work, f"{shape}-xfs-create"), results(work, f"{shape}-xfs-restore")
    data = generated.strip().split(": ", 1)[1]
    print(f"\n## Shape {shape}: {data}\n")
    print(f"One suite: {suite.strip().removeprefix('suite: ')}.")
    table("Restore after a suite, root disk:", restore, "plain rsync delta")
    runs = len(next(iter(idle.values()))["times"])
    table(
        f"Restore when nothing changed, root disk ({runs} runs, no shell):",
        idle,
        "stat walk (find -printf)",
        digits=4,
    )
    table("Create, root disk:", create, "cp -a")
    manifest, created = float(manifest_s), float(create_s)
    print(
        f"\nOf a filesystem create ({created:.2f} s, median of the runs after the table), "
        f"the manifest (walk, blake3 of every file, write) took {manifest:.2f} s: "
        f"{100 * manifest / created:.0f} %."
    )
    table("Create, XFS loop image (reflink=1):", xcreate, "cp -a --reflink=never")
    table("Restore after a suite, XFS loop image:", xrestore, "plain rsync delta")

    m = {k: median(v) for k, v in restore.items()}
    i = {k: median(v) for k, v in idle.items()}
    x = {k: median(v) for k, v in xrestore.items()}
    c = {k: median(v) for k, v in xcreate.items()}
    fs = m["stagesnap restore (filesystem)"]
    rows = [
        target("filesystem restore ÷ plain rsync delta", fs / m["plain rsync delta"], 1.10, True),
        target("original's way ÷ filesystem restore", m["original's way (rm -rf, rsync -a)"] / fs, 5, False),
        target(
            "restore when nothing changed ÷ stat walk",
            i["stagesnap restore, nothing changed"] / i["stat walk (find -printf)"],
            2,
            True,
        ),
        target("squashfs mount restore ÷ plain rsync delta", m["stagesnap restore (squashfs mount)"] / m["plain rsync delta"], 1.2, True),
        target(
            "squashfs extract restore ÷ plain unsquashfs",
            m["stagesnap restore (squashfs extract)"] / m["plain unsquashfs into an empty dir"],
            1.1,
            True,
        ),
        target("manifest ÷ filesystem create", manifest / created, 0.25, True),
        target(
            "XFS: plain rsync delta ÷ reflink restore",
            x["plain rsync delta"] / x["stagesnap restore (reflink)"],
            10,
            False,
            shape == "large",
        ),
        target(
            "XFS: cp -a --reflink=never ÷ reflink create",
            c["cp -a --reflink=never"] / c["stagesnap create (reflink)"],
            20,
            False,
            shape == "large",
        ),
        target(
            "XFS: reflink create ÷ filesystem create",
            c["stagesnap create (reflink)"] / c["stagesnap create (filesystem)"],
            1,
            True,
        ),
    ]
    print(f"\nTargets ({shape}), ratios of the medians above:\n")
    print("| ratio | measured | target | met |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    with open(f"{work}/chart-{shape}.dat", "w") as f:
        for prefix, runs in (("", restore), ("XFS: ", xrestore), ("create: ", create), ("XFS create: ", xcreate)):
            for name, r in runs.items():
                label = (prefix + name).replace('"', "'")
                f.write(f'"{label}" {max(median(r), 0.001):.4f}\n')


def chart(work, png, shapes):
    panels = []
    for shape in shapes:
        panels.append(
            f'set title "{shape} shape: seconds, log scale (medians)"\n'
            f'plot "{work}/chart-{shape}.dat" using 0:2:xtic(1) with boxes notitle, '
            f'"" using 0:2:(sprintf("%.3g", $2)) with labels offset 0,0.7 notitle\n'
        )
    script = (
        f'set terminal pngcairo size 1400,{560 * len(shapes)} font "sans,9"\n'
        f'set output "{png}"\n'
        f"set multiplot layout {len(shapes)},1\n"
        "set style fill solid 0.7\nset boxwidth 0.7\nset logscale y\nset yrange [0.001:*]\n"
        "set xtics rotate by -35 left\nset bmargin 12\nset rmargin 16\nset grid ytics\n"
        + "".join(panels)
        + "unset multiplot\n"
    )
    subprocess.run(["gnuplot"], input=script.encode(), check=True)


if __name__ == "__main__":
    if sys.argv[1] == "summarize":
        summarize(*sys.argv[2:8])
    elif sys.argv[1] == "chart":
        chart(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(f"usage: {sys.argv[0]} summarize|chart …")
