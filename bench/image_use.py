"""What the pages of a prelinked image that a process touches and writes
hold: run-once code (module and class bodies, and what only they refer
to) against functions' code and the constants that stay.

Run in a process that uses an archive in place (the workload is run
first, then the image is read):

    PYTHONPATH=BUILDDIR PY bench/image_use.py ARCHIVE 'import boto3'

Prints JSON: per category, bytes of the objects of the modules served in
place, and pages of the image touched (present) and written (private
copies: /proc/self/pagemap, a present page that is no longer the file's),
a page counted under each category that has bytes on it.  Categories:
"once" (code objects without CO_NEWLOCALS, and the tuples and bytes that
only such code refers to: what normal import frees once a body ran),
"functions" (the other code objects), "data" (what stays: constants,
names, line tables of functions).  Strings of the strings area are
"strings".
"""
import json
import struct
import sys

CO_NEWLOCALS = 0x2
IMAGE_LO, IMAGE_HI = 0x200000000000, 0x200000000000 + 512 * (64 << 30)
PAGE = 4096


def image_mappings():
    """(start, end) of each mapping of this process's prelinked images (their
    areas), in address order."""
    maps = []
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if IMAGE_LO <= lo < IMAGE_HI:
                maps.append((lo, hi))
    return maps


def image_pages():
    """{page address: (present, written)} of the image's mappings, and
    the mappings, in address order (its areas)."""
    maps = image_mappings()
    pages = {}
    with open("/proc/self/pagemap", "rb") as f:
        for lo, hi in maps:
            f.seek(lo // PAGE * 8)
            data = f.read((hi - lo) // PAGE * 8)
            for k, (word,) in enumerate(struct.iter_unpack("<Q", data)):
                present = bool(word >> 63 & 1)
                file_page = bool(word >> 61 & 1)
                pages[lo + k * PAGE] = (present, present and not file_page)
    return pages, maps


def children(op):
    if isinstance(op, tuple):
        return list(op)
    if hasattr(op, "co_consts"):
        return [op.co_consts, op.co_names, op.co_exceptiontable,
                op.co_filename, op.co_name, op.co_qualname, op.co_linetable]
    return []


def in_image(op):
    return IMAGE_LO <= id(op) < IMAGE_HI


def size_of(op):
    return sys.getsizeof(op) - (16 if isinstance(op, tuple) else 0) \
        if not hasattr(op, "co_consts") else sys.getsizeof(op)


def classify(roots):
    """{id: (object, category)} of the image objects below roots."""
    order, seen, refs = [], {}, {}
    stack = [(r, False) for r in roots]
    while stack:                    # post-order, iteratively
        op, done = stack.pop()
        if done:
            if in_image(op):
                order.append(op)
            continue
        if id(op) in seen:
            continue
        seen[id(op)] = op
        stack.append((op, True))
        for c in children(op):
            # A module's code may be a copy on the heap: what it refers
            # to in the image is what counts.
            refs.setdefault(id(c), []).append(id(op))
            stack.append((c, False))
    cat = {}
    for op in reversed(order):      # parents before children
        strings = isinstance(op, str)
        code = hasattr(op, "co_consts")
        parents = refs.get(id(op), [])
        if strings:
            c = "strings"
        elif code:
            c = "functions" if op.co_flags & CO_NEWLOCALS else "once"
        elif isinstance(op, (tuple, bytes)) and parents and all(
                p not in cat or cat[p][1] == "once" for p in parents):
            c = "once"
        else:
            c = "data"
        cat[id(op)] = (op, c)
    return cat


def main():
    archive_path, code = sys.argv[1], sys.argv[2]
    import pycds
    pycds.share(archive_path)
    exec(code, {})
    pages, maps = image_pages()   # before this reads anything
    archive = pycds._layers.STACK.finders[0].archive
    roots = []
    for name in archive.names():
        module = sys.modules.get(name)
        loader = getattr(getattr(module, "__spec__", None), "loader", None)
        if pycds.served_code(loader) is not None:
            roots.append(archive.get(name))
    cat = classify(roots)
    out = {"modules": len(roots), "bytes": {}, "pages": {}}
    per_page = {}
    for op, c in cat.values():
        a, n = id(op), size_of(op)
        out["bytes"][c] = out["bytes"].get(c, 0) + n
        for p in range(a // PAGE * PAGE, a + n, PAGE):
            per_page.setdefault(p, set()).add(c)
    for p, cats in per_page.items():
        present, written = pages.get(p, (False, False))
        key = "+".join(sorted(cats))
        t = out["pages"].setdefault(key, [0, 0, 0])
        t[0] += 1
        t[1] += present
        t[2] += written
    out["image"] = {"present": sum(v[0] for v in pages.values()),
                    "written": sum(v[1] for v in pages.values())}
    out["areas"] = [[sum(pages[p][k] for p in range(lo, hi, PAGE))
                     for k in (0, 1)] for lo, hi in maps]
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
