"""Run-once code (docs/IMPORT.md, "What is shared"): a module's code and
the code of its class bodies, served in place, are copies on the heap
that the interpreter frees once the body ran, as after a normal import;
the run-once area of the image is only read; functions' code stays in
the image.  On every interpreter, under default conditions (address
randomisation on, no PYTHONHASHSEED).
"""

import json

from pipeline_fixtures import Pipeline, venv  # noqa: F401

RANDOM_SEED = {"PYTHONHASHSEED": None}

PROBE = """\
import sys, weakref
BODY = weakref.ref(sys._getframe().f_code)


class Probe:
    BODY = weakref.ref(sys._getframe().f_code)

    def method(self):
        return FROZEN

FROZEN = frozenset({"a", "b"}) if "a" in {"a", "b"} else None
"""

MAIN = r"""
import gc, json, struct, sys
import onceprobe
gc.collect()
co = onceprobe.Probe.method.__code__
out = {"module_freed": onceprobe.BODY() is None,
       "class_freed": onceprobe.Probe.BODY() is None,
       "method": onceprobe.Probe().method() == frozenset("ab"),
       "trace": onceprobe.__spec__.loader.get_code("onceprobe").co_firstlineno}
pycds = sys.modules.get("pycds")
if pycds is not None and pycds.layer_stats():
    # The run-once area: the image's last (format.h).
    archive = pycds.layer_stats()[0]["path"]
    out["served"] = pycds.layer_stats()[0]["prelinked"]["served"]
    sys.path.insert(0, TESTS)
    import elfsections
    data = open(archive, "rb").read()
    base = elfsections.section(data, ".pycds.prelinked").offset
    address, size, _ = struct.unpack_from("<3Q", data, base + 168 + 24 * 5)
    dirty, mapped = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                mapped = int(head.split("-")[0], 16) == address
            elif mapped and head == "Private_Dirty:":
                dirty += int(line.split()[1])
    out["once_area"] = size
    out["once_written_kib"] = dirty
    # Images live at 32-64 TiB (format.h).
    out["method_in_image"] = 0x200000000000 <= id(co) < 0x400000000000
print("RESULT " + json.dumps(out))
"""


def result(cp):
    lines = [ln for ln in cp.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, cp.describe()
    return json.loads(lines[0][7:])


def test_run_once_code_freed_after_the_body_ran(venv, tmp_path):
    (tmp_path / "onceprobe.py").write_text(PROBE)
    import conftest
    main = MAIN.replace("TESTS", repr(str(conftest.TESTS)))
    p = Pipeline(venv, ["-c", main], tmp_path, tmp_path).build()
    base = p.baseline(check=True, env=RANDOM_SEED)
    cp = p.share(verbose=2, env=RANDOM_SEED, check=True)
    assert "onceprobe" in cp.verbose.served_set, cp.describe()
    b, s = result(base), result(cp)
    # Normal import frees them: so does SHARE.
    assert b["module_freed"] and b["class_freed"], b
    assert s["module_freed"] and s["class_freed"], s
    assert s["method"] and s["trace"] == b["trace"] == 1, s
    assert s["served"] >= 1 and s["method_in_image"], s
    # Copied from the area, never written there.
    assert s["once_area"] > 0 and s["once_written_kib"] == 0, s
