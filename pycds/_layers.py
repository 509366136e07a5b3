"""The stack of archive layers SHARE serves from: one finder per archive in
``sys.meta_path``, in order, the paths they serve, and the statistics
merged over them.  ``share()``, AUTO and PRELINK use the one ``STACK``.

A layer used in place is guarded by a read lease on its file: before
anyone opens it for writing or truncates it, the kernel sends the
process ``LEASE_SIGNAL`` and waits.  The handler moves the file's pages
the process uses into private memory and gives the lease up (src/lease.c;
docs/IMPORT.md, "Files rewritten in place").  A Python-level handler, so
that it runs in the main thread between two bytecodes, when no thread is
writing to those pages.
"""
import os
import sys
# importlib.machinery holds these same objects, but importing it loads
# modules a normal start-up does not.
from _frozen_importlib import ModuleSpec
from _frozen_importlib_external import (SourceFileLoader,
                                        SourcelessFileLoader)

import _signal

from . import _pycds
from ._pycds import ArchiveError

VALIDATION_MODES = ("timestamp", "checked-hash", "unchecked")
# The loaders a served module gets: importlib's own (docs/IMPORT.md, SHARE).
LOADERS = (SourceFileLoader, SourcelessFileLoader)
EMPTY_STATS = {"served": 0, "missed": 0, "stale": 0, "refused": 0,
               "reasons": {}, "kinds": {}}
# A real-time signal: queued, and not one a program or library uses by
# default (glibc keeps those below SIGRTMIN for itself).
LEASE_SIGNAL = _signal.SIGRTMIN + 4

_leases_set_up = False


def _on_lease_break(signum, frame):
    try:
        _pycds.lease_release()
    except Exception as e:      # never raise into whatever code was running
        print("pycds: warning: cannot move an archive's pages before it is "
              "rewritten: %s" % e, file=sys.stderr)


def _set_up_leases(immutable):
    """Once per process, before an image is mapped: the handler, unless
    the program has its own for the signal, and a lease of its own in a
    forked child.  Without a handler an image is copied, not shared."""
    global _leases_set_up
    if _leases_set_up:
        return
    _leases_set_up = True
    signum = LEASE_SIGNAL
    try:
        if _signal.getsignal(signum) != _signal.SIG_DFL:
            signum = 0
        else:
            _signal.signal(signum, _on_lease_break)
    except ValueError:          # not the main thread of the main interpreter
        signum = 0
    if signum:
        os.register_at_fork(after_in_child=_pycds.lease_after_fork)
    _pycds.lease_setup(signum, immutable)


def in_place(prelinked):
    """Whether to use an archive's prelinked image in place: ``prelinked``
    unless PYCDSCHECK=yes in the environment (every object is then checked
    as its entry is relocated, docs/IMPORT.md, Trust); if so, with the
    lease handler set up (without it an image is copied, not shared)."""
    from ._env import flag      # it imports pycds, which imports this
    if flag("PYCDSCHECK"):
        return False
    if prelinked:
        _set_up_leases(flag("PYCDSIMMUTABLE"))
    return prelinked


def finder_over(archive, validation=None, verbose=0):
    """A finder serving from ``archive`` (an open ``_pycds.Archive``)."""
    mode = -1 if validation is None else VALIDATION_MODES.index(validation)
    return _pycds.Finder(archive, LOADERS, ModuleSpec, mode, verbose)


def open_finder(path, validation=None, verbose=0, trust_any=False,
                warn=True, prelinked=True):
    """A finder over the archive at ``path``, or why it cannot be opened
    (str).  PYCDSCHECK=yes in the environment turns the prelinked image
    off: every object is checked as its entry is relocated (docs/IMPORT.md,
    Trust)."""
    prelinked = in_place(prelinked)
    try:
        opened = _pycds.Archive(path, trust_any, prelinked)
    except (ArchiveError, OSError) as e:
        if warn:
            print("pycds: warning: %s; importing normally" % e,
                  file=sys.stderr)
        return str(e)
    if verbose:
        why = opened.prelinked()
        if isinstance(why, str):
            print("pycds: %s: prelinked image not used: %s" % (path, why),
                  file=sys.stderr)
    return finder_over(opened, validation, verbose)


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
    """The finders in use, over the layers at ``paths``."""

    def __init__(self):
        self.finders = []
        self.paths = []

    def install(self, finders, paths):
        """Put ``finders`` (in order, over the layers ``paths``) into
        sys.meta_path just before PathFinder, replacing those installed
        before."""
        for loader_type in LOADERS:
            _pycds.serve_code(loader_type)
        meta = sys.meta_path
        for old in self.finders:
            if old in meta:
                meta.remove(old)
        # After the builtin and frozen importers, as normal import orders
        # them.
        where = next((i for i, f in enumerate(meta)
                      if getattr(f, "__name__", None) == "PathFinder"),
                     len(meta))
        meta[where:where] = finders
        self.finders = list(finders)
        self.paths = list(paths)

    def archive_at(self, path):
        """The open archive of the first layer if it is at ``path``."""
        if self.paths and self.paths[0] == path:
            return self.finders[0].archive
        return None

    def layer_stats(self):
        return [dict(f.stats(), path=p, prelinked=f.archive.prelinked())
                for f, p in zip(self.finders, self.paths)]

    def stats(self):
        return merge_stats([f.stats() for f in self.finders])


STACK = Stack()
