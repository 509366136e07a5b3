"""make bench: TRACE, DUMP and SHARE each workload with a real install of
pycds, time baseline against SHARE (interleaved, paired ratios), measure
the ceiling (bench/ceiling.py), memory of 8 concurrent processes
(bench/memory.py), instruction counts (callgrind) and syscall counts
(strace), and write bench/RESULTS.md and bench/results.png.

    /usr/bin/python3 bench/run.py [--rounds N] [--only NAME,...] PYTHON...

Each PYTHON gets a venv (``-m venv --without-pip --system-site-packages``)
in build/bench/<id>/ with pycds installed by ``make install``, as a user
would.  Raw results go to build/bench/results.json.  The driver needs
matplotlib (Debian's python3-matplotlib) only for the chart.
"""
import argparse
import datetime
import glob
import hashlib
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import memory  # noqa: E402
import paired  # noqa: E402

# ------------------------------------------------------------ the workloads
#
# The one list: name, code run with -c, the target (paired median
# ratio SHARE/baseline), the reference ceiling (removable share of
# the whole process, pyenv 3.11.7), and the archive: "trace" (what a TRACE
# run of the same code lists) or "all" (every module of the stdlib and the
# site directories).  A workload whose code does not import on an
# interpreter is skipped there.
WORKLOADS = [
    ("boto3", "import boto3", 0.76, 0.25, "trace"),
    ("IPython", "import IPython", 0.74, 0.31, "trace"),
    ("flask", "import flask", 0.78, 0.22, "trace"),
    ("asyncio", "import asyncio", 0.80, 0.17, "trace"),
    ("jsonschema", "import jsonschema", 0.84, 0.14, "trace"),
    ("email+http", "import email.message, http.client, urllib.request",
     0.82, 0.12, "trace"),
    ("pass (all)", "pass", 1.01, None, "all"),
]
# Memory (8 processes), callgrind and strace run on the first of these the
# interpreter has.
DEEP_WORKLOADS = ("boto3", "email+http")
# Functions of the interpreter whose inclusive cost is reported (the
# pycds extension's own functions are found by their file: top 12).
CALLGRIND_FUNCS = (
    "marshal_loads", "_io_FileIO_readall_impl", "os_stat", "os_listdir_impl",
    "PyImport_ImportModuleLevelObject")
# Directories not walked for the "all" archive.
ALL_SKIP_DIRS = ("test", "tests", "idle_test", "__pycache__")

BENCH = os.path.join(ROOT, "build", "bench")
MIB = 1024 * 1024


def log(*a):
    print("bench:", *a, flush=True)


def run(argv, env=None, check=True, **kw):
    r = subprocess.run(argv, env=env, text=True, capture_output=True, **kw)
    if check and r.returncode != 0:
        raise SystemExit("failed (%d): %s\n%s%s" % (
            r.returncode, shlex.join(argv), r.stdout, r.stderr))
    return r


def clean_env(**extra):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("PYCDS"):
            del env[k]
    env.update(extra)
    return env


def sha(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# ------------------------------------------------------------- interpreter

def label(real, version):
    """What a reader needs to know of an interpreter: where it comes from
    and whether its executable is position-independent (then libpython's
    objects move with address randomisation)."""
    with open(real, "rb") as f:
        pie = f.read(18)[16] == 3           # e_type ET_DYN
    if "/.pyenv/" in real:
        where = "pyenv"
    elif "/nonpie-" in real:
        where = "pyenv static"
    else:
        where = "Debian"
    return "%s %s (%s)" % (where, version, "PIE" if pie else "non-PIE")


REQUIREMENTS = os.path.join(HERE, "requirements.txt")
CONSTRAINTS = os.path.join(HERE, "constraints.txt")


def install_workloads(base, py, where):
    """The pinned workload packages, into the venv of ``py`` (with the base
    interpreter's pip); once per version of requirements.txt.  A package
    that does not install on this interpreter is left out: its workload
    is reported as skipped."""
    req = open(REQUIREMENTS, "rb").read()
    constraints = open(CONSTRAINTS, "rb").read()
    stamp = os.path.join(where, "requirements.stamp")
    if os.path.exists(stamp) and open(stamp).read() == sha(req + constraints,
                                                           py):
        return
    for line in req.decode().splitlines():
        pin = line.split("#")[0].strip()
        if not pin:
            continue
        r = run([base, "-m", "pip", "--python", py, "install", "-q",
                 "--disable-pip-version-check", "-c", CONSTRAINTS, pin],
                env=clean_env(),
                check=False)
        if r.returncode != 0:
            log("  %s not installed: %s" % (pin, r.stderr.strip()[-300:]))
    with open(stamp, "w") as f:
        f.write(sha(req + constraints, py))


class Target:
    def __init__(self, python):
        self.base = python
        builddir = run(["make", "-s", "--no-print-directory", "-C", ROOT,
                        "print-builddir", "PYTHON=" + python]).stdout.strip()
        self.id = os.path.basename(builddir)
        self.dir = os.path.join(BENCH, self.id)
        os.makedirs(self.dir, exist_ok=True)
        venv = os.path.join(self.dir, "venv")
        self.py = os.path.join(venv, "bin", "python")
        if not os.path.exists(self.py):
            log("venv", venv)
            run([python, "-m", "venv", "--without-pip",
                 "--system-site-packages", venv])
        run(["make", "-s", "--no-print-directory", "-C", ROOT, "install",
             "PYTHON=" + self.py], env=clean_env())
        install_workloads(python, self.py, self.dir)
        self.dump = os.path.join(venv, "bin", "pycds-dump")
        info = json.loads(run([self.py, "-c", (
            "import sys, json, os, platform\n"
            "print(json.dumps({'version': platform.python_version(),"
            " 'real': os.path.realpath(sys.executable),"
            " 'cache_tag': sys.implementation.cache_tag,"
            " 'path': sys.path[1:]}))")], env=clean_env()).stdout)
        self.version = info["version"]
        self.cache_tag = info["cache_tag"]
        self.sys_path = info["path"]
        self.label = label(info["real"], self.version)
        site = os.path.join(venv, "lib", "python%s" % ".".join(
            self.version.split(".")[:2]), "site-packages")
        pkg = os.path.join(site, "pycds")
        # The package's modules and the extension beside it.
        files = [os.path.join(pkg, f) for f in sorted(os.listdir(pkg))
                 if f.endswith(".py")]
        files += sorted(glob.glob(os.path.join(site, "_pycds.*.so")))
        self.pycds_key = sha(*(open(f, "rb").read() for f in files))

    def has(self, code):
        return run([self.py, "-c", code], env=clean_env(),
                   check=False).returncode == 0


# ---------------------------------------------------------------- archives

def write_pycs(t, code):
    """A fair baseline has its .pyc files: one run with bytecode writing on
    writes any that are missing."""
    env = clean_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    run([t.py, "-c", code], env=env)


def trace_list(t, name, code):
    lst = os.path.join(t.dir, name + ".lst")
    for f in (lst, lst + ".journal"):
        if os.path.exists(f):
            os.unlink(f)
    run([t.py, "-c", code], env=clean_env(PYCDSMODE="TRACE", PYCDSLIST=lst))
    return lst


ALL_LIST_SCRIPT = r"""
import os, sys, json
skip = set(json.loads(sys.argv[2]))
seen = {}
def walk(d, prefix):
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return
    for n in names:
        p = os.path.join(d, n)
        if n.endswith(".py") and n != "__init__.py":
            stem = n[:-3]
            if stem.isidentifier() and os.path.isfile(p):
                seen.setdefault(prefix + stem, (p, 1 if 0 else 0))
        elif n.isidentifier() and n not in skip and os.path.isfile(
                os.path.join(p, "__init__.py")):
            init = os.path.join(p, "__init__.py")
            if seen.setdefault(prefix + n, (init, 1))[0] == init:
                walk(p, prefix + n + ".")
for entry in sys.path[1:]:
    if os.path.isdir(entry):
        walk(os.path.abspath(entry), "")
with open(sys.argv[1], "w") as f:
    f.write("# pycds module list v1\n")
    for name in sorted(seen):
        origin, pkg = seen[name]
        f.write("%s\t%s\t%d\n" % (name, origin, pkg))
print(len(seen))
"""


def all_list(t, name):
    """Every module of the stdlib and the site directories: .py files on the
    interpreter's sys.path, through packages (dirs with __init__.py), the
    first entry providing a name winning; test directories skipped."""
    lst = os.path.join(t.dir, name + ".lst")
    run([t.py, "-c", ALL_LIST_SCRIPT, lst, json.dumps(ALL_SKIP_DIRS)],
        env=clean_env())
    return lst


PYC_BYTES_SCRIPT = r"""
import json, marshal, os, sys, importlib.util
entries = json.load(open(sys.argv[1]))
have = computed = total = 0
for origin in entries:
    if origin.endswith(".pyc"):
        pyc = origin
    else:
        pyc = importlib.util.cache_from_source(origin)
    try:
        total += os.path.getsize(pyc)
        have += 1
        continue
    except OSError:
        pass
    try:
        with open(origin, "rb") as f:
            code = compile(f.read(), origin, "exec", dont_inherit=True)
        total += 16 + len(marshal.dumps(code))
        computed += 1
    except Exception:
        pass
print(json.dumps({"pyc_bytes": total, "pyc_files": have,
                  "pyc_computed": computed}))
"""


def dump(t, name, lst):
    img = os.path.join(t.dir, name + ".img")
    stamp = img + ".key"
    key = sha(open(lst, "rb").read(), t.pycds_key)
    if os.path.exists(img) and os.path.exists(stamp) and \
            open(stamp).read() == key:
        log("  archive up to date:", img)
    else:
        t0 = time.monotonic()
        r = run([t.dump, "create", "-l", lst, "-o", img], env=clean_env(),
                check=False)
        if not os.path.exists(img):
            raise SystemExit("DUMP failed: %s%s" % (r.stdout, r.stderr))
        left_out = len(re.findall(r"left out", r.stderr))
        log("  DUMP %s: %.1f s, %d left out" % (
            os.path.basename(img), time.monotonic() - t0, left_out))
        info = json.loads(run([t.dump, "info", "--json", img],
                              env=clean_env()).stdout)
        origins = os.path.join(t.dir, name + ".origins.json")
        with open(origins, "w") as f:
            json.dump([e["origin"] for e in info["entries"]], f)
        pyc = json.loads(run([t.py, "-c", PYC_BYTES_SCRIPT, origins],
                             env=clean_env()).stdout)
        meta = {"file_bytes": info["file_bytes"],
                "heap_bytes": info["heap_bytes"],
                "modules": len(info["entries"]), "left_out": left_out,
                "listed": sum(1 for line in open(lst)
                              if line.strip() and not line.startswith("#")),
                **pyc}
        with open(img + ".meta.json", "w") as f:
            json.dump(meta, f)
        with open(stamp, "w") as f:
            f.write(key)
    return img, json.load(open(img + ".meta.json"))


STATS_TAIL = ("\nimport pycds as _p, json as _j\n"
              "_s = _p.stats()\n"
              "_s['reasons'] = sorted(_s.get('reasons', {}).items())[:20]\n"
              "open(%r, 'w').write(_j.dumps(_s))\n")


def share_stats(t, code, img):
    out = os.path.join(t.dir, "stats.json")
    run([t.py, "-c", code + STATS_TAIL % out],
        env=clean_env(PYCDSMODE="SHARE", PYCDSARCHIVE=img))
    return json.load(open(out))


# ------------------------------------------------------------------ timing

def share_cmd(t, img, rest):
    return "PYCDSMODE=SHARE PYCDSARCHIVE=%s %s" % (shlex.quote(img),
                                                   shlex.join(rest))


def time_workload(t, code, img, rounds, warmup, name):
    """One interleaved block: baseline, SHARE, the instrumented baseline
    (the ceiling) and the instrumented SHARE run (where SHARE's time goes).
    Each round pairs the instrumented runs' in-process phases with that
    round's baseline wall time."""
    ceiling = os.path.join(HERE, "ceiling.py")
    lines = {k: os.path.join(t.dir, "%s.%s.jsonl" % (name, k))
             for k in ("base", "share")}
    for f in lines.values():
        if os.path.exists(f):
            os.unlink(f)
    plain = [t.py, "-c", code]
    cmds = [
        shlex.join(plain),
        share_cmd(t, img, plain),
        shlex.join([t.py, "-S", ceiling, "--json-lines", lines["base"],
                    "-c", code]),
        share_cmd(t, img, [t.py, "-S", ceiling, "--json-lines",
                           lines["share"], "-c", code]),
    ]
    res = paired.paired(cmds, rounds, warmup, env=clean_env())
    inst = {}
    for k, f in lines.items():
        rows = [json.loads(x) for x in open(f)][warmup:]
        assert len(rows) == rounds, (f, len(rows))
        inst[k] = rows
    base_times = res[0]["times"]
    # The instrumented run's wall time without ceiling.py's own setup,
    # calibration and report: what the instrumentation costs the workload.
    overhead = [(w - (r["setup_ms"] + r["teardown_ms"]) / 1e3) / b
                for w, r, b in zip(res[2]["times"], inst["base"], base_times)]
    shares = [r["removable_ms"] / (b * 1e3)
              for r, b in zip(inst["base"], base_times)]
    q1, med, q3 = paired.quartiles(shares)

    def phase_medians(rows):
        keys = rows[0]["ms"].keys()
        return {k: statistics.median(r["ms"][k] for r in rows) for k in keys}

    return {
        "commands": cmds,
        "baseline_ms": res[0]["median_ms"],
        "share_ms": res[1]["median_ms"],
        "ratio": res[1]["ratio"], "ratio_q1": res[1]["ratio_q1"],
        "ratio_q3": res[1]["ratio_q3"],
        "cpu_ratio": res[1]["cpu_ratio"], "cpu_ratio_q1": res[1]["cpu_ratio_q1"],
        "cpu_ratio_q3": res[1]["cpu_ratio_q3"],
        "instrumented_ratio": statistics.median(overhead),
        "instrumented_share_ratio": res[3]["ratio"],
        "removable_share": med, "removable_q1": q1, "removable_q3": q3,
        "ceiling_ratio": 1 - med,
        "removable_ms": statistics.median(r["removable_ms"]
                                          for r in inst["base"]),
        "phases_base": phase_medians(inst["base"]),
        "phases_share": phase_medians(inst["share"]),
        "compiled": max(r["calls"]["compile"] for r in inst["base"]),
        "minflt_base": statistics.median(r.get("minflt", 0)
                                         for r in inst["base"]),
        "minflt_share": statistics.median(r.get("minflt", 0)
                                          for r in inst["share"]),
        "bias_ns": inst["base"][0]["bias_ns_per_call"],
        "rounds": rounds, "warmup": warmup,
    }


# ------------------------------------------------- callgrind and strace

def callgrind(t, code, env_extra, out):
    env = clean_env(PYTHONHASHSEED="0", **env_extra)
    run(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
         t.py, "-c", code], env=env)
    total = None
    with open(out) as f:
        for line in f:
            if line.startswith("totals:"):
                total = int(line.split()[1])
    ann = run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
               out]).stdout
    funcs, ours = {}, {}
    pat = re.compile(r"^\s*([\d,]+) \([^)]*\)\s+(\S*?):(\w+)(?:\s|$)(.*)")
    for line in ann.splitlines():
        m = pat.match(line)
        if not m:
            continue
        v = int(m.group(1).replace(",", ""))
        fn = m.group(3)
        if fn in CALLGRIND_FUNCS:
            funcs[fn] = max(v, funcs.get(fn, 0))
        if "_pycds" in m.group(4) or m.group(2).startswith(ROOT + "/src/"):
            ours[fn] = max(v, ours.get(fn, 0))
    top = sorted(ours.items(), key=lambda kv: -kv[1])[:12]
    return {"total": total, "inclusive": funcs, "pycds_top": dict(top)}


def callgrind_compare(t, code, img, reps=2):
    out = {"code": code, "baseline": [], "share": []}
    for i in range(reps):
        out["baseline"].append(callgrind(
            t, code, {}, os.path.join(t.dir, "cg.base.%d" % i)))
        out["share"].append(callgrind(
            t, code, {"PYCDSMODE": "SHARE", "PYCDSARCHIVE": img},
            os.path.join(t.dir, "cg.share.%d" % i)))
    out["command"] = ("PYTHONHASHSEED=0 [PYCDSMODE=SHARE PYCDSARCHIVE=%s] "
                      "valgrind --tool=callgrind %s -c %s" % (
                          os.path.basename(img), t.py, shlex.quote(code)))
    return out


STRACE_CALLS = ("openat", "newfstatat", "read", "getdents64", "mmap",
                "munmap")


def strace_counts(t, argv, env_extra):
    out = os.path.join(t.dir, "strace.txt")
    run(["strace", "-f", "-c", "-o", out, "-e",
         "trace=" + ",".join(STRACE_CALLS)] + argv,
        env=clean_env(**env_extra))
    counts = {}
    for line in open(out):
        parts = line.split()
        if parts and parts[-1] in STRACE_CALLS:
            # % time, seconds, usecs/call, calls, [errors,] syscall
            counts[parts[-1]] = int(parts[3])
    return counts


def strace_compare(t, code, img):
    ceiling = os.path.join(HERE, "ceiling.py")
    share = {"PYCDSMODE": "SHARE", "PYCDSARCHIVE": img}
    return {
        "baseline": strace_counts(t, [t.py, "-c", code], {}),
        "share": strace_counts(t, [t.py, "-c", code], share),
        "instrumented": strace_counts(
            t, [t.py, "-S", ceiling, "--json-lines", os.devnull, "-c", code],
            {}),
    }


# ------------------------------------------------------------------ report

def fmt_ratio(r):
    return "%.3f [%.3f, %.3f]" % (r["ratio"], r["ratio_q1"], r["ratio_q3"])


def write_results(results, argv, path_md, path_png, elapsed):
    L = []
    w = L.append
    w("# pycds benchmarks (issue 4)")
    w("")
    w("Written by `make bench` (`%s`), %s, in %.0f s.  Machine: %s, %d "
      "cores shared with other users (load average at start %s): absolute "
      "milliseconds drift, the paired ratios are what to read." % (
          " ".join(argv), results["date"], elapsed, platform.machine(),
          os.cpu_count(), results["loadavg"]))
    w("")
    g = results.get("git")
    if g:
        w("pycds tree: HEAD %s%s." % (g["head"], (
            " plus uncommitted changes to %s (work in progress when the "
            "run started)" % ", ".join("`%s`" % d for d in g["dirty"]))
            if g["dirty"] else ", clean"))
        w("")
    w("**Targets missed** are explained in [GAP.md](GAP.md): where SHARE's "
      "remaining time goes (callgrind) and what would close the gap; "
      "[CREATE_ALL.md](CREATE_ALL.md) has the archive-of-everything figure.")
    w("")
    w("**Method.**  Each interpreter gets a venv (`-m venv --without-pip "
      "--system-site-packages`) with pycds installed by `make install`.  "
      "Per workload: one run with `PYTHONDONTWRITEBYTECODE` unset writes any "
      "missing `.pyc` (a fair baseline; the instrumented runs confirm it: "
      "`compile` calls = 0 in every row), TRACE (`PYCDSMODE=TRACE "
      "PYCDSLIST=w.lst python -c CODE`), DUMP (`pycds-dump create -l w.lst "
      "-o w.img`), then one interleaved block (`bench/paired.py`: warm-up, "
      "then rounds of the four commands in alternating order) of "
      "`python -c CODE` (baseline), `PYCDSMODE=SHARE PYCDSARCHIVE=w.img "
      "python -c CODE` (SHARE), and the two runs of `python -S "
      "bench/ceiling.py -c CODE` (baseline and SHARE, importlib "
      "instrumented).  ratio = median over rounds of SHARE/baseline of the "
      "same round, [first, third quartile].  The `.pth` in site-packages "
      "that imports certifi at every start is left in place: it is part of "
      "every measurement.  \"pass (all)\" is `python -c pass` under SHARE "
      "with an archive of every module of the stdlib and the site "
      "directories (test directories skipped).")
    w("")
    w("**Ceiling.**  `bench/ceiling.py` runs the workload with `-S`, "
      "instruments importlib (`_find_spec`, `get_code`, `path_stats`, "
      "`get_data` from `get_code`, `_compile_bytecode`, `exec_module`, "
      "extension loading, `_find_and_load`), starts `site` itself and "
      "charges each phase its exclusive time, minus the wrappers' own "
      "per-call bias, calibrated on a wrapped no-op.  Removable = finding "
      "modules that end up with a file loader + get_code + stat + read + "
      "unmarshal; the rest (module bodies, extension modules, import "
      "machinery, builtin/frozen finding) no code-object cache removes.  "
      "removable share = removable ms of an instrumented run / wall time of "
      "the uninstrumented baseline of the same round (median [IQR]); "
      "ceiling = 1 - that share, the best ratio an archive could reach.  "
      "*The instrumentation's own overhead*: Python-level wrappers add "
      "frames, and in 3.11 that moves the data-stack chunk boundaries: "
      "unguarded, `import boto3` made ~3300 mmap/munmap pairs (15 without "
      "instrumentation) and ran 40% slower in-process.  ceiling.py runs the "
      "workload under one frame with 16384 locals, so one big chunk holds "
      "the whole import stack; the strace table below checks the counts, "
      "and the `instr.` column is the instrumented run's wall time over "
      "the baseline's.")
    w("")
    w("## Import time: SHARE / baseline")
    w("")
    w("| interpreter | workload | baseline ms | SHARE ms | ratio [IQR] | "
      "target | CPU ratio [IQR] | ceiling (removable share [IQR]) | "
      "issue's ceiling | instr. | served / missed / refused+stale | "
      "archive MiB | .pyc MiB | archive/.pyc |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in results["targets"]:
        for r in t["workloads"]:
            if r.get("skipped"):
                w("| %s | %s | – | – | skipped: %s | %.2f | | | | | | | | |"
                  % (t["label"], r["name"], r["skipped"], r["target"]))
                continue
            m, s, a = r["timing"], r["stats"], r["archive"]
            ok = "✓" if m["ratio"] <= r["target"] else "✗"
            w("| %s | %s | %.1f | %.1f | %s | ≤ %.2f %s | %.3f [%.3f, %.3f] "
              "| %.3f (%.1f%% [%.1f, %.1f]) | %s | %.2f | %d / %d / %d | "
              "%.1f | %.1f%s | %.2f |" % (
                  t["label"], r["name"], m["baseline_ms"], m["share_ms"],
                  fmt_ratio(m), r["target"], ok, m["cpu_ratio"],
                  m["cpu_ratio_q1"], m["cpu_ratio_q3"], m["ceiling_ratio"],
                  100 * m["removable_share"], 100 * m["removable_q1"],
                  100 * m["removable_q3"],
                  "%.2f (%d%%)" % (1 - r["ref"], 100 * r["ref"])
                  if r["ref"] is not None else "–",
                  m["instrumented_ratio"],
                  s["served"], s["missed"], s["refused"] + s["stale"],
                  a["file_bytes"] / MIB, a["pyc_bytes"] / MIB,
                  "" if not a["pyc_computed"] else "*",
                  a["file_bytes"] / a["pyc_bytes"]))
    w("")
    w("ratio: wall time, the issue's metric.  CPU ratio: user + system "
      "time of the same runs (wait4), which is not inflated by waiting for a "
      "CPU on this shared machine.  instr.: wall time of the instrumented "
      "baseline (without ceiling.py's own setup, calibration and report) "
      "over the baseline's.  ")
    w("target: the issue's bound on the ratio (✓ met at the median).  "
      "archive/.pyc: the archive file's bytes over the `.pyc` bytes of the "
      "modules it holds (target ≤ 2.5)%s." % (
          "; * = some of those modules have no `.pyc` on disk and count as "
          "16 + len(marshal.dumps(compile(source)))"
          if any(r.get("archive", {}).get("pyc_computed")
                 for t in results["targets"] for r in t["workloads"])
          else ""))
    w("")
    w("## Where the time goes (instrumented, exclusive ms, median over "
      "rounds)")
    w("")
    w("Baseline → SHARE per phase.  Under SHARE, `find_source` is pycds's "
      "finder for the names it serves: the lookup, the search-path and "
      "validation checks, materialising the code object "
      "from the archive (relocation) and building the spec; `get_code` "
      "etc. are then ~0.")
    w("")
    phases = ("find_source", "get_code", "stat", "read", "unmarshal",
              "compile", "find_other", "exec", "extension", "machinery",
              "outside")
    w("| interpreter | workload | " + " | ".join(phases) +
      " | removable | minor faults |")
    w("|---|---|" + "---|" * (len(phases) + 2))
    for t in results["targets"]:
        for r in t["workloads"]:
            if r.get("skipped"):
                continue
            m = r["timing"]
            pb, ps = m["phases_base"], m["phases_share"]
            rem_b = sum(pb[p] for p in phases[:6])
            rem_s = sum(ps[p] for p in phases[:6])
            w("| %s | %s | " % (t["label"], r["name"]) + " | ".join(
                "%.1f → %.1f" % (pb[p], ps[p]) for p in phases) +
                " | %.1f → %.1f | %d → %d |" % (
                    rem_b, rem_s, m["minflt_base"], m["minflt_share"]))
    w("")
    for t in results["targets"]:
        b = t["workloads"][0]["timing"]["bias_ns"] if not \
            t["workloads"][0].get("skipped") else None
        if b:
            w("Calibrated wrapper bias (%s): %.0f ns per call charged to the "
              "callee, %.0f ns to the caller, subtracted." % (
                  t["label"], b["callee"], b["caller"]))
    w("")
    for t in results["targets"]:
        d = t.get("deep")
        if not d:
            continue
        w("## %s: %s in depth" % (t["label"], d["name"]))
        w("")
        mem = d["memory"]
        w("### Memory: %d concurrent processes (sum over processes, MiB, "
          "median of %d)" % (mem["n"], mem["repeat"]))
        w("")
        w("`python3 bench/memory.py --n %d --repeat %d %s %s "
          "PYCDSMODE=SHARE PYCDSARCHIVE=%s`: each process imports, writes "
          "`ready`, and blocks on stdin until all have been read from "
          "`/proc/PID/smaps_rollup`." % (
              mem["n"], mem["repeat"], t["py"], shlex.quote(d["code"]),
              os.path.basename(d["img"])))
        w("")
        w("| | " + " | ".join(memory.FIELDS) + " |")
        w("|---|" + "---|" * len(memory.FIELDS))
        for k in ("baseline", "share"):
            w("| %s | " % k + " | ".join(
                "%.1f" % (mem[k][f] / 1024) for f in memory.FIELDS) + " |")
        w("")
        for cg, what in ((d["callgrind"], d["name"]),
                         (d.get("callgrind_all"), "pass (all)")):
            if cg:
                callgrind_section(w, cg, what)
    write_tail(w, results)
    with open(path_md, "w") as f:
        f.write("\n".join(L) + "\n")
    chart(results, path_png)


def callgrind_section(w, cg, what):
    if True:
        w("### Instructions: %s (callgrind, %d run(s) each)" % (
            what, len(cg["baseline"])))
        w("")
        w("`%s`" % cg["command"])
        w("")
        tb = [x["total"] for x in cg["baseline"]]
        ts = [x["total"] for x in cg["share"]]
        w("| | total Ir (each run) | SHARE/baseline |")
        w("|---|---|---|")
        w("| baseline | %s | |" % ", ".join("{:,}".format(x) for x in tb))
        w("| SHARE | %s | %.4f |" % (", ".join("{:,}".format(x) for x in ts),
                                    statistics.median(ts) /
                                    statistics.median(tb)))
        w("")
        w("Inclusive Ir of selected functions (first run):")
        w("")
        w("| function | baseline | SHARE |")
        w("|---|---|---|")
        ib, ish = cg["baseline"][0]["inclusive"], cg["share"][0]["inclusive"]
        for f in CALLGRIND_FUNCS:
            if f in ib or f in ish:
                w("| `%s` | %s | %s |" % (
                    f, "{:,}".format(ib[f]) if f in ib else "–",
                    "{:,}".format(ish[f]) if f in ish else "–"))
        top = cg["share"][0]["pycds_top"]
        for f, v in top.items():
            w("| `%s` (pycds) | | %s |" % (f, "{:,}".format(v)))
        if "finder_find_spec" in top and "pycds_archive_entry_code" in top:
            w("| `finder_find_spec` − `pycds_archive_entry_code`: lookup, "
              "search-path and validation checks, spec building | | %s |" %
              "{:,}".format(top["finder_find_spec"] -
                            top["pycds_archive_entry_code"]))
        w("")
        w("Instruction counts leave out the kernel: page faults on the "
          "mapped archive (first touch, copy-on-write of relocated pages) "
          "show in wall time and in the minor-fault column above, not here.")
        w("")


def write_tail(w, results):

    if any(r.get("strace") for t in results["targets"]
           for r in t["workloads"]):
        w("## System calls (`strace -f -c`, one run each)")
        w("")
        w("baseline / SHARE / instrumented baseline (ceiling.py: its "
          "mmap/munmap counts must stay near the baseline's, see Ceiling).")
        w("")
        w("| interpreter | workload | " + " | ".join(STRACE_CALLS) + " |")
        w("|---|---|" + "---|" * len(STRACE_CALLS))
        for t in results["targets"]:
            for r in t["workloads"]:
                st = r.get("strace")
                if not st:
                    continue
                w("| %s | %s | " % (t["label"], r["name"]) + " | ".join(
                    "%d / %d / %d" % tuple(st[k].get(c, 0) for k in (
                        "baseline", "share", "instrumented"))
                    for c in STRACE_CALLS) + " |")
        w("")
    w("## Commands")
    w("")
    for t in results["targets"]:
        for r in t["workloads"]:
            if r.get("skipped"):
                continue
            w("%s, %s:" % (t["label"], r["name"]))
            w("")
            w("```")
            for c in r["timing"]["commands"]:
                w(c)
            w("```")
            w("")
    w("Paths: build/bench/<build id>/ (venv, lists, archives); raw numbers "
      "in build/bench/results.json.")


def chart(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [(t["label"], r) for t in results["targets"]
            for r in t["workloads"] if not r.get("skipped")]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4.5))
    xs = range(len(rows))
    ratios = [r["timing"]["ratio"] for _, r in rows]
    lo = [r["timing"]["ratio"] - r["timing"]["ratio_q1"] for _, r in rows]
    hi = [r["timing"]["ratio_q3"] - r["timing"]["ratio"] for _, r in rows]
    ceil = [r["timing"]["ceiling_ratio"] for _, r in rows]
    cpus = [r["timing"].get("cpu_ratio") for _, r in rows]
    clo = [r["timing"]["removable_q3"] - r["timing"]["removable_share"]
           for _, r in rows]
    chi = [r["timing"]["removable_share"] - r["timing"]["removable_q1"]
           for _, r in rows]
    wdt = 0.38
    ax.bar([x - wdt / 2 for x in xs], ratios, wdt, yerr=[lo, hi],
           capsize=3, label="SHARE / baseline (median, IQR)", color="#4878b0")
    ax.bar([x + wdt / 2 for x in xs], ceil, wdt, yerr=[clo, chi], capsize=3,
           label="ceiling: 1 − removable share", color="#a0a0a0")
    for x, (_, r) in zip(xs, rows):
        ax.hlines(r["target"], x - 0.45, x + 0.45, colors="#c03030",
                  linestyles="--", label="target" if x == 0 else None)
    ax.plot([x - wdt / 2 for x, c in zip(xs, cpus) if c is not None],
            [c for c in cpus if c is not None], "o", color="#f0c040",
            markeredgecolor="black", markersize=5,
            label="SHARE / baseline CPU time")
    refs = [(x + wdt / 2, 1 - r["ref"]) for x, (_, r) in zip(xs, rows)
            if r.get("ref") is not None]
    if refs:
        ax.plot([x for x, _ in refs], [y for _, y in refs], "kx",
                label="issue's reference ceiling")
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(["%s\n%s" % (r["name"], lab) for lab, r in rows],
                       fontsize=7)
    ax.set_ylim(min(0.5, min(ceil) - 0.1), max(1.15, max(ratios) + 0.1))
    ax.set_ylabel("whole-process time ratio")
    ax.set_title("pycds SHARE vs baseline .pyc import (%s)" % results["date"])
    ax.legend(fontsize=7, loc="upper center", ncol=4,
              bbox_to_anchor=(0.5, -0.18), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -------------------------------------------------------------------- main

def git_state():
    """HEAD and the pycds files that differ from it when the run starts:
    the numbers belong to that tree."""
    head = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
               check=False).stdout.strip()
    dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--", "src",
                 "pycds", "include"], check=False).stdout.split("\n")
    return {"head": head, "dirty": [d[3:] for d in dirty if d.strip()]}


def invocation(goal, var, pythons):
    """The command that ran this script, as a report states it: `make
    GOAL VAR=...` under make (PYCDS_BENCH_MAKE), else the script's own
    command line.  ``pythons``: the trailing arguments make adds."""
    if os.environ.get("PYCDS_BENCH_MAKE"):
        opts = sys.argv[1:len(sys.argv) - len(pythons)]
        return ["make", goal] + (
            ["%s=%s" % (var, shlex.quote(" ".join(opts)))] if opts else [])
    return [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", help="comma-separated workload names")
    p.add_argument("--no-deep", action="store_true",
                   help="skip memory, callgrind and strace")
    p.add_argument("--md", default=os.path.join(HERE, "RESULTS.md"))
    p.add_argument("--png", default=os.path.join(HERE, "results.png"))
    p.add_argument("--report-only", action="store_true",
                   help="rewrite RESULTS.md and the chart from "
                   "build/bench/results.json")
    p.add_argument("pythons", nargs="*")
    a = p.parse_args()
    if a.report_only:
        with open(os.path.join(BENCH, "results.json")) as f:
            results = json.load(f)
        write_results(results, results.get("argv", ["make", "bench"]),
                      a.md, a.png, results.get("elapsed", 0))
        return
    if not a.pythons:
        p.error("no PYTHON given")
    started = time.monotonic()
    only = set(a.only.split(",")) if a.only else None
    results = {"date": datetime.date.today().isoformat(),
               "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]),
               "git": git_state(), "targets": []}
    for python in a.pythons:
        t = Target(python)
        # Every command runs in an empty directory: '' is first on sys.path
        # under -c, and the source tree's pycds/ must not shadow anything.
        cwd = os.path.join(t.dir, "cwd")
        os.makedirs(cwd, exist_ok=True)
        os.chdir(cwd)
        log("==", t.label, t.py)
        tres = {"label": t.label, "python": python, "py": t.py,
                "workloads": []}
        results["targets"].append(tres)
        for name, code, target, ref, kind in WORKLOADS:
            if only and name not in only:
                continue
            r = {"name": name, "code": code, "target": target,
                 "ref": ref if t.label.startswith("pyenv") else None}
            tres["workloads"].append(r)
            if not t.has(code):
                r["skipped"] = "not installed"
                log(name, "skipped: not installed")
                continue
            log(name)
            write_pycs(t, code)
            safe = re.sub(r"[^A-Za-z0-9]+", "_", name)
            lst = trace_list(t, safe, code) if kind == "trace" else \
                all_list(t, safe)
            img, r["archive"] = dump(t, safe, lst)
            r["img"] = img
            r["stats"] = share_stats(t, code, img)
            r["timing"] = time_workload(t, code, img, a.rounds, a.warmup,
                                        safe)
            if not a.no_deep:
                r["strace"] = strace_compare(t, code, img)
            m = r["timing"]
            log("  ratio %s  ceiling %.3f  instr %.2f  served %d" % (
                fmt_ratio(m), m["ceiling_ratio"], m["instrumented_ratio"],
                r["stats"]["served"]))
        if a.no_deep:
            continue
        deep = next((r for r in tres["workloads"]
                     if r["name"] in DEEP_WORKLOADS and not r.get("skipped")),
                    None)
        if deep is None:
            continue
        log("memory, callgrind, strace:", deep["name"])
        img = deep["img"]
        tres["deep"] = {
            "name": deep["name"], "code": deep["code"], "img": img,
            "memory": memory.compare(t.py, deep["code"], {
                "PYCDSMODE": "SHARE", "PYCDSARCHIVE": img}, n=8, repeat=3),
            "callgrind": callgrind_compare(t, deep["code"], img),
        }
        # The fixed cost of SHARE: a start-up under the biggest archive.
        full = next((r for r in tres["workloads"] if r["name"] == "pass (all)"
                     and not r.get("skipped")), None)
        if full is not None:
            tres["deep"]["callgrind_all"] = callgrind_compare(
                t, full["code"], full["img"], reps=1)
    argv = invocation("bench", "BENCH_ARGS", a.pythons)
    results["argv"] = argv
    results["elapsed"] = time.monotonic() - started
    os.makedirs(BENCH, exist_ok=True)
    with open(os.path.join(BENCH, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_results(results, argv, a.md, a.png, results["elapsed"])
    log("wrote", a.md, "and", a.png)


if __name__ == "__main__":
    main()
