"""make bench-pages: how many archive pages stay shared between processes.

For each PYTHON (3.12+; a 3.11 is measured without an image, for
contrast): a venv with pycds installed (as bench/run.py makes it), the
stdlib WORKLOAD traced and dumped, a PYCDSMODE=PRELINK run that writes the
prelinked image, then N processes started at once in each configuration,
all under setarch -R with PYTHONHASHSEED=0 and the same command line:

  baseline   no pycds
  relocated  PYCDSMODE=SHARE, the image moved away: parts relocated into
             private memory, as SHARE does under address randomisation
  prelinked  PYCDSMODE=SHARE with ARCHIVE.prelinked beside the archive

Each process imports the workload, says ready and waits; while all are
alive, /proc/PID/smaps_rollup gives Pss and Private_Dirty, and the image's
mappings in /proc/PID/smaps give, per area, the pages a process touched
(Rss) and those it wrote (Private_Dirty).  Then the three configurations
are timed (bench/paired.py, interleaved).  Writes bench/SHARED_PAGES.md
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
# Says "ready" and what the image did (layer_stats), then waits.
WAIT = ("\nimport sys, json\n"
        "_p = sys.modules.get('pycds')\n"
        "_l = _p.layer_stats() if _p else []\n"
        "_i = _l[0]['prelinked'] if _l else None\n"
        "sys.stdout.write('ready %s\\n' % json.dumps(_i)); sys.stdout.flush()\n"
        "sys.stdin.read()\n")
AREAS = ("strings", "data", "fixed", "code", "hot code")
# Where images are mapped (src/prelink.c, SLOTS_START .. SLOTS_END).
IMAGE_LO, IMAGE_HI = 0x200000000000, 0x200000000000 + 512 * (64 << 30)
ROLLUP = ("Rss", "Pss", "Private_Dirty")
AREA_FIELDS = ("Rss", "Pss", "Shared_Clean", "Private_Clean",
               "Private_Dirty")


def env_for(extra):
    return bench.clean_env(PYTHONHASHSEED="0", **extra)


def image_areas(pid):
    """[{field: kB}] of the image's mappings, in address order (areas)."""
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
    return [maps[k] for k in sorted(maps)]


def measure(py, code, extra, n):
    """Start n processes at once; per process, its rollup and areas."""
    argv = ["setarch", "-R", py, "-c", code + WAIT]
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


def prelink(t, code, img):
    """The PYCDSMODE=PRELINK run, with the environment the measured runs
    have but for the mode (no PYCDSVERBOSE: a variable more would move
    the strings the interpreter interns at start-up)."""
    r = bench.run(["setarch", "-R", t.py, "-c", code + WAIT],
                  env=env_for({"PYCDSMODE": "PRELINK", "PYCDSARCHIVE": img}),
                  input="")
    if not os.path.exists(img + ".prelinked"):
        raise SystemExit("PRELINK wrote no image:\n" + r.stderr)


def measure_target(python, n, rounds):
    t = bench.Target(python)
    cwd = os.path.join(t.dir, "cwd")
    os.makedirs(cwd, exist_ok=True)
    os.chdir(cwd)
    bench.log("==", t.label)
    bench.write_pycs(t, WORKLOAD)
    lst = bench.trace_list(t, "pages", WORKLOAD)
    img, meta = bench.dump(t, "pages", lst)
    # The same archive under a name of the same length, with the image
    # beside it: the relocated and prelinked runs differ in nothing else
    # (the environment's size moves what the interpreter allocates).
    linked = os.path.join(t.dir, "pagep.img")
    for f in (linked, linked + ".prelinked"):
        if os.path.exists(f):
            os.unlink(f)
    os.link(img, linked)
    res = {"label": t.label, "python": python, "archive": meta, "n": n}
    configs = [("baseline", {}),
               ("relocated", {"PYCDSMODE": "SHARE", "PYCDSARCHIVE": img})]
    if tuple(map(int, t.version.split(".")[:2])) >= (3, 12):
        prelink(t, WORKLOAD, linked)
        res["image_bytes"] = os.path.getsize(linked + ".prelinked")
        configs.append(("prelinked",
                        {"PYCDSMODE": "SHARE", "PYCDSARCHIVE": linked}))
    for name, extra in configs:
        res[name] = summarise(measure(t.py, WORKLOAD, extra, n))
    if "prelinked" in res:
        bench.log("  image: %d bytes, %s" % (res["image_bytes"],
                                             res["prelinked"]["image"]))
        bench.log("  dirty %.1f%% of %d KiB touched" % (
            100 * res["prelinked"]["dirty_fraction"],
            res["prelinked"]["touched_kib"]))
    cmd = "setarch -R %s -c %s" % (t.py, shlex.quote(WORKLOAD))
    res["timing"] = paired.paired(
        [" ".join("%s=%s" % kv for kv in extra.items()) + " " + cmd
         for _, extra in configs], rounds, 3, env=env_for({}))
    for r in res["timing"]:
        r.pop("times"), r.pop("cpu_times")
    return res


def mib(kb):
    return "%.1f" % (kb / 1024)


def write_md(results, path, argv):
    lines = []
    w = lines.append
    w("# Shared archive pages (issue 5)")
    w("")
    w("Generated by `%s` on %s (load average %s); raw numbers in "
      "build/bench/shared_pages.json." % (
          " ".join(argv), results["date"], results["loadavg"]))
    w("")
    w("Workload: `%s`, traced and dumped per interpreter; %d processes "
      "started at once per configuration, all under `setarch -R` with "
      "PYTHONHASHSEED=0 and the same command line; the prelinked image "
      "written by a `PYCDSMODE=PRELINK` run of that command line.  "
      "*relocated*: SHARE without the image (as under address "
      "randomisation: parts are read into private memory and relocated); "
      "*prelinked*: SHARE mapping the image." % (WORKLOAD, results["n"]))
    w("")
    w("## Archive pages a process touched and wrote (prelinked, median "
      "process)")
    w("")
    w("| interpreter | touched KiB | written (Private_Dirty) KiB | "
      "written / touched | per area: touched / written KiB |")
    w("|---|---|---|---|---|")
    for r in results["targets"]:
        p = r.get("prelinked")
        if not p:
            w("| %s | - | - | - | no images before 3.12: every page of a "
              "relocated part is private |" % r["label"])
            continue
        per = ", ".join("%s %d / %d" % (AREAS[k], a["Rss"], a["Private_Dirty"])
                        for k, a in enumerate(p["areas"]))
        w("| %s | %d | %d | **%.1f%%** | %s |" % (
            r["label"], p["touched_kib"], p["dirty_kib"],
            100 * p["dirty_fraction"], per))
    w("")
    w("Interned-string slots rewritten at load (a prediction missed) and "
      "frozensets built, per process: %s." % "; ".join(
          "%s: %s reinterned, %s frozensets, %s modules from the image" % (
              r["label"], r["prelinked"]["image"]["reinterned"],
              r["prelinked"]["image"]["frozensets"],
              r["prelinked"]["image"]["served"])
          for r in results["targets"] if r.get("prelinked")))
    w("")
    w("What is written, by area: *hot code*, the code objects that ran in "
      "the PRELINK run, whose bytecode the interpreter rewrites as it runs "
      "(adaptive counters, specialisation; `sys.monitoring` would too); "
      "*fixed*, the slots of the frozensets built at load and of strings "
      "interned elsewhere when a prediction misses; a few pages of *code* "
      "that ran here but not in the PRELINK run.  Nothing else: objects "
      "are immortal (no reference counts written), strings carry their "
      "hashes (PYTHONHASHSEED=0), interned strings are marked so.  On "
      "3.11 every object's reference count is written as it is used, so "
      "3.11 has no images.")
    w("")
    w("## Memory of %d processes (sums, MiB)" % results["n"])
    w("")
    w("| interpreter | configuration | Pss | Private_Dirty | Rss |")
    w("|---|---|---|---|---|")
    for r in results["targets"]:
        for name in ("baseline", "relocated", "prelinked"):
            if name in r:
                m = r[name]
                w("| %s | %s | %s | %s | %s |" % (
                    r["label"], name, mib(m["Pss"]), mib(m["Private_Dirty"]),
                    mib(m["Rss"])))
    w("")
    w("## Start-up time (paired, interleaved; ratio to baseline)")
    w("")
    w("| interpreter | configuration | median ms | wall ratio [IQR] | "
      "CPU ratio |")
    w("|---|---|---|---|---|")
    for r in results["targets"]:
        for name, t in zip(("baseline", "relocated", "prelinked"),
                           r["timing"]):
            w("| %s | %s | %.1f | %.3f [%.3f, %.3f] | %.3f |" % (
                r["label"], name, t["median_ms"], t["ratio"], t["ratio_q1"],
                t["ratio_q3"], t["cpu_ratio"]))
    w("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--md", default=os.path.join(HERE, "SHARED_PAGES.md"))
    p.add_argument("pythons", nargs="+")
    a = p.parse_args()
    if subprocess.run(["setarch", "-R", "true"]).returncode != 0:
        raise SystemExit("setarch -R is not allowed here")
    results = {"date": datetime.date.today().isoformat(),
               "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]),
               "n": a.n, "targets": []}
    t0 = time.monotonic()
    for python in a.pythons:
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
