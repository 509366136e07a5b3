"""SHARE: decide whether an archived module is the one normal import would
give, and build its spec.

The C finder (src/finder.c) calls ``Resolver.__call__`` only for names the
archive holds.  The rules, and the one case accepted as the cost of speed,
are in docs/IMPORT.md.
"""
import os
import sys
# importlib.machinery and importlib.util are these same objects, but
# importing them pulls in modules a normal start-up does not load.
from _frozen_importlib_external import (
    BYTECODE_SUFFIXES, EXTENSION_SUFFIXES, SOURCE_SUFFIXES, SourceFileLoader,
    SourcelessFileLoader, spec_from_file_location)

from . import _pycds

VALIDATION_MODES = ("timestamp", "checked-hash", "unchecked")

_EXTENSION_SUFFIXES = tuple(EXTENSION_SUFFIXES)
_SUFFIXES = _EXTENSION_SUFFIXES + tuple(SOURCE_SUFFIXES) + tuple(
    BYTECODE_SUFFIXES)


class _ArchivedCode:
    """get_code from the archive, everything else from importlib's loader:
    get_source, get_data, get_filename, is_package, get_resource_reader."""

    def __init__(self, fullname, path, code):
        super().__init__(fullname, path)
        self._archived = code

    def get_code(self, fullname):
        if fullname == self.name:
            return self._archived
        return super().get_code(fullname)


class ArchiveSourceLoader(_ArchivedCode, SourceFileLoader):
    """Loader of a module compiled from source and served from an archive."""


class ArchiveSourcelessLoader(_ArchivedCode, SourcelessFileLoader):
    """Loader of a module that had only a .pyc, served from an archive."""


class Resolver:
    def __init__(self, validation=None):
        # None: each entry's own mode, chosen at DUMP.
        self.validation = validation
        self._listings = {}
        self._path_key = None
        self._path_dirs = ()

    def invalidate_caches(self):
        self._listings.clear()
        self._path_key = None

    def _listing(self, directory):
        names = self._listings.get(directory)
        if names is None:
            try:
                names = frozenset(os.listdir(directory))
            except OSError:
                names = frozenset()
            self._listings[directory] = names
        return names

    def _search_dirs(self, path):
        if path is None:
            key = tuple(sys.path)
            if key != self._path_key:
                self._path_key = key
                self._path_dirs = tuple(_absolute(p) for p in key)
            return self._path_dirs
        return tuple(_absolute(p) for p in path)

    def _provides(self, directory, tail):
        """Whether normal import could find ``tail`` in ``directory``."""
        names = self._listing(directory)
        if tail in names:
            return True
        return any(tail + s in names for s in _SUFFIXES)

    def _shadowed(self, name, path, origin, package):
        tail = name.rpartition(".")[2]
        home = os.path.dirname(origin)
        if package:
            home = os.path.dirname(home)
        for d in self._search_dirs(path):
            if d == home:
                break
            if os.path.isfile(d):
                return "search path entry %s is not a directory" % d
            if self._provides(d, tail):
                return "shadowed by %s in %s" % (tail, d)
        else:
            return "%s is not on the search path" % home
        own = self._listing(home)
        if package:
            inits = self._listing(os.path.join(home, tail))
            if any("__init__" + s in inits for s in _EXTENSION_SUFFIXES):
                return "an extension __init__ shadows the package"
            if os.path.basename(origin) not in inits:
                return "source is gone"
        else:
            if any(tail + s in own for s in _EXTENSION_SUFFIXES):
                return "an extension module shadows the source"
            if tail in own and os.path.isdir(os.path.join(home, tail)):
                return "a package directory shadows the module"
            if os.path.basename(origin) not in own:
                return "source is gone"
        return None

    def __call__(self, finder, name, path, info):
        (index, origin, package, locations, cached, mtime_ns, size, digest,
         archive_mode) = info
        why = self._shadowed(name, path, origin, package)
        if why is not None:
            return ("refused", why)
        mode = self.validation or VALIDATION_MODES[archive_mode]
        stale = _stale(mode, origin, mtime_ns, size, digest)
        if stale is not None:
            return ("stale", stale)
        try:
            code = finder.code(index)
        except _pycds.ArchiveError as e:
            return ("refused", str(e))
        if origin.endswith(".pyc"):
            loader = ArchiveSourcelessLoader(name, origin, code)
        else:
            loader = ArchiveSourceLoader(name, origin, code)
        return spec_from_file_location(
            name, origin, loader=loader,
            submodule_search_locations=[] if package else None)


def _absolute(entry):
    # FileFinder treats '' as the current directory.
    return os.path.abspath(entry or ".")


def _stale(mode, origin, mtime_ns, size, digest):
    if mode == "unchecked":
        return None
    if mode == "checked-hash":
        try:
            with open(origin, "rb") as f:
                data = f.read()
        except OSError as e:
            return "source unreadable: %s" % e.strerror
        if _pycds.xxh3(data) != digest:
            return "source hash changed"
        return None
    try:
        st = os.stat(origin)
    except OSError:
        return "source is gone"
    if st.st_mtime_ns != mtime_ns or st.st_size != size:
        return "source mtime or size changed"
    return None
