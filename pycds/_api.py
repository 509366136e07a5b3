"""The functions of the pycds package (docs/API.md).

``pycds`` loads this module on the first use of one of them: a process
that imports the package (the .pth does, for any activation but SHARE's
common case) often uses none of them.
"""
import os as _os
import sys as _sys

import _pycds
from _pycds import ArchiveError, VALIDATION_MODES

from . import _same_path


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


served_code = _pycds.served_code


def layers(archive):
    """The archive paths of ``archive``: a list of paths, or one string of
    paths separated by ``os.pathsep`` (':'), like ``PATH``; empty
    components are ignored, and ``{abi}`` in a path is this interpreter
    build's ``abi_tag()``."""
    if isinstance(archive, (str, bytes)) or hasattr(archive, "__fspath__"):
        return _pycds.split_layers(_fspath(archive))
    return [expand_abi(_fspath(p)) for p in archive if _fspath(p)]


def abi_tag():
    """A short name of this interpreter build, the same for every process
    that can use the same archives: version, GNU build-id prefix,
    optimisation level ('3.12.1-1a2b3c4d', '3.12.1-1a2b3c4d-O1')."""
    return _pycds.abi_tag()


def expand_abi(path):
    """``path`` with ``{abi}`` replaced by ``abi_tag()``: one archive per
    interpreter build from one setting (``PYCDSARCHIVE=app-{abi}.img``)."""
    return _pycds.expand_abi(path)


def _fspath(p):
    return p.__fspath__() if hasattr(p, "__fspath__") else p


def share(archive, validation=None, verbose=0, trust_any=False,
          prelinked=True):
    """Serve imports from ``archive``; returns False (after one warning on
    stderr) when the archive cannot be used, and imports stay normal.

    ``archive`` may name several layers (a list, or paths separated by
    ``os.pathsep``): one finder per layer, in order, so the first layer
    holding a valid entry for a module serves it; a layer that cannot be
    opened is warned about once and skipped.  Returns True when at least
    one layer is in use.

    ``validation`` overrides the mode the archive was made with;
    ``trust_any`` accepts an archive others could have written;
    ``prelinked``: map a layer's prelinked image where it fits and use
    its objects in place (False, or PYCDSCHECK=1: relocate every entry
    from the archive, checking each object)."""
    from ._layers import in_place, validation_index
    if validation is not None and validation not in VALIDATION_MODES:
        raise ValueError("validation must be one of %s" % (VALIDATION_MODES,))
    paths = layers(archive)
    if not paths:
        print("pycds: warning: no archive given; importing normally",
              file=_sys.stderr)
        return False
    return _pycds.share_layers(paths, validation_index(validation), verbose,
                               trust_any, in_place(prelinked))


def layer_stats():
    """pycds.stats() of each layer in use, in order, with its ``path``.

    Layer k+1 sees exactly the lookups layer k did not serve.
    ``prelinked``: the layer's prelinked image in use, as a dict
    (``path``, ``pages``, ``entries``, ``served`` from it, ``reinterned``
    slots and ``frozensets`` fixed up at load), or why it is not used
    (str), or None when there is none."""
    from ._layers import STACK
    return STACK.layer_stats()


def stats():
    """What SHARE did so far: counts ``served``, ``missed`` (not in the
    archive), ``stale`` (source changed), ``refused`` (another reason),
    ``reasons`` {module: why it was not served} and ``kinds`` {module:
    "missed", "stale" or "refused"}, what code should branch on.  With
    several layers each lookup counts once, by its final outcome (see
    docs/IMPORT.md); ``layer_stats()`` gives each layer's own counts."""
    from ._layers import STACK
    return STACK.stats()


def prelink(archive, out=None, trust_any=False, preinterned=None,
            served=None, hashes=None, first=None, written=None, avoid=None):
    """Write ``archive`` again (to ``out``, default: the same path, by
    atomic replacement) with a new prelinked image, the part of the file
    that SHARE maps and uses in place.  DUMP writes one with every
    archive; this makes it again, from a given run's point of view.
    ``hashes``: store the hashes of strings and bytes, for processes with
    the same hash seed only (default: when PYTHONHASHSEED is set).
    ``preinterned``: ``_pycds.interned_strings()`` as the program had it
    when it started using archives (default: now); ``served``: the
    ``_pycds.Archive`` of the same file this process served from, whose
    code that ran is put apart from the rest and whose strings are
    interned as the image is mapped.  ``first``, without ``served``: the
    names of the modules every process imports (a trace's, or those the
    interpreter imports as it starts), placed before the others with
    their strings interned as the image is mapped.  ``written``: module
    name -> the words of its objects traced runs wrote
    (``_trace.written_words``: ``firstlineno:qualname`` of code that ran,
    ``#`` and the XXH3 of a str constant hashed), kept apart with what a
    process writes.
    ``avoid``: the archives this one is layered with (paths, or a string
    as ``layers()`` takes; default: ``$PYCDSARCHIVE``), whose images'
    addresses the new image does not take (docs/FORMAT.md, "Addresses").
    Made with address randomisation off, the image predicts where the
    strings interned before are.  See docs/IMPORT.md, "Prelinked
    images"."""
    archive = _fspath(archive)
    if out is None:
        out = archive
    if hashes is None:
        hashes = _os.environ.get("PYTHONHASHSEED", "random") != "random"
    if avoid is None:
        avoid = _os.environ.get("PYCDSARCHIVE", "")
    _pycds.prelink(archive, out, hashes, trust_any, preinterned, served,
                   None if first is None else frozenset(first), written,
                   _slots_taken(layers(avoid), (archive, out)))
    return out


def _slots_taken(paths, own):
    """The slots of the images of the archives at ``paths`` but ``own``'s:
    an archive that cannot be read (``own``'s before it is written, too)
    takes none."""
    slots = set()
    for path in paths:
        try:
            if any(_same_path(path, p) for p in own):
                continue
            slot = _pycds.image_slot(path)
        except (OSError, ArchiveError):
            continue
        if slot is not None:
            slots.add(slot)
    return frozenset(slots)


def dump_code(path, codes):
    """Write the code objects of ``codes`` (name -> code) to ``path``."""
    _pycds.dump(path, sorted(codes.items()))


def load_code(path, trust_any=False):
    """Map the archive at ``path``; returns a mapping name -> code.

    An archive is code: one that a user other than its reader (or root)
    owns, or that group or others may write, is refused unless
    ``trust_any``."""
    # Not imported with the package: SHARE activation loads pycds at
    # every start, and creating an ABC subclass is not free.
    from ._code import CodeArchive
    return CodeArchive(path, trust_any)


def dump_data(path, obj):
    """Write ``obj`` to a data archive at ``path`` (atomically), frozen:
    lists become tuples, sets frozensets, dicts ``FrozenDict``s.  ``obj``
    is a tree of None, bool, int, float, complex, str, bytes, tuple,
    frozenset, list, set, dict (and FrozenDict); anything else raises
    ``ArchiveError`` (kind ``unarchivable``) naming its type and where it
    sits (``obj['users'][3]``), and nothing is written.  See
    docs/DATA.md."""
    _pycds.dump_data(_fspath(path), obj)


def load_data(path, trust_any=False, prelinked=True, verify=False):
    """The data of the data archive at ``path``, used in place: the file
    is mapped and its objects handed out where they lie (immortal on
    3.12+), its pages shared by every process that loads it, read as the
    data is used: opening costs the same whatever the data's size.
    Loading the same file again in this process, from any interpreter,
    gives the same objects.  ``verify``: hash the image's bytes first (one
    read of every page; a damaged image is then warned about and
    relocated).  ``prelinked=False`` (or PYCDSCHECK=1) relocates a
    private copy instead, every object checked.  The trust rule and
    refusals are load_code's (``ArchiveError``).  See docs/DATA.md."""
    from ._layers import in_place
    return _pycds.load_data(_fspath(path), trust_any, in_place(prelinked),
                            verify)


def inspect_archive(path, trust_any=False):
    """Describe an archive, whether or not this interpreter can use it.
    ``usable`` and ``reason`` say whether SHARE would: the archive's ABI
    key, then (unless ``trust_any``) its owner and mode, as load_code."""
    return _pycds.inspect(path, trust_any)


def verify_archive(path):
    """Every problem found checking the whole archive; empty when sound."""
    return _pycds.verify(path)


def abi_key():
    """This interpreter's ABI key, as stored in archives it writes."""
    return _pycds.abi_key()
