"""TRACE -> DUMP -> SHARE as a user runs it: a venv with pycds installed by
`make install`, the PYCDS* environment, real subprocesses.

Covers: the fixture application (tests/fixtures/apptree) served whole with
the same output as a normal run; the TRACE list written after sys.exit()
and uncaught exceptions, merged across runs and across concurrent tracers;
DUMP leaving out gone / non-compiling modules (exit status 1) and running
no module code; `pycds-dump create`; pycds not even imported when off;
the shape of pycds.stats().
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from pipeline_fixtures import (FIXTURES, Pipeline, assert_same_run, copy_tree,
                               env_for, parse_verbose, read_list, run,
                               run_tool, venv, write)

APPTREE = FIXTURES / "apptree"


def app_modules(root):
    """name -> (relative origin, package) of every module of the fixture
    application (everything but the script)."""
    found = {}
    for p in sorted(Path(root).rglob("*.py")):
        r = p.relative_to(root)
        if r.name == "app.py" and len(r.parts) == 1:
            continue
        parts = list(r.with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts.pop()
        found[".".join(parts)] = (str(r), package)
    return found


@pytest.fixture
def apptree(venv, tmp_path):
    root = copy_tree(APPTREE, tmp_path / "app")
    work = tmp_path / "work"
    work.mkdir()
    return Pipeline(venv, ["app.py"], root, work)


# --------------------------------------------------------------------------
# The fixture application


def test_apptree_served_whole(apptree):
    p = apptree
    expected = app_modules(p.cwd)
    assert len(expected) == 11, expected
    cp = p.trace()
    listed = read_list(p.lst)
    for name, (origin, package) in expected.items():
        assert name in listed, f"{name} not traced\n" + cp.describe()
        assert listed[name] == (str(p.cwd / origin), package), name
    # Namespace packages have no file: not listed.
    assert "nspkg" not in listed and "nspkg.deep" not in listed
    p.dump()
    assert p.dump_cp.stdout == "" and p.dump_cp.stderr == "", \
        p.dump_cp.describe()

    base = p.baseline(check=True)
    assert "== pickle" in base.stdout and "Traceback" in base.stdout
    share = p.share()
    assert_same_run(base, share)
    v = share.verbose
    missing = set(expected) - v.served_set
    assert not missing, f"not served: {sorted(missing)}\n" + share.describe()
    # reload() imports again through the finder: served again.
    assert v.served.count("apppkg.reloadme") == 2, v.served
    assert v.stale == {} and v.refused == {} and v.warnings == [], \
        share.describe()
    assert v.other == [], share.describe()
    # The stdlib modules the app uses came from the archive too.
    for name in ("pickle", "inspect", "dis", "importlib.resources", "pkgutil"):
        assert name in v.served_set, name

    quiet = p.share(verbose=0)
    assert_same_run(base, quiet)
    assert quiet.stderr == "", quiet.describe()


def test_apptree_stats(apptree):
    p = apptree.build()
    expected = app_modules(p.cwd)
    code = ("import runpy, sys, json\n"
            "sys.argv = ['app.py']\n"
            "runpy.run_path('app.py', run_name='__main__')\n"
            "import pycds\n"
            "print('STATS ' + json.dumps(pycds.stats()), file=sys.stderr)\n")
    cp = p.share(["-c", code], verbose=0, check=True)
    line = [ln for ln in cp.stderr.splitlines() if ln.startswith("STATS ")]
    assert len(line) == 1, cp.describe()
    stats = json.loads(line[0][6:])
    assert stats["stale"] == 0 and stats["refused"] == 0, stats
    assert stats["served"] >= len(expected) + 20, stats
    for name in expected:
        assert name not in stats["reasons"], (name, stats["reasons"][name])
    assert set(stats["reasons"].values()) <= {"not in the archive"}, stats


# --------------------------------------------------------------------------
# TRACE


def _small_app(root):
    write(root / "localmod.py", """
        import json
        VALUE = json.dumps([1, 2])
    """)
    write(root / "exits.py", """
        import sys, localmod, email.message
        print(localmod.VALUE)
        sys.exit(3)
    """)
    write(root / "raises.py", """
        import localmod, colorsys
        print(localmod.VALUE)
        raise RuntimeError("uncaught on purpose")
    """)
    write(root / "other.py", """
        import fractions
        print(fractions.Fraction(1, 3))
    """)


def test_trace_written_after_sys_exit(venv, tmp_path):
    _small_app(tmp_path)
    lst = tmp_path / "exit.lst"
    cp = run(venv, ["exits.py"], cwd=tmp_path, mode="TRACE", lst=lst)
    assert cp.returncode == 3, cp.describe()
    assert cp.stdout == "[1, 2]\n"
    mods = read_list(lst)
    assert mods["localmod"] == (str(tmp_path / "localmod.py"), False)
    assert mods["json"][1] is True and mods["email.message"][1] is False
    assert "email" in mods and "json.encoder" in mods


def test_trace_written_after_uncaught_exception(venv, tmp_path):
    _small_app(tmp_path)
    lst = tmp_path / "raise.lst"
    cp = run(venv, ["raises.py"], cwd=tmp_path, mode="TRACE", lst=lst)
    assert cp.returncode == 1, cp.describe()
    assert "RuntimeError: uncaught on purpose" in cp.stderr
    assert "pycds" not in cp.stderr, cp.describe()
    mods = read_list(lst)
    assert "localmod" in mods and "colorsys" in mods
    # The traceback module the excepthook may use, and everything else
    # loaded from files, not just the script's own imports.
    assert all(os.path.isabs(o) for o, _ in mods.values())


def test_trace_merges_runs(venv, tmp_path):
    _small_app(tmp_path)
    lst = tmp_path / "merged.lst"
    run(venv, ["other.py"], cwd=tmp_path, mode="TRACE", lst=lst, check=True)
    first = read_list(lst)
    assert "fractions" in first and "localmod" not in first
    cp = run(venv, ["raises.py"], cwd=tmp_path, mode="TRACE", lst=lst)
    assert cp.returncode == 1
    merged = read_list(lst)
    assert set(first) <= set(merged)
    assert {"fractions", "localmod", "colorsys", "json"} <= set(merged)
    # The merged list DUMPs and serves both scripts.
    img = tmp_path / "merged.img"
    run(venv, [], cwd=tmp_path, mode="DUMP", lst=lst, archive=img, check=True)
    for script, served in (("other.py", "fractions"), ("raises.py", "localmod")):
        cp = run(venv, [script], cwd=tmp_path, mode="SHARE", archive=img,
                 verbose=2)
        assert f"pycds: served {served}\n" in cp.stderr, cp.describe()


def test_concurrent_tracers(venv, tmp_path):
    n = 8
    for i in range(n):
        write(tmp_path / f"mod{i}.py", f"VALUE = {i}\n")
    # Every tracer exits at the same moment: the writes of the list race.
    write(tmp_path / "racer.py", """
        import importlib, sys, time
        i, start = int(sys.argv[1]), float(sys.argv[2])
        mod = importlib.import_module("mod%d" % i)
        if i % 2:
            import calendar
        else:
            import textwrap
        time.sleep(max(0.0, start - time.time()))
        print(mod.VALUE)
    """)
    lst = tmp_path / "race.lst"
    env = env_for("TRACE", lst=lst)
    for attempt in range(2):
        start = time.time() + 1.5
        procs = [subprocess.Popen([venv.python, "racer.py", str(i), str(start)],
                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for i in range(n)]
        for i, pr in enumerate(procs):
            out, err = pr.communicate(timeout=120)
            assert pr.returncode == 0 and out == f"{i}\n", (out, err)
            assert err == "", err
        mods = read_list(lst)
        for i in range(n):
            assert mods.get(f"mod{i}") == (str(tmp_path / f"mod{i}.py"), False)
        assert "calendar" in mods and "textwrap" in mods
    leftovers = [p.name for p in tmp_path.iterdir()
                 if p.name.startswith("race.lst") and p.name not in
                 ("race.lst", "race.lst.journal")]
    assert leftovers == [], leftovers


def test_trace_does_not_change_the_run(venv, tmp_path):
    _small_app(tmp_path)
    base = run(venv, ["other.py"], cwd=tmp_path)
    traced = run(venv, ["other.py"], cwd=tmp_path, mode="TRACE",
                 lst=tmp_path / "x.lst")
    assert (traced.returncode, traced.stdout, traced.stderr) == \
        (base.returncode, base.stdout, base.stderr)


# --------------------------------------------------------------------------
# DUMP


def _partial_app(root):
    write(root / "good.py", "GOOD = 'good'\n")
    write(root / "gone.py", "GONE = 'gone'\n")
    write(root / "broken.py", "BROKEN = 'fine for now'\n")
    write(root / "sideeffect.py", """
        import os
        open(os.environ["SIDE_EFFECT_FILE"], "w").write("ran")
        print("sideeffect ran")
    """)
    write(root / "main.py", """
        import good, sideeffect
        print(good.GOOD)
        for name in ("gone", "broken"):
            try:
                __import__(name)
            except Exception as e:
                print(name, type(e).__name__)
            else:
                print(name, "imported")
    """)


def _break(root):
    (root / "gone.py").unlink()
    write(root / "broken.py", "BROKEN = = 'no longer compiles'\n")


def test_dump_leaves_out_gone_and_broken(venv, tmp_path):
    _partial_app(tmp_path)
    side = tmp_path / "side-effect"
    p = Pipeline(venv, ["main.py"], tmp_path, tmp_path,
                 env={"SIDE_EFFECT_FILE": side})
    p.trace()
    assert side.exists()
    side.unlink()
    assert {"good", "gone", "broken", "sideeffect"} <= set(read_list(p.lst))
    _break(tmp_path)
    cp = p.dump(check=False)
    assert cp.returncode == 1, cp.describe()
    assert cp.stdout == "", cp.describe()
    reported = [ln for ln in cp.stderr.splitlines() if ln.startswith("pycds:")]
    assert any("gone" in ln for ln in reported), cp.describe()
    assert any("broken" in ln for ln in reported), cp.describe()
    assert len(reported) == 2, cp.describe()
    # No module code ran during DUMP.
    assert not side.exists(), "DUMP executed module code"
    assert "sideeffect ran" not in cp.stdout + cp.stderr

    base = p.baseline()
    assert base.stdout.splitlines()[-2:] == ["gone ModuleNotFoundError",
                                            "broken SyntaxError"], base.stdout
    share = p.share()
    assert_same_run(base, share)
    v = share.verbose
    assert {"good", "sideeffect", "json"} & v.served_set == {"good", "sideeffect"}
    assert "gone" not in v.served_set and "broken" not in v.served_set
    assert v.missed.get("gone") == "not in the archive"
    assert v.missed.get("broken") == "not in the archive"
    assert v.stale == {} and v.refused == {}


def test_dump_needs_list_and_archive(venv, tmp_path):
    cp = run(venv, [], cwd=tmp_path, mode="DUMP", lst=tmp_path / "none.lst",
             archive=tmp_path / "x.img")
    assert cp.returncode != 0
    assert "none.lst" in cp.stderr, cp.describe()
    assert not (tmp_path / "x.img").exists()
    write(tmp_path / "bad.lst", "not a list\n")
    cp = run(venv, [], cwd=tmp_path, mode="DUMP", lst=tmp_path / "bad.lst",
             archive=tmp_path / "x.img")
    assert cp.returncode != 0 and "bad.lst" in cp.stderr, cp.describe()
    assert not (tmp_path / "x.img").exists()


def test_pycds_dump_create(venv, tmp_path):
    _partial_app(tmp_path)
    p = Pipeline(venv, ["main.py"], tmp_path, tmp_path,
                 env={"SIDE_EFFECT_FILE": tmp_path / "side"})
    p.trace()
    env_img = tmp_path / "env.img"
    run(venv, [], cwd=tmp_path, mode="DUMP", lst=p.lst, archive=env_img,
        check=True)
    cli_img = tmp_path / "cli.img"
    cp = run_tool(venv, ["create", "-l", p.lst, "-o", cli_img], cwd=tmp_path)
    assert cp.returncode == 0, cp.describe()
    assert str(cli_img) in cp.stdout and "modules" in cp.stdout, cp.describe()
    # The same inputs give the same bytes, whichever way they were dumped.
    assert cli_img.read_bytes() == env_img.read_bytes()
    base = p.baseline()
    share = p.share(archive=cli_img)
    assert_same_run(base, share)
    assert {"good", "sideeffect", "gone", "broken"} <= share.verbose.served_set

    _break(tmp_path)
    partial = tmp_path / "partial.img"
    cp = run_tool(venv, ["create", "-l", p.lst, "-o", partial], cwd=tmp_path)
    assert cp.returncode == 1, cp.describe()
    assert "gone" in cp.stderr and "broken" in cp.stderr, cp.describe()
    assert partial.exists()
    share = p.share(archive=partial)
    assert_same_run(p.baseline(), share)
    assert "good" in share.verbose.served_set

    cp = run_tool(venv, ["create", "-l", tmp_path / "missing.lst", "-o",
                         tmp_path / "y.img"], cwd=tmp_path)
    assert cp.returncode != 0 and "missing.lst" in cp.stderr, cp.describe()


# --------------------------------------------------------------------------
# Off means off


CHECK_IMPORTED = ("import sys; "
                  "print(bool({'pycds', '_pycds'} & set(sys.modules)))")


@pytest.mark.parametrize("how", ["unset", "empty", "-S", "-S share", "-I share"])
def test_pycds_not_imported_when_off(venv, tmp_path, how):
    lst = tmp_path / "a.lst"
    run(venv, ["-c", "import json"], cwd=tmp_path, mode="TRACE", lst=lst,
        check=True)
    img = tmp_path / "a.img"
    run(venv, [], cwd=tmp_path, mode="DUMP", lst=lst, archive=img, check=True)
    argv, env = ["-c", CHECK_IMPORTED], {}
    if how == "empty":
        env = {"PYCDSMODE": ""}
    elif how.startswith("-"):
        argv = [how.split()[0]] + argv
    if how.endswith("share"):
        env = {"PYCDSMODE": "SHARE", "PYCDSARCHIVE": img, "PYCDSVERBOSE": "2"}
    cp = run(venv, argv, cwd=tmp_path, env=env, check=True)
    # -I still runs site (only the user site and PYTHON* are off): pycds
    # activates there.
    expected = "True" if how == "-I share" else "False"
    assert cp.stdout.strip() == expected, cp.describe()
    if expected == "False":
        assert cp.stderr == "", cp.describe()


def test_unknown_mode_warns_once(venv, tmp_path):
    cp = run(venv, ["-c", "print('ok')"], cwd=tmp_path,
             env={"PYCDSMODE": "BOGUS"})
    assert cp.returncode == 0 and cp.stdout == "ok\n"
    lines = cp.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pycds: warning:"), \
        cp.describe()


# --------------------------------------------------------------------------
# pycds.stats()


STATS_CODE = r"""
import json, sys
import pycds
s0 = pycds.stats()
import colorsys, fractions
try:
    import no_such_module_anywhere
except ImportError:
    pass
s1 = pycds.stats()
print(json.dumps({"types0": {k: type(v).__name__ for k, v in s0.items()},
                  "s0": s0, "s1": s1,
                  "reason_types": sorted({type(k).__name__ + ":" +
                                          type(v).__name__
                                          for k, v in s1["reasons"].items()})}))
"""


def test_stats_shape(venv, tmp_path):
    lst, img = tmp_path / "s.lst", tmp_path / "s.img"
    run(venv, ["-c", "import colorsys, fractions"], cwd=tmp_path,
        mode="TRACE", lst=lst, check=True)
    run(venv, [], cwd=tmp_path, mode="DUMP", lst=lst, archive=img, check=True)
    cp = run(venv, ["-c", STATS_CODE], cwd=tmp_path, mode="SHARE",
             archive=img, verbose=2, check=True)
    r = json.loads(cp.stdout)
    keys = {"served", "missed", "stale", "refused", "reasons", "kinds"}
    assert set(r["s0"]) == keys and set(r["s1"]) == keys
    assert r["types0"] == {"served": "int", "missed": "int", "stale": "int",
                           "refused": "int", "reasons": "dict",
                           "kinds": "dict"}
    assert r["reason_types"] == ["str:str"]
    s1 = r["s1"]
    assert set(s1["kinds"]) == set(s1["reasons"])
    assert s1["kinds"]["no_such_module_anywhere"] == "missed"
    assert s1["served"] - r["s0"]["served"] >= 2
    assert s1["reasons"]["no_such_module_anywhere"] == "not in the archive"
    assert s1["stale"] == 0 and s1["refused"] == 0
    # The counts agree with what PYCDSVERBOSE=2 said.
    v = parse_verbose(cp.stderr)
    assert len(v.served) == s1["served"]
    assert len(v.missed) <= s1["missed"]
    assert set(v.missed) == set(s1["reasons"])

    # Without SHARE, stats() is all zeros.
    cp = run(venv, ["-c", "import pycds, json; print(json.dumps(pycds.stats()))"],
             cwd=tmp_path, check=True)
    assert json.loads(cp.stdout) == {"served": 0, "missed": 0, "stale": 0,
                                     "refused": 0, "reasons": {},
                                     "kinds": {}}


def test_unencodable_module_name(venv, tmp_path):
    """A module name that cannot be encoded to UTF-8 (a lone surrogate, as
    in CPython's test_import.test_unencodable_filename) is simply not in
    the archive: normal import says ModuleNotFoundError.
    BUG reproducer: the finder lets UnicodeEncodeError escape from
    find_spec (PyUnicode_AsUTF8AndSize in src/finder.c)."""
    lst, img = tmp_path / "u.lst", tmp_path / "u.img"
    run(venv, ["-c", "import colorsys"], cwd=tmp_path, mode="TRACE", lst=lst,
        check=True)
    run(venv, [], cwd=tmp_path, mode="DUMP", lst=lst, archive=img, check=True)
    code = ("try:\n"
            "    __import__('mod\\udcff')\n"
            "except Exception as e:\n"
            "    print(type(e).__name__)\n")
    base = run(venv, ["-c", code], cwd=tmp_path, check=True)
    assert base.stdout == "ModuleNotFoundError\n"
    share = run(venv, ["-c", code], cwd=tmp_path, mode="SHARE", archive=img,
                check=True)
    assert share.stdout == base.stdout, share.describe()


def test_trace_lists_unloaded_modules(venv, tmp_path):
    """TRACE lists every module the run loaded (docs/IMPORT.md, TRACE:
    every module the run loaded from a file-based loader), also one the program
    removed from sys.modules before exit -- as regrtest does with each test
    module, so CPython's own test modules never reach the archive.
    BUG reproducer: pycds._trace reads sys.modules at exit only."""
    write(tmp_path / "unloaded.py", "X = 1\n")
    write(tmp_path / "main.py", """
        import sys, colorsys, unloaded
        del sys.modules["colorsys"], sys.modules["unloaded"]
    """)
    lst = tmp_path / "u.lst"
    run(venv, ["main.py"], cwd=tmp_path, mode="TRACE", lst=lst, check=True)
    listed = read_list(lst)
    assert "unloaded" in listed and "colorsys" in listed, sorted(listed)


SUBINTERPRETER = """
import sys
try:
    import _interpreters as interpreters          # 3.13
except ImportError:
    import _xxsubinterpreters as interpreters     # 3.11, 3.12
import colorsys, pycds
interp = interpreters.create()
interpreters.run_string(interp, "import colorsys, json; "
                        "assert json.loads('[1]') == [1]")
interpreters.destroy(interp)
print(colorsys.rgb_to_hsv(1, 0, 0), pycds.stats()["served"] >= 1)
"""


def test_subinterpreter_imports_normally(venv, tmp_path):
    """An archive serves the main interpreter only (docs/IMPORT.md,
    "Subinterpreters"): a subinterpreter started under SHARE, whose site
    runs the .pth again, imports normally, says nothing and does not
    crash; the main interpreter goes on being served."""
    lst, img = tmp_path / "s.lst", tmp_path / "s.img"
    run(venv, ["-c", "import colorsys, json"], cwd=tmp_path, mode="TRACE",
        lst=lst, check=True)
    run(venv, [], cwd=tmp_path, mode="DUMP", lst=lst, archive=img, check=True)
    base = run(venv, ["-c", SUBINTERPRETER.replace(
        'pycds.stats()["served"] >= 1', "True")], cwd=tmp_path, check=True)
    share = run(venv, ["-c", SUBINTERPRETER], cwd=tmp_path, mode="SHARE",
                archive=img, check=True)
    assert share.stdout == base.stdout, share.describe()
    assert share.stderr == "", share.describe()


def test_trace_ignores_edited_specs(venv, tmp_path):
    """Programs edit module specs (CPython's test_import sets
    fractions.__spec__.origin = 0): TRACE still writes the list, silently,
    with the modules as they were found."""
    code = ("import fractions, colorsys\n"
            "fractions.__spec__.origin = 0\n"
            "colorsys.__spec__ = object()\n")
    lst = tmp_path / "e.lst"
    cp = run(venv, ["-c", code], cwd=tmp_path, mode="TRACE", lst=lst,
             check=True)
    assert cp.stderr == "", cp.describe()
    text = lst.read_text()
    for name in ("fractions", "colorsys", "numbers"):
        assert "\n%s\t" % name in text, text
