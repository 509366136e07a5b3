"""TRACE: the list of modules a run loaded from files, and its file format.

A list is UTF-8 text: a header line, then one module a line,
``name<TAB>origin<TAB>package`` (package is 0 or 1).  A tracer appends
each module to ``LIST.journal`` as it finds it, so a process that never
reaches ``atexit`` (SIGTERM, ``os._exit``, a pool worker) is recorded too;
at exit it merges the list, the journal and what it loaded under an
exclusive lock on the journal, replaces the list atomically and empties
the journal.  Concurrent tracers leave a valid list holding every module
any of them saw.
"""
import atexit
import fcntl
import os
import sys
# importlib.machinery holds these same objects, but importing it loads
# modules a normal start-up does not: they would be traced.
from _frozen_importlib_external import (PathFinder, SourceFileLoader,
                                        SourcelessFileLoader)

from ._regular_file import open_regular

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
        if entry is not None and _found.get(name) != entry:
            _found[name] = entry
            if _journal is not None:
                _journal.append({name: entry})
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


def _lines(modules):
    """The list's lines for ``modules``; an entry the format cannot hold
    (a tab or newline in its name or origin, a path that is not UTF-8:
    CPython's test_import makes one) is left out, so that it never stops
    the rest of the list from being written."""
    for name in sorted(modules):
        origin, package = modules[name]
        line = "%s\t%s\t%d\n" % (name, origin, package)
        if line.count("\t") != 2 or line.count("\n") != 1:
            continue
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            continue
        yield line


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


def _parse_journal(data):
    """name -> (origin, package) of the journal's whole records.  Each
    append starts with a newline, so a record cut short (a full disk)
    stays on a line of its own, which is skipped."""
    modules = {}
    for line in data.decode("utf-8", "surrogateescape").split("\n"):
        parts = line.split("\t")
        if (len(parts) == 3 and parts[2] in ("0", "1")
                and os.path.isabs(parts[1])):
            modules[parts[0]] = (parts[1], parts[2] == "1")
    return modules


def _read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def read_list(path):
    """name -> (origin, package) of the list and its journal (the records
    of tracers not merged yet); raises ValueError on a malformed list."""
    try:
        with open(path, encoding="utf-8") as f:
            modules = _parse_list(f, path)
    except FileNotFoundError:
        if not os.path.exists(path + ".journal"):
            raise
        modules = {}
    try:
        fd = open_regular(path + ".journal", os.O_RDONLY)
    except FileNotFoundError:
        return modules
    try:
        modules.update(_parse_journal(_read_all(fd)))
    finally:
        os.close(fd)
    return modules


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
            f.writelines(_lines(modules))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_list(path, modules):
    """Merge the list at ``path``, its journal and ``modules`` into the
    list, atomically, and empty the journal."""
    journal = open_regular(path + ".journal", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(journal, fcntl.LOCK_EX)
        merged = {}
        try:
            fd = open_regular(path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        else:
            with open(fd, encoding="utf-8") as f:
                merged.update(_parse_list(f, path))
        merged.update(_parse_journal(_read_all(journal)))
        merged.update(modules)
        _replace(path, merged)
        # Appenders hold a shared lock while they write: none is lost.
        os.ftruncate(journal, 0)
    finally:
        os.close(journal)


class _Journal:
    """Appends the modules this process finds to ``LIST.journal`` at once:
    whatever way the process ends, they are recorded."""

    def __init__(self, list_path, warn=True):
        self.path = list_path + ".journal"
        self.warn = warn
        self.off = False            # refused: warned once, TRACE is off
        self.merging = False        # this process holds the exclusive lock

    def append(self, modules):
        if self.off or self.merging:
            return
        # Opened for each append: a program may close every descriptor
        # (daemons do), and a forked child must not share the parent's
        # lock.
        lines = "".join(_lines(modules))
        if not lines:
            return
        data = ("\n" + lines).encode("utf-8")
        try:
            fd = open_regular(self.path, os.O_WRONLY | os.O_APPEND
                              | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            self.fail(e)

    def fail(self, error):
        if not self.off:
            self.off = True
            if not self.warn:
                return
            print("pycds: warning: cannot write module list %s: %s"
                  % (self.path[:-len(".journal")], error), file=sys.stderr)


_journal = None


def record(list_path, warn=True):
    """Note in ``LIST.journal`` each module this process loads from a file,
    as it is found, and take in what earlier processes noted there but
    never merged (they ended by SIGTERM, ``os._exit``...): those count as
    loaded by this one, and are not noted again.  ``warn``: say once on
    stderr when the journal cannot be written.  Returns the journal."""
    global _journal
    journal = _Journal(list_path, warn)
    try:
        fd = open_regular(journal.path, os.O_RDONLY)
    except OSError:
        earlier = {}            # none yet; a refused one: append says so
    else:
        try:
            earlier = _parse_journal(_read_all(fd))
        finally:
            os.close(fd)
    _found.update(earlier)
    journal.append({name: entry for name, entry in loaded_modules().items()
                    if earlier.get(name) != entry})
    _journal = journal
    meta = sys.meta_path
    if PathFinder in meta and _Recorder not in meta:
        meta.insert(meta.index(PathFinder), _Recorder)
    return journal


def clear_journal(list_path):
    """Empty ``LIST.journal``: what it held is merged."""
    fd = open_regular(list_path + ".journal", os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def trace(list_path):
    """Record the modules this process loads into ``list_path``: each as
    it is found, and all of them at exit."""
    list_path = os.path.abspath(list_path)
    journal = record(list_path)

    def write():
        if journal.off:
            return
        journal.merging = True
        try:
            write_list(list_path, loaded_modules())
        except Exception as e:
            journal.fail(e)

    atexit.register(write)
