"""Objects of a prelinked image that nothing alive refers to once a
workload ran: what a normal import would have freed and the image keeps
(on pages a PIE or 3.11 process wrote).

    PYCDSMODE=SHARE PYCDSARCHIVE=A PY bench/dead_objects.py 'import boto3'

Walks every object reachable from gc.get_objects() and sys.modules (code
objects through their constants, names, tables and variable names), then
the code of each module served from an archive (a fresh copy from
pycds.served_code: run-once code is copied per request), and sums, per
image area and type, the bytes of the image objects only the latter
reach (sizes from sys.getsizeof, rounded to 8; KiB).
"""
import gc
import sys
import types

import pycds
from image_use import image_mappings


def area_of(areas, op):
    for k, (lo, hi) in enumerate(areas):
        if lo <= id(op) < hi:
            return k
    return None


def children(op):
    if isinstance(op, types.CodeType):
        return (op.co_consts, op.co_names, op.co_filename, op.co_name,
                op.co_qualname, op.co_linetable, op.co_exceptiontable,
                *op.co_varnames, *op.co_cellvars, *op.co_freevars)
    if isinstance(op, (tuple, frozenset)):
        return op
    if isinstance(op, (str, bytes, int, float, complex)):
        return ()
    return gc.get_referents(op)


def reach(roots, seen):
    stack = [op for op in roots if id(op) not in seen]
    seen.update(id(op) for op in stack)
    found = []
    while stack:
        op = stack.pop()
        found.append(op)
        for child in children(op):
            if id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    return found


def main():
    exec(compile(sys.argv[1], "<workload>", "exec"), {"__name__": "__main__"})
    areas = image_mappings()
    alive = set()
    reach(list(gc.get_objects()) + list(sys.modules.values()), alive)
    served = []
    for module in list(sys.modules.values()):
        loader = getattr(getattr(module, "__spec__", None), "loader", None)
        code = pycds.served_code(loader) if loader is not None else None
        if code is not None:
            served.append(code)
    dead = {}
    for op in reach(served, set(alive)):
        k = area_of(areas, op)
        if k is not None:
            key = (k, type(op).__name__)
            dead[key] = dead.get(key, 0) + (sys.getsizeof(op) + 7) // 8 * 8
    print("%d modules served; image objects no longer referenced, KiB:"
          % len(served))
    for (k, tp), n in sorted(dead.items()):
        print("  area at %#x  %-10s %8.1f" % (areas[k][0], tp, n / 1024))
    print("  total%25.1f" % (sum(dead.values()) / 1024))


if __name__ == "__main__":
    main()
