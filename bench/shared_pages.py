"""make bench-pages: memory and archive pages shared between processes,
in default conditions (address randomisation on, PYTHONHASHSEED unset).

For each PYTHON, and for a non-PIE executable linked from each pyenv
3.12+ PYTHON (tools/link-non-pie, as distributions build python3.X): a
venv with pycds installed (as bench/run.py makes it), the stdlib WORKLOAD
traced and dumped (the archive with its prelinked image), then N
processes started at once in each configuration:

  baseline   no pycds
  relocated  PYCDSMODE=SHARE PYCDSCHECK=1: every entry read into private
             memory, checked object by object and relocated
  in place   PYCDSMODE=SHARE: the archive's prelinked image mapped and used
             where it lies

Each process imports the workload, says ready and waits; while all are
alive, /proc/PID/smaps_rollup gives Pss and Private_Dirty, and the image's
mappings in /proc/PID/smaps give, per area, the pages a process touched
(Rss) and those it wrote (Private_Dirty).  Then the three configurations
are timed (bench/paired.py, interleaved), and `python -c pass` under a
`create --all` archive against `python -c pass`.  Writes bench/SHARED_PAGES.md
and build/bench/shared_pages.json.

    python3 bench/shared_pages.py [--n 8] [--rounds 20] PYTHON...
"""
import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import memory                                   # noqa: E402
import paired                                   # noqa: E402
import run as bench                             # noqa: E402

WORKLOAD = ("import asyncio, email.parser, json, http.client, argparse, "
            "logging, xml.etree.ElementTree, unittest, decimal, typing")
# Says "ready" and what the image did (layer_stats()'s "prelinked"), then
# waits: asked of the extension, as SHARE's common case imports no module
# of the package, and importing one would add to the process's Pss.
WAIT = ("\nimport sys, json\n"
        "_m = sys.modules.get('_pycds')\n"
        "_f = _m.installed()[0] if _m else []\n"
        "_i = _f[0].archive.prelinked() if _f else None\n"
        "sys.stdout.write('ready %s\\n' % json.dumps(_i)); sys.stdout.flush()\n"
        "sys.stdin.read()\n")
AREAS = ("strings", "data", "fixed", "code", "hot code", "run-once")
# Where images are mapped (format.h, PYCDS_PRELINK_SLOTS_START and on),
# each area at a sixth of its slot (PYCDS_PRELINK_AREA_MAX).
SLOT = 64 << 30
IMAGE_LO, IMAGE_HI = 0x200000000000, 0x200000000000 + 512 * SLOT
AREA_MAX = SLOT // len(AREAS) & ~4095
ROLLUP = ("Rss", "Pss", "Private_Dirty")
AREA_FIELDS = ("Rss", "Pss", "Shared_Clean", "Private_Clean",
               "Private_Dirty")


def env_for(extra):
    env = bench.clean_env(**extra)
    env.pop("PYTHONHASHSEED", None)
    return env


def image_areas(pid):
    """[{field: kB}] of the image's areas (an empty one is not mapped)."""
    maps, cur = {}, None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo = int(head.split("-")[0], 16)
                cur = maps.setdefault(lo, dict.fromkeys(AREA_FIELDS, 0)) \
                    if IMAGE_LO <= lo < IMAGE_HI else None
            elif cur is not None and head.rstrip(":") in AREA_FIELDS:
                cur[head.rstrip(":")] += int(line.split()[1])
    areas = [dict.fromkeys(AREA_FIELDS, 0) for _ in AREAS]
    for lo, fields in maps.items():
        areas[(lo - IMAGE_LO) % SLOT // AREA_MAX] = fields
    return areas


def measure(py, code, extra, n):
    """Start n processes at once; per process, its rollup and areas."""
    argv = [py, "-c", code + WAIT]
    with memory.alive(argv, env_for(extra), n) as procs:
        return [{"rollup": memory.rollup(p.pid), "areas": image_areas(p.pid),
                 "image": json.loads(line[6:])} for p, line in procs]


def summarise(procs):
    out = {k: sum(p["rollup"][k] for p in procs) for k in ROLLUP}
    out["image"] = procs[0]["image"]
    areas = [p["areas"] for p in procs if p["areas"]]
    if areas:
        per = [dict(zip(AREA_FIELDS, (statistics.median(a[k][f] for a in areas)
                                      for f in AREA_FIELDS)))
               for k in range(len(areas[0]))]
        out["areas"] = per
        touched = sum(a["Rss"] for a in per)
        dirty = sum(a["Private_Dirty"] for a in per)
        out["touched_kib"], out["dirty_kib"] = touched, dirty
        out["dirty_fraction"] = dirty / touched if touched else None
    return out


def measure_target(python, n, rounds):
    t = bench.Target(python)
    cwd = os.path.join(t.dir, "cwd")
    os.makedirs(cwd, exist_ok=True)
    os.chdir(cwd)
    bench.log("==", t.label)
    bench.write_pycs(t, WORKLOAD)
    lst = bench.trace_list(t, "pages", WORKLOAD)
    img, meta = bench.dump(t, "pages", lst)
    res = {"label": t.label, "python": python, "archive": meta, "n": n}
    share = {"PYCDSMODE": "SHARE", "PYCDSARCHIVE": img}
    configs = [("baseline", {}), ("relocated", dict(share, PYCDSCHECK="1")),
               ("in place", share)]
    for name, extra in configs:
        res[name] = summarise(measure(t.py, WORKLOAD, extra, n))
    p = res["in place"]
    bench.log("  image: %s" % p["image"])
    bench.log("  written %.1f%% of %d KiB touched; Pss %s of baseline" % (
        100 * (p.get("dirty_fraction") or 0), p.get("touched_kib", 0),
        "%.3f" % (p["Pss"] / res["baseline"]["Pss"])))
    cmd = "%s -c %s" % (t.py, shlex.quote(WORKLOAD))
    res["timing"] = paired.paired(
        [" ".join("%s=%s" % kv for kv in extra.items()) + " " + cmd
         for _, extra in configs], rounds, 3, env=env_for({}))
    for r in res["timing"]:
        r.pop("times"), r.pop("cpu_times")
    res["pass_all"] = time_pass_all(t, rounds)
    return res


def time_pass_all(t, rounds):
    """`python -c pass` under SHARE with a `create --all` archive (the
    stdlib and the site directories), paired against `python -c pass`:
    what pycds costs a process that uses none of what it serves."""
    img = os.path.join(t.dir, "all.img")
    stamp = img + ".key"
    if not (os.path.exists(stamp) and open(stamp).read() == t.pycds_key):
        bench.run([t.dump, "create", "--all", "-o", img],
                  env=bench.clean_env())
        with open(stamp, "w") as f:
            f.write(t.pycds_key)
    cmd = "%s -c pass" % t.py
    timing = paired.paired([cmd, "PYCDSMODE=SHARE PYCDSARCHIVE=%s %s"
                            % (img, cmd)], max(60, 3 * rounds), 3,
                           env=env_for({}))
    bench.log("  -c pass under create --all: %.3f" % timing[1]["ratio"])
    return [{k: v for k, v in r.items() if k not in ("times", "cpu_times")}
            for r in timing]


def mib(kb):
    return "%.1f" % (kb / 1024)


CONFIGS = ("baseline", "relocated", "in place")


def write_md(results, path, argv):
    lines = []
    w = lines.append
    w("# Memory and shared archive pages, default conditions")
    w("")
    w("Generated by `%s` on %s (load average %s); raw numbers in "
      "build/bench/shared_pages.json." % (
          " ".join(argv), results["date"], results["loadavg"]))
    w("")
    w("Workload: `%s`, traced and dumped per interpreter (`pycds-dump "
      "create`: the archive with its prelinked image); %d processes "
      "started at once per configuration, address randomisation on, "
      "PYTHONHASHSEED unset, no `setarch`.  *relocated*: "
      "`PYCDSCHECK=1`, every entry read into private memory, checked and "
      "relocated; *in place*: the default, the image mapped from the "
      "archive and used where it lies.  PIE: pyenv's executables with "
      "libpython shared, loaded at a random address; non-PIE: Debian's "
      "`/usr/bin/python3.11` and executables linked from pyenv's "
      "`python.o` and `libpython3.X.a` (`tools/link-non-pie`), as "
      "distributions build theirs." % (WORKLOAD, results["n"]))
    w("")
    w("## Memory of %d processes (sums, MiB)" % results["n"])
    w("")
    w("| interpreter | configuration | Pss | Pss / baseline | "
      "Private_Dirty | Rss |")
    w("|---|---|---|---|---|---|")
    for r in results["targets"]:
        for name in CONFIGS:
            m = r[name]
            w("| %s | %s | %s | %.3f | %s | %s |" % (
                r["label"], name, mib(m["Pss"]),
                m["Pss"] / r["baseline"]["Pss"], mib(m["Private_Dirty"]),
                mib(m["Rss"])))
    w("")
    w("## Image pages a process touched and wrote (in place, median "
      "process)")
    w("")
    w("| interpreter | touched KiB | written (Private_Dirty) KiB | "
      "written / touched | per area: touched / written KiB | load-time "
      "work |")
    w("|---|---|---|---|---|---|")
    for r in results["targets"]:
        p = r["in place"]
        if not p.get("areas"):
            w("| %s | - | - | - | not mapped: %s | |" % (r["label"],
                                                        p["image"]))
            continue
        per = ", ".join("%s %d / %d" % (AREAS[k], a["Rss"], a["Private_Dirty"])
                        for k, a in enumerate(p["areas"]))
        i = p["image"]
        work = ("%d modules, %d runtime slots, %d strings reinterned, %d "
                "frozensets" % (i["served"], i["runtime_fixed"],
                                i["reinterned"], i["frozensets"]))
        w("| %s | %d | %d | **%.1f%%** | %s | %s |" % (
            r["label"], p["touched_kib"], p["dirty_kib"],
            100 * p["dirty_fraction"], per, work))
    w("")
    w("What is written: on a PIE interpreter every object's `ob_type` (and "
      "each pointer to a singleton of libpython) gets the load delta, so "
      "every page of an entry in use is written; on a non-PIE one nothing "
      "of the kind.  On 3.11 reference counts write every object used.  "
      "Everywhere: *hot code* and *code*, the bytecode the interpreter "
      "specialises as it runs; *strings*, the hash of each interned string "
      "(the seed is random: the image holds no hashes); *fixed* and the "
      "others, the slots of strings the process had interned before the "
      "image served them (rewritten to the process's copy) and of "
      "frozensets.  *run-once*, the code of module and class bodies, is "
      "only read: copied to the heap, and freed there once the body ran.")
    w("")
    w("## Start-up time (paired, interleaved; ratio to baseline)")
    w("")
    w("| interpreter | configuration | median ms | wall ratio [IQR] | "
      "CPU ratio |")
    w("|---|---|---|---|---|")
    for r in results["targets"]:
        for name, t in zip(CONFIGS, r["timing"]):
            w("| %s | %s | %.1f | %.3f [%.3f, %.3f] | %.3f |" % (
                r["label"], name, t["median_ms"], t["ratio"], t["ratio_q1"],
                t["ratio_q3"], t["cpu_ratio"]))
    w("")
    w("## `python -c pass` under a `create --all` archive")
    w("")
    w("What pycds costs a process that uses none of what it serves: "
      "`PYCDSMODE=SHARE PYCDSARCHIVE=all.img python -c pass` against "
      "`python -c pass`, paired and interleaved; `all.img` is `pycds-dump "
      "create --all` of the venv (the stdlib and the site directories).  "
      "Target: 1.01.")
    w("")
    w("| interpreter | baseline ms | SHARE ms | wall ratio [IQR] | "
      "CPU ratio |")
    w("|---|---|---|---|---|")
    for r in results["targets"]:
        base, share = r["pass_all"]
        w("| %s | %.1f | %.1f | %.3f [%.3f, %.3f] | %.3f |" % (
            r["label"], base["median_ms"], share["median_ms"],
            share["ratio"], share["ratio_q1"], share["ratio_q3"],
            share["cpu_ratio"]))
    w("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def non_pie(python):
    """A non-PIE executable linked from pyenv's python.o and static
    libpython of ``python``, or None where it ships none."""
    ver = subprocess.run([python, "-c", "import platform; "
                          "print(platform.python_version())"],
                         capture_output=True, text=True, check=True)
    where = os.path.join(bench.BENCH, "nonpie-" + ver.stdout.strip())
    r = subprocess.run([os.path.join(bench.ROOT, "tools", "link-non-pie"),
                        python, where], capture_output=True, text=True)
    if r.returncode != 0:
        bench.log("no non-PIE executable of %s: %s" % (python,
                                                      r.stderr.strip()))
        return None
    return r.stdout.strip()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--md", default=os.path.join(HERE, "SHARED_PAGES.md"))
    p.add_argument("pythons", nargs="+")
    p.add_argument("--no-non-pie", action="store_true",
                   help="measure only the interpreters given")
    a = p.parse_args()
    pythons = list(a.pythons)
    if not a.no_non_pie:
        # Every 3.12+ PYTHON that ships python.o and a static libpython
        # (pyenv's do; tools/link-non-pie says which do not).
        for python in a.pythons:
            ver = subprocess.run([python, "-c", "import sys; "
                                  "print(sys.version_info >= (3, 12))"],
                                 capture_output=True, text=True)
            exe = non_pie(python) if ver.stdout.strip() == "True" else None
            if exe:
                pythons.append(exe)
    results = {"date": datetime.date.today().isoformat(),
               "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]),
               "n": a.n, "targets": []}
    t0 = time.monotonic()
    for python in pythons:
        results["targets"].append(measure_target(python, a.n, a.rounds))
    results["elapsed"] = time.monotonic() - t0
    os.makedirs(bench.BENCH, exist_ok=True)
    with open(os.path.join(bench.BENCH, "shared_pages.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_md(results, a.md,
             bench.invocation("bench-pages", "PAGES_ARGS", a.pythons))
    bench.log("wrote", a.md)


if __name__ == "__main__":
    main()
