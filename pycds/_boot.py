"""Activation from the environment, run by the .pth that `make install`
puts into site-packages (its one line imports this module only when
PYCDSMODE is set):

    PYCDSMODE        TRACE, DUMP, SHARE, AUTO or PRELINK (case does not
                     matter); PRELINK is SHARE that writes the first
                     layer's prelinked image again at exit, made for the
                     program as this run used it
    PYCDSCHECK       1: check every object of an archive's entries as they
                     are loaded (relocation from the archive), instead of
                     trusting the prelinked image whose checksums match
    PYCDSLIST        the module list (TRACE writes it, DUMP reads it)
    PYCDSARCHIVE     the archive (DUMP writes it, SHARE maps it); SHARE and
                     AUTO take several layers separated by ':' (os.pathsep),
                     the first holding a valid entry serves; AUTO writes
                     the last
    PYCDSVALIDATION  timestamp | checked-hash | unchecked: the mode DUMP
                     records, or, at SHARE, an override of it
    PYCDSVERBOSE     1: say what was not served and why; 2: also every hit
                     and miss
    PYCDSTRUST       any: use an archive owned by another user or writable
                     by others (refused by default: an archive is code)
    PYCDSAUTOTHRESHOLD  AUTO: refresh when more than this fraction of the
                     modules loaded from files were not served (0.1)
"""
import os
import sys

import pycds
from pycds import _pycds


def _warn(message):
    print("pycds: warning: %s" % message, file=sys.stderr)


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
    validation = os.environ.get("PYCDSVALIDATION") or "timestamp"
    why = pycds._not_replaceable(archive)
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
    archive = _required("PYCDSARCHIVE")
    validation = os.environ.get("PYCDSVALIDATION") or None
    if validation not in (None,) + pycds.VALIDATION_MODES:
        _warn("unknown PYCDSVALIDATION %r ignored" % validation)
        validation = None
    return archive, validation, os.environ.get("PYCDSTRUST") == "any"


def _prelink_at_exit(archive, validation, verbose, trust_any):
    """SHARE from the archive, then write its first layer's prelinked
    image at exit, taking this run as the model of those that will use
    it: the entries it used have their strings interned as the image is
    mapped, the code that ran is kept apart, and, run with address
    randomisation off, the strings it interned before serving its first
    module are predicted (docs/IMPORT.md, "Prelinked images")."""
    preinterned = _pycds.interned_ids()
    # The image is made from the archive, not from an older image.
    if not pycds.share(archive, validation, verbose, trust_any,
                       prelinked=False):
        return
    # This process writes the image; the processes it starts serve.
    os.environ["PYCDSMODE"] = "SHARE"
    first = pycds.layers(archive)[0]
    served = pycds._finders[0].archive if pycds._layer_paths[0] == first \
        else None

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
    # An archive serves the main interpreter (docs/IMPORT.md): archived
    # code objects are not shared with subinterpreters, which import
    # normally.  On 3.12+ the .pth line already checked, before the
    # extension (which subinterpreters refuse to load) was imported.
    if not _pycds.is_main_interpreter():
        return
    mode = os.environ.get("PYCDSMODE", "").upper()
    try:
        verbose = int(os.environ.get("PYCDSVERBOSE") or 0)
    except ValueError:
        verbose = 0
    if mode == "":
        return
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
        threshold = os.environ.get("PYCDSAUTOTHRESHOLD")
        try:
            threshold = 0.1 if not threshold else float(threshold)
        except ValueError:
            _warn("PYCDSAUTOTHRESHOLD %r is not a number; using 0.1"
                  % threshold)
            threshold = 0.1
        if archive:
            from pycds import _auto
            _auto.start(archive, validation, verbose, trust_any, threshold)
    elif mode == "DUMP":
        # DUMP is the whole run: the program (or prompt) never starts.
        status = _dump()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    else:
        _warn("unknown PYCDSMODE %r; pycds is off" % mode)


activate()
