"""Fixtures and helpers for the pipeline tests (TRACE -> DUMP -> SHARE run
the way a user runs them).

Each target interpreter (conftest.INTERPRETERS) gets one venv per session:
``<python> -m venv --without-pip --system-site-packages DIR`` then
``make -s -C <repo> install PYTHON=DIR/bin/python``, which puts pycds and
``00-pycds.pth`` into the venv's site-packages and ``pycds-dump`` into its
bin dir.  Children run the venv's python with an explicit environment: the
caller's environment minus every PYTHON*/PYCDS* variable, plus a fixed
hash seed, no user site, no .pyc writing (never into the stdlib), and
whatever PYCDS* variables the test sets.

PYCDS_INSTALL_ROOT (optional) names another checkout to `make install`
from (say, `git archive HEAD` while the working tree does not build).

Test files import what they use:
    from pipeline_fixtures import venv, Pipeline, run, ...
(importing the ``venv`` fixture into the test module registers it).
"""

import atexit
import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

from conftest import INTERPRETERS, ROOT, TESTS, _bare_env, _rc_text, _tail

FIXTURES = TESTS / "fixtures"
TIMEOUT = 300
HASHSEED = "0"
# Where prelinked images are mapped: 512 slots of 64 GiB from
# 0x200000000000 (include/pycds/format.h, PYCDS_PRELINK_SLOTS_START).
SLOT_SIZE = 64 << 30
NSLOTS = 512
IMAGE_RANGE = range(0x200000000000, 0x200000000000 + NSLOTS * SLOT_SIZE)
# A slot holds an image's areas, a sixth of it each, page-aligned
# (PYCDS_PRELINK_AREA_MAX), in this order (enum pycds_area).
AREAS = ("strings", "data", "fixed", "code", "hot code", "run-once")


def image_area(address):
    """The name of the area of an image that ``address`` lies in."""
    return AREAS[(address - IMAGE_RANGE.start) % SLOT_SIZE
                 // (SLOT_SIZE // len(AREAS) & ~4095)]


@dataclasses.dataclass
class Venv:
    interp: object       # conftest.Interp
    dir: Path

    @property
    def python(self):
        return str(self.dir / "bin" / "python")

    @property
    def pycds_dump(self):
        return str(self.dir / "bin" / "pycds-dump")

    @property
    def is_pyenv(self):
        return self.interp.name.startswith("pyenv")

    @property
    def id(self):
        return self.interp.id

    def __str__(self):
        return self.id


_venvs = {}
_venv_root = None


def make_venv(interp):
    """The session's venv for ``interp`` (created and installed once)."""
    global _venv_root
    if interp.python in _venvs:
        return _venvs[interp.python]
    if _venv_root is None:
        _venv_root = tempfile.mkdtemp(prefix="pycds-venvs-")
        atexit.register(shutil.rmtree, _venv_root, True)
    d = Path(_venv_root) / interp.id
    env = {k: v for k, v in _bare_env().items()
           if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    cp = subprocess.run([interp.python, "-m", "venv", "--without-pip",
                         "--system-site-packages", str(d)],
                        capture_output=True, text=True, env=env, timeout=120)
    if cp.returncode != 0:
        pytest.fail(f"venv for {interp.id} failed:\n{cp.stdout}\n{cp.stderr}",
                    pytrace=False)
    src = os.environ.get("PYCDS_INSTALL_ROOT") or str(ROOT)
    cp = subprocess.run(["make", "-s", "-C", src, "install",
                         f"PYTHON={d}/bin/python"],
                        capture_output=True, text=True, env=env, timeout=600)
    if cp.returncode != 0:
        pytest.fail(f"make install PYTHON={d}/bin/python failed "
                    f"(rc={cp.returncode}):\n{cp.stdout}\n{cp.stderr}",
                    pytrace=False)
    _add_workload_packages(interp, d)
    v = Venv(interp, d)
    _venvs[interp.python] = v
    return v


def _add_workload_packages(interp, venv_dir):
    """Puts the pinned workload packages `make workloads` installed for
    ``interp`` (boto3, flask, jsonschema) on the venv's sys.path, before
    the interpreter's own site-packages, through a .pth of the venv's."""
    packages = Path(interp.builddir) / "workloads"
    if not packages.is_dir():
        return
    for site_packages in venv_dir.glob("lib/python3.*/site-packages"):
        (site_packages / "pycds-test-workloads.pth").write_text(
            f"{packages}\n")


@pytest.fixture(scope="session", params=INTERPRETERS,
                ids=[i.id for i in INTERPRETERS])
def venv(request):
    """A venv of one target interpreter with pycds installed into it."""
    return make_venv(request.param)


# --------------------------------------------------------------------------
# Running


def env_for(mode=None, lst=None, archive=None, validation=None, verbose=None,
            extra=None):
    e = _bare_env()
    for k in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS"):
        e.pop(k, None)
    e["PYTHONHASHSEED"] = HASHSEED
    e["PYTHONNOUSERSITE"] = "1"
    e["PYTHONDONTWRITEBYTECODE"] = "1"
    e["PYTHONIOENCODING"] = "utf-8:backslashreplace"
    for k, v in (("PYCDSMODE", mode), ("PYCDSLIST", lst),
                 ("PYCDSARCHIVE", archive), ("PYCDSVALIDATION", validation),
                 ("PYCDSVERBOSE", verbose)):
        if v is not None:
            e[k] = str(v)
    for k, v in (extra or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = str(v)
    return e


def describe(cmd, env, cp, cwd, note=""):
    shown = " ".join(f"{k}={v}" for k, v in sorted(env.items())
                     if k.startswith(("PYCDS", "PYTHONPATH")))
    return "\n".join([
        f"{note}argv: {' '.join(map(str, cmd))}",
        f"cwd: {cwd}",
        f"env: {shown}",
        f"return code: {_rc_text(cp.returncode)}",
        "stdout:\n" + textwrap.indent(_tail(cp.stdout), "    "),
        "stderr:\n" + textwrap.indent(_tail(cp.stderr), "    ")])


def run(venv, argv, *, cwd, mode=None, lst=None, archive=None,
        validation=None, verbose=None, env=None, check=False,
        timeout=TIMEOUT, python=None):
    """Run ``python argv...`` (the venv's) and return the CompletedProcess
    (text).  ``check``: fail unless the return code is 0."""
    cmd = [python or venv.python, *map(str, argv)]
    e = env_for(mode, lst, archive, validation, verbose, env)
    try:
        cp = subprocess.run(cmd, env=e, cwd=str(cwd), capture_output=True,
                            text=True, encoding="utf-8",
                            errors="backslashreplace", timeout=timeout)
    except subprocess.TimeoutExpired as ex:
        def s(x):
            return x.decode("utf-8", "replace") if isinstance(x, bytes) else (x or "")
        fake = subprocess.CompletedProcess(cmd, None, s(ex.stdout), s(ex.stderr))
        raise AssertionError(describe(cmd, e, fake, cwd,
                                      note=f"TIMEOUT after {timeout}s: "))
    cp.describe = lambda note="": describe(cmd, e, cp, cwd, note)
    if check and cp.returncode != 0:
        raise AssertionError(cp.describe("FAILED: "))
    return cp


def _setarch_works():
    if shutil.which("setarch") is None:
        return False
    cp = subprocess.run(["setarch", "-R", "true"], capture_output=True)
    return cp.returncode == 0


# Prelinked images need processes with address randomisation off.
SETARCH = _setarch_works()
needs_setarch = pytest.mark.skipif(
    not SETARCH, reason="setarch -R (personality ADDR_NO_RANDOMIZE) is not "
                        "allowed here")


def run_fixed(venv, argv, *, cwd, mode=None, archive=None, verbose=None,
              env=None, check=False, timeout=TIMEOUT):
    """run() under setarch -R: libpython where it is in every such
    process; the result's ``verbose`` is what SHARE said."""
    cp = run(venv, ["-R", venv.python, *argv], cwd=cwd, mode=mode,
             archive=archive, verbose=verbose, env=env, check=check,
             timeout=timeout, python="setarch")
    cp.verbose = parse_verbose(cp.stderr)
    return cp


def verify(venv, img):
    """`pycds-dump verify --json`: (exit status, report)."""
    cp = subprocess.run([venv.pycds_dump, "verify", "--json", str(img)],
                        capture_output=True, text=True, env=env_for())
    return cp.returncode, json.loads(cp.stdout or "{}")


def run_tool(venv, argv, *, cwd, env=None, timeout=TIMEOUT):
    """Run the venv's pycds-dump console script."""
    cmd = [venv.pycds_dump, *map(str, argv)]
    e = env_for(extra=env)
    cp = subprocess.run(cmd, env=e, cwd=str(cwd), capture_output=True,
                        text=True, timeout=timeout)
    cp.describe = lambda note="": describe(cmd, e, cp, cwd, note)
    return cp


# --------------------------------------------------------------------------
# What SHARE said (PYCDSVERBOSE=2 on stderr)

_VERBOSE = re.compile(r"^pycds: (served|missed|stale|refused) (\S+?)(?:: (.*))?$")


@dataclasses.dataclass
class Verbose:
    served: list
    missed: dict
    stale: dict
    refused: dict
    warnings: list
    other: list          # stderr lines that are not pycds's
    summary: list = dataclasses.field(default_factory=list)  # at exit

    @property
    def served_set(self):
        return set(self.served)


def parse_verbose(stderr):
    v = Verbose([], {}, {}, {}, [], [])
    for line in stderr.splitlines():
        m = _VERBOSE.match(line)
        if m:
            kind, name, why = m.groups()
            if kind == "served":
                v.served.append(name)
            else:
                getattr(v, kind)[name] = why
        elif line.startswith("pycds: warning:"):
            v.warnings.append(line)
        elif line.startswith("pycds: summary:"):
            v.summary.append(line)
        else:
            v.other.append(line)
    return v


def list_rows(path):
    """(runs, name -> (origin, package, used, written)) of a TRACE list;
    checks the format."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    assert lines, f"{path}: empty list"
    header, _, runs = lines[0].partition(" runs=")
    assert header == "# pycds module list v2" and runs.isdigit(), \
        f"{path}: header {lines[0]!r}"
    rows = {}
    for n, line in enumerate(lines[1:], 2):
        if not line:
            continue
        parts = line.split("\t")
        assert len(parts) == 5 and parts[2] in ("0", "1") \
            and parts[3].isdigit(), f"{path}:{n}: malformed line {line!r}"
        assert parts[0] not in rows, f"{path}:{n}: {parts[0]} listed twice"
        assert os.path.isabs(parts[1]), f"{path}:{n}: origin not absolute"
        written = set(parts[4].split(" ")) if parts[4] else set()
        assert all(w.partition(":")[0].isdigit() and w.partition(":")[2]
                   or len(w) == 17 and w[0] == "#"
                   and all(c in "0123456789abcdef" for c in w[1:])
                   for w in written), f"{path}:{n}: malformed written field"
        rows[parts[0]] = (parts[1], parts[2] == "1", int(parts[3]), written)
    return int(runs), rows


def read_list(path):
    """name -> (origin, package) of a TRACE list; checks the format."""
    return {name: row[:2] for name, row in list_rows(path)[1].items()}


# --------------------------------------------------------------------------
# The whole pipeline


@dataclasses.dataclass
class Pipeline:
    """TRACE ``argv`` in ``cwd`` into ``work/app.lst``, DUMP it into
    ``work/app.img``; then ``share()``/``baseline()`` run the same command."""
    venv: Venv
    argv: list
    cwd: Path
    work: Path
    env: dict = None
    trace_cp: object = None
    dump_cp: object = None

    @property
    def lst(self):
        return self.work / "app.lst"

    @property
    def img(self):
        return self.work / "app.img"

    def trace(self, argv=None, check=True, **kw):
        self.trace_cp = run(self.venv, argv or self.argv,
                            cwd=kw.pop("cwd", self.cwd),
                            mode="TRACE", lst=self.lst,
                            env=_merge(self.env, kw.pop("env", None)),
                            check=check, **kw)
        return self.trace_cp

    def dump(self, validation=None, check=True):
        self.dump_cp = run(self.venv, [], cwd=self.cwd, mode="DUMP",
                           lst=self.lst, archive=self.img,
                           validation=validation, env=self.env)
        if check and self.dump_cp.returncode != 0:
            raise AssertionError(self.dump_cp.describe("DUMP FAILED: "))
        return self.dump_cp

    def baseline(self, argv=None, **kw):
        return run(self.venv, argv or self.argv, cwd=kw.pop("cwd", self.cwd),
                   env=_merge(self.env, kw.pop("env", None)), **kw)

    def share(self, argv=None, verbose=2, archive=None, **kw):
        cp = run(self.venv, argv or self.argv, cwd=kw.pop("cwd", self.cwd),
                 mode="SHARE",
                 archive=archive or self.img, verbose=verbose,
                 env=_merge(self.env, kw.pop("env", None)), **kw)
        cp.verbose = parse_verbose(cp.stderr)
        return cp

    def build(self, validation=None):
        self.trace()
        self.dump(validation)
        return self


def _merge(a, b):
    if not a:
        return b
    if not b:
        return a
    return {**a, **b}


def assert_same_run(base, share, what=""):
    """Same exit status and stdout; SHARE's stderr may only add pycds lines."""
    assert share.returncode == base.returncode, (
        f"{what}exit status differs: baseline {base.returncode}, SHARE "
        f"{share.returncode}\n" + share.describe("SHARE: ") + "\n"
        + base.describe("BASELINE: "))
    assert share.stdout == base.stdout, (
        f"{what}stdout differs\n" + share.describe("SHARE: ") + "\n"
        + base.describe("BASELINE: "))


def copy_tree(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__",
                                                            "*.pyc"))
    return Path(dst)


def write(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path
