"""Pss of N concurrent processes, baseline against SHARE with each of
several builds of pycds (build directories, not installs), interleaved:
for comparing two versions of pycds on the same machine state.

    python3 bench/pss_builds.py [--n 8] [--repeat 3] PY 'import boto3' \\
        NAME=BUILDDIR:ARCHIVE ...

Each SHARE configuration runs with PYTHONPATH=BUILDDIR and calls
pycds.share(ARCHIVE) before the code (the archive made by that build);
the baseline runs the code alone.  Default conditions: PYTHONHASHSEED
unset, address randomisation on.  Prints the median sums (MiB) and the
ratio of Pss to the baseline's.
"""
import argparse
import os
import statistics

import memory


def env_for(builddir):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYCDS") and k not in ("PYTHONPATH",
                                                      "PYTHONHASHSEED")}
    if builddir:
        env["PYTHONPATH"] = builddir
    return env


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("python")
    p.add_argument("code")
    p.add_argument("configs", nargs="+", help="NAME=BUILDDIR:ARCHIVE")
    a = p.parse_args()
    configs = [("baseline", None, a.code)]
    for c in a.configs:
        name, rest = c.split("=", 1)
        builddir, archive = rest.split(":", 1)
        configs.append((name, builddir, "import pycds; pycds.share(%r)\n%s"
                        % (archive, a.code)))
    runs = {name: [] for name, _, _ in configs}
    for _ in range(a.repeat):
        for name, builddir, code in configs:
            runs[name].append(memory.measure(a.python, code,
                                             env_for(builddir), a.n))
    base = statistics.median(r["Pss"] for r in runs["baseline"])
    print("%d processes, %s: %s" % (a.n, a.python, a.code))
    print("%-10s %9s %9s %14s %9s" % ("", "Pss", "/ base", "Private_Dirty",
                                      "Rss"))
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs)
               for k in ("Pss", "Private_Dirty", "Rss")}
        print("%-10s %9.1f %9.3f %14.1f %9.1f" % (
            name, med["Pss"] / 1024, med["Pss"] / base,
            med["Private_Dirty"] / 1024, med["Rss"] / 1024))


if __name__ == "__main__":
    main()
