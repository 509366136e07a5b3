"""Shared fixtures for the pycds test suite.

The suite runs under Debian's pytest (``/usr/bin/python3 -m pytest``) and
drives every *target* interpreter in subprocesses, so that a crash in the
extension (a segfault while relocating an image, say) fails one test and not
the whole run.

Target interpreters come from ``PYCDS_PYTHONS`` (colon-separated paths, set
by ``make test``); without it, ``/usr/bin/python3.11`` and
``$(pyenv prefix 3.11.7)/bin/python3.11`` are used when present.  For each
one the extension lives in its own build directory, which the Makefile
prints (``make -s print-builddir PYTHON=...``).  Children run with a clean
environment: no ``PYTHON*``/``PYCDS*`` variable of the caller leaks in,
``PYTHONPATH`` is the build directory plus this directory (so children can
``import codecompare`` and ``import objcorpus``), ``PYTHONHASHSEED`` is
fixed unless a test chooses one.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

DEFAULT_HASHSEED = "17"
DEFAULT_TIMEOUT = 120


# --------------------------------------------------------------------------
# Interpreters


@dataclasses.dataclass
class Interp:
    python: str          # path of the interpreter executable
    name: str            # 'debian', 'pyenv', or the executable's name
    version: str         # platform.python_version()
    hexversion: int
    _builddir: str = None

    @property
    def id(self):
        return f"{self.name}-{self.version}"

    @property
    def builddir(self):
        if self._builddir is None:
            self._builddir = _print_builddir(self.python)
        return self._builddir

    def __str__(self):
        return self.id


def _bare_env():
    """The caller's environment without any PYTHON*/PYCDS* variable."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "PYCDS"))}


def _pyenv_prefix(version):
    candidates = [shutil.which("pyenv")]
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates.append(os.path.join(root, "bin", "pyenv"))
    for pyenv in candidates:
        if pyenv and os.access(pyenv, os.X_OK):
            cp = subprocess.run([pyenv, "prefix", version], capture_output=True,
                                text=True)
            if cp.returncode == 0 and cp.stdout.strip():
                return cp.stdout.strip().splitlines()[0]
    return None


def _describe_interp(python):
    cp = subprocess.run(
        [python, "-c",
         "import sys, platform; print(platform.python_version(), "
         "sys.hexversion, sys.base_prefix)"],
        capture_output=True, text=True, env=_bare_env(), timeout=60)
    if cp.returncode != 0:
        raise pytest.UsageError(
            f"cannot run interpreter {python!r} (rc={cp.returncode}): "
            f"{cp.stderr.strip()}")
    version, hexversion, prefix = cp.stdout.split()
    real = os.path.realpath(python)
    if "/.pyenv/versions/" in real or "/pyenv/versions/" in real:
        name = "pyenv"
    elif prefix == "/usr":
        name = "debian"
    else:
        name = os.path.basename(python)
    return Interp(python=python, name=name, version=version,
                  hexversion=int(hexversion))


def discover_interpreters():
    spec = os.environ.get("PYCDS_PYTHONS")
    if spec:
        paths = [p for p in spec.split(":") if p]
        for p in paths:
            if not os.access(p, os.X_OK):
                raise pytest.UsageError(
                    f"PYCDS_PYTHONS names {p!r}, which is not an executable")
    else:
        paths = []
        if os.access("/usr/bin/python3.11", os.X_OK):
            paths.append("/usr/bin/python3.11")
        prefix = _pyenv_prefix("3.11.7")
        if prefix and os.access(os.path.join(prefix, "bin", "python3.11"),
                                os.X_OK):
            paths.append(os.path.join(prefix, "bin", "python3.11"))
    seen, result = set(), []
    for p in paths:
        real = os.path.realpath(p)
        if real in seen:
            continue
        seen.add(real)
        result.append(_describe_interp(p))
    ids = [i.id for i in result]
    for i in result:                       # keep ids unique
        if ids.count(i.id) > 1:
            i.name = f"{i.name}{result.index(i)}"
    return result


INTERPRETERS = discover_interpreters()


def _print_builddir(python):
    cmd = ["make", "-s", "--no-print-directory", "-C", str(ROOT),
           "print-builddir", f"PYTHON={python}"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                        env=env)
    lines = [ln for ln in cp.stdout.splitlines() if ln.strip()]
    if cp.returncode != 0 or len(lines) != 1:
        pytest.fail(f"{' '.join(cmd)} failed (rc={cp.returncode}):\n"
                    f"stdout: {cp.stdout}\nstderr: {cp.stderr}", pytrace=False)
    builddir = lines[0].strip()
    if not os.path.isabs(builddir):
        builddir = os.path.join(str(ROOT), builddir)
    return builddir


_checked = {}


def _check_importable(interp):
    """pycds must import from the interpreter's own build directory."""
    if interp.python in _checked:
        return _checked[interp.python]
    cp = run_py(interp, """
        import os, sys, pycds
        print(os.path.realpath(pycds.__file__))
    """, check=False, timeout=60)
    if cp.returncode != 0:
        msg = (f"pycds does not import under {interp.id} from "
               f"{interp.builddir} (run `make build PYTHON={interp.python}`):\n"
               f"{cp.stderr}")
    else:
        where = cp.stdout.strip().splitlines()[-1]
        # pycds may be a package (pycds/__init__.py) in the build dir or
        # next to it; it must not come from site-packages.
        if "site-packages" in where or "dist-packages" in where:
            msg = (f"under {interp.id} pycds was imported from {where}, not "
                   f"from the build directory {interp.builddir}")
        else:
            msg = None
    _checked[interp.python] = msg
    return msg


@pytest.fixture(scope="session")
def interpreters():
    """Every target interpreter, with its build directory resolved."""
    for i in INTERPRETERS:
        i.builddir
    return INTERPRETERS


# The whole stdlib dumped (stdlib_archive) costs 10-30 s per interpreter:
# under pytest-xdist (make test) the tests that use one run in the same
# worker, so each is dumped once, not once per worker.
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "stdlib_archive" in item.fixturenames:
            interp = item.callspec.params["interp"]
            item.add_marker(pytest.mark.xdist_group(f"stdlib-{interp.id}"))


@pytest.fixture(scope="session", params=INTERPRETERS,
                ids=[i.id for i in INTERPRETERS])
def interp(request):
    """One target interpreter (tests are parametrised over all of them)."""
    i = request.param
    i.builddir
    msg = _check_importable(i)
    if msg:
        pytest.fail(msg, pytrace=False)
    return i


# --------------------------------------------------------------------------
# Running code in a target interpreter


def child_env(interp, env=None):
    e = _bare_env()
    e["PYTHONPATH"] = os.pathsep.join([interp.builddir, str(TESTS)])
    e["PYTHONHASHSEED"] = DEFAULT_HASHSEED
    e["PYTHONIOENCODING"] = "utf-8:backslashreplace"
    e["PYTHONNOUSERSITE"] = "1"
    e["PYTHONDONTWRITEBYTECODE"] = "1"   # never write .pyc into the stdlib
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = str(v)
    return e


def _rc_text(rc):
    if rc is not None and rc < 0:
        try:
            return f"{rc} (killed by {signal.Signals(-rc).name})"
        except ValueError:
            return f"{rc} (killed by signal {-rc})"
    return str(rc)


def _tail(text, n=6000):
    text = text or ""
    return text if len(text) <= n else "...\n" + text[-n:]


def describe_run(interp, cmd, env, cp=None, code=None, note=""):
    shown = {k: env[k] for k in ("PYTHONPATH", "PYTHONHASHSEED") if k in env}
    lines = [f"{note}child process under {interp.id} ({interp.python})"]
    if cp is not None:
        lines.append(f"return code: {_rc_text(cp.returncode)}")
    lines.append("environment: " + " ".join(f"{k}={v}" for k, v in shown.items()))
    lines.append("argv: " + " ".join("<code>" if a is code else repr(a)
                                     for a in cmd))
    if code is not None:
        lines.append("code:\n" + textwrap.indent(_tail(code, 4000), "    | "))
    if cp is not None:
        lines.append("stdout:\n" + textwrap.indent(_tail(cp.stdout), "    "))
        lines.append("stderr:\n" + textwrap.indent(_tail(cp.stderr), "    "))
    return "\n".join(lines)


_EMPTY_CWD = None


def empty_cwd():
    """An empty directory to run children in: `python -c` puts the current
    directory first on sys.path, and the repository root has the pycds
    source package, which must not shadow the built one."""
    global _EMPTY_CWD
    if _EMPTY_CWD is None:
        _EMPTY_CWD = tempfile.mkdtemp(prefix="pycds-tests-cwd-")
    return _EMPTY_CWD


def run_py(interp, code, *args, env=None, check=True, timeout=DEFAULT_TIMEOUT,
           flags=(), cwd=None):
    """Run ``code`` (dedented) with ``interp`` in a clean environment.

    ``args`` become ``sys.argv[1:]``; ``flags`` are interpreter options put
    before ``-c`` (``['-X', 'dev']``).  Returns the CompletedProcess; with
    ``check`` a non-zero return code fails the test with the return code
    (negative = killed by a signal), stdout and stderr.
    """
    code = textwrap.dedent(code)
    cmd = [interp.python, *flags, "-c", code, *map(str, args)]
    e = child_env(interp, env)
    try:
        cp = subprocess.run(cmd, env=e, capture_output=True, text=True,
                            encoding="utf-8", errors="backslashreplace",
                            timeout=timeout, cwd=cwd or empty_cwd())
    except subprocess.TimeoutExpired as ex:
        fake = subprocess.CompletedProcess(cmd, None, ex.stdout or "",
                                           ex.stderr or "")
        if isinstance(fake.stdout, bytes):
            fake.stdout = fake.stdout.decode("utf-8", "backslashreplace")
        if isinstance(fake.stderr, bytes):
            fake.stderr = fake.stderr.decode("utf-8", "backslashreplace")
        raise AssertionError(describe_run(
            interp, cmd, e, fake, code, note=f"TIMEOUT after {timeout}s: "))
    if check and cp.returncode != 0:
        raise AssertionError(describe_run(interp, cmd, e, cp, code,
                                          note="FAILED: "))
    return cp


RESULT_MARK = "PYCDS-RESULT "
# emit(obj) in a child: one write, unbuffered, which processes forked from
# it and sharing the pipe do not interleave, and which a child read while
# it runs (subprocess.Popen) shows at once.
EMIT_AT_ONCE = ("import json as _json, os as _os\n"
                "def emit(obj):\n"
                f"    _os.write(1, ({RESULT_MARK!r} + _json.dumps(obj)"
                " + '\\n').encode())\n")


def emitted(out):
    """The objects a child's emit wrote into out, in order."""
    return [json.loads(ln[len(RESULT_MARK):]) for ln in out.splitlines()
            if ln.startswith(RESULT_MARK)]


def run_json(interp, code, *args, **kw):
    """Like run_py, for children that end with ``emit(obj)``: returns
    (obj, CompletedProcess).  ``emit`` is predefined in the child."""
    cp = run_py(interp, EMIT_AT_ONCE + textwrap.dedent(code), *args, **kw)
    found = emitted(cp.stdout)
    if not found:
        e = child_env(interp, kw.get("env"))
        raise AssertionError(describe_run(
            interp, [interp.python, "-c", code], e, cp, code,
            note="NO RESULT from "))
    return found[-1], cp


# --------------------------------------------------------------------------
# Archives shared between test files (built once per interpreter)


STDLIB_DUMP = r"""
import os, sys, sysconfig, warnings, time
import pycds
warnings.simplefilter('ignore')
out = sys.argv[1]
root = sysconfig.get_paths()['stdlib']
codes, failed, files = {}, [], 0
t0 = time.perf_counter()
for d, dirs, names in os.walk(root):
    dirs[:] = sorted(x for x in dirs
                     if x not in ('site-packages', 'dist-packages'))
    for n in sorted(names):
        if not n.endswith('.py'):
            continue
        files += 1
        p = os.path.join(d, n)
        with open(p, 'rb') as f:
            src = f.read()
        try:
            co = compile(src, p, 'exec', dont_inherit=True)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
            failed.append(os.path.relpath(p, root))
            continue
        codes[os.path.relpath(p, root)] = co
t1 = time.perf_counter()
pycds.dump_code(out, codes)
t2 = time.perf_counter()
emit({'root': root, 'files': files, 'entries': len(codes),
      'compile_failed': failed, 'compile_s': t1 - t0, 'dump_s': t2 - t1,
      'bytes': os.path.getsize(out)})
"""


@dataclasses.dataclass
class StdlibArchive:
    path: str
    root: str
    files: int
    entries: int
    compile_failed: list
    info: dict


_stdlib_archives = {}


@pytest.fixture(scope="session")
def stdlib_archive(interp, tmp_path_factory):
    """The whole stdlib of ``interp`` in one archive (dumped with
    PYTHONHASHSEED=1)."""
    if interp.python not in _stdlib_archives:
        d = tmp_path_factory.mktemp(f"stdlib-{interp.id}")
        path = str(d / "stdlib.img")
        res, _ = run_json(interp, STDLIB_DUMP, path,
                          env={"PYTHONHASHSEED": "1"}, timeout=600)
        _stdlib_archives[interp.python] = StdlibArchive(
            path=path, root=res["root"], files=res["files"],
            entries=res["entries"], compile_failed=res["compile_failed"],
            info=res)
    return _stdlib_archives[interp.python]


CORPUS_DUMP = r"""
import sys, pycds, objcorpus
pycds.dump_code(sys.argv[1], objcorpus.build_codes())
emit(sorted(objcorpus.build_codes()))
"""

_corpus_archives = {}


@pytest.fixture(scope="session")
def corpus_archive(interp, tmp_path_factory):
    """objcorpus.build_codes() (tricky constants + a few stdlib modules),
    dumped with PYTHONHASHSEED=3.  Returns the archive's path; do not
    modify it (copy it first)."""
    if interp.python not in _corpus_archives:
        d = tmp_path_factory.mktemp(f"corpus-{interp.id}")
        path = str(d / "corpus.img")
        names, _ = run_json(interp, CORPUS_DUMP, path,
                            env={"PYTHONHASHSEED": "3"})
        assert names, "objcorpus.build_codes() gave no entries"
        _corpus_archives[interp.python] = path
    return _corpus_archives[interp.python]
