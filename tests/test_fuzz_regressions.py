"""Every input that once crashed the fuzzer (fuzz/regressions/) is refused
with pycds.ArchiveError by a real interpreter - never a crash.

The fuzzer's build accepts any checksum (fuzz/README.md), so each input is
first resealed (checksums recomputed, tests/archive_edit.py) when its
sections can be found: the interpreter then takes the same path as the
fuzzer did.  The inputs were written by pyenv 3.11.7's pycds; under any
other interpreter they are refused for their ABI key, which is checked
too.  The fuzzer (built by make test, or make fuzz-build) replays them
as well."""

import os
import struct
import subprocess

import pytest

from archive_edit import Img
from conftest import ROOT, run_json

REGRESSIONS = sorted(p for p in (ROOT / "fuzz" / "regressions").iterdir()
                     if p.is_file() and not p.name.startswith("."))

LOAD_ALL = r"""
import sys, pycds
path = sys.argv[1]
# pycds-dump info / verify read any archive: a refusal or a description,
# nothing else
for f in (pycds.inspect_archive, pycds.verify_archive):
    try:
        f(path)
    except pycds.ArchiveError:
        pass
try:
    m = pycds.load_code(path)
except pycds.ArchiveError as e:
    emit({'state': 'refused-at-load', 'msg': str(e)})
    sys.exit(0)
try:
    names = list(m)
except pycds.ArchiveError as e:
    emit({'state': 'refused-at-load', 'msg': str(e)})
    sys.exit(0)
refused, loaded = [], []
for n in names:
    try:
        co = m[n]
    except pycds.ArchiveError as e:
        refused.append(str(e))
        continue
    hash(co)
    repr(co.co_consts)
    loaded.append(n)
emit({'state': 'refused-at-access' if refused else 'loaded',
      'msg': '\n'.join(refused), 'loaded': loaded})
"""


def resealed(data):
    try:
        return Img(data).seal()
    except (ValueError, IndexError, KeyError, struct.error):
        return data


@pytest.mark.parametrize("case", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_regression_refused(interp, tmp_path, case):
    path = tmp_path / case.name
    path.write_bytes(resealed(case.read_bytes()))
    os.chmod(path, 0o644)
    res, cp = run_json(interp, LOAD_ALL, path, timeout=60)
    assert res["state"] != "loaded", \
        f"{case.name}: every entry loaded: {res}"
    assert str(path) in res["msg"], res


FUZZER = ROOT / "build" / "fuzz" / "archive_fuzzer"


@pytest.mark.skipif(not FUZZER.exists(), reason="fuzzer not built "
                    "(make fuzz-build)")
def test_fuzzer_replays_regressions():
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    # its own (clang) sanitizer runtimes, not a preloaded one
    for k in ("PYTHONPATH", "PYTHONHOME", "LD_PRELOAD"):
        env.pop(k, None)
    cp = subprocess.run([str(FUZZER), *map(str, REGRESSIONS)], env=env,
                        capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr[-4000:]
    assert f"Executed {len(REGRESSIONS)} inputs" in cp.stderr or \
        cp.stderr.count("Executed") >= 1, cp.stderr[-2000:]
