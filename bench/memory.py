"""Memory of N concurrent processes importing the same workload, baseline
against SHARE: the sums of Pss, Private_Dirty (and Rss, Shared_Clean,
Private_Clean) from /proc/PID/smaps_rollup, read while every process is
alive: each one imports, prints "ready", then blocks reading stdin until
all have been measured.

    python3 bench/memory.py [--n 8] [--repeat 3] [--json F] -- PY 'import boto3' [NAME=value ...]

The NAME=value words after the code give the SHARE run's environment
(``PYCDSMODE=SHARE PYCDSARCHIVE=x.img``); the baseline runs without them
(and with PYCDSMODE removed).  Each configuration starts its N processes at
once; with --repeat, the configurations alternate and the median of each
sum is reported.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess

FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean",
          "Private_Dirty")

WAIT = ("import sys\n"
        "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
        "sys.stdin.read()\n")


def rollup(pid):
    kb = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0].rstrip(":") in FIELDS:
                kb[parts[0].rstrip(":")] = int(parts[1])
    return kb


@contextlib.contextmanager
def alive(argv, env, n):
    """Start n processes of argv at once and wait until each has written
    its first line (which must start with "ready"); yields [(Popen, that
    line)] while they all live (they wait on stdin), then ends them."""
    procs = [subprocess.Popen(argv, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for _ in range(n)]
    try:
        lines = []
        for p in procs:
            line = p.stdout.readline()
            if not line.startswith("ready"):
                p.stdin.close()
                err = p.stderr.read()
                raise SystemExit("worker failed: %r %s" % (line, err))
            lines.append(line)
        yield list(zip(procs, lines))
    finally:
        for p in procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in procs:
            p.wait()


def measure(python, code, env, n):
    """Start n processes, wait until all are ready, sum their rollups (kB)."""
    with alive([python, "-c", code + "\n" + WAIT], env, n) as procs:
        sums = dict.fromkeys(FIELDS, 0)
        for p, _ in procs:
            for k, v in rollup(p.pid).items():
                sums[k] += v
    return sums


def compare(python, code, share_env, n=8, repeat=3):
    base = dict(os.environ)
    for k in ("PYCDSMODE", "PYCDSARCHIVE", "PYCDSLIST"):
        base.pop(k, None)
    share = dict(base, **share_env)
    runs = {"baseline": [], "share": []}
    for _ in range(repeat):
        runs["baseline"].append(measure(python, code, base, n))
        runs["share"].append(measure(python, code, share, n))
    out = {"n": n, "repeat": repeat, "python": python, "code": code,
           "share_env": share_env}
    for name, rs in runs.items():
        out[name] = {k: statistics.median(r[k] for r in rs) for k in FIELDS}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json")
    p.add_argument("python")
    p.add_argument("code")
    p.add_argument("env", nargs="*", help="NAME=value for the SHARE run")
    a = p.parse_args()
    share_env = dict(e.split("=", 1) for e in a.env)
    r = compare(a.python, a.code, share_env, a.n, a.repeat)
    print("%d processes: %s" % (a.n, a.code))
    print("%-14s %12s %12s" % ("sum (MiB)", "baseline", "share"))
    for k in FIELDS:
        print("%-14s %12.1f %12.1f" % (k, r["baseline"][k] / 1024,
                                       r["share"][k] / 1024))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
