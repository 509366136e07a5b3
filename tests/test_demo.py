"""`make demo`, one of the README's two commands, runs to its end the way
a user runs it, from the source tree: a venv with pycds installed, TRACE,
DUMP and SHARE of examples/demo_app.py, then the timings, which are
printed and not asserted (benchmarks are not tests)."""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_make_demo(tmp_path):
    """In a directory of its own (DEMO_DIR), not build/demo, which a
    user's own `make demo` may be using."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PYCDS", "MAKE", "MFLAGS"))}
    cp = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT),
                         "demo", "DEMO_DIR=%s" % tmp_path],
                        env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, timeout=1200)
    if cp.returncode != 0 and "no interpreter for the demo" in cp.stdout:
        pytest.skip("no interpreter for the demo (pyenv 3.11.7 or "
                    "/usr/bin/python3.11)")
    assert cp.returncode == 0, cp.stdout[-4000:]
    served = re.search(r"served (\d+) modules, missed \d+, stale (\d+), "
                       r"refused (\d+)", cp.stdout)
    assert served, cp.stdout[-4000:]
    assert int(served.group(1)) > 0 and served.group(2) == "0" \
        and served.group(3) == "0", served.group(0)
    assert re.search(r"SHARE/baseline median ratio \d\.\d{3}", cp.stdout), \
        cp.stdout[-4000:]
