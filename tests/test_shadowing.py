"""SHARE gives exactly the module normal import would give.

An archived top-level module ``shadowme`` (directory A on PYTHONPATH) and
an archived package ``pkg`` with a submodule ``pkg.sub``.  At SHARE time
the file system or the search path changes so that another file wins:
the other file must win (the archived entry is refused, with a reason),
and every run prints what the baseline run prints.  Unusable archives
(missing, corrupt, foreign) give one warning line, then normal import.
"""

import os
import zipfile

import pytest

from elfsections import sections
from pipeline_fixtures import (Pipeline, assert_same_run, make_venv, run,
                               venv, write)
from conftest import INTERPRETERS

REPORT = """
import sys, os
from importlib.machinery import SourceFileLoader, SourcelessFileLoader
def show(m):
    f = getattr(m, "__file__", None)
    loader = m.__spec__.loader
    kind = ("SourceFileLoader" if isinstance(loader, SourceFileLoader) else
            "SourcelessFileLoader" if isinstance(loader, SourcelessFileLoader)
            else type(loader).__name__)
    print(m.__name__, m.WHO, f and os.path.relpath(f, os.environ["TREE"]), kind)
"""

MAIN = REPORT + """
try:
    import shadowme
except ImportError as e:
    print("ImportError", type(e).__name__, e.name)
else:
    show(shadowme)
import pkg, pkg.sub
show(pkg.sub)
if os.environ.get("CHECK_CODE"):
    # Every module loaded from a source file has the code compile() gives.
    wrong = []
    for name, m in sorted(sys.modules.items()):
        spec = getattr(m, "__spec__", None)
        if spec is None or not isinstance(spec.loader, SourceFileLoader):
            continue
        with open(spec.origin, "rb") as f:
            fresh = compile(f.read(), spec.origin, "exec", dont_inherit=True)
        if spec.loader.get_code(name) != fresh:
            wrong.append(name)
    print("modules with wrong code:", wrong)
"""


@pytest.fixture
def tree(venv, tmp_path):
    """A/shadowme.py, A/pkg/{__init__,sub}.py on PYTHONPATH; the script in
    S; traced and dumped (a -c run in an empty directory too)."""
    t = tmp_path / "tree"
    write(t / "A" / "shadowme.py", "WHO = 'A'\n")
    write(t / "A" / "pkg" / "__init__.py", """
        import os
        WHO = 'pkg'
        _mode, _other = os.environ.get('PKGPATH_MODE'), os.environ.get('PKGPATH_OTHER')
        if _mode == 'replace':
            __path__ = [_other]
        elif _mode == 'prepend':
            __path__.insert(0, _other)
        elif _mode == 'append':
            __path__.append(_other)
    """)
    write(t / "A" / "pkg" / "sub.py", "WHO = 'archived sub'\n")
    write(t / "S" / "main.py", MAIN)
    (t / "empty").mkdir()
    env = {"PYTHONPATH": t / "A", "TREE": t}
    p = Pipeline(venv, ["main.py"], t / "S", tmp_path, env=env)
    p.trace()
    run(venv, ["-c", MAIN], cwd=t / "empty", mode="TRACE", lst=p.lst,
             env=env, check=True)
    p.dump()
    p.tree = t
    base = p.baseline(check=True)
    assert base.stdout == ("shadowme A A/shadowme.py SourceFileLoader\n"
                           "pkg.sub archived sub A/pkg/sub.py SourceFileLoader\n")
    share = p.share(check=True)
    assert_same_run(base, share)
    assert {"shadowme", "pkg", "pkg.sub"} <= share.verbose.served_set
    return p


def _compare(p, *, argv=None, cwd=None, env=None, expect_served=(),
             expect_refused=(), reason=None, expect_in_stdout=None):
    env = {**p.env, **(env or {})}
    kw = dict(cwd=cwd or p.cwd, env=env)
    base = run(p.venv, argv or p.argv, **kw)
    share = p.share(argv or p.argv, **kw)
    assert_same_run(base, share)
    if expect_in_stdout is not None:
        assert expect_in_stdout in share.stdout, share.describe()
    v = share.verbose
    for name in expect_served:
        assert name in v.served_set, f"{name} not served\n" + share.describe()
    for name in expect_refused:
        assert name not in v.served_set, f"{name} served\n" + share.describe()
        assert name in v.refused, f"{name} not refused\n" + share.describe()
        if reason:
            assert reason in v.refused[name], share.describe()
    return share


# --------------------------------------------------------------------------
# Top-level module


def test_pythonpath_entry_before(tree):
    t = tree.tree
    write(t / "B" / "shadowme.py", "WHO = 'B'\n")
    _compare(tree, env={"PYTHONPATH": f"{t / 'B'}:{t / 'A'}"},
             expect_refused=["shadowme"], reason="shadow",
             expect_served=["pkg", "pkg.sub"],
             expect_in_stdout="shadowme B B/shadowme.py")


def test_pythonpath_entry_after_does_not_shadow(tree):
    t = tree.tree
    write(t / "B" / "shadowme.py", "WHO = 'B'\n")
    _compare(tree, env={"PYTHONPATH": f"{t / 'A'}:{t / 'B'}"},
             expect_served=["shadowme", "pkg", "pkg.sub"],
             expect_in_stdout="shadowme A A/shadowme.py")


@pytest.mark.parametrize("kind", ["pyc", "package", "module-package"])
def test_other_kinds_before(tree, kind):
    t = tree.tree
    b = t / "B"
    if kind == "pyc":
        src = write(t / "build" / "shadowme.py", "WHO = 'B pyc'\n")
        b.mkdir()
        # Compiled by the interpreter under test: its own magic number.
        run(tree.venv, ["-c", "import py_compile, sys; py_compile.compile("
                        "sys.argv[1], cfile=sys.argv[2], doraise=True)",
                        str(src), str(b / "shadowme.pyc")],
            cwd=t, check=True)
        expect = "shadowme B pyc B/shadowme.pyc SourcelessFileLoader"
        refused = "shadowme"
    elif kind == "package":
        write(b / "shadowme" / "__init__.py", "WHO = 'B package'\n")
        expect = "shadowme B package B/shadowme/__init__.py"
        refused = "shadowme"
    else:
        write(b / "pkg.py", "WHO = 'B module'\n")
        expect = "'pkg' is not a package"   # import pkg.sub fails
        refused = "pkg"
    cp = _compare(tree, env={"PYTHONPATH": f"{b}:{t / 'A'}"},
                  expect_refused=[refused], reason="shadow")
    assert expect in cp.stdout + cp.stderr, cp.describe()


def test_script_directory(tree):
    write(tree.cwd / "shadowme.py", "WHO = 'script dir'\n")
    _compare(tree, expect_refused=["shadowme"], reason="shadow",
             expect_served=["pkg.sub"],
             expect_in_stdout="shadowme script dir S/shadowme.py")


def test_cwd_with_dash_c(tree):
    t = tree.tree
    write(t / "cwd" / "shadowme.py", "WHO = 'cwd'\n")
    _compare(tree, argv=["-c", MAIN], cwd=t / "cwd",
             expect_refused=["shadowme"], reason="shadow",
             expect_served=["pkg", "pkg.sub"],
             expect_in_stdout="shadowme cwd cwd/shadowme.py")
    # Without the file in the cwd, the archived module is served.
    _compare(tree, argv=["-c", MAIN], cwd=t / "empty",
             expect_served=["shadowme", "pkg", "pkg.sub"])


def test_package_dir_next_to_module(tree):
    t = tree.tree
    write(t / "A" / "shadowme" / "__init__.py", "WHO = 'A package'\n")
    _compare(tree, expect_refused=["shadowme"],
             expect_in_stdout="shadowme A package A/shadowme/__init__.py")


def test_module_removed(tree):
    (tree.tree / "A" / "shadowme.py").unlink()
    cp = _compare(tree, expect_in_stdout="ImportError ModuleNotFoundError "
                                         "shadowme",
                  expect_served=["pkg", "pkg.sub"])
    assert "shadowme" not in cp.verbose.served_set


def test_submodule_removed(tree):
    (tree.tree / "A" / "pkg" / "sub.py").unlink()
    cp = _compare(tree, expect_served=["shadowme", "pkg"])
    assert cp.returncode == 1 and "ModuleNotFoundError" in cp.stderr
    assert "pkg.sub" not in cp.verbose.served_set


def test_sys_path_changed_at_run_time(tree):
    t = tree.tree
    write(t / "B" / "shadowme.py", "WHO = 'B'\n")
    code = (f"import sys; sys.path.insert(0, {str(t / 'B')!r})\n" + MAIN)
    _compare(tree, argv=["-c", code], cwd=t / "empty",
             expect_refused=["shadowme"], reason="shadow",
             expect_in_stdout="shadowme B B/shadowme.py")


def test_zip_before(tree):
    t = tree.tree
    z = t / "shadow.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("shadowme.py", "WHO = 'zip'\n")
    cp = _compare(tree, env={"PYTHONPATH": f"{z}:{t / 'A'}"},
                  expect_refused=["shadowme"],
                  expect_in_stdout="shadowme zip shadow.zip/shadowme.py")
    assert "pkg.sub" in cp.verbose.served_set or "pkg.sub" in cp.verbose.refused


def test_file_created_at_run_time_after_invalidate_caches(tree):
    """A module file written by the program into an earlier search path
    entry, then importlib.invalidate_caches(): the new file wins."""
    code = ("import importlib, pkg, pkg.sub\n"      # lists the script dir
            "open('shadowme.py', 'w').write('WHO = \"written\"\\n')\n"
            "importlib.invalidate_caches()\n"
            "import shadowme; print(shadowme.WHO)\n")
    for f in (tree.tree / "w1" / "x", tree.tree / "w2" / "x"):
        f.parent.mkdir()
    base = run(tree.venv, ["-c", code], cwd=tree.tree / "w1", env=tree.env)
    share = tree.share(["-c", code], cwd=tree.tree / "w2")
    assert_same_run(base, share)
    assert base.stdout == "written\n"


@pytest.mark.xfail(strict=True, reason="docs/IMPORT.md, 'the case accepted "
                   "as the cost of speed': listings are cached until "
                   "invalidate_caches()")
def test_file_created_at_run_time(tree):
    """The same without invalidate_caches(): normal import sees the new file
    (its FileFinder rereads a directory whose mtime changed); pycds keeps
    its listing and serves the archived module (documented)."""
    code = ("import time, pkg, pkg.sub\n"
            "time.sleep(0.05)\n"
            "open('shadowme.py', 'w').write('WHO = \"written\"\\n')\n"
            "import shadowme; print(shadowme.WHO)\n")
    for f in (tree.tree / "w1" / "x", tree.tree / "w2" / "x"):
        f.parent.mkdir()
    base = run(tree.venv, ["-c", code], cwd=tree.tree / "w1", env=tree.env)
    assert base.stdout == "written\n", base.describe()
    share = tree.share(["-c", code], cwd=tree.tree / "w2")
    assert_same_run(base, share)


# --------------------------------------------------------------------------
# Directories that do not shadow: served (a namespace-portion directory is
# skipped by normal import, which goes on to the archived module).


def test_namespace_dir_before_does_not_shadow(tree):
    t = tree.tree
    (t / "B" / "shadowme").mkdir(parents=True)
    (t / "B" / "shadowme" / "data.txt").write_text("not a package\n")
    cp = _compare(tree, env={"PYTHONPATH": f"{t / 'B'}:{t / 'A'}"},
                  expect_in_stdout="shadowme A A/shadowme.py")
    assert "shadowme" in cp.verbose.served_set, (
        "a directory without __init__ before the archived module's entry "
        "does not change what normal import finds, yet SHARE refused: "
        + cp.verbose.refused.get("shadowme", "?"))


def test_plain_dir_next_to_module_does_not_shadow(tree):
    (tree.tree / "A" / "shadowme").mkdir()
    cp = _compare(tree, expect_in_stdout="shadowme A A/shadowme.py")
    assert "shadowme" in cp.verbose.served_set, (
        "A/shadowme/ without __init__ does not shadow A/shadowme.py for "
        "normal import, yet SHARE refused: "
        + cp.verbose.refused.get("shadowme", "?"))


# --------------------------------------------------------------------------
# Package __path__


@pytest.mark.parametrize("mode,other_has_sub,served", [
    ("replace", True, False),
    ("replace", False, False),
    ("prepend", True, False),
    ("prepend", False, True),
    ("append", True, True),
])
def test_package_path_changed(tree, mode, other_has_sub, served):
    t = tree.tree
    other = t / "other"
    other.mkdir()
    if other_has_sub:
        write(other / "sub.py", "WHO = 'other sub'\n")
    cp = _compare(tree, env={"PKGPATH_MODE": mode, "PKGPATH_OTHER": other},
                  expect_served=["pkg", "shadowme"])
    v = cp.verbose
    if served:
        assert "pkg.sub" in v.served_set, cp.describe()
        assert "pkg.sub archived sub A/pkg/sub.py" in cp.stdout
    else:
        assert "pkg.sub" not in v.served_set and "pkg.sub" in v.refused, \
            cp.describe()
        if other_has_sub:
            assert "pkg.sub other sub other/sub.py" in cp.stdout
        else:
            assert cp.returncode == 1 and "ModuleNotFoundError" in cp.stderr


def test_package_path_changed_by_the_program(tree):
    t = tree.tree
    write(t / "other" / "sub.py", "WHO = 'other sub'\n")
    code = (REPORT + "import pkg\n"
            f"pkg.__path__[:] = [{str(t / 'other')!r}]\n"
            "import pkg.sub\nshow(pkg.sub)\n")
    _compare(tree, argv=["-c", code], cwd=t / "empty",
             expect_served=["pkg"], expect_refused=["pkg.sub"],
             expect_in_stdout="pkg.sub other sub other/sub.py")


# --------------------------------------------------------------------------
# Archives SHARE cannot use: one warning, then normal import


def _unusable(tree, archive):
    base = tree.baseline()
    share = run(tree.venv, tree.argv, cwd=tree.cwd, mode="SHARE",
                archive=archive, env=tree.env)
    assert (share.returncode, share.stdout) == (base.returncode, base.stdout), \
        share.describe()
    lines = share.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pycds: warning:"), \
        share.describe("expected exactly one warning line: ")
    return lines[0]


def test_missing_archive(tree):
    line = _unusable(tree, tree.tree / "nope.img")
    assert "nope.img" in line


@pytest.mark.parametrize("how", ["empty", "garbage", "truncated-half",
                                 "truncated-100", "drop-last-byte"])
def test_broken_archive(tree, how):
    data = tree.img.read_bytes()
    bad = tree.tree / "bad.img"
    if how == "empty":
        data = b""
    elif how == "garbage":
        data = os.urandom(4096)
    elif how == "truncated-half":
        data = data[:len(data) // 2]
    elif how == "truncated-100":
        data = data[:100]
    else:
        data = data[:-1]
    bad.write_bytes(data)
    _unusable(tree, bad)


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_flipped_byte(tree, where):
    """A flipped byte in any section of the archive: the run prints what
    the baseline prints (never wrong code), and when pycds notices the
    damage -- at open, or when it first relocates an entry the run
    imports -- the user is told, with one warning line, at the default
    verbosity."""
    data = tree.img.read_bytes()
    env = {"CHECK_CODE": "1"}
    base = tree.baseline(env=env, check=True)
    assert "modules with wrong code: []" in base.stdout
    problems, seen = [], []
    for s in sections(data):
        if s.size == 0 or s.type == 8:          # SHT_NOBITS
            continue
        pos = {"start": 0, "middle": s.size // 2, "end": s.size - 1}[where]
        bad = bytearray(data)
        bad[s.offset + pos] ^= 0x5A
        img = tree.tree / f"flip{s.index}.img"
        img.write_bytes(bytes(bad))
        what = f"{s.name}+{pos}"
        cp = run(tree.venv, tree.argv, cwd=tree.cwd, mode="SHARE",
                 archive=img, env={**tree.env, **env})
        if (cp.returncode, cp.stdout) != (base.returncode, base.stdout):
            problems.append(f"{what}: output differs from baseline\n"
                            + cp.describe())
            continue
        lines = cp.stderr.splitlines()
        if len(lines) == 1 and lines[0].startswith("pycds: warning:"):
            seen.append(f"{what}: warned at open")
            continue
        if lines:
            problems.append(f"{what}: stderr is not one warning line\n"
                            + cp.describe())
            continue
        # Silent: acceptable only if pycds found nothing wrong for this run.
        v1 = tree.share(archive=img, env=env, verbose=1)
        if v1.verbose.refused or v1.verbose.stale:
            problems.append(
                f"{what}: corruption found at first use, but nothing said "
                f"at the default verbosity (PYCDSVERBOSE=1: "
                f"{v1.verbose.refused})")
        else:
            seen.append(f"{what}: silent, every module served, code right")
    assert not problems, "\n".join(problems) + "\n\nfine:\n" + "\n".join(seen)


def test_foreign_archive(tree):
    """An archive written by the other 3.11 interpreter (another build)."""
    others = [i for i in INTERPRETERS if i.python != tree.venv.interp.python]
    if not others:
        pytest.skip("needs a second target interpreter")
    other = make_venv(others[0])
    img = tree.tree / "foreign.img"
    cp = run(other, [], cwd=tree.cwd, mode="DUMP", lst=tree.lst, archive=img,
             env=tree.env)
    assert img.exists(), cp.describe()
    line = _unusable(tree, img)
    assert "foreign.img" in line, line


@pytest.mark.parametrize("entry", ["None", "42", "b'/nonexistent'",
                                   "os.fsencode(os.environ['TREE'] + '/B')"])
def test_non_str_sys_path_entries(tree, entry):
    """Normal import skips sys.path entries that are not str (None, ints)
    and copes with bytes entries (CPython's test_importlib
    test_None_on_sys_path puts None first).  SHARE must behave the same.
    BUG reproducer (found by test_cpython_suite): the resolver calls
    os.path.abspath() on every entry -> TypeError escapes from find_spec."""
    t = tree.tree
    write(t / "B" / "other.py", "WHO = 'other'\n")
    code = f"import os, sys\nsys.path.insert(0, {entry})\n" + MAIN
    cp = _compare(tree, argv=["-c", code], cwd=t / "empty",
                  expect_in_stdout="shadowme A A/shadowme.py")
    assert cp.returncode == 0, cp.describe()
