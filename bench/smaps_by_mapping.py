"""Private_Dirty, Rss and Pss of this process by mapping, after running
a workload: what a process's memory is made of, baseline against SHARE.

    [PYCDSMODE=SHARE PYCDSARCHIVE=A] PY bench/smaps_by_mapping.py 'import boto3'

Prints one line per mapping (file name, `[heap]`, `[anon]`, `[stack]`,
and `[image]` for the areas of prelinked images, which pycds maps at
0x200000000000 and above), largest Private_Dirty first, then the totals
(KiB).
"""
import os
import re
import sys

from image_use import IMAGE_HI, IMAGE_LO

FIELDS = ("Rss", "Pss", "Private_Dirty")


def by_mapping():
    sums, name = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split()
                lo = int(parts[0].split("-")[0], 16)
                name = os.path.basename(parts[5]) if len(parts) > 5 else "[anon]"
                if IMAGE_LO <= lo < IMAGE_HI:
                    name = "[image]"
                sums.setdefault(name, dict.fromkeys(FIELDS, 0))
            elif line.split(":")[0] in FIELDS:
                field, value = line.split()[:2]
                sums[name][field[:-1]] += int(value)
    return sums


def main():
    exec(compile(sys.argv[1], "<workload>", "exec"), {"__name__": "__main__"})
    sums = by_mapping()
    print("%-44s %8s %8s %14s" % ("mapping", *FIELDS))
    for name, d in sorted(sums.items(), key=lambda kv: -kv[1]["Private_Dirty"]):
        if d["Rss"]:
            print("%-44s %8d %8d %14d" % (name[:44], *(d[f] for f in FIELDS)))
    print("%-44s %8d %8d %14d" % ("total", *(sum(d[f] for d in sums.values())
                                            for f in FIELDS)))


if __name__ == "__main__":
    main()
