"""TRACE: the list of modules a run loaded from files, and its file format.

A list is UTF-8 text: a header line, ``# pycds module list v2 runs=N``
(N: the traced runs that ended normally and merged into it), then one
module a line, ``name<TAB>origin<TAB>package<TAB>used<TAB>written``
(package is 0 or 1; used, how many of those runs loaded it; written, its
objects the runs wrote, as words separated by spaces, or nothing: its
code objects that ran as ``firstlineno:qualname``, its str constants
whose hash was computed as ``#`` and the string's XXH3 in 16 hex
digits).  A v1 list (``# pycds module list v1``) has the
first three fields only.  A tracer appends
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
import time
# importlib.machinery holds these same objects, but importing it loads
# modules a normal start-up does not: they would be traced.
from _frozen_importlib_external import (PathFinder, SourceFileLoader,
                                        SourcelessFileLoader)

import _pycds
from ._regular_file import open_regular

HEADER = "# pycds module list v2 runs="
V1_HEADER = "# pycds module list v1"

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
    # Whatever a program made of a code object, a question about it must
    # not cost the list: taken as code that did not run.
    try:
        return code._co_code_adaptive != code.replace()._co_code_adaptive
    except Exception:
        return False


_function_type, _code_type = type(_code_wrote), type(_code_wrote.__code__)
_CO_NEWLOCALS = 0x2     # inspect.CO_NEWLOCALS, without importing inspect

# The str constants of the module bodies this process ran, (file, strs),
# taken as each body starts (exec's audit event): normal import frees a
# body once it ran, and keeping its code instead would keep the code of
# its functions alive after they are gone (a program may see that:
# CPython's test_code frees code with co_extra).  Only a process that
# traces takes them (keep_bodies).
_body_strings = []
_keeping_bodies = False


def _tree(code, seen):
    """code, the code nested in it and their constants (through tuples
    and frozensets), each once: ``seen`` holds the ids met so far."""
    stack = [code]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if type(obj) is _code_type:
            stack.extend(obj.co_consts)
        elif type(obj) in (tuple, frozenset):
            stack.extend(obj)


def _keep_body(event, args):
    if event == "exec" and type(args[0]) is _code_type \
            and args[0].co_name == "<module>" \
            and os.path.isabs(args[0].co_filename):
        _body_strings.append((args[0].co_filename,
                              [o for o in _tree(args[0], set())
                               if type(o) is str]))


def keep_bodies():
    """From now on, take the str constants of the module bodies this
    process runs (for ``written_words``)."""
    global _keeping_bodies
    if not _keeping_bodies:
        _keeping_bodies = True      # once: an audit hook stays for good
        sys.addaudithook(_keep_body)


# When this module was imported: as the process started tracing.
_STARTED_NS = time.time_ns()


def _compiled_here(name):
    """Whether this process compiled module ``name``'s code, whose str
    constants the compiler hashed (its dict of constants), rather than
    read it from a .pyc it found: taken so where it cannot tell."""
    module = sys.modules.get(name)
    origin = getattr(getattr(module, "__spec__", None), "origin", "")
    if isinstance(origin, str) and origin.endswith(".pyc"):
        return False
    try:
        return os.stat(module.__cached__).st_mtime_ns >= _STARTED_NS
    except Exception:
        return True


def written_words(modules):
    """name -> the words of the objects of ``modules`` (name -> (origin,
    package)) this process wrote as it ran: ``firstlineno:qualname`` of
    the code objects that ran (their bytecode written), of the functions
    alive now and the code nested in theirs; ``#`` and the XXH3 of each
    str constant whose hash was computed (written into it), of that code
    and of the module bodies that ran (``keep_bodies``), but of modules
    this process compiled (the compiler hashes every constant).  An image
    keeps those objects apart from the ones no run writes, whose pages
    then stay shared (docs/FORMAT.md, "Areas")."""
    by_file = {origin: name for name, (origin, _) in modules.items()}
    written, compiled = {}, {}

    def note_hashed(name, obj):
        # Asked of a module only once it has a constant hashed.
        word = _pycds.hashed_word(obj)
        if word is not None:
            if name not in compiled:
                compiled[name] = _compiled_here(name)
            if not compiled[name]:
                written.setdefault(name, set()).add(word)

    for filename, strings in _body_strings:
        name = by_file.get(filename)
        for obj in strings if name is not None else ():
            note_hashed(name, obj)
    seen = set()
    # The type first: any other object's attributes may run code (six's
    # lazy modules import on getattr).
    roots = [f.__code__ for f in gc.get_objects()
             if type(f) is _function_type]
    for root in roots:
        if type(root) is not _code_type or root.co_filename not in by_file:
            continue
        name = by_file[root.co_filename]
        for obj in _tree(root, seen):
            if type(obj) is not _code_type:
                note_hashed(name, obj)
                continue
            # Module and class bodies (no CO_NEWLOCALS) are run-once code,
            # apart whether they ran or not.
            if not obj.co_flags & _CO_NEWLOCALS:
                continue
            word = "%d:%s" % (obj.co_firstlineno, obj.co_qualname)
            # A qualname is a program's to change: one that is not a word
            # is left out, not the module.
            if _code_wrote(obj) and len(word.split()) == 1:
                written.setdefault(name, set()).add(word)
    return written


class Trace:
    """What a list holds: ``modules``, name -> (origin, package); ``runs``,
    the traced runs that ended normally and merged into it; ``used``,
    name -> how many of them loaded the module; ``written``, name -> the
    words of its objects any of them wrote (``written_words``)."""

    def __init__(self):
        self.modules, self.used, self.written, self.runs = {}, {}, {}, 0

    def every(self):
        """The names of the modules every run loaded: those each process
        that uses an archive of the list imports.  None when no run ended
        normally (a journal only, a v1 list)."""
        if not self.runs:
            return None
        return [name for name in self.modules
                if self.used.get(name) == self.runs]

    def add_run(self, modules, written):
        """Merge a run that loaded ``modules`` and wrote ``written``
        (``written_words``)."""
        self.runs += 1
        self.modules.update(modules)
        for name in modules:
            self.used[name] = self.used.get(name, 0) + 1
        for name, words in written.items():
            self.written.setdefault(name, set()).update(words)


def _lines(modules, trace=None):
    """The lines of ``modules`` as the journal holds them, or with
    ``trace``'s fields as the list does; an entry the format cannot hold
    (a tab or newline in its name or origin, a path that is not UTF-8:
    CPython's test_import makes one) is left out, so that it never stops
    the rest of the list from being written."""
    for name in sorted(modules):
        origin, package = modules[name]
        line = "%s\t%s\t%d" % (name, origin, package)
        if line.count("\t") != 2 or "\n" in line:
            continue
        if trace is not None:
            words = sorted(trace.written.get(name, ()))
            line += "\t%d\t%s" % (trace.used.get(name, 0), " ".join(words))
        line += "\n"
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            continue
        yield line


def _parse_list(f, path):
    """The Trace a list holds."""
    first = f.readline().rstrip("\n")
    trace, fields = Trace(), 5
    if first == V1_HEADER:
        fields = 3
    elif first.startswith(HEADER) and first[len(HEADER):].isdigit():
        trace.runs = int(first[len(HEADER):])
    else:
        raise ValueError("%s: not a pycds module list" % path)
    for lineno, line in enumerate(f, 2):
        line = line.rstrip("\n")
        if not line:
            continue
        parts = line.split("\t")
        if (len(parts) != fields or parts[2] not in ("0", "1")
                or fields == 5 and not parts[3].isdigit()):
            raise ValueError("%s:%d: malformed line" % (path, lineno))
        trace.modules[parts[0]] = (parts[1], parts[2] == "1")
        if fields == 5:
            trace.used[parts[0]] = int(parts[3])
            if parts[4]:
                trace.written[parts[0]] = set(parts[4].split(" "))
    return trace


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
    """The Trace of the list and its journal (the records of tracers not
    merged yet: modules no run that ended normally loaded); raises
    ValueError on a malformed list."""
    try:
        with open(path, encoding="utf-8") as f:
            trace = _parse_list(f, path)
    except FileNotFoundError:
        if not os.path.exists(path + ".journal"):
            raise
        trace = Trace()
    try:
        fd = open_regular(path + ".journal", os.O_RDONLY)
    except FileNotFoundError:
        return trace
    try:
        trace.modules.update(_parse_journal(_read_all(fd)))
    finally:
        os.close(fd)
    return trace


def _replace(path, trace):
    """Write the list at ``path`` by rename from a new temporary file."""
    # A random name taken with O_EXCL: no one can plant a link at it in
    # advance.  Not tempfile: importing it at exit would load modules the
    # program did not.
    tmp = "%s.tmp%s" % (path, os.urandom(8).hex())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                 0o666)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write("%s%d\n" % (HEADER, trace.runs))
            f.writelines(_lines(trace.modules, trace))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_list(path, modules, written):
    """Merge the list at ``path``, its journal, and this run, which loaded
    ``modules`` and wrote ``written`` (``written_words``), into the list,
    atomically, and empty the journal."""
    journal = open_regular(path + ".journal", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(journal, fcntl.LOCK_EX)
        trace = Trace()
        try:
            fd = open_regular(path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        else:
            with open(fd, encoding="utf-8") as f:
                trace = _parse_list(f, path)
        trace.modules.update(_parse_journal(_read_all(journal)))
        trace.add_run(modules, written)
        _replace(path, trace)
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
    keep_bodies()
    journal = record(list_path)

    def write():
        if journal.off:
            return
        journal.merging = True
        try:
            loaded = loaded_modules()
            write_list(list_path, loaded, written_words(loaded))
        except Exception as e:
            journal.fail(e)

    atexit.register(write)
