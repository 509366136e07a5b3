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

from ._regular_file import open_lock, open_regular

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


def _parse_list(f, path):
    first = f.readline().rstrip("\n")
    if first != HEADER:
        raise ValueError("%s: not a pycds module list" % path)
    modules = {}
    for lineno, line in enumerate(f, 2):
        line = line.rstrip("\n")
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) != 3 or parts[2] not in ("0", "1"):
            raise ValueError("%s:%d: malformed line" % (path, lineno))
        modules[parts[0]] = (parts[1], parts[2] == "1")
    return modules


def read_list(path):
    """name -> (origin, package); raises ValueError on a malformed list."""
    with open(path, encoding="utf-8") as f:
        return _parse_list(f, path)


def _replace(path, modules):
    """Write the list at ``path`` by rename from a new temporary file."""
    # A random name taken with O_EXCL: no one can plant a link at it in
    # advance.  Not tempfile: importing it at exit would load modules the
    # program did not.
    tmp = "%s.tmp%s" % (path, os.urandom(8).hex())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                 0o666)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(HEADER + "\n")
            for name in sorted(modules):
                origin, package = modules[name]
                f.write("%s\t%s\t%d\n" % (name, origin, package))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_list(path, modules):
    """Merge ``modules`` into the list at ``path``, atomically."""
    with open_lock(path + ".lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = {}
        try:
            fd = open_regular(path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        else:
            with open(fd, encoding="utf-8") as f:
                merged.update(_parse_list(f, path))
        merged.update(modules)
        _replace(path, merged)


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
