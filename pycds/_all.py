"""`pycds-dump create --all`: every importable module under the
interpreter's stdlib and site-packages (or given directories), found from
the files alone: nothing is imported.

Each directory is a ``sys.path`` entry (a root).  A name is importable
when it has no '.' (``__import__`` takes names an ``import`` statement
cannot spell: sysconfig imports ``_sysconfigdata__linux_x86_64-linux-gnu``).  Module names come from
file paths the way importlib's ``FileFinder`` resolves them in one
directory: a package directory (with ``__init__.py``) wins over an
extension module, which wins over ``name.py``, which wins over a
sourceless ``name.pyc``; a directory without ``__init__.py`` is a
namespace package whose modules are importable too.  Across roots the
first root (in ``sys.path`` order) that provides a name wins.  Everything
not archived is reported with its reason.

Test packages (``test``, ``tests``, ``*_test``, ``*_tests``: CPython's own
suite, ``idlelib.idle_test``, the tests that packages ship) are left out
unless asked for: programs do not import them, and CPython's ``test``
package alone is about half of the stdlib.
"""
import os
import site
import sys
import sysconfig
from importlib.machinery import EXTENSION_SUFFIXES

from ._left_out import LeftOut

# Directories that are never packages: other roots or build leftovers.
_NEVER = {"__pycache__", "site-packages", "dist-packages"}
_NOT_IMPORTABLE = LeftOut("not importable", "not an importable module name")


def default_roots():
    """The stdlib and site-packages directories, in sys.path order."""
    paths = sysconfig.get_paths()
    wanted = [paths["stdlib"], paths["platstdlib"]]
    try:
        wanted += site.getsitepackages()
    except AttributeError:                 # an old virtualenv's site.py
        wanted += [paths["purelib"], paths["platlib"]]
    if site.ENABLE_USER_SITE:
        wanted.append(site.getusersitepackages())
    wanted = [os.path.realpath(p) for p in wanted if os.path.isdir(p)]
    ordered = []
    for p in sys.path:
        real = os.path.realpath(p) if p else None
        if real in wanted and real not in ordered:
            ordered.append(real)
    ordered += [p for p in wanted if p not in ordered]
    return ordered


def _ext_name(filename):
    for suffix in EXTENSION_SUFFIXES:
        if filename.endswith(suffix):
            return filename[:-len(suffix)]
    return None


def is_test_package(name):
    """Whether a package directory called ``name`` holds tests."""
    return name in ("test", "tests") or name.endswith(("_test", "_tests"))


def find_modules(roots, include_tests=False):
    """(modules, skipped): modules is name -> (origin, package) of every
    module to archive; skipped is path -> why for every ``.py`` (or
    ``.pyc``) file, or test package directory, that is not archived."""
    modules, skipped = {}, {}
    roots = [os.path.abspath(r) for r in roots]
    root_set = {os.path.realpath(r) for r in roots}
    seen_dirs = set()

    def claim(name, origin, package):
        if name in modules:
            skipped[origin] = LeftOut("shadowed",
                                      "shadowed by %s" % modules[name][0])
        else:
            modules[name] = (origin, package)

    def scan(directory, prefix):
        real = os.path.realpath(directory)
        if real in seen_dirs:
            return
        seen_dirs.add(real)
        try:
            names = sorted(os.listdir(directory))
        except OSError as e:
            skipped[directory] = LeftOut("cannot list",
                                         "cannot list: %s" % e.strerror)
            return
        dirs, sources, pycs, exts = [], {}, {}, set()
        for n in names:
            path = os.path.join(directory, n)
            if n.endswith(".py"):
                if os.path.isfile(path):
                    sources[n[:-3]] = path
            elif n.endswith(".pyc"):
                if os.path.isfile(path):
                    pycs[n[:-4]] = path
            elif _ext_name(n) is not None:
                exts.add(_ext_name(n))
            elif os.path.isdir(path):
                dirs.append(n)
        packages, namespaces = set(), []
        for d in dirs:
            path = os.path.join(directory, d)
            if (d in _NEVER or "." in d
                    or os.path.realpath(path) in root_set):
                continue
            if not include_tests and is_test_package(d):
                skipped[path] = LeftOut(
                    "test package", "a test package (--include-tests keeps it)")
                continue
            if os.path.isfile(os.path.join(path, "__init__.py")):
                packages.add(d)
            elif d.isidentifier():
                # Not 'foo-1.0.dist-info', 'lib-dynload': data, not code.
                namespaces.append(d)
        for stem, path in sources.items():
            if stem == "__init__" and prefix:
                continue                  # the package itself, below
            if "." in stem or not stem:
                skipped[path] = _NOT_IMPORTABLE
            elif stem in packages:
                skipped[path] = LeftOut(
                    "another file wins", "the package directory %s wins" % stem)
            elif stem in exts:
                skipped[path] = LeftOut(
                    "another file wins",
                    "an extension module of the same name wins")
            else:
                claim(prefix + stem, path, False)
        for stem, path in pycs.items():
            if stem == "__init__" or stem in sources:
                continue
            if "." in stem or not stem:
                skipped[path] = _NOT_IMPORTABLE
            elif stem in packages or stem in exts:
                skipped[path] = LeftOut("another file wins",
                                        "another file of the same name wins")
            else:
                claim(prefix + stem, path, False)
        for d in sorted(packages):
            path = os.path.join(directory, d)
            claim(prefix + d, os.path.join(path, "__init__.py"), True)
            scan(path, prefix + d + ".")
        for d in namespaces:
            if d in sources or d in pycs or d in exts:
                continue                  # a module of that name wins
            scan(os.path.join(directory, d), prefix + d + ".")

    for root in roots:
        if not os.path.isdir(root):
            skipped[root] = LeftOut("not a directory", "not a directory")
            continue
        scan(root, "")
    return modules, skipped
