"""The ceiling: how much of a process's import work a code-object cache can
remove.  importlib is instrumented with exclusive timing per phase, so a
module executed inside another module's import counts once, in its own
phases, and the outer module's execution is only its own body.

    PY -S bench/ceiling.py [--json-lines FILE] -c 'import boto3'

Run it with -S: site (and the .pth files, the certifi one included) is
started here, after the instrumentation, so the startup imports are measured
too; then '' is put first on sys.path, as under ``python -c``.  Only sys,
time and the two frozen importlib modules, already loaded by the
interpreter, are used before the workload ends.

Phases (exclusive milliseconds):

  removable -- what an archive of code objects replaces
    find_source  _find_spec for a name that ends up with a source or
                 sourceless file loader (PathFinder, FileFinder, listdir,
                 stat, spec creation)
    get_code     SourceLoader/SourcelessFileLoader.get_code's own work
                 (cache_from_source, pyc header validation)
    stat         SourceFileLoader.path_stats (the source's stat)
    read         FileLoader.get_data called from get_code (the .pyc read)
    unmarshal    _compile_bytecode (marshal.loads of the .pyc)
    compile      source_to_code: a missing .pyc (must be 0 for a fair run)
  kept -- what no code-object cache removes
    find_other   _find_spec for builtin, frozen, extension and namespace
                 modules, and for names not found
    exec         module bodies (_LoaderBasics.exec_module minus get_code;
                 frozen and builtin modules' exec_module)
    extension    ExtensionFileLoader create_module + exec_module (dlopen)
    machinery    _find_and_load's own work: locks, module_from_spec,
                 sys.modules bookkeeping, _handle_fromlist
    outside      everything in the process measured here but not in an
                 import (the workload's own code, site's non-import work)

Each wrapped call costs the timer's own overhead; the per-call bias charged
to a phase is calibrated on a wrapped no-op and subtracted (``*_ms`` are
corrected, ``raw_ms`` are not).  The interpreter's start before this script
runs (``python -S -c pass``) is not seen here: the share of the whole process
is the removable time over the wall time of an uninstrumented run, which the
caller measures (bench/run.py pairs them).
"""
import sys
import time

import _frozen_importlib as _bootstrap
import _frozen_importlib_external as _external

_now = time.perf_counter_ns
_SCRIPT_START = _now()
REMOVABLE = ("find_source", "get_code", "stat", "read", "unmarshal",
             "compile")
KEPT = ("find_other", "exec", "extension", "machinery")
PHASES = REMOVABLE + KEPT

ALL = PHASES + ("outside",)
acc = dict.fromkeys(ALL, 0)       # exclusive ns
calls = dict.fromkeys(ALL, 0)     # wrapped calls that ended in the phase
children = dict.fromkeys(ALL, 0)  # wrapped calls made from the phase
# Each frame: [phase, start of its current slice, its exclusive ns so far,
# wrapped calls made from it].
stack = []

_FILE_LOADERS = (_external.SourceFileLoader, _external.SourcelessFileLoader)


def _enter(phase):
    t = _now()
    if stack:
        top = stack[-1]
        top[2] += t - top[1]
        top[3] += 1
    frame = [phase, 0, 0, 0]
    stack.append(frame)
    frame[1] = _now()
    return frame


def _leave(frame, phase):
    t = _now()
    stack.pop()
    acc[phase] += frame[2] + (t - frame[1])
    calls[phase] += 1
    children[phase] += frame[3]
    if stack:
        stack[-1][1] = _now()


def _wrap(phase, fn):
    def wrapper(*args, **kwargs):
        frame = _enter(phase)
        try:
            return fn(*args, **kwargs)
        finally:
            _leave(frame, phase)
    wrapper.__wrapped__ = fn
    return wrapper


def _find_spec(name, path, target=None, _orig=_bootstrap._find_spec):
    frame = _enter("find")
    spec = None
    try:
        spec = _orig(name, path, target)
        return spec
    finally:
        loader = getattr(spec, "loader", None)
        phase = ("find_source" if isinstance(loader, _FILE_LOADERS)
                 else "find_other")
        _leave(frame, phase)


def _get_data_in_code(self, path, _orig=_external.FileLoader.get_data):
    # get_data is also what pkgutil.get_data and resource readers call from
    # module bodies: only the read get_code does is the .pyc read.
    if not stack or stack[-1][0] != "get_code":
        return _orig(self, path)
    frame = _enter("read")
    try:
        return _orig(self, path)
    finally:
        _leave(frame, "read")


def _exec_module(self, module, _orig=_external._LoaderBasics.exec_module):
    frame = _enter("exec")
    try:
        return _orig(self, module)
    finally:
        _leave(frame, "exec")


def install():
    _bootstrap._find_spec = _find_spec
    _bootstrap._find_and_load = _wrap("machinery", _bootstrap._find_and_load)
    _external._LoaderBasics.exec_module = _exec_module
    _external.SourceLoader.get_code = _wrap(
        "get_code", _external.SourceLoader.get_code)
    _external.SourcelessFileLoader.get_code = _wrap(
        "get_code", _external.SourcelessFileLoader.get_code)
    _external.SourceFileLoader.path_stats = _wrap(
        "stat", _external.SourceFileLoader.path_stats)
    _external.FileLoader.get_data = _get_data_in_code
    _external._compile_bytecode = _wrap("unmarshal", _external._compile_bytecode)
    _external.SourceLoader.source_to_code = _wrap(
        "compile", _external.SourceLoader.source_to_code)
    for cls, kind in ((_bootstrap.BuiltinImporter, "exec"),
                      (_bootstrap.FrozenImporter, "exec")):
        cls.exec_module = staticmethod(_wrap(kind, cls.exec_module))
    ext = _external.ExtensionFileLoader
    ext.create_module = _wrap("extension", ext.create_module)
    ext.exec_module = _wrap("extension", ext.exec_module)


def _calibrate(n=5000):
    """The timer's bias, in ns per wrapped call: what a wrapper charges to
    its own phase around a function that does nothing (``callee``), and
    what a call through a wrapper charges to the calling phase beyond a
    bare call (``caller``).  Minimum over 5 trials."""
    def noop():
        pass
    w = _wrap("exec", noop)
    saved = dict(acc), dict(calls), dict(children)
    best_callee = best_caller = None
    for _ in range(5):
        t = _now()
        for _ in range(n):
            noop()
        bare = (_now() - t) / n
        acc["exec"] = 0
        outer = _enter("machinery")
        for _ in range(n):
            w()
        outer[2] += _now() - outer[1]
        stack.pop()
        callee = acc["exec"] / n
        caller = outer[2] / n - bare
        best_callee = callee if best_callee is None else min(best_callee, callee)
        best_caller = caller if best_caller is None else min(best_caller, caller)
    for d, old in zip((acc, calls, children), saved):
        d.clear()
        d.update(old)
    return max(best_callee, 0.0), max(best_caller, 0.0)


# 3.11 keeps frames on a data stack of 16 KiB chunks and frees a chunk (an
# munmap) as soon as the frame at its base returns.  The wrappers add frames,
# which moves where the chunk boundaries fall: a boundary that lands under a
# frequently called function costs an mmap + munmap per call (measured:
# ~3300 munmaps for `import boto3` against 15 uninstrumented).  The workload
# therefore runs inside a frame with DEEP_LOCALS locals, whose push allocates
# one chunk big enough for the whole import stack, so no boundary is crossed.
DEEP_LOCALS = 16384


def _big_frame(n):
    def deep(run):
        return run()
    c = deep.__code__
    deep.__code__ = c.replace(
        co_varnames=c.co_varnames + tuple("v%d" % i for i in range(n)),
        co_nlocals=c.co_nlocals + n)
    return deep


def main(argv):
    out = None
    code = None
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--json-lines":
            out = args.pop(0)
        elif a == "-c":
            code = args.pop(0)
            break
        else:
            raise SystemExit("usage: PY -S ceiling.py [--json-lines FILE] -c CODE")
    if code is None:
        raise SystemExit("usage: PY -S ceiling.py [--json-lines FILE] -c CODE")
    sys.argv = ["-c"] + args
    # As under `python -c`: site runs before the '' entry exists (so a
    # package in the current directory cannot replace one a .pth imports),
    # then '' goes first.  Under -S, sys.path[0] is this script's directory.
    del sys.path[0]
    install()
    if not sys.flags.no_site:
        raise SystemExit("ceiling.py must run under -S (it starts site itself)")

    def run():
        import site
        site.main()
        sys.path.insert(0, "")
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})

    deep = _big_frame(DEEP_LOCALS)
    t0 = _now()
    frame = _enter("outside")
    deep(run)
    _leave(frame, "outside")
    t1 = _now()
    bias = _calibrate()
    report(t1 - t0, bias, out, setup_ns=t0 - _SCRIPT_START)


def report(total_ns, bias, out, setup_ns):
    phases = ALL
    callee, caller = bias
    corrected = {}
    for p in phases:
        corrected[p] = max(acc[p] - calls[p] * callee - children[p] * caller, 0)
    removable = sum(corrected[p] for p in REMOVABLE)
    kept = sum(corrected[p] for p in KEPT)
    r = {
        "in_process_ms": total_ns / 1e6,
        "bias_ns_per_call": {"callee": callee, "caller": caller},
        "wrapped_calls": sum(calls[p] for p in phases),
        "removable_ms": removable / 1e6,
        "kept_ms": kept / 1e6,
        "ms": {p: corrected[p] / 1e6 for p in phases},
        "raw_ms": {p: acc[p] / 1e6 for p in phases},
        "calls": dict(calls),
        "modules": len(sys.modules),
        # Not workload: this script's own setup before the measured window
        # and its calibration + report after it (up to the write below).
        "setup_ms": setup_ns / 1e6,
    }
    try:
        with open("/proc/self/stat") as f:
            st = f.read().rpartition(")")[2].split()
        # Whole process so far (fields minflt, majflt, utime, stime).
        r["minflt"], r["majflt"] = int(st[7]), int(st[9])
    except (OSError, IndexError, ValueError):
        pass
    import json
    r["teardown_ms"] = (_now() - _SCRIPT_START - setup_ns - total_ns) / 1e6
    line = json.dumps(r, sort_keys=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
    else:
        print(json.dumps(r, indent=1, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
