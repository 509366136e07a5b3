"""examples/Dockerfile, without a Docker engine: its RUN steps run in order
in a temporary prefix (every absolute path of its ENV lines is moved under
the prefix; the build context, COPY'd to PYCDS_SRC, is this checkout),
then its CMD runs with its final ENV and must be served from both layers.
Steps after a ``# test: skip`` comment (apt-get in the base image) are
not run.  And: archives survive files getting new mtimes (an image
pipeline that rewrites timestamps) in checked-hash mode, not in
timestamp mode."""
import json
import os
import re
import shlex
import shutil
import subprocess
import time

import pytest

from conftest import (ROOT, INTERPRETERS, EMIT_AT_ONCE, child_env, emitted,
                      run_py)
from pipeline_fixtures import env_for, parse_verbose, write

DOCKERFILE = ROOT / "examples" / "Dockerfile"


def instructions(text):
    """[keyword, argument, skip] of each instruction, continuation lines
    joined; skip: a "# test: skip" comment comes right before it."""
    out, pending, current = [], False, None
    for line in text.splitlines():
        s = line.strip()
        if current is None:
            if s.startswith("#"):
                pending = pending or s.startswith("# test: skip")
                continue
            if not s:
                continue
            current, skip, pending = [], pending, False
        if not s.startswith("#"):          # comments inside a RUN
            current.append(line[:-1] if line.endswith("\\") else line)
        if not line.endswith("\\") and not s.startswith("#"):
            keyword, _, arg = " ".join(current).strip().partition(" ")
            out.append([keyword.upper(), " ".join(arg.split()), skip])
            current = None
    return out


def parse_env(arg):
    return dict(w.split("=", 1) for w in shlex.split(arg))


def pick_interp():
    for i in INTERPRETERS:
        if i.name.startswith("pyenv"):
            return i
    return INTERPRETERS[0] if INTERPRETERS else None


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    interp = pick_interp()
    if interp is None:
        pytest.skip("no target interpreter")
    prefix = tmp_path_factory.mktemp("image")
    src = os.environ.get("PYCDS_INSTALL_ROOT") or str(ROOT)

    def move(value):
        value = value.replace("/usr/src/pycds", "\0SRC\0")
        value = re.sub(r"(?<![\w.$])(/[\w./-]+)",
                       lambda m: str(prefix) + m.group(1), value)
        return value.replace("\0SRC\0", src)

    env = env_for()
    env.pop("PYTHONDONTWRITEBYTECODE", None)    # as in an image build
    steps = instructions(DOCKERFILE.read_text())
    skipped, ran, cmd = [], [], None
    for keyword, arg, skip in steps:
        if keyword == "ENV":
            for k, v in parse_env(arg).items():
                env[k] = interp.python if k == "PYTHON" else move(v)
        elif keyword == "COPY":
            what, dest = shlex.split(arg)
            dest = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], dest)
            if what != ".":                 # "." is the checkout itself
                shutil.copytree(ROOT / what, dest)
        elif keyword == "RUN":
            if skip:
                skipped.append(arg)
                continue
            t = time.monotonic()
            cp = subprocess.run(["bash", "-ec", arg], env=env, cwd=prefix,
                                capture_output=True, text=True, timeout=600)
            assert cp.returncode == 0, (
                f"RUN step failed ({cp.returncode}):\n{arg}\n"
                f"stdout:\n{cp.stdout}\nstderr:\n{cp.stderr}")
            ran.append((arg, time.monotonic() - t, cp))
        elif keyword == "CMD":
            cmd = [move(a) for a in json.loads(arg)]
    return {"env": env, "prefix": prefix, "ran": ran, "skipped": skipped,
            "cmd": cmd, "interp": interp}


def test_dockerfile_steps(image):
    assert len(image["skipped"]) == 1 and "apt-get" in image["skipped"][0]
    assert len(image["ran"]) == 3
    env = image["env"]
    archives = env["PYCDSARCHIVE"].split(":")
    assert all(os.path.exists(a) for a in archives), archives
    info = image["ran"][-1][2].stdout
    assert "== layer 1:" in info and "== layer 2:" in info


def test_cmd_is_served_from_both_layers(image):
    env = dict(image["env"], PYCDSVERBOSE="2")
    cp = subprocess.run(image["cmd"], env=env, capture_output=True, text=True,
                        cwd=image["prefix"], timeout=120)
    assert cp.returncode == 0 and cp.stdout.startswith("ready:"), cp.stderr
    v = parse_verbose(cp.stderr)
    assert {"webapp", "webapp.config", "webapp.handlers", "json",
            "argparse", "http.server", "email.utils"} <= v.served_set, \
        cp.stderr
    assert not v.stale and not v.refused and not v.warnings, cp.stderr


def test_new_mtimes_checked_hash_serves(image):
    """A pipeline that rewrites every file's mtime (BuildKit's
    rewrite-timestamp, say): the checked-hash layers still serve."""
    app = os.path.join(str(image["prefix"]), "app")
    for d, _, names in os.walk(app):
        for n in names:
            os.utime(os.path.join(d, n), (1e9, 1e9))
    env = dict(image["env"], PYCDSVERBOSE="2")
    cp = subprocess.run(image["cmd"], env=env, capture_output=True, text=True,
                        cwd=image["prefix"], timeout=120)
    v = parse_verbose(cp.stderr)
    assert {"webapp", "webapp.config", "webapp.handlers"} <= v.served_set
    assert not v.stale


def test_new_mtimes_timestamp_goes_stale(tmp_path):
    """The same in timestamp mode: every moved file is stale (imported
    normally, correct but not faster)."""
    from pipeline_fixtures import make_venv, run
    v = make_venv(pick_interp())
    app = tmp_path / "app"
    write(app / "m1.py", "A = 1\n")
    write(app / "m2.py", "import m1\n")
    for mode in ("timestamp", "checked-hash"):
        img = tmp_path / ("%s.img" % mode)
        cp = subprocess.run([v.pycds_dump, "create", "--all", "--path", app,
                             "--validation", mode, "-o", img, "--quiet"],
                            capture_output=True, text=True, env=env_for())
        assert cp.returncode == 0, cp.stderr
    for n in ("m1.py", "m2.py"):
        os.utime(app / n, (1e9, 1e9))
    stale = run(v, ["-c", "import m2"], cwd=app, mode="SHARE",
                archive=tmp_path / "timestamp.img", verbose=2)
    fine = run(v, ["-c", "import m2"], cwd=app, mode="SHARE",
               archive=tmp_path / "checked-hash.img", verbose=2)
    assert set(parse_verbose(stale.stderr).stale) == {"m1", "m2"}
    assert {"m1", "m2"} <= parse_verbose(fine.stderr).served_set


# ------------------------------------------------ an image layer (overlayfs)

LAYER_READER = r"""
import os, sys, time, pycds
archive, src, go, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, src)
assert pycds.share(archive)
import lmod0
os.write(1, ("READY %s\n" % pycds.layer_stats()[0]["prelinked"]["pages"])
         .encode())
while not os.path.exists(go):       # the deploy writes meanwhile
    time.sleep(0.01)
mods = [lmod0] + [__import__("lmod%d" % k) for k in range(1, n)]
s = pycds.stats()
emit({"served": s["served"], "values": [m.f() for m in mods],
      "pages": pycds.layer_stats()[0]["prelinked"]["pages"]})
"""


def mount_overlay(lower, upper, work, merged):
    """An overlay mount of one read-only layer, as a container runtime
    makes its root file system, or skip where this process may not."""
    if os.geteuid() != 0:
        pytest.skip("mounting an overlay needs root")
    cp = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                         f"lowerdir={lower},upperdir={upper},workdir={work}",
                         str(merged)], capture_output=True, text=True)
    if cp.returncode != 0:
        pytest.skip(f"cannot mount an overlay here: {cp.stderr.strip()}")


def test_archive_in_an_overlay_layer(interp, tmp_path):
    """An archive in an image layer (overlayfs, where a container's files
    are): processes use it in place under a read lease, as on the file
    system it was built on.  A write to it through the container's view
    (copy-up: a deploy into a running container) breaks the leases; a
    running process keeps what it mapped, copied, and every module it
    imports afterwards is whole and right."""
    n = 6
    root = tmp_path / "root"
    src = root / "src"
    src.mkdir(parents=True)
    for k in range(n):
        (src / f"lmod{k}.py").write_text(
            f"GENERATION = 1\n\ndef f():\n    return GENERATION * 100 + {k}\n")
    lst, archive = tmp_path / "app.lst", root / "app.img"
    run_py(interp, "import sys, pycds; pycds.trace(sys.argv[1]); "
                   "sys.path.insert(0, sys.argv[2]); "
                   "[__import__('lmod%d' % k) "
                   "for k in range(int(sys.argv[3]))]",
           lst, src, n, cwd=tmp_path)
    run_py(interp, "import sys, pycds; pycds.dump(sys.argv[1], sys.argv[2])",
           lst, archive, cwd=tmp_path)
    lower = tmp_path / "lower"
    shutil.copytree(root, lower)            # mtimes kept: nothing stale
    (tmp_path / "upper").mkdir()
    (tmp_path / "work").mkdir()
    mount_overlay(lower, tmp_path / "upper", tmp_path / "work", root)
    go = tmp_path / "go"
    reader = None
    try:
        reader = subprocess.Popen(
            [interp.python, "-c", EMIT_AT_ONCE + LAYER_READER, archive, src,
             go, str(n)], env=child_env(interp), cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert reader.stdout.readline() == "READY leased\n", \
            reader.stderr.read()
        # A second process, whole, beside the first.
        other = run_py(interp, "import sys, pycds; sys.path.insert(0, "
                       "sys.argv[2]); assert pycds.share(sys.argv[1]); "
                       "mods = [__import__('lmod%d' % k) for k in "
                       "range(int(sys.argv[3]))]; "
                       "print(pycds.stats()['served'], "
                       "pycds.layer_stats()[0]['prelinked']['pages'])",
                       archive, src, n, cwd=tmp_path)
        assert other.stdout.split() == [str(n), "leased"], other.stdout
        # The deploy: the archive written through the container's view.
        subprocess.run(["cp", lower / "app.img", archive], check=True,
                       timeout=60)
        assert (tmp_path / "upper" / "app.img").exists()
        go.touch()
        out, err = reader.communicate(timeout=60)
    finally:
        if reader is not None:
            reader.kill()
            reader.wait()
        subprocess.run(["umount", str(root)], check=True)
    assert reader.returncode == 0, err
    (res,) = emitted(out)
    assert res["values"] == [100 + k for k in range(n)], res
    assert res["served"] == n, res
    assert res["pages"] == "copied: the file was opened for writing", res
