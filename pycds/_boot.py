"""Activation from the environment, all but SHARE's common case: when
PYCDSMODE is set, the .pth that `make install` puts into site-packages
calls _pycds.activate() (src/activate.c), which imports this module for
what it does not do itself:

    PYCDSMODE        TRACE, DUMP, SHARE, AUTO or PRELINK (case does not
                     matter; off, no, 0 or empty: off); PRELINK is SHARE
                     that writes the first layer's prelinked image again
                     at exit, made for the program as this run used it
    PYCDSCHECK       yes: check every object of an archive's entries as
                     they are loaded (relocation from the archive), instead
                     of trusting the prelinked image whose checksums match
    PYCDSIMMUTABLE   yes: archives are only ever replaced by rename: use
                     them in place without a read lease (docs/IMPORT.md)
    PYCDSLIST        the module list (TRACE writes it, DUMP reads it)
    PYCDSARCHIVE     the archive (DUMP writes it, SHARE maps it); SHARE and
                     AUTO take several layers separated by ':' (os.pathsep),
                     the first holding a valid entry serves; AUTO writes
                     the last
    PYCDSVALIDATION  timestamp | checked-hash | unchecked: the mode DUMP
                     records, or, at SHARE, an override of it
    PYCDSVERBOSE     1 (yes): say what was not served and why, and one
                     summary line at exit; 2: also every hit and miss
    PYCDSTRUST       any (or yes): use an archive owned by another user or
                     writable by others (refused by default: an archive is
                     code)
    PYCDSAUTOTHRESHOLD  AUTO: refresh when more than this fraction of the
                     modules loaded from files were not served (0.1)

Yes/no values are read alike (yes, true, on, 1 / no, false, off, 0, any
case) and a bad value is one warning naming the variable (pycds._env).
"""
import os
import sys

import _pycds
import pycds
from pycds import _env
from pycds._layers import STACK

_warn = _env.warn


def _required(name):
    value = os.environ.get(name)
    if not value:
        _warn("PYCDSMODE=%s needs %s; pycds is off"
              % (os.environ.get("PYCDSMODE"), name))
    return value


def _dump():
    list_path, archive = _required("PYCDSLIST"), _required("PYCDSARCHIVE")
    if not (list_path and archive):
        return 2
    archive = pycds.expand_abi(archive)
    validation = _env.validation() or "timestamp"
    from pycds._dump import not_replaceable
    why = not_replaceable(archive)
    if why is not None:
        print("pycds: dump failed: %s: %s; not overwritten" % (archive, why),
              file=sys.stderr)
        return 1
    try:
        failed = pycds.dump(list_path, archive, validation)
    except (OSError, ValueError, pycds.ArchiveError) as e:
        print("pycds: dump failed: %s" % e, file=sys.stderr)
        return 1
    for name, why in sorted(failed.items()):
        print("pycds: left out %s: %s" % (name, why), file=sys.stderr)
    return 1 if failed else 0


def _share_settings():
    """(archive, validation override or None, trust_any) for SHARE/AUTO."""
    return _required("PYCDSARCHIVE"), _env.validation(), _env.trust_any()


def _layer_summary(stats):
    """'PATH: N served, in place' for one layer of pycds.layer_stats()."""
    image = stats["prelinked"]
    if isinstance(image, dict):
        how = "%d in place from its prelinked image" % image["served"]
    else:
        how = "relocated (%s)" % (image or "no prelinked image")
    return "%s: %d served, %s" % (stats["path"], stats["served"], how)


def _summary_at_exit(mode):
    """At exit, one line on stderr: what the archives served this run."""
    def summary():
        per_layer = pycds.layer_stats()
        if not per_layer:
            print("pycds: summary: %s: no archive in use, every import was "
                  "normal" % mode, file=sys.stderr)
            return
        s = pycds.stats()
        print("pycds: summary: %s: %d served, %d missed, %d stale, %d "
              "refused; %s" % (mode, s["served"], s["missed"], s["stale"],
                               s["refused"], "; ".join(
                                   map(_layer_summary, per_layer))),
              file=sys.stderr)

    import atexit
    atexit.register(summary)


def _prelink_at_exit(archive, validation, verbose, trust_any):
    """SHARE from the archive, then write its first layer's prelinked
    image at exit, taking this run as the model of those that will use
    it: the entries it used have their strings interned as the image is
    mapped, the code that ran is kept apart, and, run with address
    randomisation off, the strings it interned before serving its first
    module are predicted (docs/IMPORT.md, "Prelinked images")."""
    preinterned = _pycds.interned_strings()
    # The image is made from the archive, not from an older image.
    if not pycds.share(archive, validation, verbose, trust_any,
                       prelinked=False):
        return
    # This process writes the image; the processes it starts serve.
    os.environ["PYCDSMODE"] = "SHARE"
    first = pycds.layers(archive)[0]
    served = STACK.archive_at(first)

    def write():
        try:
            out = pycds.prelink(first, trust_any=trust_any,
                                preinterned=preinterned, served=served)
        except (OSError, pycds.ArchiveError) as e:
            _warn("prelink of %s failed: %s" % (first, e))
            return
        if verbose:
            print("pycds: wrote %s with its prelinked image" % out,
                  file=sys.stderr)

    import atexit
    atexit.register(write)


def activate():
    # Imported by _pycds.activate() (src/activate.c) in the main
    # interpreter of a process that is not pycds-dump or python -m pycds.
    mode = _env.mode()
    if mode is None:
        return
    verbose = _env.verbose()
    if verbose and mode in ("SHARE", "PRELINK", "AUTO"):
        # Registered first, so it runs last: after AUTO's and PRELINK's
        # writes, with the whole run's counts.
        _summary_at_exit(mode)
    if mode == "TRACE":
        list_path = _required("PYCDSLIST")
        if list_path:
            pycds.trace(list_path)
    elif mode == "SHARE":
        archive, validation, trust_any = _share_settings()
        if archive:
            pycds.share(archive, validation, verbose, trust_any)
    elif mode == "PRELINK":
        archive, validation, trust_any = _share_settings()
        if archive:
            _prelink_at_exit(archive, validation, verbose, trust_any)
    elif mode == "AUTO":
        archive, validation, trust_any = _share_settings()
        threshold = _env.threshold()
        if archive:
            from pycds import _auto
            _auto.start(archive, validation, verbose, trust_any, threshold)
    elif mode == "DUMP":
        # DUMP is the whole run: the program (or prompt) never starts.
        status = _dump()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


activate()
