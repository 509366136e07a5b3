"""pycds: CPython code objects served from a memory-mapped heap image.

The pipeline: ``trace`` records the modules a run loads, ``dump`` archives
them, ``share`` imports them from the archive; ``stats`` says what was
served.  The low level: ``dump_code`` writes code objects into an archive,
``load_code`` maps one and hands them back.  See docs/API.md.
"""
# Only modules the interpreter has already loaded at start-up: activation
# from the .pth must not import anything a normal start does not.
import os as _os
import sys as _sys


def _not_built():
    """The error to raise when this pycds/ has no extension for this
    interpreter (a source tree): one line, not CPython's 'partially
    initialized module ... circular import'.  None when the extension is
    there: its own error says why it does not load."""
    from importlib.machinery import EXTENSION_SUFFIXES
    here = _os.path.dirname(_os.path.abspath(__file__))
    if any(_os.path.exists(_os.path.join(here, "_pycds" + suffix))
           for suffix in EXTENSION_SUFFIXES):
        return None
    return ImportError(
        "pycds in %s is not built for this interpreter: `make build "
        "PYTHON=%s` and import it from `make print-builddir`'s directory, "
        "or `make install`" % (here, _sys.executable))


try:
    from . import _pycds
except ImportError:
    _error = _not_built()
    if _error is None:
        raise
    raise _error from None
# Not _layers: the .pth imports this package, and SHARE's common case
# needs no module of pycds but it and _pycds (_pycds.activate).
from ._pycds import ArchiveError, FrozenDict, VALIDATION_MODES
# _collections_abc is loaded at every start (os imports it): registering
# costs no import.
import _collections_abc
_collections_abc.Mapping.register(FrozenDict)
del _collections_abc

__version__ = "0.1.0"
__all__ = ["ArchiveError", "trace", "dump", "share", "stats", "dump_code",
           "load_code", "inspect_archive", "verify_archive", "abi_key",
           "abi_tag", "expand_abi",
           "layers", "layer_stats", "prelink", "dump_data", "load_data",
           "FrozenDict"]


def __getattr__(name):
    # The .pth imports this package in every process, which then pays
    # only for what activation needs; the functions' module costs a
    # process 0.36 M instructions and a 13 KiB .pyc (callgrind, pyenv
    # 3.12.1, python -c pass under SHARE).
    if not name.startswith("_"):
        from . import _api
        if hasattr(_api, name):
            value = globals()[name] = getattr(_api, name)
            return value
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def __dir__():
    from . import _api
    return sorted(set(globals()) | {n for n in vars(_api)
                                    if not n.startswith("_")})


def _activate():
    """Activation from the environment, run by the .pth that `make
    install` puts into site-packages: SHARE's common case in C, without
    importing another module of pycds; the rest by pycds._boot."""
    if not _pycds.activate():
        from . import _boot     # noqa: F401 (activates as it is imported)
