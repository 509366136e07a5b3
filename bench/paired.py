"""Interleaved timing of commands: on a shared machine absolute times drift
by tens of percent between blocks, so the commands run in alternation
(A B A B ...) and each round gives a ratio against the first command; the
result is the median of those paired ratios and its interquartile range.
The same is reported for CPU time (user + system of the child, from
wait4), which waiting for a CPU on a loaded machine does not inflate.

    python3 bench/paired.py --rounds 40 --warmup 3 -- 'cmd A' 'cmd B' ...

A command may start with NAME=value words (``PYCDSMODE=SHARE python -c
pass``): they go into that command's environment, as in a shell, without
starting env(1), so that the compared commands exec the same binary.
"""
import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import time

_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def parse_command(command, base_env):
    """``'A=1 B=2 prog args'`` -> (argv, env): leading assignments become
    environment variables, as a POSIX shell does."""
    words = shlex.split(command)
    env = dict(base_env)
    while words and _ASSIGNMENT.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if not words:
        raise SystemExit("no program in command: %r" % command)
    return words, env


def run_once(argv, env):
    """(wall seconds, CPU seconds: user + system of the child)."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    elapsed = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit("command failed (%d): %s" % (p.returncode,
                                                      shlex.join(argv)))
    return elapsed, ru.ru_utime + ru.ru_stime


def quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def paired(commands, rounds, warmup, env=None):
    """Run ``commands`` in alternation; returns one dict per command with
    its median time, the median paired ratio against ``commands[0]``, its
    quartiles, and the raw times (seconds, in run order)."""
    base = dict(os.environ if env is None else env)
    runs = [parse_command(c, base) for c in commands]
    for _ in range(warmup):
        for argv, e in runs:
            run_once(argv, e)
    times = [[] for _ in runs]
    cpu = [[] for _ in runs]
    for i in range(rounds):
        # Alternate the order too, so neither command always runs first.
        order = range(len(runs)) if i % 2 == 0 else reversed(range(len(runs)))
        for k in order:
            wall, c = run_once(*runs[k])
            times[k].append(wall)
            cpu[k].append(c)
    results = []
    for k, command in enumerate(commands):
        q1, med, q3 = quartiles([t / b for t, b in zip(times[k], times[0])])
        c1, cmed, c3 = quartiles([t / b for t, b in zip(cpu[k], cpu[0])])
        results.append({"command": command,
                        "median_ms": statistics.median(times[k]) * 1e3,
                        "ratio": med, "ratio_q1": q1, "ratio_q3": q3,
                        "cpu_median_ms": statistics.median(cpu[k]) * 1e3,
                        "cpu_ratio": cmed, "cpu_ratio_q1": c1,
                        "cpu_ratio_q3": c3,
                        "times": times[k], "cpu_times": cpu[k]})
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", help="write the results here too")
    p.add_argument("commands", nargs="+")
    a = p.parse_args()
    results = paired(a.commands, a.rounds, a.warmup)
    for r in results:
        print("%8.1f ms  ratio %.3f [%.3f, %.3f]  cpu ratio %.3f [%.3f, "
              "%.3f]  %s" % (
                  r["median_ms"], r["ratio"], r["ratio_q1"], r["ratio_q3"],
                  r["cpu_ratio"], r["cpu_ratio_q1"], r["cpu_ratio_q3"],
                  r["command"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
