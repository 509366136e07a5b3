"""TRACE: the list of modules a run loaded from files, and its file format.

A list is UTF-8 text: a header line, then one module a line,
``name<TAB>origin<TAB>package`` (package is 0 or 1).  Writing merges with
what the file already holds, under an exclusive lock, and replaces the
file atomically, so concurrent tracers leave a valid list holding every
module any of them saw.
"""
import atexit
import fcntl
import os
import sys
# importlib.machinery holds these same objects, but importing it loads
# modules a normal start-up does not: they would be traced.
from _frozen_importlib_external import (PathFinder, SourceFileLoader,
                                        SourcelessFileLoader)

HEADER = "# pycds module list v1"

# name -> (origin, package) of what the recorder saw found, for modules
# that leave sys.modules before exit (regrtest unloads its test modules).
_found = {}


def _entry(name, spec):
    """(origin, package) if spec is a module normal import loads from a
    .py/.pyc file under that name, else None."""
    # Programs edit specs (CPython's test_import sets origin to 0): only a
    # str origin is a file normal import would load again.
    origin = getattr(spec, "origin", None)
    if not isinstance(origin, str) or not getattr(spec, "has_location",
                                                  False):
        return None
    # An alias (sys.modules["x"] = other_module) is not a module that
    # normal import of that name would load.
    if getattr(spec, "name", None) != name:
        return None
    # Modules served by pycds have these loaders too: a SHARE run traces.
    if not isinstance(getattr(spec, "loader", None),
                      (SourceFileLoader, SourcelessFileLoader)):
        return None
    if not origin.endswith((".py", ".pyc")):
        return None
    # What normal import decides, not what the module made of its spec
    # afterwards (six marks itself a package).
    origin = os.path.abspath(origin)
    return origin, os.path.basename(origin).startswith("__init__.")


class _Recorder:
    """Stands in front of PathFinder and notes what it finds."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        spec = PathFinder.find_spec(name, path, target)
        entry = _entry(name, spec)
        if entry is not None:
            _found[name] = entry
        return spec


def loaded_modules():
    """name -> (origin, package) of the modules loaded from .py/.pyc files:
    those in sys.modules, and those the recorder saw found."""
    found = dict(_found)
    for name, module in list(sys.modules.items()):
        entry = _entry(name, getattr(module, "__spec__", None))
        if entry is not None:
            found[name] = entry
    return found


def read_list(path):
    """name -> (origin, package); raises ValueError on a malformed list."""
    modules = {}
    with open(path, encoding="utf-8") as f:
        first = f.readline().rstrip("\n")
        if first != HEADER:
            raise ValueError("%s: not a pycds module list" % path)
        for lineno, line in enumerate(f, 2):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 3 or parts[2] not in ("0", "1"):
                raise ValueError("%s:%d: malformed line" % (path, lineno))
            modules[parts[0]] = (parts[1], parts[2] == "1")
    return modules


def write_list(path, modules):
    """Merge ``modules`` into the list at ``path``, atomically."""
    lock_path = path + ".lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = {}
        try:
            merged.update(read_list(path))
        except FileNotFoundError:
            pass
        merged.update(modules)
        tmp = "%s.tmp%d" % (path, os.getpid())
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(HEADER + "\n")
            for name in sorted(merged):
                origin, package = merged[name]
                f.write("%s\t%s\t%d\n" % (name, origin, package))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def trace(list_path):
    """Record the modules this process loads into ``list_path`` at exit."""
    list_path = os.path.abspath(list_path)
    meta = sys.meta_path
    if PathFinder in meta and _Recorder not in meta:
        meta.insert(meta.index(PathFinder), _Recorder)

    def write():
        try:
            write_list(list_path, loaded_modules())
        except Exception as e:
            print("pycds: warning: cannot write module list %s: %s"
                  % (list_path, e), file=sys.stderr)

    atexit.register(write)
