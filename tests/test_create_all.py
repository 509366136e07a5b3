"""`pycds-dump create --all`: every importable module of the given
directories (or of the stdlib and site-packages), found from file names
alone, none imported; a report of what was left out and why; a progress
bar on a terminal only.  And the CLI's manners: --help everywhere,
--version, exit statuses, --json."""
import json
import os
import pty
import subprocess
import sys

import pytest

from conftest import INTERPRETERS
from pipeline_fixtures import venv, run, env_for, parse_verbose, write  # noqa: F401

# An extension suffix every CPython 3 on Linux loads.
EXT_SUFFIX = ".abi3.so"


def tool(venv, *argv, **kw):
    return subprocess.run([venv.pycds_dump, *map(str, argv)],
                          capture_output=True, text=True, env=env_for(),
                          **kw)


def make_tree(root):
    marker = root / "ran.txt"
    boom = "open(%r, 'w').write('imported')\n" % str(marker)
    write(root / "a" / "plain.py", boom + "X = 1\n")
    write(root / "a" / "pkg" / "__init__.py", boom)
    write(root / "a" / "pkg" / "sub.py", "Y = 2\n")
    write(root / "a" / "pkg" / "deeper" / "__init__.py", "")
    write(root / "a" / "pkg" / "deeper" / "leaf.py", "Z = 3\n")
    write(root / "a" / "nspace" / "portion.py", "W = 4\n")
    write(root / "a" / "broken.py", "def f(:\n")
    write(root / "a" / "odd-name.py", "V = 5\n")
    write(root / "a" / "both.py", "B = 'module'\n")
    write(root / "a" / "both" / "__init__.py", "B = 'package'\n")
    write(root / "a" / "fast.py", "F = 'python'\n")
    (root / "a" / ("fast" + EXT_SUFFIX)).write_bytes(b"")
    write(root / "a" / "pkg-1.0.dist-info" / "junk.py", "")
    write(root / "b" / "plain.py", "X = 'second root'\n")
    write(root / "b" / "only_b.py", "OB = 1\n")
    return marker


def test_create_all_paths(venv, tmp_path):
    tree = tmp_path / "tree"
    marker = make_tree(tree)
    img = tmp_path / "all.img"
    cp = tool(venv, "create", "--all", "--path", tree / "a", "--path",
              tree / "b", "-o", img, "--json")
    assert cp.returncode == 0, cp.stderr
    assert not marker.exists(), "create --all ran module code"
    out = json.loads(cp.stdout)
    assert cp.stderr == ""                    # no bar, no report with --json
    info = json.loads(tool(venv, "info", "--json", img).stdout)
    entries = {e["name"]: e for e in info["entries"]}
    assert set(entries) == {"plain", "pkg", "pkg.sub", "pkg.deeper",
                            "pkg.deeper.leaf", "nspace.portion", "odd-name",
                            "both", "only_b"}
    assert entries["pkg"]["package"] and not entries["plain"]["package"]
    assert entries["plain"]["origin"] == str(tree / "a" / "plain.py")
    assert entries["both"]["origin"].endswith("both/__init__.py")
    left = out["left_out"]
    assert left["broken"].startswith("SyntaxError")
    assert left[str(tree / "b" / "plain.py")].startswith("shadowed by")
    assert "package directory" in left[str(tree / "a" / "both.py")]
    assert "extension module" in left[str(tree / "a" / "fast.py")]
    assert out["modules"] == len(entries)

    # The archive serves those directories.
    code = "import plain, pkg.deeper.leaf, nspace.portion, only_b; print('ok')"
    cp = run(venv, ["-c", code], cwd=tmp_path, mode="SHARE", archive=img,
             verbose=2, env={"PYTHONPATH": "%s:%s" % (tree / "a", tree / "b")})
    v = parse_verbose(cp.stderr)
    assert cp.stdout.strip() == "ok", cp.describe()
    assert {"plain", "pkg", "pkg.deeper", "pkg.deeper.leaf",
            "nspace.portion", "only_b"} <= v.served_set, cp.describe()


def test_create_all_leaves_out_tests(venv, tmp_path):
    """Test packages are left out unless --include-tests."""
    tree = tmp_path / "tree"
    make_tree(tree)
    write(tree / "a" / "test" / "__init__.py", "")
    write(tree / "a" / "test" / "test_x.py", "T = 1\n")
    write(tree / "a" / "pkg" / "tests" / "__init__.py", "")
    write(tree / "a" / "pkg" / "tests" / "test_sub.py", "T = 2\n")
    write(tree / "a" / "pkg" / "idle_test" / "htest.py", "T = 3\n")
    write(tree / "a" / "pkg" / "testing.py", "T = 4\n")
    img = tmp_path / "all.img"

    def names(*extra):
        cp = tool(venv, "create", "--all", "--path", tree / "a", "-o", img,
                  "--json", *extra)
        assert cp.returncode == 0, cp.stderr
        info = json.loads(tool(venv, "info", "--json", img).stdout)
        return ({e["name"] for e in info["entries"]},
                json.loads(cp.stdout)["left_out"])

    kept, left = names()
    assert not {n for n in kept if "test" in n.split(".")[-1]} - \
        {"pkg.testing"}, kept
    assert "pkg.testing" in kept and "pkg.sub" in kept
    for d in ("test", "pkg/tests", "pkg/idle_test"):
        assert left[str(tree / "a" / d)].startswith("a test package"), left
    everything, _ = names("--include-tests")
    assert {"test", "test.test_x", "pkg.tests", "pkg.tests.test_sub",
            "pkg.idle_test.htest"} <= everything, everything
    cp = tool(venv, "create", "-l", tmp_path / "x.lst", "--include-tests",
              "-o", img)
    assert cp.returncode == 2, cp.stderr


def test_report_and_progress_bar(venv, tmp_path):
    tree = tmp_path / "tree"
    make_tree(tree)
    img = tmp_path / "all.img"
    # Not a terminal: a report, no bar.
    cp = tool(venv, "create", "--all", "--path", tree / "a", "-o", img)
    assert cp.returncode == 0
    assert "\r" not in cp.stderr
    assert "left out 1: SyntaxError" in cp.stderr
    assert "broken" in cp.stderr and "modules" in cp.stdout
    # A terminal on stderr: the bar.
    master, slave = pty.openpty()
    p = subprocess.Popen([venv.pycds_dump, "create", "--all", "--path",
                          tree / "a", "-o", img], stdout=subprocess.PIPE,
                         stderr=slave, env=env_for(), text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    p.wait(timeout=60)
    os.close(master)
    shown = b"".join(chunks).decode()
    assert p.returncode == 0
    assert "\r[" in shown and "100%" in shown, shown


def test_cli_manners(venv, tmp_path):
    for sub in ([], ["info"], ["verify"], ["create"]):
        cp = tool(venv, *sub, "--help")
        assert cp.returncode == 0 and "usage:" in cp.stdout
        assert "exit status" in cp.stdout, sub
    cp = tool(venv, "--version")
    assert cp.returncode == 0 and cp.stdout.startswith("pycds-dump ")
    assert tool(venv).returncode == 2
    assert tool(venv, "create", "-o", tmp_path / "x.img").returncode == 2
    assert tool(venv, "create", "-l", "x", "--all",
                "-o", tmp_path / "x.img").returncode == 2
    assert tool(venv, "info", tmp_path / "missing.img").returncode == 1
    cp = tool(venv, "verify", "--json", tmp_path / "missing.img")
    assert cp.returncode == 1


@pytest.mark.skipif(not any(i.name.startswith("debian") for i in INTERPRETERS),
                    reason="Debian's python3.11 is not a target")
def test_create_all_default_roots(tmp_path):
    """The default: Debian's stdlib + dist-packages (the pyenv tree, with
    sympy, moto, ..., takes ~20 s and 380 MiB: see bench/CREATE_ALL.md)."""
    from pipeline_fixtures import make_venv
    interp = next(i for i in INTERPRETERS if i.name.startswith("debian"))
    v = make_venv(interp)
    img = tmp_path / "all.img"
    cp = tool(v, "create", "--all", "-o", img, "--json", timeout=600)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert any(r.endswith("python3.11") for r in out["roots"]), out["roots"]
    info = json.loads(tool(v, "info", "--json", img).stdout)
    names = {e["name"] for e in info["entries"]}
    assert {"json", "json.decoder", "asyncio.events", "email.mime.text",
            "xml.etree.ElementTree"} <= names
    assert tool(v, "verify", img).returncode == 0
    cp = run(v, ["-c", "import json, email.mime.text, asyncio"],
             cwd=tmp_path, mode="SHARE", archive=img, verbose=2)
    assert cp.returncode == 0, cp.describe()
    vb = parse_verbose(cp.stderr)
    assert {"json", "email.mime.text", "asyncio.events"} <= vb.served_set
    assert not vb.refused and not vb.stale, cp.describe()
