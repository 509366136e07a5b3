"""The stack of archive layers SHARE serves from: one finder per archive in
``sys.meta_path``, in order, the paths they serve, and the statistics
merged over them.  ``share()``, AUTO and PRELINK use the one ``STACK``;
opening, installing and the leases are the extension's (src/layers.c,
src/lease.c), which SHARE's common case uses without this module
(src/activate.c).

A layer used in place is guarded by a read lease on its file: before
anyone opens it for writing or truncates it, the kernel sends the
process a signal and waits.  The handler moves the file's pages the
process uses into private memory and gives the lease up (src/lease.c;
docs/IMPORT.md, "Files rewritten in place").
"""
import _pycds

from . import VALIDATION_MODES
from ._env import flag

EMPTY_STATS = {"served": 0, "missed": 0, "stale": 0, "refused": 0,
               "reasons": {}, "kinds": {}}


def in_place(prelinked):
    """Whether to use an archive's prelinked image in place: ``prelinked``
    unless PYCDSCHECK=yes in the environment (every object is then checked
    as its entry is relocated, docs/IMPORT.md, Trust); if so, with the
    lease handler set up (without it an image is copied, not shared)."""
    if flag("PYCDSCHECK"):
        return False
    if prelinked:
        _pycds.set_up_leases(flag("PYCDSIMMUTABLE"))
    return prelinked


def validation_index(validation):
    """A validation mode's PYCDS_VALIDATE_* value, -1 for None."""
    return -1 if validation is None else VALIDATION_MODES.index(validation)


def finder_over(archive, validation=None, verbose=0):
    """A finder serving from ``archive`` (an open ``_pycds.Archive``)."""
    return _pycds.finder_over(archive, validation_index(validation), verbose)


def open_finder(path, validation=None, verbose=0, trust_any=False,
                warn=True, prelinked=True):
    """A finder over the archive at ``path``, or why it cannot be opened
    (str).  PYCDSCHECK=yes in the environment turns the prelinked image
    off: every object is checked as its entry is relocated (docs/IMPORT.md,
    Trust)."""
    return _pycds.open_finder(path, validation_index(validation), verbose,
                              trust_any, warn, in_place(prelinked))


def merge_stats(per_layer):
    """One stats dict for the whole stack: each lookup counts once, by its
    final outcome.  ``served``: served by any layer.  A lookup no layer
    served is ``stale`` or ``refused`` if an earlier layer holds the
    module but declined it (for that reason), ``missed`` only when no
    layer holds the module at all."""
    if not per_layer:
        return {k: (dict(v) if isinstance(v, dict) else v)
                for k, v in EMPTY_STATS.items()}
    last = per_layer[-1]
    merged = {"served": sum(s["served"] for s in per_layer),
              "missed": last["missed"], "stale": last["stale"],
              "refused": last["refused"], "reasons": dict(last["reasons"]),
              "kinds": dict(last["kinds"])}
    for name, kind in last["kinds"].items():
        if kind != "missed":
            continue
        for s in per_layer[:-1]:
            earlier = s["kinds"].get(name)
            if earlier is not None and earlier != "missed":
                merged["reasons"][name] = s["reasons"][name]
                merged["kinds"][name] = earlier
                merged["missed"] -= 1
                merged[earlier] += 1
                break
    return merged


class Stack:
    """The finders in use, over the layers at ``paths`` (the extension
    keeps them: SHARE's common case installs them without this module)."""

    @property
    def finders(self):
        return _pycds.installed()[0]

    @property
    def paths(self):
        return _pycds.installed()[1]

    def install(self, finders, paths):
        """Put ``finders`` (in order, over the layers ``paths``) into
        sys.meta_path just before PathFinder, after the builtin and frozen
        importers as normal import orders them, replacing those installed
        before."""
        _pycds.install(finders, paths)

    def archive_at(self, path):
        """The open archive of the first layer if it is at ``path``."""
        finders, paths = _pycds.installed()
        if paths and paths[0] == path:
            return finders[0].archive
        return None

    def layer_stats(self):
        finders, paths = _pycds.installed()
        return [dict(f.stats(), path=p, prelinked=f.archive.prelinked())
                for f, p in zip(finders, paths)]

    def stats(self):
        return merge_stats([f.stats() for f in self.finders])


STACK = Stack()
