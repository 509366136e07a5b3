"""TRACE: the list of modules a run loaded from files, and its file format.

A list is UTF-8 text: a header line, then one module a line,
``name<TAB>origin<TAB>package[<TAB>ran]`` (package is 0 or 1; ran, the
code objects of the module that ran, as ``firstlineno:qualname`` words
separated by spaces; a v1 list has no ran field).  A tracer appends
each module to ``LIST.journal`` as it finds it, so a process that never
reaches ``atexit`` (SIGTERM, ``os._exit``, a pool worker) is recorded too;
at exit it merges the list, the journal and what it loaded under an
exclusive lock on the journal, replaces the list atomically and empties
the journal.  Concurrent tracers leave a valid list holding every module
any of them saw.
"""
import atexit
import fcntl
import gc
import os
import sys
# importlib.machinery holds these same objects, but importing it loads
# modules a normal start-up does not: they would be traced.
from _frozen_importlib_external import (PathFinder, SourceFileLoader,
                                        SourcelessFileLoader)

from ._regular_file import open_regular

HEADER = "# pycds module list v2"
HEADERS = ("# pycds module list v1", HEADER)

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


def _code_wrote(code):
    """Whether the interpreter wrote code's bytecode as it ran it (adaptive
    counters, specialised instructions): not what a code object that never
    ran holds."""
    try:
        return code._co_code_adaptive != code.replace()._co_code_adaptive
    except (AttributeError, TypeError, ValueError):
        return False


def ran_code(modules):
    """name -> set of ``firstlineno:qualname`` of the code objects of
    ``modules`` (name -> (origin, package)) that ran in this process and
    were written as they ran: of the functions alive now, and the code
    nested in theirs.  An image keeps that code apart from the code that
    did not run, whose pages then stay shared (docs/FORMAT.md, "Areas")."""
    by_file = {origin: name for name, (origin, _) in modules.items()}
    function_type, code_type = type(_code_wrote), type(_code_wrote.__code__)
    ran, seen = {}, set()
    for f in gc.get_objects():
        # The type first: any other object's attributes may run code
        # (six's lazy modules import on getattr).
        if type(f) is not function_type:
            continue
        code = f.__code__
        if type(code) is not code_type or code.co_filename not in by_file:
            continue
        name, stack = by_file[code.co_filename], [code]
        while stack:
            code = stack.pop()
            if id(code) in seen:
                continue
            seen.add(id(code))
            word = "%d:%s" % (code.co_firstlineno, code.co_qualname)
            # A qualname is a program's to change: one that is not a word
            # is left out, not the module.
            if _code_wrote(code) and len(word.split()) == 1:
                ran.setdefault(name, set()).add(word)
            stack.extend(c for c in code.co_consts if type(c) is code_type)
    return ran


def _lines(modules, ran=None):
    """The list's lines for ``modules`` and the code of theirs that ran
    (``ran_code``); an entry the format cannot hold (a tab or newline in
    its name or origin, a path that is not UTF-8: CPython's test_import
    makes one) is left out, so that it never stops the rest of the list
    from being written."""
    ran = ran or {}
    for name in sorted(modules):
        origin, package = modules[name]
        line = "%s\t%s\t%d" % (name, origin, package)
        if line.count("\t") != 2 or "\n" in line:
            continue
        if ran.get(name):
            line += "\t" + " ".join(sorted(ran[name]))
        line += "\n"
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            continue
        yield line


def _parse_list(f, path):
    """(modules, ran) of a list: name -> (origin, package), and name ->
    set of the words of its code that ran."""
    first = f.readline().rstrip("\n")
    if first not in HEADERS:
        raise ValueError("%s: not a pycds module list" % path)
    modules, ran = {}, {}
    for lineno, line in enumerate(f, 2):
        line = line.rstrip("\n")
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) not in (3, 4) or parts[2] not in ("0", "1"):
            raise ValueError("%s:%d: malformed line" % (path, lineno))
        modules[parts[0]] = (parts[1], parts[2] == "1")
        if len(parts) == 4:
            ran[parts[0]] = set(parts[3].split())
    return modules, ran


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


def read_trace(path):
    """(modules, ran) of the list and its journal (the records of tracers
    not merged yet): name -> (origin, package), and name -> set of the
    ``firstlineno:qualname`` of its code that ran; raises ValueError on a
    malformed list."""
    try:
        with open(path, encoding="utf-8") as f:
            modules, ran = _parse_list(f, path)
    except FileNotFoundError:
        if not os.path.exists(path + ".journal"):
            raise
        modules, ran = {}, {}
    try:
        fd = open_regular(path + ".journal", os.O_RDONLY)
    except FileNotFoundError:
        return modules, ran
    try:
        modules.update(_parse_journal(_read_all(fd)))
    finally:
        os.close(fd)
    return modules, ran


def _replace(path, modules, ran):
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
            f.writelines(_lines(modules, ran))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_list(path, modules, ran):
    """Merge the list at ``path``, its journal, ``modules`` and ``ran``
    (``ran_code``) into the list, atomically, and empty the journal."""
    journal = open_regular(path + ".journal", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(journal, fcntl.LOCK_EX)
        merged, merged_ran = {}, {}
        try:
            fd = open_regular(path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        else:
            with open(fd, encoding="utf-8") as f:
                merged, merged_ran = _parse_list(f, path)
        merged.update(_parse_journal(_read_all(journal)))
        merged.update(modules)
        for name, words in ran.items():
            merged_ran.setdefault(name, set()).update(words)
        _replace(path, merged, merged_ran)
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
            loaded = loaded_modules()
            write_list(list_path, loaded, ran_code(loaded))
        except Exception as e:
            journal.fail(e)

    atexit.register(write)
