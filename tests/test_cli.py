"""pycds-dump, used the way a user would: tools/pycds-dump from the source
tree, and the console script that `make install` puts into a venv.

Self-contained (does not use conftest.py's fixtures):
  PYCDS_PYTHONS  ':'-separated target interpreters (skipped when unset)
  PYCDS_ROOT     the repository (default: the parent of this file's dir)
Each interpreter's build dir comes from `make -s print-builddir PYTHON=X`.
`make test` sets both variables and builds first.
"""

import functools
import json
import os
import re
import shutil
import struct
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("PYCDS_ROOT") or Path(__file__).resolve().parent.parent)
TOOL = ROOT / "tools" / "pycds-dump"
PYTHONS = [p for p in os.environ.get("PYCDS_PYTHONS", "").split(":") if p]

pytestmark = pytest.mark.skipif(
    not PYTHONS, reason="PYCDS_PYTHONS is not set (run `make test`)")

TIMEOUT = 300


def _format_version():
    text = (ROOT / "include" / "pycds" / "format.h").read_text()
    return int(re.search(r"#define PYCDS_FORMAT_VERSION (\d+)", text).group(1))


FORMAT_VERSION = _format_version()


def clean_env(**extra):
    """The environment minus what would leak the caller's setup into the
    process under test (PYTHONPATH, an outer make's flags)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "MAKEFLAGS", "MFLAGS",
                        "MAKELEVEL", "PYCDSMODE")}
    env.update(extra)
    return env


def run(cmd, **kwargs):
    kwargs.setdefault("env", clean_env())
    kwargs.setdefault("timeout", TIMEOUT)
    return subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kwargs)


@functools.lru_cache(maxsize=None)
def builddir(python):
    proc = run(["make", "-s", "--no-print-directory", "-C", ROOT,
                "print-builddir", "PYTHON=" + python])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    path = Path(lines[0])
    assert path.is_dir(), "%s: not built (run `make build PYTHON=%s`)" % (path, python)
    return path


def run_py(python, code, *args, cwd):
    """`python -P -c code args...` with the build dir on PYTHONPATH (-P: the
    cwd must not shadow it)."""
    env = clean_env(PYTHONPATH=str(builddir(python)))
    return run([python, "-P", "-c", textwrap.dedent(code), *args], cwd=cwd, env=env)


@functools.lru_cache(maxsize=None)
def py_facts(python):
    proc = run_py(python, """
        import json, sys, pycds
        print(json.dumps({"hexversion": sys.hexversion,
                          "version": pycds.__version__,
                          "version_info": list(sys.version_info[:3])}))
        """, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


SOURCES = {
    "demo_pkg": "'''a package'''\nfrom os import path\n",
    "demo_pkg.mod": textwrap.dedent("""\
        import sys
        CONST = (1, 2.5, 3j, b"bytes", "text", None, frozenset({1, 2}))

        def f(x, *, y=10):
            for i in range(x):
                yield i * y, CONST

        class C:
            attr = "value"
            def method(self):
                return [v for v in self.attr if v != "a"]
        """),
    "lone": "x = 1\n",
}


def make_archive(python, path, sources=SOURCES):
    proc = run_py(python, """
        import json, sys, pycds
        path, sources = sys.argv[1], json.loads(sys.argv[2])
        pycds.dump_code(path, {name: compile(src, "/src/" + name + ".py", "exec")
                               for name, src in sources.items()})
        """, path, json.dumps(sources), cwd=path.parent)
    assert proc.returncode == 0, proc.stderr
    assert path.is_file()
    return path


def tool(python, *args, cwd=None):
    return run([TOOL, "--python", python, *args], cwd=cwd or ROOT)


def elf_sections(path):
    """{name: (file offset, size)} from an ELF64 file's section headers."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "not an ELF64 file"
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
               for i in range(shnum)]
    strtab_off = headers[shstrndx][4]
    sections = {}
    for name_off, _type, _flags, _addr, offset, size in headers:
        start = strtab_off + name_off
        name = data[start:data.index(b"\0", start)].decode()
        sections[name] = (offset, size)
    return sections


def interp_id(python):
    """'pyenv-3.11.7' for a pyenv build, else the path: readable in -k."""
    parts = Path(python).parts
    if "versions" in parts and ".pyenv" in parts:
        return "pyenv-" + parts[parts.index("versions") + 1]
    return python.strip("/").replace("/", "-")


@pytest.fixture(params=PYTHONS, ids=interp_id)
def python(request):
    return request.param


@pytest.fixture
def archive(python, tmp_path):
    return make_archive(python, tmp_path / "test.img")


# ------------------------------------------------------------------ tests

def test_version(python, tmp_path):
    expected = "pycds-dump %s" % py_facts(python)["version"]
    proc = tool(python, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected
    # python -m pycds is the same CLI
    proc = run([python, "-P", "-m", "pycds", "--version"], cwd=tmp_path,
               env=clean_env(PYTHONPATH=str(builddir(python))))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_tool_from_repo_root_uses_build_dir(python):
    # `python -m pycds` run from the repository must not import the source
    # tree's pycds/ (which has no extension) instead of the build dir's.
    proc = tool(python, "--help", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "info" in proc.stdout and "verify" in proc.stdout


def test_info(python, archive):
    proc = tool(python, "info", archive)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    major, minor, micro = py_facts(python)["version_info"]
    assert "%d.%d.%d" % (major, minor, micro) in out
    assert "usable:         yes" in out
    assert "entries:        3" in out
    for name in SOURCES:
        assert name in out
    for kind in ("code", "str", "tuple"):
        assert "\n  %s " % kind in out

    proc = tool(python, "info", "--entries", "1", archive)
    assert proc.returncode == 0, proc.stderr
    head, _, table = proc.stdout.partition("first 1 of 3")
    assert table, proc.stdout
    rows = table.splitlines()[1:]
    assert len(rows) == 2 and rows[0].split()[:2] == ["name", "heap"], rows


def test_info_json(python, archive):
    proc = tool(python, "info", "--json", archive)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["key"]["hexversion"] == py_facts(python)["hexversion"]
    assert info["usable"] is True
    assert info["reason"] is None
    assert info["file_bytes"] == archive.stat().st_size
    assert info["format_version"] == FORMAT_VERSION
    assert sorted(e["name"] for e in info["entries"]) == sorted(SOURCES)
    assert all(e["heap_bytes"] > 0 for e in info["entries"])
    assert info["heap_bytes"] >= sum(e["heap_bytes"] for e in info["entries"])
    assert info["bytes_by_type"]["code"] > 0


def test_verify_ok(python, archive):
    proc = tool(python, "verify", archive)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: checksums match" in proc.stdout
    assert "usable: yes" in proc.stdout


def test_verify_corrupt_heap(python, archive):
    offset, size = elf_sections(archive)[".pycds.heap"]
    assert size > 0
    data = bytearray(archive.read_bytes())
    data[offset + size // 2] ^= 0x55
    archive.write_bytes(bytes(data))
    proc = tool(python, "verify", archive)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ok: checksums match" not in proc.stdout
    assert "problem:" in proc.stdout


@pytest.mark.parametrize("content", [None, b"", b"not an archive\n" * 100,
                                     b"\x7fELF" + b"\0" * 200],
                         ids=["missing", "empty", "text", "elf-zeros"])
def test_verify_not_an_archive(python, tmp_path, content):
    path = tmp_path / "bad.img"
    if content is not None:
        path.write_bytes(content)
    proc = tool(python, "verify", path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # verify_archive() reports such a file as a problem, or refuses to open
    # it (ArchiveError): either way, one line saying so and no traceback.
    assert (proc.stdout.startswith("problem: ")
            or proc.stderr.startswith("pycds-dump: error: ")), proc.stdout + proc.stderr
    assert "ok:" not in proc.stdout
    assert "Traceback" not in proc.stderr
    proc = tool(python, "info", path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("pycds-dump: error: "), proc.stderr


@pytest.mark.parametrize("maker,user", [
    pytest.param(a, b, id="%s-by-%s" % (interp_id(a), interp_id(b)))
    for a in PYTHONS for b in PYTHONS if a != b] or [
    pytest.param(None, None, marks=pytest.mark.skip(reason="needs two target interpreters"))])
def test_verify_foreign_archive(maker, user, tmp_path):
    archive = make_archive(maker, tmp_path / "foreign.img")
    proc = tool(user, "verify", archive)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ok: checksums match" in proc.stdout
    assert "usable: no" in proc.stdout
    proc = tool(user, "info", "--json", archive)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["usable"] is False and info["reason"]
    assert info["key"]["hexversion"] == py_facts(maker)["hexversion"]


def test_make_install_into_venv(python, tmp_path):
    venv = tmp_path / "venv"
    proc = run([python, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    vpy = venv / "bin" / "python"

    def make(target):
        # PYTHONDONTWRITEBYTECODE must not stop install from byte-compiling.
        proc = run(["make", "--no-print-directory", "-C", ROOT, target,
                    "PYTHON=%s" % vpy],
                   env=clean_env(PYTHONDONTWRITEBYTECODE="1"))
        assert proc.returncode == 0, proc.stdout + proc.stderr

    make("install")
    script = venv / "bin" / "pycds-dump"
    assert script.is_file() and os.access(script, os.X_OK)
    assert script.read_text().splitlines()[0] == "#!%s" % vpy

    # Everything from the venv alone: no PYTHONPATH, cwd outside the repo.
    proc = run([vpy, "-c", "import pycds, _pycds; print(pycds.__file__); "
                "print(_pycds.__file__)"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    package, extension = map(Path, proc.stdout.split())
    installed = package.parent
    assert str(installed).startswith(str(venv) + "/"), installed
    # The extension beside the package: the .pth imports it alone.
    assert extension.parent == installed.parent, extension

    # The activation .pth, when the package has one, goes next to the package.
    pths = sorted(p.name for p in (ROOT / "pycds").glob("*.pth"))
    for name in pths:
        assert (installed.parent / name).is_file(), name

    pys = sorted(p.stem for p in installed.glob("*.py"))
    assert "cli" in pys and "__init__" in pys
    compiled = {p.name.split(".")[0] for p in (installed / "__pycache__").glob("*.pyc")}
    assert set(pys) <= compiled, (pys, compiled)

    proc = run([script, "--version"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "pycds-dump %s" % py_facts(python)["version"]

    archive = make_archive(python, tmp_path / "a.img")
    proc = run([script, "verify", archive], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run([script, "info", "--json", archive], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["usable"] is True

    make("uninstall")
    assert not script.exists()
    assert not installed.exists()
    for name in pths:
        assert not (installed.parent / name).exists(), name
    proc = run([vpy, "-c", "import pycds"], cwd=tmp_path)
    assert proc.returncode != 0


def _tree(directory):
    """Every file and directory under ``directory``, relative."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_install_leaves_metadata_uninstall_removes_it(python, tmp_path):
    """`make install` leaves a .dist-info (pip show, importlib.metadata);
    `pip uninstall pycds` and `make uninstall` remove exactly what it
    installed, and nothing else."""
    venv = tmp_path / "venv"
    proc = run([python, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    vpy = venv / "bin" / "python"
    (venv / "bin" / "mine").write_text("a user's file\n")
    # Another package beside pycds (pip removes a directory all of whose
    # files it uninstalls: an empty venv would lose site-packages).
    (next(venv.glob("lib/python3.*/site-packages")) / "other.py").write_text(
        "X = 1\n")
    before = _tree(venv)

    def make(target):
        proc = run(["make", "--no-print-directory", "-C", ROOT, target,
                    "PYTHON=%s" % vpy], env=clean_env())
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def pip(*args):
        # The interpreter's own pip, driving the venv (which has none).
        return run([python, "-m", "pip", "--python", vpy,
                    "--disable-pip-version-check", *args], cwd=tmp_path)

    version = py_facts(python)["version"]
    for uninstall in ("pip", "make"):
        make("install")
        proc = run([vpy, "-c", "import importlib.metadata as m; "
                    "print(m.version('pycds'))"], cwd=tmp_path)
        assert proc.stdout.strip() == version, proc.stdout + proc.stderr
        proc = pip("show", "-f", "pycds")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Name: pycds" in proc.stdout and "Version: %s" % version \
            in proc.stdout, proc.stdout
        assert "00-pycds.pth" in proc.stdout and "pycds-dump" in proc.stdout
        if uninstall == "pip":
            proc = pip("uninstall", "-y", "pycds")
            assert proc.returncode == 0, proc.stdout + proc.stderr
        else:
            make("uninstall")
        assert _tree(venv) == before, uninstall
        assert pip("show", "pycds").returncode != 0


def test_import_from_unbuilt_source_tree(python, tmp_path):
    """`import pycds` from a source tree that is not built: one line that
    says so, not a circular-import error."""
    shutil.copytree(ROOT / "pycds", tmp_path / "pycds")
    proc = run([python, "-c", "import pycds"], cwd=tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("ImportError: pycds in %s is not built for this "
                           "interpreter: `make build" % (tmp_path / "pycds")), \
        proc.stderr
    assert "circular" not in proc.stderr and "partially" not in proc.stderr

    # A built _pycds elsewhere on sys.path (here: the build dir, after the
    # source tree) is another installation's: the same one line, naming it.
    proc = run([python, "-c", "import pycds"], cwd=tmp_path,
               env=clean_env(PYTHONPATH=str(builddir(python))))
    assert proc.returncode == 1
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("ImportError: pycds in %s is not built for this "
                           "interpreter (the _pycds found is in %s): `make "
                           "build" % (tmp_path / "pycds", builddir(python))), \
        proc.stderr


# ------------------------------------------------------------ create

def write_package(root):
    pkg = root / "clipkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VALUE = 1\n")
    (pkg / "sub.py").write_text("def f():\n    return 'sub'\n")
    return pkg


def test_create_from_list(python, tmp_path):
    pkg = write_package(tmp_path)
    lst = tmp_path / "app.lst"
    lst.write_text("# pycds module list v1\n"
                   "clipkg\t%s\t1\n"
                   "clipkg.sub\t%s\t0\n" % (pkg / "__init__.py", pkg / "sub.py"))
    out = tmp_path / "app.img"
    proc = tool(python, "create", "-l", lst, "-o", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 modules" in proc.stdout
    proc = tool(python, "info", "--json", out)
    assert proc.returncode == 0, proc.stderr
    entries = {e["name"]: e for e in json.loads(proc.stdout)["entries"]}
    assert set(entries) == {"clipkg", "clipkg.sub"}
    assert entries["clipkg"]["package"] and not entries["clipkg.sub"]["package"]
    assert entries["clipkg.sub"]["origin"] == str(pkg / "sub.py")
    assert tool(python, "verify", out).returncode == 0


def test_create_leaves_out_missing_modules(python, tmp_path):
    """A module whose source is gone since the traced run (a test run's
    temporary modules) is reported, not an error; one that does not
    compile still is."""
    pkg = write_package(tmp_path)
    lst = tmp_path / "app.lst"
    lst.write_text("# pycds module list v1\n"
                   "clipkg.sub\t%s\t0\n"
                   "gone\t%s\t0\n" % (pkg / "sub.py", tmp_path / "gone.py"))
    out = tmp_path / "app.img"
    proc = tool(python, "create", "-l", lst, "-o", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "source gone: %s" % (tmp_path / "gone.py") in proc.stderr
    assert "1 modules" in proc.stdout or "1 module" in proc.stdout
    assert tool(python, "verify", out).returncode == 0
    (tmp_path / "broken.py").write_text("def f(:\n")
    lst.write_text(lst.read_text() + "broken\t%s\t0\n"
                   % (tmp_path / "broken.py"))
    proc = tool(python, "create", "-l", lst, "-o", out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "SyntaxError" in proc.stderr


def test_create_checks_output_before_work(python, tmp_path):
    pkg = write_package(tmp_path)
    lst = tmp_path / "app.lst"
    text = "# pycds module list v1\nclipkg\t%s\t1\n" % (pkg / "__init__.py")
    lst.write_text(text)
    out = tmp_path / "no-such-dir" / "app.img"
    proc = tool(python, "create", "-l", lst, "-o", out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == ("pycds-dump: error: %s: the directory %s does not "
                           "exist\n" % (out, out.parent)), proc.stderr
    # The list given as the output: refused, the list kept.
    proc = tool(python, "create", "-l", lst, "-o", lst)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "would replace the list" in proc.stderr
    assert lst.read_text() == text


def _other_stdlib_json(python):
    """json's origin under another target interpreter's stdlib, or None."""
    mine = run([python, "-c", "import json; print(json.__file__)"])
    for other in PYTHONS:
        theirs = run([other, "-c", "import json; print(json.__file__)"])
        if theirs.stdout != mine.stdout:
            return theirs.stdout.strip()
    return None


def test_create_list_of_another_interpreter(python, tmp_path):
    foreign = _other_stdlib_json(python)
    if foreign is None:
        pytest.skip("needs two target interpreters with their own stdlib")
    pkg = write_package(tmp_path)
    lst = tmp_path / "app.lst"
    lst.write_text("# pycds module list v1\n"
                   "clipkg\t%s\t1\njson\t%s\t1\n"
                   % (pkg / "__init__.py", foreign))
    out = tmp_path / "app.img"
    proc = tool(python, "create", "-l", lst, "-o", out, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lib = foreign[:foreign.index("/json/")]
    assert "recorded (in part) by another interpreter: 1 modules come " \
        "from %s" % lib in proc.stderr, proc.stderr
    assert "recorded by another interpreter" in \
        json.loads(proc.stdout)["left_out"]["json"]
    proc = tool(python, "info", "--json", out)
    names = [e["name"] for e in json.loads(proc.stdout)["entries"]]
    assert names == ["clipkg"]
    # Nothing of this interpreter's: an error that says what to do.
    lst.write_text("# pycds module list v1\njson\t%s\t1\n" % foreign)
    proc = tool(python, "create", "-l", lst, "-o", out)
    assert proc.returncode == 1
    assert "recorded by another interpreter" in proc.stderr
    assert "trace again with this one" in proc.stderr


def test_create_bad_list(python, tmp_path):
    lst = tmp_path / "app.lst"
    lst.write_text("not a list\n")
    proc = tool(python, "create", "-l", lst, "-o", tmp_path / "app.img")
    assert proc.returncode == 1
    assert proc.stderr.startswith("pycds-dump: error: "), proc.stderr
    assert not (tmp_path / "app.img").exists()


def test_trace_create_share_with_installed_tool(python, tmp_path):
    """The pipeline as a user runs it after `make install` into a venv."""
    venv = tmp_path / "venv"
    assert run([python, "-m", "venv", "--without-pip", venv]).returncode == 0
    vpy = venv / "bin" / "python"
    proc = run(["make", "--no-print-directory", "-C", ROOT, "install", "PYTHON=%s" % vpy])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    write_package(tmp_path)
    app = tmp_path / "app.py"
    app.write_text("import json, clipkg.sub\nprint(clipkg.sub.f(), clipkg.VALUE)\n")
    lst, img = tmp_path / "app.lst", tmp_path / "app.img"

    proc = run([vpy, app], cwd=tmp_path,
               env=clean_env(PYCDSMODE="TRACE", PYCDSLIST=str(lst)))
    assert proc.returncode == 0 and proc.stdout == "sub 1\n", proc.stderr
    names = [line.split("\t")[0] for line in lst.read_text().splitlines()[1:]]
    assert "clipkg" in names and "clipkg.sub" in names and "json" in names

    proc = run([venv / "bin" / "pycds-dump", "create", "-l", lst, "-o", img],
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    proc = run([vpy, "-c", "import runpy, pycds; runpy.run_path(%r); "
                "print(pycds.stats()['served'] > 0)" % str(app)], cwd=tmp_path,
               env=clean_env(PYCDSMODE="SHARE", PYCDSARCHIVE=str(img)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "sub 1\nTrue\n", proc.stdout
