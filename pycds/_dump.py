"""DUMP: compile the modules of a list into an archive, running none of them."""
import marshal
import os
import sys
from importlib.util import cache_from_source, MAGIC_NUMBER

from . import VALIDATION_MODES, _pycds
from ._trace import read_list

ENTRY_PACKAGE = 0x1
ENTRY_SOURCE = 0x2


def _code_of(origin, data):
    if origin.endswith(".pyc"):
        if data[:4] != MAGIC_NUMBER:
            raise ValueError("bad magic number in .pyc")
        return marshal.loads(memoryview(data)[16:])
    return compile(data, origin, "exec", dont_inherit=True)


def _entry(name, origin, package):
    st = os.stat(origin)
    with open(origin, "rb") as f:
        data = f.read()
    code = _code_of(origin, data)
    cached = "" if origin.endswith(".pyc") else cache_from_source(origin)
    locations = os.path.dirname(origin) if package else ""
    flags = (ENTRY_PACKAGE if package else 0) | ENTRY_SOURCE
    return (name, code, origin, flags, locations, cached, st.st_mtime_ns,
            st.st_size, _pycds.xxh3(data))


def dump_modules(modules, archive, validation="timestamp"):
    """Write an archive of ``modules`` (name -> (origin, package)).

    Returns name -> why for every module left out (gone, unreadable, does
    not compile); the rest is archived."""
    mode = VALIDATION_MODES.index(validation)
    entries, failed = [], {}
    for name in sorted(modules):
        origin, package = modules[name]
        try:
            entries.append(_entry(name, origin, package))
        except (OSError, SyntaxError, ValueError, EOFError, TypeError) as e:
            failed[name] = "%s: %s" % (type(e).__name__, e)
    _pycds.dump(archive, entries, mode)
    return failed


def dump(list_path, archive, validation="timestamp"):
    """DUMP the modules of the list at ``list_path`` into ``archive``."""
    return dump_modules(read_list(list_path), archive, validation)
