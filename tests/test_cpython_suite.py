"""A slice of CPython's own regression suite, with and without SHARE.

For each interpreter whose ``test`` package has the regression tests
(pyenv's; Debian's python3.11 ships only a stub without
libpython3.11-testsuite -> skipped; `make test` runs 3.12 only, `make
test-slow` every version), in the pycds venv:

  TRACE   python -m test TESTS            (children of the tests trace too,
                                           into the same list)
  DUMP    the list (modules of deleted temporary directories are left out:
          exit status 1 is expected)
  BASE    python -m test TESTS --junit-xml base.xml
  SHARE   the same under PYCDSMODE=SHARE --junit-xml share.xml (served in
          place from the archive's prelinked image); with `make
          test-slow` once more with PYCDSCHECK=1 (relocated, every object
          checked)

and the runs must agree: `Tests result: SUCCESS`, the same return code,
the same outcome for every test case.  A process that imports what the
slice does counts the modules served.  regrtest unloads each test module after running
it, so the test modules themselves are not in the TRACE list (see
test_pipeline.test_trace_lists_unloaded_modules).
"""

import json
import os
import xml.etree.ElementTree as ET

import pytest

from pipeline_fixtures import Pipeline, run, venv

TESTS = ["test_importlib", "test_import", "test_inspect", "test_pkgutil",
         "test_traceback", "test_linecache", "test_dis", "test_code",
         "test_runpy", "test_zipimport", "test_modulefinder", "test_json",
         "test_pickle", "test_typing", "test_dataclasses", "test_pydoc"]
TIMEOUT = 600
# make test-slow: the slice on every version, and also in the checked mode
# (PYCDSCHECK=1).
SLOW = os.environ.get("PYCDS_SLOW_TESTS") == "1"

def outcomes(path):
    """test case -> 'ok' | 'skipped' | 'failure' | 'error' from regrtest's
    --junit-xml file."""
    result = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = [c.tag for c in case if c.tag in ("failure", "error",
                                                    "skipped")]
        result[case.get("name")] = kinds[0] if kinds else "ok"
    return result


def summary(stdout):
    return [ln for ln in stdout.splitlines() if "Tests result:" in ln]


# make test runs the slice on one version (minutes each); make test-slow
# on every one that has the regression tests.
EVERY_VERSION = SLOW
ONE_VERSION = (3, 12)


@pytest.fixture
def suite(venv, tmp_path):
    cp = run(venv, ["-c", "import test.libregrtest, test.test_json"],
             cwd=tmp_path)
    if cp.returncode != 0:
        pytest.skip(f"{venv.id} has no CPython regression tests")
    if not EVERY_VERSION and venv.interp.hexversion >> 16 != (
            ONE_VERSION[0] << 8 | ONE_VERSION[1]):
        pytest.skip("make test-slow runs the regrtest slice on %s"
                    % venv.id)
    return Pipeline(venv, ["-m", "test", *TESTS], tmp_path, tmp_path)


def test_regrtest_slice(suite, tmp_path):
    p = suite
    cp = p.trace(check=False, timeout=TIMEOUT)
    assert summary(cp.stdout) == ["== Tests result: SUCCESS =="], \
        cp.describe("TRACE run: ")
    dump = p.dump(check=False)
    assert dump.returncode in (0, 1) and p.img.exists(), dump.describe()

    base_xml, share_xml = tmp_path / "base.xml", tmp_path / "share.xml"
    base = p.baseline([*p.argv, "--junit-xml", base_xml], timeout=TIMEOUT)
    assert summary(base.stdout) == ["== Tests result: SUCCESS =="], \
        base.describe("BASELINE: ")
    share = p.share([*p.argv, "--junit-xml", share_xml], verbose=0,
                    timeout=TIMEOUT)
    b = outcomes(base_xml)
    s = outcomes(share_xml) if share_xml.exists() else {}
    assert len(b) > 1000, len(b)
    differ = {k: (b.get(k), s.get(k)) for k in set(b) | set(s)
              if b.get(k) != s.get(k)}
    assert not differ, (
        f"test cases whose outcome differs (baseline, SHARE): "
        f"{dict(sorted(differ.items())[:40])}\n" + share.describe("SHARE: "))
    assert share.returncode == base.returncode, share.describe("SHARE: ")
    assert summary(share.stdout) == summary(base.stdout), \
        share.describe("SHARE: ")
    assert "pycds: warning" not in share.stderr, share.describe("SHARE: ")

    # That run used the archive in place, from its prelinked image
    # (docs/IMPORT.md).  What a process of the slice imports is served
    # (counted in a process of its own: verbose lines on the stderr of the
    # tests' children would fail tests that check that stderr is empty).
    names = ["test.libregrtest.main", "unittest.case", "inspect",
             "json.decoder", "pickle", "typing", "dataclasses", "pydoc",
             "test.support", "test.support.script_helper"]
    counted = p.share(["-c", "import importlib, json, sys, pycds\n"
                             "for n in sys.argv[1:]: importlib.import_module(n)\n"
                             "print(json.dumps([pycds.stats(), pycds.layer_stats()"
                             "[0]['prelinked']]))",
                       *names, *(f"test.{t}" for t in TESTS)],
                      verbose=0, check=True)
    stats, image = json.loads(counted.stdout)
    for name in names:
        assert name not in stats["reasons"], (name, stats["reasons"][name])
    assert stats["served"] > 150 and image["served"] > 150, \
        (stats["served"], image)

    if not SLOW:
        return
    # The same run again with every object of every entry checked as it
    # is relocated from the archive (PYCDSCHECK=1).
    checked_xml = tmp_path / "checked.xml"
    checked = p.share([*p.argv, "--junit-xml", checked_xml], verbose=0,
                      timeout=TIMEOUT, env={"PYCDSCHECK": "1"})
    c = outcomes(checked_xml) if checked_xml.exists() else {}
    differ = {k: (b.get(k), c.get(k)) for k in set(b) | set(c)
              if b.get(k) != c.get(k)}
    assert not differ, (
        f"test cases whose outcome differs (baseline, PYCDSCHECK=1): "
        f"{dict(sorted(differ.items())[:40])}\n"
        + checked.describe("CHECKED: "))
    assert "pycds: warning" not in checked.stderr, checked.describe()
