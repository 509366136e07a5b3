"""The mapping pycds.load_code returns."""
from _collections_abc import Mapping

import _pycds


class CodeArchive(Mapping):
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
