#!/usr/bin/env python3
"""Fails on an import that runs up the product crate's layers.

The layers are the `// layer NAME: module module …` lines of src/lib.rs, bottom first. A
module may use its own layer and those below: `use crate::x…`, `crate::x::` and the names
inside `use crate::{…}` all count; `#[cfg(test)] mod tests` blocks do not. Modules under
src/commands/ may not use one another (`super::x`): shared steps belong in ops. Only src/sys.rs
calls libc (`libc::`), the one module whose unsafe system calls carry their reasons.
With --graph it prints each module's imports and the modules that import each other in a
circle, for the figures in ARCHITECTURE.md.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SRC = os.path.join(ROOT, "src")


def layers():
    order, count = {}, 0
    with open(os.path.join(SRC, "lib.rs")) as f:
        for line in f:
            m = re.match(r"\s*//\s*layer\s+(\w+):(.*)$", line)
            if m:
                order.update({module: (count, m.group(1)) for module in m.group(2).split()})
                count += 1
    return order


def code(path):
    text = open(path).read()
    cut = re.search(r"#\[cfg\(test\)\]\s*mod tests\b", text)
    if cut:
        text = text[: cut.start()]
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def used(text, names):
    found = set(re.findall(r"\bcrate::(\w+)", text))
    for group in re.findall(r"\buse\s+crate::\{([^;]*)\};", text, re.S):
        found |= set(re.findall(r"(?:^|[,{])\s*(\w+)", group))
    return found & names


def main():
    order = layers()
    names = set(order)
    problems, edges = [], {m: set() for m in names}
    declared = {f[:-3] for f in os.listdir(SRC) if f.endswith(".rs")} | {
        d for d in os.listdir(SRC) if os.path.isdir(os.path.join(SRC, d))
    }
    for module in sorted(declared - names - {"lib", "main"}):
        problems.append(f"src/{module}: not in any layer of src/lib.rs")
    for dirpath, _, files in os.walk(SRC):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, SRC)
            module = rel.split("/")[0].removesuffix(".rs")
            if module not in names:
                continue
            text = code(path)
            for other in sorted(used(text, names) - {module}):
                edges[module].add(other)
                if order[other][0] > order[module][0]:
                    problems.append(
                        f"src/{rel}: {order[module][1]} module {module} uses {other}, of the higher layer {order[other][1]}"
                    )
            if rel != "sys.rs" and re.search(r"\blibc::", text):
                problems.append(f"src/{rel}: calls libc; system calls belong in src/sys.rs")
            if module == "commands" and f != "mod.rs":
                siblings = {s[:-3] for s in os.listdir(dirpath) if s.endswith(".rs")} - {"mod"}
                for other in sorted(set(re.findall(r"\bsuper::(\w+)", text)) & siblings):
                    problems.append(f"src/{rel}: command module uses command module {other}")
    if "--graph" in sys.argv:
        for m in sorted(edges, key=lambda m: order[m]):
            print(f"{order[m][1]:>8} {m}: {' '.join(sorted(edges[m]))}")
        print("in a circle:", " ".join(sorted(circled(edges))) or "none")
    for p in problems:
        print(p, file=sys.stderr)
    sys.exit(1 if problems else 0)


def circled(edges):
    """Modules in a strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.update(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


main()
