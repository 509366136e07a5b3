"""pycds: CPython code objects served from a memory-mapped heap image.

The pipeline: ``trace`` records the modules a run loads, ``dump`` archives
them, ``share`` imports them from the archive; ``stats`` says what was
served.  The low level: ``dump_code`` writes code objects into an archive,
``load_code`` maps one and hands them back.  See docs/API.md.
"""
# Only modules the interpreter has already loaded at start-up: activation
# from the .pth must not import anything a normal start does not.
import sys as _sys
from _collections_abc import Mapping as _Mapping
# importlib.machinery holds these same objects, but importing it loads
# modules a normal start-up does not.
from _frozen_importlib import ModuleSpec as _ModuleSpec
from _frozen_importlib_external import (
    SourceFileLoader as _SourceFileLoader,
    SourcelessFileLoader as _SourcelessFileLoader)

from . import _pycds
from ._pycds import ArchiveError

__version__ = "0.1.0"
__all__ = ["ArchiveError", "trace", "dump", "share", "stats", "dump_code",
           "load_code", "inspect_archive", "verify_archive", "abi_key"]

_finder = None


def trace(list_path):
    """Record the modules this process loads from files into ``list_path``
    (merged with what it holds) when the process exits."""
    from ._trace import trace
    trace(list_path)


def dump(list_path, archive, validation="timestamp"):
    """Archive the modules of a TRACE list; no module code runs.

    Returns {module: why} for the modules left out."""
    from ._dump import dump
    return dump(list_path, archive, validation)


VALIDATION_MODES = ("timestamp", "checked-hash", "unchecked")


class _ArchivedCode:
    """get_code from the archive; get_source, get_data, get_filename,
    is_package, get_resource_reader from importlib's own loader."""

    def __init__(self, fullname, path, code):
        super().__init__(fullname, path)
        self._archived = code

    def get_code(self, fullname):
        if fullname == self.name:
            return self._archived
        return super().get_code(fullname)


class ArchiveSourceLoader(_ArchivedCode, _SourceFileLoader):
    """Loader of a module compiled from source, served from an archive."""


class ArchiveSourcelessLoader(_ArchivedCode, _SourcelessFileLoader):
    """Loader of a module that had only a .pyc, served from an archive."""


def share(archive, validation=None, verbose=0, trust_any=False):
    """Serve imports from ``archive``; returns False (after one warning on
    stderr) when the archive cannot be used, and imports stay normal.

    ``validation`` overrides the mode the archive was made with;
    ``trust_any`` accepts an archive others could have written."""
    global _finder
    if validation is not None and validation not in VALIDATION_MODES:
        raise ValueError("validation must be one of %s" % (VALIDATION_MODES,))
    try:
        opened = _pycds.Archive(archive, trust_any)
    except (ArchiveError, OSError) as e:
        print("pycds: warning: %s; importing normally" % e, file=_sys.stderr)
        return False
    mode = -1 if validation is None else VALIDATION_MODES.index(validation)
    finder = _pycds.Finder(
        opened, (ArchiveSourceLoader, ArchiveSourcelessLoader), _ModuleSpec,
        mode, verbose)
    if _finder in _sys.meta_path:
        _sys.meta_path.remove(_finder)
    # After the builtin and frozen importers, as normal import orders them.
    meta = _sys.meta_path
    where = next((i for i, f in enumerate(meta)
                  if getattr(f, "__name__", None) == "PathFinder"), len(meta))
    meta.insert(where, finder)
    _finder = finder
    return True


def stats():
    """What SHARE did so far: counts ``served``, ``missed`` (not in the
    archive), ``stale`` (source changed), ``refused`` (another reason) and
    ``reasons`` {module: why it was not served}."""
    if _finder is None:
        return {"served": 0, "missed": 0, "stale": 0, "refused": 0,
                "reasons": {}}
    return _finder.stats()


def dump_code(path, codes):
    """Write the code objects of ``codes`` (name -> code) to ``path``."""
    _pycds.dump(path, sorted(codes.items()))


class CodeArchive(_Mapping):
    """Read-only mapping name -> code object over a mapped archive.

    An entry is checked and relocated the first time it is accessed."""

    __slots__ = ("_archive",)

    def __init__(self, path, trust_any=False):
        self._archive = _pycds.Archive(path, trust_any)

    def __getitem__(self, name):
        return self._archive.get(name)

    def __contains__(self, name):
        return name in self._archive

    def __len__(self):
        return len(self._archive)

    def __iter__(self):
        return iter(self._archive.names())


def load_code(path, trust_any=False):
    """Map the archive at ``path``; returns a mapping name -> code.

    An archive is code: one that a user other than its reader (or root)
    owns, or that group or others may write, is refused unless
    ``trust_any``."""
    return CodeArchive(path, trust_any)


def inspect_archive(path):
    """Describe an archive, whether or not this interpreter can use it."""
    return _pycds.inspect(path)


def verify_archive(path):
    """Every problem found checking the whole archive; empty when sound."""
    return _pycds.verify(path)


def abi_key():
    """This interpreter's ABI key, as stored in archives it writes."""
    return _pycds.abi_key()
