"""pycds: CPython code objects served from a memory-mapped heap image.

The pipeline: ``trace`` records the modules a run loads, ``dump`` archives
them, ``share`` imports them from the archive; ``stats`` says what was
served.  The low level: ``dump_code`` writes code objects into an archive,
``load_code`` maps one and hands them back.  See docs/API.md.
"""
# Only modules the interpreter has already loaded at start-up: the .pth
# imports this package when it activates anything but SHARE's common case,
# and must not import anything a normal start does not.
import os as _os
import sys as _sys


def _built_in(directory):
    from importlib.machinery import EXTENSION_SUFFIXES
    return any(_os.path.exists(_os.path.join(directory, "_pycds" + suffix))
               for suffix in EXTENSION_SUFFIXES)


def _same_path(a, b):
    """Whether a and b name the same file or directory; False where
    either cannot be looked at."""
    try:
        return a == b or _os.path.samefile(a, b)
    except OSError:
        return False


def _extension():
    """The extension, _pycds, which lies beside this package.  None there
    (a source tree), or one of another installation imported instead, is
    said in one line, not as CPython's 'partially initialized module' or
    as a mismatch found later."""
    package = _os.path.dirname(_os.path.abspath(__file__))
    here = _os.path.dirname(package)
    try:
        import _pycds
    except ImportError:
        if _built_in(here):
            raise           # it is there: its own error says why it fails
        found = None
    else:
        found = _os.path.dirname(_pycds.__file__)
        if _same_path(found, here):
            return _pycds
        if _built_in(here):
            # Typically: the .pth activated the installed pycds, then the
            # program found this one first (the current directory).
            raise ImportError(
                "pycds in %s cannot use the _pycds imported from %s, "
                "another installation's: put this one first on sys.path "
                "(PYTHONPATH=%s), or import that one"
                % (package, found, here))
    where = " (the _pycds found is in %s)" % found if found else ""
    raise ImportError(
        "pycds in %s is not built for this interpreter%s: `make build "
        "PYTHON=%s` and import it from `make print-builddir`'s directory, "
        "or `make install`" % (package, where, _sys.executable))


_pycds = _extension()
from _pycds import ArchiveError, FrozenDict, VALIDATION_MODES
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
    # A process that imports this package (the .pth does, for any
    # activation but SHARE's common case) pays only for what it uses; the
    # functions' module costs a process 0.36 M instructions and a 13 KiB
    # .pyc (callgrind, pyenv 3.12.1, python -c pass under SHARE).
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


# What the .pth line of installs before _pycds stood beside the package
# calls: a venv reads its base interpreter's site-packages too.
_activate = _pycds.activate
