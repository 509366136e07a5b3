"""pycds: CPython code objects served from a memory-mapped heap image.

The low-level API: ``dump_code`` writes code objects into an archive,
``load_code`` maps one and hands them back.  See docs/API.md.
"""
from collections.abc import Mapping as _Mapping

from . import _pycds
from ._pycds import ArchiveError

__version__ = "0.1.0"
__all__ = ["ArchiveError", "dump_code", "load_code", "inspect_archive",
           "verify_archive", "abi_key"]


def dump_code(path, codes):
    """Write the code objects of ``codes`` (name -> code) to ``path``."""
    _pycds.dump(path, sorted(codes.items()))


class CodeArchive(_Mapping):
    """Read-only mapping name -> code object over a mapped archive.

    An entry is checked and relocated the first time it is accessed."""

    __slots__ = ("_archive",)

    def __init__(self, path):
        self._archive = _pycds.Archive(path)

    def __getitem__(self, name):
        return self._archive.get(name)

    def __contains__(self, name):
        return name in self._archive

    def __len__(self):
        return len(self._archive)

    def __iter__(self):
        return iter(self._archive.names())


def load_code(path):
    """Map the archive at ``path``; returns a mapping name -> code."""
    return CodeArchive(path)


def inspect_archive(path):
    """Describe an archive, whether or not this interpreter can use it."""
    return _pycds.inspect(path)


def verify_archive(path):
    """Every problem found checking the whole archive; empty when sound."""
    return _pycds.verify(path)


def abi_key():
    """This interpreter's ABI key, as stored in archives it writes."""
    return _pycds.abi_key()
