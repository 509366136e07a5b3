"""Never touch what is not ours, never serve what is not in the file.

AUTO and `pycds-dump create` replace only a missing file or a pycds
archive; archives are written 0644 whatever the umask, and `verify`/`info`
judge them by SHARE's trust rule; the temporary file of a writer killed
mid-write is removed by the next write; a full disk is reported with the
file and the errno; a source saved while AUTO refreshes the archive never
leaves old code recorded under the new file's metadata."""
import contextlib
import glob
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from pipeline_fixtures import (venv, run, run_tool, env_for,  # noqa: F401
                               parse_verbose, verify, write)

APP = {
    "app.py": """
        import json, colorsys, fractions
        import mylib, mylib.other
        import pycds
        print("result", mylib.VALUE, mylib.other.OTHER)
        print("served", pycds.stats()["served"])
    """,
    "mylib/__init__.py": "VALUE = 1\n",
    "mylib/other.py": "OTHER = 1\n",
}


def make_app(tmp_path):
    app = tmp_path / "app"
    for name, text in APP.items():
        write(app / name, text)
    return app


def served(cp):
    for line in cp.stdout.splitlines():
        if line.startswith("served "):
            return int(line.split()[1])
    raise AssertionError(cp.describe("no 'served' line: "))


def temp_files(img):
    return sorted(glob.glob(glob.escape(str(img)) + ".tmp*"))


def warnings(cp):
    return [line for line in cp.stderr.splitlines()
            if line.startswith("pycds: warning:")]


def make_archive(venv, app, img):
    """A fresh archive of the app, written by AUTO."""
    cp = run(venv, ["app.py"], cwd=app, mode="AUTO", archive=img)
    assert cp.returncode == 0 and img.is_file(), cp.describe()
    return img


# ------------------------------------------------ what AUTO may replace

def _text_file(path):
    path.write_text("my notes, not an archive\n")


def _char_device(path):
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs root")


def _fifo(path):
    os.mkfifo(path)


@pytest.mark.parametrize("make,why", [
    (_text_file, "not a pycds archive"),
    (_char_device, "not a regular file"),
    (_fifo, "not a regular file"),
], ids=["text-file", "device-node", "fifo"])
def test_auto_leaves_a_file_that_is_not_an_archive(venv, tmp_path, make,
                                                   why):
    app = make_app(tmp_path)
    target = tmp_path / "app.img"
    make(target)
    before = os.lstat(target)
    content = target.read_bytes() if stat.S_ISREG(before.st_mode) else None
    for _ in range(2):
        cp = run(venv, ["app.py"], cwd=app, mode="AUTO", archive=target,
                 timeout=60)
        assert cp.returncode == 0, cp.describe()
        assert "result 1 1" in cp.stdout, cp.describe()
        said = warnings(cp)
        assert len(said) == 1 and str(target) in said[0] \
            and why in said[0], cp.describe()
        after = os.lstat(target)
        assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) \
            and after.st_ino == before.st_ino, cp.describe()
        if content is not None:
            assert target.read_bytes() == content
        assert not temp_files(target), cp.describe()


def _other_format_version(img):
    data = bytearray(img.read_bytes())
    # The pycds note follows the ELF header; its descriptor (the archive
    # header: magic, then format version) follows the note's name.
    assert data[84:92] == b"PYCDSIMG"
    data[92:96] = (int.from_bytes(data[92:96], "little") + 1).to_bytes(
        4, "little")
    img.write_bytes(bytes(data))


def _truncated(img):
    img.write_bytes(img.read_bytes()[:4096])


def _empty(img):
    img.write_bytes(b"")


@pytest.mark.parametrize("damage", [_other_format_version, _truncated,
                                    _empty],
                         ids=["other-format-version", "truncated", "empty"])
def test_auto_replaces_an_archive_it_cannot_use(venv, tmp_path, damage):
    app = make_app(tmp_path)
    img = make_archive(venv, app, tmp_path / "app.img")
    damage(img)
    cp = run(venv, ["app.py"], cwd=app, mode="AUTO", archive=img)
    assert cp.returncode == 0 and not warnings(cp), cp.describe()
    assert verify(venv, img)[0] == 0, cp.describe()
    cp = run(venv, ["app.py"], cwd=app, mode="AUTO", archive=img)
    assert served(cp) > 0, cp.describe()


def _trace_list(venv, app, tmp_path):
    lst = tmp_path / "app.list"
    cp = run(venv, ["app.py"], cwd=app, mode="TRACE", lst=lst)
    assert cp.returncode == 0 and lst.is_file(), cp.describe()
    return lst


def test_create_refuses_to_overwrite_a_file_that_is_not_an_archive(
        venv, tmp_path):
    app = make_app(tmp_path)
    lst = _trace_list(venv, app, tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    cp = run_tool(venv, ["create", "-q", "-l", lst, "-o", notes],
                  cwd=tmp_path)
    assert cp.returncode == 1, cp.describe()
    assert str(notes) in cp.stderr and "not a pycds archive" in cp.stderr \
        and "--force" in cp.stderr, cp.describe()
    assert notes.read_text() == "my notes\n"
    cp = run_tool(venv, ["create", "--json", "-l", lst, "-o", notes],
                  cwd=tmp_path)
    assert cp.returncode == 1, cp.describe()
    assert "not a pycds archive" in json.loads(cp.stdout)["error"]
    assert notes.read_text() == "my notes\n"

    cp = run_tool(venv, ["create", "-q", "--force", "-l", lst, "-o", notes],
                  cwd=tmp_path)
    assert cp.returncode == 0, cp.describe()
    assert verify(venv, notes)[0] == 0
    # An archive is replaced without --force.
    cp = run_tool(venv, ["create", "-q", "-l", lst, "-o", notes],
                  cwd=tmp_path)
    assert cp.returncode == 0, cp.describe()


def test_prelink_refuses_to_overwrite_a_file_that_is_not_an_archive(
        venv, tmp_path):
    app = make_app(tmp_path)
    lst = _trace_list(venv, app, tmp_path)
    img = tmp_path / "app.img"
    cp = run_tool(venv, ["create", "-q", "-l", lst, "-o", img], cwd=tmp_path)
    assert cp.returncode == 0, cp.describe()
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    cp = run_tool(venv, ["prelink", img, "-o", notes], cwd=tmp_path)
    assert cp.returncode == 1 and "not a pycds archive" in cp.stderr, \
        cp.describe()
    assert notes.read_text() == "my notes\n"
    cp = run_tool(venv, ["prelink", img, "-o", notes, "--force"],
                  cwd=tmp_path)
    assert cp.returncode == 0, cp.describe()
    assert verify(venv, notes)[0] == 0


# ----------------------------------------------------- umask and trust

@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_umask_002_archives_are_served(venv, tmp_path):
    app = make_app(tmp_path)
    with umask(0o002):
        lst = _trace_list(venv, app, tmp_path)
        img = tmp_path / "dumped.img"
        cp = run_tool(venv, ["create", "-q", "-l", lst, "-o", img],
                      cwd=tmp_path)
        assert cp.returncode == 0, cp.describe()
        assert stat.S_IMODE(os.stat(img).st_mode) == 0o644
        cp = run(venv, ["app.py"], cwd=app, mode="SHARE", archive=img)
        assert served(cp) > 0 and not warnings(cp), cp.describe()

        auto_img = tmp_path / "auto.img"
        make_archive(venv, app, auto_img)
        assert stat.S_IMODE(os.stat(auto_img).st_mode) == 0o644
        written = os.stat(auto_img)
        cp = run(venv, ["app.py"], cwd=app, mode="AUTO", archive=auto_img)
        assert served(cp) > 0 and not warnings(cp), cp.describe()
        assert os.stat(auto_img).st_mtime_ns == written.st_mtime_ns, \
            "AUTO rewrote an archive it could have served"
    with umask(0o077):
        private = tmp_path / "private.img"
        make_archive(venv, app, private)
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o600


def test_verify_and_info_judge_trust_as_share_does(venv, tmp_path):
    app = make_app(tmp_path)
    img = make_archive(venv, app, tmp_path / "app.img")
    assert verify(venv, img)[0] == 0
    os.chmod(img, 0o664)

    cp = run(venv, ["app.py"], cwd=app, mode="SHARE", archive=img)
    assert served(cp) == 0 and any("writable by group" in w
                                   for w in warnings(cp)), cp.describe()
    status, report = verify(venv, img)
    assert status == 2 and not report["usable"] \
        and "not trusted" in report["reason"] \
        and "writable by group" in report["reason"], report
    cp = run_tool(venv, ["verify", img], cwd=tmp_path)
    assert cp.returncode == 2 and "usable: no: not trusted" in cp.stdout, \
        cp.describe()
    cp = run_tool(venv, ["info", "--json", img], cwd=tmp_path)
    info = json.loads(cp.stdout)
    assert not info["usable"] and "writable by group" in info["reason"]

    # What makes SHARE use it makes verify accept it.
    cp = run(venv, ["app.py"], cwd=app, mode="SHARE", archive=img,
             env={"PYCDSTRUST": "any"})
    assert served(cp) > 0, cp.describe()
    for argv, env in ((["verify", "--trust-any", img], None),
                      (["verify", img], {"PYCDSTRUST": "any"})):
        cp = run_tool(venv, argv, cwd=tmp_path, env=env)
        assert cp.returncode == 0 and "usable: yes" in cp.stdout, \
            cp.describe()
    cp = run_tool(venv, ["info", "--json", "--trust-any", img], cwd=tmp_path)
    assert json.loads(cp.stdout)["usable"], cp.describe()


def test_auto_rewrites_a_group_writable_archive_it_made(venv, tmp_path):
    """What an older pycds wrote under umask 002: AUTO replaces it."""
    app = make_app(tmp_path)
    img = make_archive(venv, app, tmp_path / "app.img")
    os.chmod(img, 0o664)
    cp = run(venv, ["app.py"], cwd=app, mode="AUTO", archive=img)
    assert cp.returncode == 0 and not warnings(cp), cp.describe()
    assert stat.S_IMODE(os.stat(img).st_mode) == 0o644
    cp = run(venv, ["app.py"], cwd=app, mode="AUTO", archive=img)
    assert served(cp) > 0, cp.describe()


# -------------------------------------------- temporary files, full disk

KILLED_CREATE = """
import resource, signal, sys
from pycds.cli import main
# A writer killed mid-write: the file size limit's signal, default action
# (CPython ignores it at start-up), ends the process in the middle of
# writing the temporary file, as kill -9 would.
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
main(sys.argv[1:])
"""

LIVE_WRITER = """
import fcntl, sys, time
f = open(sys.argv[1], "wb")
fcntl.flock(f, fcntl.LOCK_EX)
f.write(b"half an archive")
f.flush()
print("writing", flush=True)
time.sleep(120)
"""


def test_next_write_removes_the_temporary_file_of_a_killed_writer(
        venv, tmp_path):
    app = make_app(tmp_path)
    lst = _trace_list(venv, app, tmp_path)
    img = tmp_path / "app.img"
    cp = run(venv, ["-c", KILLED_CREATE, "create", "-q", "-l", lst,
                    "-o", img], cwd=tmp_path)
    assert cp.returncode == -signal.SIGXFSZ, cp.describe()
    stale = temp_files(img)
    assert len(stale) == 1 and not img.exists(), cp.describe()

    # A writer that is alive keeps its temporary file (the protocol
    # docs/ROBUSTNESS.md describes: it holds an flock on it while writing).
    live = str(img) + ".tmpLIVE00"
    writer = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, live],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "writing\n"
        cp = run(venv, ["app.py"], cwd=app, mode="AUTO", archive=img)
        assert cp.returncode == 0 and not warnings(cp), cp.describe()
        assert verify(venv, img)[0] == 0
        assert temp_files(img) == [live], cp.describe()
    finally:
        writer.kill()
        writer.wait()
    cp = run_tool(venv, ["create", "-q", "-l", lst, "-o", img], cwd=tmp_path)
    assert cp.returncode == 0 and temp_files(img) == [], cp.describe()


@pytest.fixture
def full_dir(tmp_path):
    """A directory on a file system too small for an archive."""
    d = tmp_path / "full"
    d.mkdir()
    cp = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                         str(d)], capture_output=True, text=True)
    if cp.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here: %s" % cp.stderr.strip())
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_create_on_a_full_disk_names_the_file_and_the_errno(venv, tmp_path,
                                                            full_dir):
    app = make_app(tmp_path)
    lst = _trace_list(venv, app, tmp_path)
    img = full_dir / "app.img"
    cp = run_tool(venv, ["create", "-q", "-l", lst, "-o", img], cwd=tmp_path)
    assert cp.returncode == 1, cp.describe()
    assert str(img) in cp.stderr and "No space left on device" in cp.stderr \
        and "ENOSPC" in cp.stderr, cp.describe()
    cp = run_tool(venv, ["create", "--json", "-l", lst, "-o", img],
                  cwd=tmp_path)
    assert cp.returncode == 1, cp.describe()
    report = json.loads(cp.stdout)
    assert report["archive"] == str(img) and report["errno"] == "ENOSPC" \
        and str(img) in report["error"], report
    assert os.listdir(full_dir) == [], "temporary file left behind"


def test_create_over_the_file_size_limit_names_the_file_and_the_errno(
        venv, tmp_path):
    app = make_app(tmp_path)
    lst = _trace_list(venv, app, tmp_path)
    img = tmp_path / "app.img"
    cp = subprocess.run(["prlimit", "--fsize=16384", venv.pycds_dump,
                         "create", "--json", "-l", str(lst), "-o", str(img)],
                        capture_output=True, text=True, env=env_for())
    assert cp.returncode == 1, (cp.stdout, cp.stderr)
    report = json.loads(cp.stdout)
    assert report["errno"] == "EFBIG" and str(img) in report["error"], report
    assert not img.exists() and temp_files(img) == []


# --------------------------------------------- a save during a refresh

SAVE_DURING_REFRESH = """
import os, pycds._dump
# The user saves mylib/__init__.py after AUTO decided which old code
# objects to reuse and before it reads the sources.
_dump_modules = pycds._dump.dump_modules
def dump_modules(*args, **kwargs):
    with open(os.environ["SAVED_FILE"], "w") as f:
        f.write("VALUE = 22\\n")
    return _dump_modules(*args, **kwargs)
pycds._dump.dump_modules = dump_modules
"""


def test_a_save_during_a_refresh_never_serves_old_code(venv, tmp_path):
    app = make_app(tmp_path)
    img = make_archive(venv, app, tmp_path / "app.img")
    write(app / "sitecustomize_hook.py", SAVE_DURING_REFRESH)
    write(app / "app2.py", "import sitecustomize_hook\n"
          + textwrap.dedent(APP["app.py"]))
    # A stale module makes this run refresh; mylib is unchanged then.
    write(app / "mylib/other.py", "OTHER = 2\n")
    cp = run(venv, ["app2.py"], cwd=app, mode="AUTO", archive=img,
             verbose=1, env={"SAVED_FILE": app / "mylib/__init__.py"})
    assert cp.returncode == 0 and "result 1 2" in cp.stdout, cp.describe()
    assert "wrote" in cp.stderr, cp.describe()
    for _ in range(2):
        cp = run(venv, ["app.py"], cwd=app, mode="AUTO", archive=img,
                 verbose=2)
        assert cp.returncode == 0 and "result 22 2" in cp.stdout, \
            cp.describe()
    assert "mylib" in parse_verbose(cp.stderr).served_set, cp.describe()


SAVE_BETWEEN_STAT_AND_READ = """
import builtins, os, sys
from pycds.cli import main
# The user saves mylib/__init__.py while create reads it: after whatever
# pycds learnt of the file before opening it.
saved = os.environ["SAVED_FILE"]
_open = builtins.open
def open_(file, *args, **kwargs):
    if os.fspath(file) == saved:
        with _open(saved, "w") as f:
            f.write("VALUE = 3\\n")
        os.utime(saved, (1e9, 1e9))
    return _open(file, *args, **kwargs)
builtins.open = open_
sys.exit(main(sys.argv[1:]))
"""


def test_a_save_while_create_reads_a_source_never_pairs_old_pyc(venv,
                                                                 tmp_path):
    app = make_app(tmp_path)
    lst = _trace_list(venv, app, tmp_path)
    init = app / "mylib" / "__init__.py"
    # A valid .pyc of the source as it was before the save.
    cp = run(venv, ["-m", "py_compile", init], cwd=app)
    assert cp.returncode == 0, cp.describe()
    img = tmp_path / "app.img"
    cp = run(venv, ["-c", SAVE_BETWEEN_STAT_AND_READ, "create", "-q",
                    "--validation", "checked-hash", "-l", lst, "-o", img],
             cwd=tmp_path, env={"SAVED_FILE": init})
    assert cp.returncode == 0, cp.describe()
    assert init.read_text() == "VALUE = 3\n"
    cp = run(venv, ["app.py"], cwd=app, mode="SHARE", archive=img)
    assert "result 3 1" in cp.stdout, cp.describe()


def test_dump_mode_leaves_a_file_that_is_not_an_archive(venv, tmp_path):
    app = make_app(tmp_path)
    lst = _trace_list(venv, app, tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    cp = run(venv, ["app.py"], cwd=app, mode="DUMP", lst=lst, archive=notes)
    assert cp.returncode == 1, cp.describe()
    assert str(notes) in cp.stderr and "not a pycds archive" in cp.stderr, \
        cp.describe()
    assert notes.read_text() == "my notes\n"
