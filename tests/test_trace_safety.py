"""TRACE and AUTO in a directory other users can write.

Run as root (as the suite runs here) with the list and the archive in a
world-writable sticky directory, another user (``nobody``, when this
process may switch to it) plants symbolic links and FIFOs where TRACE and
AUTO put their lock and temporary files: no file is written or created
through a link, a FIFO does not hang the program, one warning.
"""
import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from pipeline_fixtures import env_for, run, venv, write  # noqa: F401

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


@pytest.mark.parametrize("name", ["LIST.lock", "LIST.tmp<pid>", "LIST"])
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


@pytest.mark.parametrize("name", ["LIST.lock", "LIST"])
def test_trace_fifo_does_not_hang(venv, tmp_path, shared, name):
    write(tmp_path / "app" / "app.py", APP)
    lst = os.path.join(shared, "app.lst")
    plant("fifo", name.replace("LIST", lst))
    rc, out, err = run_waiting(venv, tmp_path / "app",
                               env_for("TRACE", lst=lst), lambda pid: None)
    assert (rc, out) == (0, OUT), err
    assert len(pycds_lines(err)) <= 1, err
    assert stat.S_ISFIFO(os.lstat(name.replace("LIST", lst)).st_mode)


def test_trace_refused_lock_warns_once(venv, tmp_path, shared):
    write(tmp_path / "app" / "app.py", """
        import colorsys, json, fractions
    """)
    lst = os.path.join(shared, "app.lst")
    plant("fifo", lst + ".lock")
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
