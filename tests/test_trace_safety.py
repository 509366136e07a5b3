"""TRACE and AUTO in a directory other users can write, and processes that
never reach `atexit`.

Run as root (as the suite runs here) with the list and the archive in a
world-writable sticky directory, another user (``nobody``, when this
process may switch to it) plants symbolic links and FIFOs where TRACE and
AUTO put their lock, journal and temporary files: no file is written or
created through a link, a FIFO does not hang the program, one warning.
(``LIST.tmp<pid>`` is the predictable name TRACE used before; a list's
lock was ``LIST.lock`` before the journal took its place.)

A process killed by SIGTERM (how docker and systemd stop servers), one
whose own SIGTERM handler ends it with ``os._exit``, and the workers of a
``multiprocessing.Pool`` (terminated, or ending by ``os._exit`` as fork
workers do) still have their imports recorded: TRACE appends each module
to ``LIST.journal`` as it is found (docs/IMPORT.md, TRACE).
"""
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile

import pytest

from pipeline_fixtures import (env_for, read_list, run, run_tool,  # noqa: F401
                               venv, write)

NOBODY = 65534
SETPRIV = shutil.which("setpriv")
AS_NOBODY = (os.geteuid() == 0 and SETPRIV is not None)
HANG = 30           # seconds: a run that takes longer has hung
OUT = "(0.0, 1.0, 1)\n"     # what the applications below print


@pytest.fixture
def shared():
    """A world-writable sticky directory, as /tmp is."""
    d = tempfile.mkdtemp(prefix="pycds-shared-", dir="/tmp")
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def plant(kind, path, target=None):
    """Another user's symlink (``ln -s target path``) or FIFO at path."""
    argv = (["ln", "-s", str(target), path] if kind == "symlink"
            else ["mkfifo", path])
    if AS_NOBODY:
        argv = [SETPRIV, "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY,
                "--clear-groups", *argv]
    subprocess.run(argv, check=True)
    if AS_NOBODY:
        assert os.lstat(path).st_uid == NOBODY


def pycds_lines(stderr):
    return [line for line in stderr.splitlines()
            if line.startswith("pycds")]


def victims(tmp_path):
    """A root-private file to protect, and a path nothing may create."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    victim = private / "victim"
    victim.write_text("precious\n")
    return victim, private / "created"


def assert_untouched(victim, created):
    assert victim.read_text() == "precious\n"
    assert not os.path.lexists(created), "a file was created through a link"


APP = """
    import colorsys, sys
    sys.stdin.readline()        # the test plants its files meanwhile
    print(colorsys.rgb_to_hsv(1, 0, 0))
"""


def run_waiting(venv, app, env, before_exit):
    """Run app.py, call ``before_exit(pid)`` while it waits, let it end."""
    proc = subprocess.Popen([venv.python, "app.py"], cwd=app, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        before_exit(proc.pid)
        out, err = proc.communicate("go\n", timeout=HANG)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, out, err


@pytest.mark.parametrize("name", ["LIST.journal", "LIST.tmp<pid>",
                                  "LIST"])
def test_trace_writes_nothing_through_planted_symlinks(venv, tmp_path,
                                                       shared, name):
    write(tmp_path / "app" / "app.py", APP)
    victim, created = victims(tmp_path)
    lst = os.path.join(shared, "app.lst")
    target = victim if name in ("LIST.tmp<pid>", "LIST") else created

    path = name.replace("LIST", lst)
    if "<pid>" not in path:
        plant("symlink", path, target)

    def before_exit(pid):
        # The name the tree before the fix used, known once pid is.
        if "<pid>" in path:
            plant("symlink", path.replace("<pid>", str(pid)), target)

    rc, out, err = run_waiting(venv, tmp_path / "app",
                               env_for("TRACE", lst=lst), before_exit)
    assert (rc, out) == (0, OUT), err
    assert_untouched(victim, created)
    assert len(pycds_lines(err)) <= 1, err


@pytest.mark.parametrize("name", ["LIST.journal", "LIST"])
def test_trace_fifo_does_not_hang(venv, tmp_path, shared, name):
    write(tmp_path / "app" / "app.py", APP)
    lst = os.path.join(shared, "app.lst")
    plant("fifo", name.replace("LIST", lst))
    rc, out, err = run_waiting(venv, tmp_path / "app",
                               env_for("TRACE", lst=lst), lambda pid: None)
    assert (rc, out) == (0, OUT), err
    assert len(pycds_lines(err)) <= 1, err
    assert stat.S_ISFIFO(os.lstat(name.replace("LIST", lst)).st_mode)


def test_trace_refused_journal_warns_once(venv, tmp_path, shared):
    write(tmp_path / "app" / "app.py", """
        import colorsys, json, fractions
    """)
    lst = os.path.join(shared, "app.lst")
    plant("fifo", lst + ".journal")
    cp = run(venv, ["app.py"], cwd=tmp_path / "app", mode="TRACE", lst=lst,
             timeout=HANG)
    assert cp.returncode == 0, cp.describe()
    lines = pycds_lines(cp.stderr)
    assert len(lines) == 1 and "not a regular file" in lines[0], \
        cp.describe()
    assert not os.path.exists(lst)


AUTO_APP = """
    import colorsys
    print(colorsys.rgb_to_hsv(1, 0, 0))
"""


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_auto_lock_not_followed(venv, tmp_path, shared, kind):
    write(tmp_path / "app" / "app.py", AUTO_APP)
    victim, created = victims(tmp_path)
    img = os.path.join(shared, "app.img")
    plant(kind, img + ".lock", created)
    cp = run(venv, ["app.py"], cwd=tmp_path / "app", mode="AUTO",
             archive=img, timeout=HANG)
    assert (cp.returncode, cp.stdout) == (0, OUT), \
        cp.describe()
    assert_untouched(victim, created)
    lines = pycds_lines(cp.stderr)
    assert len(lines) == 1 and "app.img.lock" in lines[0], cp.describe()
    assert not os.path.exists(img)


# --------------------------------------------------------------------------
# Processes that never reach atexit


def listed(venv, tmp_path, lst):
    """The modules DUMP archives from the list (what a user gets)."""
    img = tmp_path / "check.img"
    run(venv, [], cwd=tmp_path, mode="DUMP", lst=lst, archive=img)
    if not img.exists():
        return set()
    cp = run_tool(venv, ["info", "--json", img], cwd=tmp_path)
    assert cp.returncode == 0, cp.describe()
    return {e["name"] for e in json.loads(cp.stdout)["entries"]}


SERVER = """
    import signal, sys, time
    import colorsys, servermod
    if sys.argv[1:] == ["handler"]:
        def stop(signum, frame):
            import handlermod
            import os
            os.write(1, b"handler ran\\n")
            os._exit(5)
        signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while True:
        time.sleep(1)
"""


@pytest.mark.parametrize("handler", [False, True],
                         ids=["default", "own-handler"])
def test_trace_records_process_ended_by_sigterm(venv, tmp_path, handler):
    app = tmp_path / "app"
    write(app / "server.py", SERVER)
    write(app / "servermod.py", "X = 1\n")
    write(app / "handlermod.py", "Y = 2\n")
    lst = tmp_path / "server.lst"
    proc = subprocess.Popen([venv.python, "server.py"]
                            + (["handler"] if handler else []), cwd=app,
                            env=env_for("TRACE", lst=lst),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "ready\n", proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=HANG)
    finally:
        proc.kill()
        proc.wait()
    if handler:
        assert (proc.returncode, out) == (5, "handler ran\n"), err
    else:
        assert proc.returncode == -signal.SIGTERM, err
    assert err == ""
    names = listed(venv, tmp_path, lst)
    assert {"servermod", "colorsys"} <= names, sorted(names)
    assert ("handlermod" in names) == handler
    # The next traced run that ends normally merges the journal into the
    # list; no file per run is left.
    write(app / "other.py", "import fractions\n")
    run(venv, ["other.py"], cwd=app, mode="TRACE", lst=lst, check=True)
    assert {"servermod", "colorsys", "fractions"} <= set(read_list(lst))
    assert sorted(p.name for p in tmp_path.iterdir()
                  if p.name.startswith("server.lst")) == \
        ["server.lst", "server.lst.journal"]


POOL = """
    import multiprocessing, sys

    def work(x):
        import onlyinworker
        return onlyinworker.f(x)

    if __name__ == "__main__":
        method, end = sys.argv[1:]
        pool = multiprocessing.get_context(method).Pool(2)
        print(pool.map(work, range(4)))
        if end == "terminate":
            pool.terminate()
        else:
            pool.close()
        pool.join()
        assert "onlyinworker" not in sys.modules
"""


@pytest.mark.parametrize("method,end", [("fork", "close"),
                                        ("fork", "terminate"),
                                        ("spawn", "terminate")])
def test_trace_records_pool_workers(venv, tmp_path, method, end):
    app = tmp_path / "app"
    write(app / "pool.py", POOL)
    write(app / "onlyinworker.py", "def f(x):\n    return x * 2\n")
    lst = tmp_path / "pool.lst"
    cp = run(venv, ["pool.py", method, end], cwd=app, mode="TRACE", lst=lst,
             timeout=120)
    assert (cp.returncode, cp.stdout) == (0, "[0, 2, 4, 6]\n"), cp.describe()
    assert cp.stderr == "", cp.describe()
    mods = read_list(lst)
    assert mods.get("onlyinworker") == (str(app / "onlyinworker.py"), False)



IMPORTER = """
    import importlib, sys, time
    first, count = int(sys.argv[1]), int(sys.argv[2])
    for i in range(first, first + count):
        importlib.import_module("jmod%d" % i)
        time.sleep(0.01)
    open(sys.argv[3], "w").close()
    time.sleep(60)
"""


def test_journal_loses_nothing_to_concurrent_merges(venv, tmp_path):
    """Tracers appending while others merge and empty the journal: every
    record survives (appenders hold a shared lock, a merge the exclusive
    one), whether its process ends by SIGTERM or normally."""
    app = tmp_path / "app"
    killed, per = 4, 40
    for i in range(killed * per):
        write(app / f"jmod{i}.py", "")
    write(app / "importer.py", IMPORTER)
    write(app / "merger.py", "import colorsys\n")
    lst = tmp_path / "j.lst"
    env = env_for("TRACE", lst=lst)
    done = [tmp_path / f"done{k}" for k in range(killed)]
    procs = [subprocess.Popen([venv.python, "importer.py", str(k * per),
                               str(per), done[k]], cwd=app, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for k in range(killed)]
    try:
        merges = 0
        while not all(d.exists() for d in done):
            # Normal exits merge the journal while the others append.
            run(venv, ["merger.py"], cwd=app, env=env, check=True)
            merges += 1
            assert all(p.poll() is None for p in procs)
        assert merges >= 2
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            out, err = p.communicate(timeout=HANG)
            assert (p.returncode, out, err) == (-signal.SIGTERM, "", "")
    finally:
        for p in procs:
            p.kill()
            p.wait()
    run(venv, ["merger.py"], cwd=app, env=env, check=True)
    mods = read_list(lst)
    missing = [i for i in range(killed * per) if f"jmod{i}" not in mods]
    assert missing == [], missing


def test_path_not_utf8_does_not_stop_the_list(venv, tmp_path):
    """A module loaded from a directory whose name is not UTF-8 (CPython's
    test_import makes one) cannot be in a list, which is UTF-8 text: it is
    left out, and neither this run nor later ones fail to write the rest
    of the list or say anything on stderr (tests check their children's
    stderr)."""
    odd = os.path.join(os.fsencode(tmp_path), b"odd\xff")
    os.mkdir(odd)
    with open(os.path.join(odd, b"oddmod.py"), "w") as f:
        f.write("X = 1\n")
    write(tmp_path / "app" / "first.py", """
        import os, sys
        sys.path.insert(0, os.path.join(os.fsencode(sys.argv[1]),
                                        b"odd\\xff").decode("utf-8",
                                                           "surrogateescape"))
        import oddmod, colorsys
    """)
    write(tmp_path / "app" / "second.py", """
        import fractions
    """)
    lst = tmp_path / "app.lst"
    for argv in (["first.py", str(tmp_path)], ["second.py"]):
        cp = run(venv, argv, cwd=tmp_path / "app", mode="TRACE", lst=lst)
        assert cp.returncode == 0 and pycds_lines(cp.stderr) == [], \
            cp.describe()
    listed = read_list(lst)
    assert "colorsys" in listed and "fractions" in listed, listed
    assert "oddmod" not in listed
