"""make bench-data: a worker that needs large read-only data, four ways.

For each PYTHON, and for a non-PIE executable linked from each pyenv
3.12+ PYTHON (tools/link-non-pie, as distributions build python3.X), and
each payload of bench/data_payloads.py (list of 10 x 100 KB bytes,
list(range(10000)), dict of 10,000 str -> int, a ~50 MB vocabulary dict
str -> tuple of ints), the worker gets its data by:

  pool arg   pickled through a ProcessPoolExecutor argument (the parent
             holds the data, the worker is already running)
  pickle     pickle.load from a file
  json       json.load from a file (not for bytes)
  pycds      pycds.load_data of a data archive

and we measure:

  first      time from the worker's start (before it imports the module
             that loads) to its first lookup done, in a fresh process each
             time; for pool arg, from submit to the result of a lookup
  load       the same from the start of the loading (the module
             imported): what "load_data + first lookup against
             pickle.load" compares
             Methods run interleaved, each round gives a ratio against
             pickle.load: the median and quartiles of those paired ratios
             (timing on a shared 2-core machine drifts between rounds)
  per task   a pool of 2 workers runs TASKS lookups: pool arg sends the
             data with each task, the others load it once per worker (an
             initializer) and get only the key
  Pss        8 worker processes at once, each loads the data and looks
             up 1,000 keys drawn beforehand; the sum of their Pss
             (smaps_rollup) less that of 8 processes that loaded
             nothing.  A pool arg worker holds what a pickle.load one
             does (an unpickled copy).
  Pss forked a parent loads the data (pickle.load or load_data), then
             forks 8 workers that make the same lookups: the sum of the
             Pss of all 9, less the same without the data.

Writes bench/DATA.md and build/bench/data.json.

    python3 bench/data.py [--rounds 9] [--workers 8] [--tasks 20] PYTHON...
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import memory                                   # noqa: E402
import paired                                   # noqa: E402
import run as bench                             # noqa: E402
from shared_pages import mib, non_pie           # noqa: E402

import data_payloads                            # noqa: E402

METHODS = ("pool arg", "pickle", "json", "pycds")

# The first lookup of the data d of payload NAME (a key in K).
LOOKUP = "d[K]"

# Child: make the payload's files (with the target interpreter: a data
# archive is bound to the interpreter that writes it).
MAKE = r"""
import json, os, pickle, sys, time
import pycds, data_payloads as P
name, where = sys.argv[1], sys.argv[2]
d = P.make(name)
key = P.vocab_probe(d) if name == 'vocab' else P.probe(name)
# What a worker holding the data looks up: 1,000 keys (or indices) drawn
# here, not by walking the data there (on 3.11 that writes the reference
# count of every key).
import random
r = random.Random(1)
with open(os.path.join(where, name + '.keys'), 'w') as f:
    json.dump(r.sample(list(d) if isinstance(d, dict) else range(len(d)),
                       min(1000, len(d))), f)
with open(os.path.join(where, name + '.pickle'), 'wb') as f:
    pickle.dump(d, f, protocol=pickle.HIGHEST_PROTOCOL)
if name != 'bytes':
    with open(os.path.join(where, name + '.json'), 'w') as f:
        json.dump(d, f)
t = time.perf_counter()
pycds.dump_data(os.path.join(where, name + '.data'), d)
t = time.perf_counter() - t
sizes = {ext: os.path.getsize(os.path.join(where, name + ext))
         for ext in ('.pickle', '.json', '.data')
         if os.path.exists(os.path.join(where, name + ext))}
info = pycds.inspect_archive(os.path.join(where, name + '.data'))
print(json.dumps({'key': key, 'sizes': sizes, 'dump_s': t,
                  'heap': info['heap_bytes'],
                  'image': info['prelinked_bytes']}))
"""

# Child: load the data one way, then the first lookup; prints seconds.
# t1: the module imported, the loading starts.
LOADERS = {
    "pickle": "import pickle\nt1 = time.perf_counter()\n"
              "with open(F + '.pickle', 'rb') as f:\n    d = pickle.load(f)\n",
    "json": "import json\nt1 = time.perf_counter()\n"
            "with open(F + '.json') as f:\n    d = json.load(f)\n",
    "pycds": "import pycds\nt1 = time.perf_counter()\n"
             "d = pycds.load_data(F + '.data')\n",
}
FIRST = ("import sys, time\nt0 = time.perf_counter()\n"
         "F, K = sys.argv[1], eval(sys.argv[2])\n%s"
         "v = " + LOOKUP + "\nt2 = time.perf_counter()\n"
         "print(t2 - t0, t2 - t1)\n")

# Child: the pool-arg first lookup and the per-task times of every
# method, from one parent holding the data.
POOL = r"""
import json, pickle, sys, time
from concurrent.futures import ProcessPoolExecutor
F, K, methods, tasks = (sys.argv[1], eval(sys.argv[2]),
                        sys.argv[3].split(','), int(sys.argv[4]))
with open(F + '.pickle', 'rb') as f:
    data = pickle.load(f)
out = {}
for method in methods:
    with ProcessPoolExecutor(2, initializer=poolwork.init,
                             initargs=(method, F)) as pool:
        list(pool.map(poolwork.ping, range(4)))      # workers up
        arg = data if method == 'pool arg' else None
        if method == 'pool arg':
            t = time.perf_counter()
            pool.submit(poolwork.lookup, arg, K).result()
            out['first'] = time.perf_counter() - t
        t = time.perf_counter()
        fs = [pool.submit(poolwork.lookup, arg, K) for _ in range(tasks)]
        for f in fs:
            f.result()
        out[method] = (time.perf_counter() - t) / tasks
print(json.dumps(out))
"""

# Child: a worker holding the data (Pss): loads, 1,000 lookups, waits.
HOLD = ("import json, sys, time\nF, K = sys.argv[1], eval(sys.argv[2])\n%s"
        "for k in json.load(open(F + '.keys')):\n"
        "    v = d[k]\n"
        "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
        "sys.stdin.read()\n")
# Child: a parent that loads the data, then forks N workers that look up
# the same keys (a pre-forking server); prints the sum of the Pss of all.
FORKED = r"""
import json, os, sys
F, K, n = sys.argv[1], eval(sys.argv[2]), int(sys.argv[3])
%s
keys = json.load(open(F + '.keys'))
kids, ready = [], []
for _ in range(n):
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for k in keys:
            v = d[k]
        os.write(w, b'x')
        os.read(go_r, 1)
        os._exit(0)
    kids.append((pid, go_w))
    ready.append(r)
for r in ready:
    os.read(r, 1)
def pss(pid):
    for line in open('/proc/%%d/smaps_rollup' %% pid):
        if line.startswith('Pss:'):
            return int(line.split()[1])
print(sum(pss(pid) for pid, _ in kids) + pss(os.getpid()))
for pid, go in kids:
    os.write(go, b'x')
    os.waitpid(pid, 0)
"""
NOTHING = ("import pickle, pycds\n"
           "d = {k: None for k in json.load(open(F + '.keys'))}\n")

BASELINE_HOLD = ("import sys, pickle, json, pycds\n"
                 "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
                 "sys.stdin.read()\n")


class Target:
    """An interpreter with pycds from its build directory (PYTHONPATH),
    for a non-PIE executable the one of the pyenv interpreter it was
    linked from."""

    def __init__(self, python, built_for=None):
        self.python = python
        builddir = bench.run(["make", "-s", "--no-print-directory", "-C",
                              bench.ROOT, "print-builddir",
                              "PYTHON=" + (built_for or python)])
        self.builddir = builddir.stdout.strip()
        real = os.path.realpath(python)
        version = bench.run([python, "-c", "import platform; "
                             "print(platform.python_version())"])
        self.label = bench.label(real, version.stdout.strip())
        self.dir = os.path.join(bench.BENCH, "data",
                                self.label.replace(" ", "_").replace(
                                    "(", "").replace(")", ""))
        os.makedirs(self.dir, exist_ok=True)

    def env(self):
        env = bench.clean_env(PYTHONPATH=os.pathsep.join([self.builddir,
                                                          HERE]))
        env.pop("PYTHONHASHSEED", None)
        return env

    def run(self, code, *args):
        return bench.run([self.python, "-c", code, *map(str, args)],
                         env=self.env(), cwd=self.dir).stdout


def first_lookups(t, name, key, methods, rounds):
    """({method: [seconds per round]} from the start, the same from the
    start of the loading), methods interleaved per round."""
    f = os.path.join(t.dir, name)
    times = {m: [] for m in methods}
    loads = {m: [] for m in methods}
    for i in range(rounds):
        order = methods if i % 2 == 0 else methods[::-1]
        for m in order:
            if m == "pool arg":
                out = json.loads(t.run("import poolwork\n" + POOL, f,
                                       repr(key), m, 1))
                times[m].append(out["first"])
                loads[m].append(out["first"])
            else:
                whole, load = t.run(FIRST % LOADERS[m], f, repr(key)).split()
                times[m].append(float(whole))
                loads[m].append(float(load))
    return times, loads


def per_task(t, name, key, methods, tasks, rounds):
    f = os.path.join(t.dir, name)
    times = {m: [] for m in methods}
    for i in range(rounds):
        order = methods if i % 2 == 0 else methods[::-1]
        out = json.loads(t.run("import poolwork\n" + POOL, f, repr(key),
                               ",".join(order), tasks))
        for m in methods:
            times[m].append(out[m])
    return times


def pss(t, name, key, methods, n):
    """{method: kB of Pss of n workers holding the data}, less the
    baseline's."""
    f = os.path.join(t.dir, name)
    env = t.env()

    def total(code, *args):
        argv = [t.python, "-c", code, *args]
        with memory.alive(argv, env, n) as procs:
            return sum(memory.rollup(p.pid)["Pss"] for p, _ in procs)
    base = total(BASELINE_HOLD)
    return {m: total(HOLD % LOADERS[m], f, repr(key)) - base
            for m in methods if m != "pool arg"}


def pss_forked(t, name, key, n):
    """{method: kB of Pss of a parent that loaded the data and the n
    workers it forked}, less the same without the data."""
    f = os.path.join(t.dir, name)

    def total(load):
        return int(t.run(FORKED % load.replace("t1 = time.perf_counter()\n",
                                               ""), f, repr(key), n))
    base = total(NOTHING)
    return {m: total(LOADERS[m]) - base for m in ("pickle", "pycds")}


def ratios(times, against="pickle"):
    out = {}
    for m, ts in times.items():
        q1, med, q3 = paired.quartiles([a / b for a, b in
                                        zip(ts, times[against])])
        out[m] = {"median_ms": statistics.median(ts) * 1e3,
                  "ratio": med, "q1": q1, "q3": q3}
    return out


def measure_target(t, a):
    res = {"label": t.label, "python": t.python, "payloads": {}}
    bench.log("==", t.label)
    # Children run with -c: the repository's pycds/ must not be first on
    # their sys.path.
    os.chdir(t.dir)
    for name in data_payloads.NAMES:
        made = json.loads(t.run(MAKE, name, t.dir))
        key = made["key"]
        methods = [m for m in METHODS if m != "json" or name != "bytes"]
        first, load = first_lookups(t, name, key, methods, a.rounds)
        tasks = per_task(t, name, key, methods, a.tasks, max(3, a.rounds // 3))
        mem = pss(t, name, key, methods, a.workers)
        forked = pss_forked(t, name, key, a.workers)
        r = {"files": made, "first": ratios(first), "load": ratios(load),
             "per_task": ratios(tasks), "pss_kb": mem,
             "pss_forked_kb": forked}
        res["payloads"][name] = r
        bench.log("  %s: load + first lookup pycds %.2f ms, pickle %.2f ms "
                  "(ratio %.3f); Pss pycds/pickle %.3f" % (
                      name, r["load"]["pycds"]["median_ms"],
                      r["load"]["pickle"]["median_ms"],
                      r["load"]["pycds"]["ratio"],
                      mem["pycds"] / mem["pickle"] if mem["pickle"] else 0))
    return res


def fmt(r):
    return "%.3f [%.3f, %.3f]" % (r["ratio"], r["q1"], r["q3"])


def write_md(results, path, argv):
    lines = []
    w = lines.append
    w("# Data archives: a worker that needs large read-only data")
    w("")
    w("`make bench-data` (bench/data.py), %s, load average %s at the start; "
      "%d rounds, %d workers, %d tasks.  Command: `%s`." % (
          results["date"], results["loadavg"], results["rounds"],
          results["workers"], results["tasks"], " ".join(argv)))
    w("")
    w("Ratios are medians of paired ratios against `pickle.load` in the "
      "same round, with quartiles: below 1 is faster.  *first*: from the "
      "worker's start (imports included) to its first lookup; *load*: the "
      "same from the start of the loading (after the import of pickle, "
      "json or pycds); pool arg: both from submit to the lookup's result, "
      "the worker already running.  "
      "*per task*: one lookup task in a pool of 2 workers, pool arg "
      "sending the data with each.  *Pss*: 8 workers holding the data "
      "(loaded, 1,000 lookups), less 8 that hold none; a pool arg worker "
      "holds what a pickle one does.  *Pss, forked*: a parent that loaded "
      "the data and the 8 workers it forked (each makes the same 1,000 "
      "lookups), less the same holding nothing.  Payload sizes: pickle "
      "file / data "
      "archive's image (the objects as laid out in memory).")
    for r in results["targets"]:
        w("")
        w("## %s" % r["label"])
        w("")
        w("| payload | method | first (ms) | first / pickle | load (ms) "
          "| load / pickle | per task (ms) | per task / pickle "
          "| Pss of 8 (MiB) | Pss / pickle's | Pss, forked (MiB) |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, p in r["payloads"].items():
            sizes = p["files"]["sizes"]
            label = "%s (%s / %s MiB)" % (
                name, mib(sizes[".pickle"] / 1024),
                mib(p["files"]["image"] / 1024))
            for m in METHODS:
                if m not in p["first"]:
                    continue
                mem = p["pss_kb"].get(m)
                forked = p["pss_forked_kb"].get(m)
                w("| %s | %s | %.2f | %s | %.2f | %s | %.3f | %s | %s | %s "
                  "| %s |" % (
                    label, m, p["first"][m]["median_ms"], fmt(p["first"][m]),
                    p["load"][m]["median_ms"], fmt(p["load"][m]),
                    p["per_task"][m]["median_ms"], fmt(p["per_task"][m]),
                    mib(mem) if mem is not None else "(as pickle)",
                    "%.3f" % (mem / p["pss_kb"]["pickle"])
                    if mem is not None and p["pss_kb"]["pickle"] else "",
                    mib(forked) if forked is not None else ""))
                label = ""
    w("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--md", default=os.path.join(HERE, "DATA.md"))
    p.add_argument("--no-non-pie", action="store_true")
    p.add_argument("pythons", nargs="+")
    a = p.parse_args()
    targets = []
    for python in a.pythons:
        targets.append(Target(python))
        ver = bench.run([python, "-c", "import sys; "
                         "print(sys.version_info >= (3, 12))"])
        exe = (non_pie(python) if ver.stdout.strip() == "True"
               and not a.no_non_pie else None)
        if exe:
            targets.append(Target(exe, built_for=python))
    results = {"date": datetime.date.today().isoformat(),
               "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]),
               "rounds": a.rounds, "workers": a.workers, "tasks": a.tasks,
               "targets": [measure_target(t, a) for t in targets]}
    os.makedirs(bench.BENCH, exist_ok=True)
    with open(os.path.join(bench.BENCH, "data.json"), "w") as f:
        json.dump(results, f, indent=2)
    write_md(results, a.md, ["bench/data.py"] + sys.argv[1:])
    bench.log("wrote", a.md)


if __name__ == "__main__":
    main()
