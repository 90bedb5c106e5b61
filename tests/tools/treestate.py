#!/usr/bin/env python3
"""Print a canonical JSON manifest of a directory tree.

Usage: python3 treestate.py DIR [--no-content]

Tests use it as an oracle that shares no code with stagesnap: two trees are equal for a
restore when their manifests are equal. The output is one JSON object mapping each path
(relative to DIR, the root itself as ".") to a record of:

  type      file | dir | symlink | fifo | socket | char | block
  mode      st_mode & 0o7777
  uid, gid
  mtime_ns  lstat mtime of every entry, directories included (a good restore restores them)
  size      files only
  sha256    files only, unless --no-content
  sparse    files only: allocated blocks * 512 < size
  target    symlinks only: the link text
  rdev      char/block devices only: [major, minor]
  xattrs    {name: hex value} of the entry itself (not a symlink's target), ACLs included
  hardlink  non-directories whose inode has two or more names inside DIR: the first of
            those paths (in sorted order), the same for every member of the group

Inode numbers and atimes are left out: a correct restore may change them.
Names are rendered from their bytes: valid UTF-8 as is, a backslash as "\\\\", any other
byte as "\\xNN", so non-UTF-8 names stay distinct. Keys are sorted (JSON sort_keys).
Only the standard library is used.
"""

import hashlib
import json
import os
import stat
import sys

TYPES = (
    (stat.S_ISREG, "file"),
    (stat.S_ISDIR, "dir"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "char"),
    (stat.S_ISBLK, "block"),
)


def render(name: bytes) -> str:
    """Injective text form of a byte string (see module docstring)."""
    return name.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def kind(mode: int) -> str:
    for test, name in TYPES:
        if test(mode):
            return name
    return "unknown"


def sha256(path: bytes) -> str:
    digest = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def xattrs(path: bytes) -> dict:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        # Filesystems or entry types without xattr support have none.
        return {}
    out = {}
    for name in sorted(names):
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue  # removed between list and get
        out[render(os.fsencode(name))] = value.hex()
    return out


def walk(root: bytes) -> list:
    """(relative path, lstat) of `root` and everything below it, without following symlinks,
    sorted by path bytes. Iterative, so depth is not bounded by Python's recursion limit."""
    out = []
    stack = [b"."]
    while stack:
        rel = stack.pop()
        full = root if rel == b"." else os.path.join(root, rel)
        st = os.lstat(full)
        out.append((rel, st))
        if stat.S_ISDIR(st.st_mode):
            stack.extend(name if rel == b"." else rel + b"/" + name for name in os.listdir(full))
    out.sort(key=lambda e: e[0])
    return out


def manifest(root: bytes, content: bool) -> dict:
    entries = walk(root)

    groups = {}
    for rel, st in entries:
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            groups.setdefault((st.st_dev, st.st_ino), []).append(rel)

    result = {}
    for rel, st in entries:
        full = root if rel == b"." else os.path.join(root, rel)
        t = kind(st.st_mode)
        rec = {
            "type": t,
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns,
            "xattrs": xattrs(full),
        }
        if t == "file":
            rec["size"] = st.st_size
            rec["sparse"] = st.st_blocks * 512 < st.st_size
            if content:
                rec["sha256"] = sha256(full)
        elif t == "symlink":
            rec["target"] = render(os.readlink(full))
        elif t in ("char", "block"):
            rec["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
        members = groups.get((st.st_dev, st.st_ino), [])
        if t != "dir" and len(members) > 1:
            rec["hardlink"] = render(members[0])
        result[render(rel)] = rec
    return result


def main(argv: list) -> int:
    args = [a for a in argv if a != "--no-content"]
    if len(args) != 1 or args[0].startswith("-"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    root = os.fsencode(args[0])
    if not os.path.isdir(root):
        print(f"treestate: not a directory: {args[0]}", file=sys.stderr)
        return 2
    json.dump(manifest(root, "--no-content" not in argv), sys.stdout, sort_keys=True, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
