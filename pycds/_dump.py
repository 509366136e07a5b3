"""DUMP: compile the modules of a list into an archive, running none of them.

A module's code comes, cheapest first, from: a code object the caller
already has for exactly the bytes read now (AUTO reuses the unchanged
entries of the archive it refreshes: the source's hash must match), the
valid ``__pycache__`` ``.pyc`` normal import would use (same checks as
importlib: magic, flags, source mtime and size, or the source hash for
hash-based ``.pyc``), or ``compile()``.  All three give equal code
objects.
"""
import _imp
import errno
import marshal
import os
import re
import subprocess
import sys
from importlib.util import cache_from_source, MAGIC_NUMBER, source_hash

import _pycds

from . import VALIDATION_MODES, ArchiveError, prelink
from ._left_out import from_exception
from ._trace import read_trace

ENTRY_PACKAGE = 0x1
ENTRY_SOURCE = 0x2

# How each module's code was obtained (dump_modules' counts).
COMPILED, CACHED, REUSED = "compiled", "pyc", "reused"


def _cached_code(origin, data, st):
    """The code of the valid .pyc normal import would read, else None."""
    try:
        cached = cache_from_source(origin)
        with open(cached, "rb") as f:
            pyc = f.read()
    except (OSError, NotImplementedError, ValueError):
        return None
    if len(pyc) < 16 or pyc[:4] != MAGIC_NUMBER:
        return None
    flags = int.from_bytes(pyc[4:8], "little")
    if flags == 0:
        if (int.from_bytes(pyc[8:12], "little") != (int(st.st_mtime) & 0xFFFFFFFF)
                or int.from_bytes(pyc[12:16], "little") != (st.st_size & 0xFFFFFFFF)):
            return None
    elif flags in (1, 3):
        if pyc[8:16] != source_hash(data):
            return None
    else:
        return None
    try:
        code = marshal.loads(memoryview(pyc)[16:])
    except (EOFError, ValueError, TypeError):
        return None
    if code.co_filename != origin:
        # What importlib does for a .pyc written at another path.
        _imp._fix_co_filename(code, origin)
    return code


def _code_of(origin, data, st=None, use_pyc=True):
    """(code, how) of the module at ``origin`` whose bytes are ``data``."""
    if origin.endswith(".pyc"):
        if data[:4] != MAGIC_NUMBER:
            raise ValueError("bad magic number in .pyc")
        return marshal.loads(memoryview(data)[16:]), CACHED
    if use_pyc and st is not None:
        code = _cached_code(origin, data, st)
        if code is not None:
            return code, CACHED
    return compile(data, origin, "exec", dont_inherit=True), COMPILED


def _version(st):
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_source(origin, attempts=5):
    """(bytes, stat) of the file at ``origin``, the stat describing just
    those bytes: the entry records one as the other's metadata, so a file
    saved in place while it is read is read again."""
    with open(origin, "rb") as f:
        for _ in range(attempts):
            before = os.fstat(f.fileno())
            data = f.read()
            after = os.fstat(f.fileno())
            if _version(before) == _version(after):
                return data, after
            f.seek(0)
    raise OSError(errno.EAGAIN, "changed each time it was read", origin)


def _entry(name, origin, package, reused=None, use_pyc=True):
    """(entry tuple for _pycds.dump, how its code was obtained).
    ``reused``: (code, xxh3 of the source it was compiled from), used only
    if the bytes read now are those."""
    data, st = _read_source(origin)
    source_xxh3 = _pycds.xxh3(data)
    if reused is not None and reused[1] == source_xxh3:
        code, how = reused[0], REUSED
    else:
        code, how = _code_of(origin, data, st, use_pyc)
    flags = (ENTRY_PACKAGE if package else 0) | ENTRY_SOURCE
    return (name, code, origin, flags, st.st_mtime_ns, st.st_size,
            source_xxh3), how


def not_replaceable(path):
    """Why pycds must not write an archive at ``path``, or None: it
    replaces only nothing, an empty file or a pycds archive (of any
    interpreter or format version, damaged or not), never a user's file
    or a device."""
    try:
        return _pycds.not_replaceable(path)
    except OSError as e:
        return "cannot tell what it is: %s" % (e.strerror or e)


def write_entries(archive, entries, validation, failed):
    """_pycds.dump, leaving out (into ``failed``) an entry whose code holds
    an object the image cannot carry, instead of writing nothing."""
    mode = VALIDATION_MODES.index(validation)
    entries = list(entries)
    while True:
        try:
            _pycds.dump(archive, entries, mode)
            return entries
        except ArchiveError as e:
            names = {entry[0] for entry in entries}
            if e.kind != "unarchivable" or e.entry not in names:
                raise
            failed[e.entry] = from_exception(e)
            entries = [entry for entry in entries if entry[0] != e.entry]


def dump_modules(modules, archive, validation="timestamp", reuse=None,
                 progress=None, counts=None, use_pyc=True, trace=None):
    """Write an archive of ``modules`` (name -> (origin, package)).

    ``trace``: the ``_trace.Trace`` of the runs the archive is for, if
    any, which lays its image out (``prelink_image``).

    ``reuse``: name -> (code object, XXH3 of the source it was compiled
    from), used instead of compiling when the source read now has that
    hash: the code and the metadata recorded with it then come from the
    same read of the file.  ``progress(done, total, name)`` is
    called as modules are read.  ``counts``, a dict, receives how many
    modules were ``compiled``, read from a ``pyc`` or ``reused``.

    Returns name -> why for every module left out (gone, unreadable, does
    not compile, holds an object an archive cannot carry); the rest is
    archived."""
    if validation not in VALIDATION_MODES:
        raise ValueError("validation must be one of %s" % (VALIDATION_MODES,))
    reuse = reuse or {}
    entries, failed = [], {}
    how_many = {COMPILED: 0, CACHED: 0, REUSED: 0}
    names = sorted(modules)
    for done, name in enumerate(names):
        if progress is not None:
            progress(done, len(names), name)
        origin, package = modules[name]
        try:
            entry, how = _entry(name, origin, package, reuse.get(name),
                                use_pyc)
        except (OSError, SyntaxError, ValueError, EOFError, TypeError,
                RecursionError, MemoryError) as e:
            failed[name] = from_exception(e)
            continue
        entries.append(entry)
        how_many[how] += 1
    if progress is not None:
        progress(len(names), len(names), None)
    written = write_entries(archive, entries, validation, failed)
    image = write_image(archive, trace)
    if counts is not None:
        counts.update(how_many)
        counts["archived"] = len(written)
        counts["prelinked"] = image
    return failed


# What write_image runs to learn what every process of an interpreter has
# done by the time the .pth of an installed pycds activates it (site's own
# imports at its top, os, stat, ..., come before its .pth files are read,
# and are never served; SHARE's common case then imports the extension,
# no module of the package): the strings it has interned then, and the
# modules it imports after that as it starts.  An executable of another
# name (an application embedding Python) is not run.
_INTERPRETER_NAME = re.compile(r"python[0-9.]*[a-z]*\Z")
_LEARN_STARTUP = """\
import sys, site
sys.path.insert(0, %r)
import _pycds
interned = _pycds.interned_strings()
del sys.path[0]
before = set(sys.modules)
site.main()
modules = [m for m in sys.modules if m not in before]
import json
sys.stdout.write("\\n" + json.dumps({"modules": modules,
                                     "interned": sorted(interned)}))
"""


def startup_state():
    """(modules, interned) of this interpreter as it starts, with this
    environment and these flags: the names of the modules it imports once
    site reads the ``.pth`` files of its site directories (those files'
    imports, ``sitecustomize``, ``usercustomize``), which every process
    that uses an archive imports whatever it runs; and a set of the
    strings interned when pycds activates (empty on 3.11, whose interned
    strings are out of reach).  ``([], None)`` when that cannot be learnt
    (the interpreter is embedded, or does not start within 10 s: AUTO
    runs this as its program exits) or there is no such point (``-S``)."""
    exe = sys.executable
    if (not exe or sys.flags.no_site
            or not _INTERPRETER_NAME.match(os.path.basename(exe))):
        return [], None
    flags = [flag for flag, on in (("-I", sys.flags.isolated),
                                   ("-E", sys.flags.ignore_environment),
                                   ("-s", sys.flags.no_user_site)) if on]
    # Not imported with the module: AUTO imports it as a program starts,
    # and a module pycds imports then is one the archive cannot serve.
    import json
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYCDS")}
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        run = subprocess.run([exe] + flags + ["-S", "-c",
                                              _LEARN_STARTUP % here],
                             env=env, cwd="/", stdin=subprocess.DEVNULL,
                             capture_output=True, timeout=10, check=True)
        # The last line: what a .pth or sitecustomize prints comes first.
        state = json.loads(run.stdout.rsplit(b"\n", 1)[-1])
        return list(state["modules"]), set(state["interned"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError,
            TypeError):
        return [], None


def prelink_image(archive, out=None, trace=None, hashes=None):
    """``pycds.prelink`` for the processes of this interpreter: the
    strings they have interned before they use the archive are those
    ``startup_state`` finds.  The modules every process imports, placed
    first with their strings interned as the image is mapped
    (docs/FORMAT.md, "Entries every process uses"): those every run of
    ``trace`` (a ``_trace.Trace``) loaded, else those the interpreter
    imports as it starts.  The code that ran in ``trace`` is kept apart
    from the code that did not."""
    startup, interned = startup_state()
    every = trace.every() if trace is not None else None
    return prelink(archive, out, hashes=hashes, preinterned=interned,
                   first=startup if every is None else every,
                   written=trace.written if trace is not None else None)


def write_image(archive, trace=None):
    """Write ``archive`` again with its prelinked image (``prelink_image``),
    which SHARE maps and uses in place (docs/IMPORT.md).  The image holds
    no hashes, so that it serves processes with any hash seed.  Returns
    None, or why there is no image: the archive is whole without it
    (SHARE then relocates its entries)."""
    try:
        prelink_image(archive, trace=trace, hashes=False)
    except (OSError, ArchiveError) as e:
        return "not written: %s" % e
    return None


def dump(list_path, archive, validation="timestamp"):
    """DUMP the modules of the list at ``list_path`` into ``archive``."""
    trace = read_trace(list_path)
    return dump_modules(trace.modules, archive, validation, trace=trace)
