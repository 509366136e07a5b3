"""AUTO mode: PYCDSMODE=AUTO PYCDSARCHIVE=app.img python app.py.

The first run writes the archive at exit, the next ones are served from
it, an edited source refreshes just that module, concurrent first runs
leave one valid archive (one writer, under a lock), and an archive made
for another interpreter or damaged is rebuilt."""
import json
import os
import re
import subprocess

import pytest

from pipeline_fixtures import (venv, run, env_for, parse_verbose,  # noqa: F401
                               verify, write)

APP = {
    "app.py": """
        import json, colorsys, fractions
        import mylib.a
        print("result", mylib.a.f())
    """,
    "mylib/__init__.py": "",
    "mylib/a.py": """
        import mylib.b
        def f():
            return mylib.b.g()
    """,
    "mylib/b.py": """
        def g():
            return 42
    """,
}

_WROTE = re.compile(r"pycds: auto: wrote (\S+) \((.*)\): (\d+) modules, "
                    r"(\d+) reused, (\d+) read from \.pyc, (\d+) compiled, "
                    r"(\d+) left out")


def make_app(tmp_path):
    app = tmp_path / "app"
    for name, text in APP.items():
        write(app / name, text)
    return app


def auto(venv, app, img, verbose=2, **kw):
    cp = run(venv, ["app.py"], cwd=app, mode="AUTO", archive=img,
             verbose=verbose, **kw)
    assert cp.returncode == 0, cp.describe()
    cp.verbose = parse_verbose(cp.stderr)
    cp.wrote = [m.groups() for m in map(_WROTE.search, cp.stderr.splitlines())
                if m]
    return cp


def test_first_run_writes_second_is_served(venv, tmp_path):
    app = make_app(tmp_path)
    img = tmp_path / "app.img"
    first = auto(venv, app, img)
    assert "result 42" in first.stdout
    assert img.exists(), first.describe()
    assert len(first.wrote) == 1 and first.wrote[0][1] == "missing", \
        first.describe()
    assert not first.verbose.warnings, first.describe()
    assert verify(venv, img)[0] == 0
    names = {e["name"] for e in json.loads(subprocess.run(
        [venv.pycds_dump, "info", "--json", str(img)], capture_output=True,
        text=True, env=env_for()).stdout)["entries"]}
    assert {"mylib", "mylib.a", "mylib.b", "json", "colorsys",
            "fractions"} <= names

    before = os.stat(img)
    second = auto(venv, app, img)
    assert second.stdout == first.stdout
    assert {"mylib", "mylib.a", "mylib.b", "json", "colorsys",
            "fractions"} <= second.verbose.served_set, second.describe()
    assert not second.verbose.stale and not second.verbose.refused
    assert not second.wrote, second.describe()
    after = os.stat(img)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino,
                                                 before.st_mtime_ns)


def test_edit_refreshes_only_that_module(venv, tmp_path):
    app = make_app(tmp_path)
    img = tmp_path / "app.img"
    auto(venv, app, img)
    b = app / "mylib" / "b.py"
    b.write_text("def g():\n    return 43  # edited, longer\n")
    edited = auto(venv, app, img)
    assert "result 43" in edited.stdout
    assert "mylib.b" in edited.verbose.stale, edited.describe()
    assert len(edited.wrote) == 1, edited.describe()
    _, why, total, reused, pyc, compiled, left = edited.wrote[0]
    assert "stale" in why and "mylib.b" in why
    # Only the edited module is read again; the rest keeps its code.
    assert (int(compiled), int(pyc)) == (1, 0), edited.describe()
    assert int(reused) == int(total) - 1 and int(left) == 0
    again = auto(venv, app, img)
    assert "result 43" in again.stdout
    assert "mylib.b" in again.verbose.served_set, again.describe()
    assert not again.verbose.stale and not again.wrote
    # The refresh wrote the prelinked image too: the next run serves in
    # place (verbose SHARE says why when it does not).
    assert "prelinked image not used" not in again.stderr, again.describe()


def test_new_modules_below_threshold_keep_archive(venv, tmp_path):
    app = make_app(tmp_path)
    img = tmp_path / "app.img"
    auto(venv, app, img)
    # One more module: a small share of what the run loads.
    write(app / "extra.py", "X = 1\n")
    (app / "app.py").write_text((app / "app.py").read_text()
                                + "import extra\n")
    cp = auto(venv, app, img)
    assert not cp.wrote, cp.describe()
    # Threshold 0: any module not served refreshes.
    cp = auto(venv, app, img, env={"PYCDSAUTOTHRESHOLD": "0"})
    assert len(cp.wrote) == 1 and "1 not archived" in cp.wrote[0][1], \
        cp.describe()
    cp = auto(venv, app, img)
    assert "extra" in cp.verbose.served_set


@pytest.mark.parametrize("bad", ["garbage", "truncated"])
def test_unusable_archive_is_rebuilt(venv, tmp_path, bad):
    """A damaged archive is rebuilt (a file that is no archive at all is
    left alone: tests/test_safety.py)."""
    app = make_app(tmp_path)
    img = tmp_path / "app.img"
    auto(venv, app, img)
    data = img.read_bytes()
    if bad == "garbage":
        # Garbage over everything after the ELF header and pycds note.
        img.write_bytes(data[:4096] + b"not an archive\n" * 100)
    else:
        img.write_bytes(data[:len(data) // 2])
    cp = auto(venv, app, img)
    assert "result 42" in cp.stdout
    assert len(cp.wrote) == 1, cp.describe()
    assert verify(venv, img)[0] == 0
    assert "mylib.a" in auto(venv, app, img).verbose.served_set


def test_image_of_another_pycds_version_is_rewritten(venv, tmp_path):
    """After an upgrade of pycds the archive's image is of another format
    version: the archive still serves (relocated), AUTO writes it again at
    exit, and the next run uses it in place."""
    import struct
    import elfsections
    app = make_app(tmp_path)
    img = tmp_path / "app.img"
    auto(venv, app, img)
    data = bytearray(img.read_bytes())
    at = elfsections.section(bytes(data), ".pycds.prelinked").offset + 8
    version, = struct.unpack_from("<I", data, at)
    struct.pack_into("<I", data, at, version - 1)
    img.write_bytes(bytes(data))
    first = auto(venv, app, img)
    assert "result 42" in first.stdout
    assert len(first.wrote) == 1, first.describe()
    assert "made by another version of pycds" in first.wrote[0][1], \
        first.describe()
    second = auto(venv, app, img)
    assert not second.wrote, second.describe()
    assert "in place from its prelinked image" in second.stderr, \
        second.describe()


def test_concurrent_first_runs_one_archive(venv, tmp_path):
    app = make_app(tmp_path)
    img = tmp_path / "app.img"
    env = env_for("AUTO", archive=img, verbose=1)
    procs = [subprocess.Popen([venv.python, "app.py"], cwd=app, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(8)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all("result 42" in out for out, _ in outs)
    writers = sum(bool(_WROTE.search(err)) for _, err in outs)
    assert writers == 1, outs
    # One writer at a time, never a torn file: the archive is valid and
    # no temporary file is left behind.
    rc, report = verify(venv, img)
    assert rc == 0 and report["problems"] == [], report
    leftovers = [p.name for p in tmp_path.iterdir()
                 if p.name.startswith("app.img") and p.name not in
                 ("app.img", "app.img.lock", "app.img.journal")]
    assert leftovers == []
    served = auto(venv, app, img)
    assert {"mylib.a", "mylib.b"} <= served.verbose.served_set
    assert not served.wrote


def test_run_ended_by_sigterm_is_archived_by_the_next(venv, tmp_path):
    """A run stopped by SIGTERM (docker stop, systemd) never reaches AUTO's
    exit: what it loaded is noted as it loads (ARCHIVE.journal), and the
    next run that ends normally archives it; the one after is served."""
    app = make_app(tmp_path)
    img = tmp_path / "app.img"
    auto(venv, app, img)
    write(app / "server.py", """
        import os, signal
        import mylib.a, plistlib, mylib.extra
        print("serving", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
    """)
    write(app / "mylib" / "extra.py", "VALUE = 7\n")
    killed = run(venv, ["server.py"], cwd=app, mode="AUTO", archive=img,
                 verbose=2)
    assert killed.returncode == -15 and "serving" in killed.stdout, \
        killed.describe()
    assert not _WROTE.search(killed.stderr), killed.describe()
    # The next run loads neither module, and archives both.
    nxt = auto(venv, app, img, env={"PYCDSAUTOTHRESHOLD": "0"})
    assert len(nxt.wrote) == 1, nxt.describe()
    write(app / "app.py", """
        import plistlib, mylib.extra
        print("result", mylib.extra.VALUE)
    """)
    served = auto(venv, app, img)
    assert "result 7" in served.stdout
    assert {"plistlib", "mylib.extra"} <= served.verbose.served_set, \
        served.describe()
    assert not served.wrote, served.describe()
