"""pycds demo: archive the code objects of ~50 stdlib modules, load them back.

    make demo                    (or: PYTHONPATH=<build dir> python tools/demo_heap.py)

1. Finds the source of each module with importlib's PathFinder, without
   importing it (nor its parent packages), and compiles it the way the
   import system does (SourceFileLoader.source_to_code).
2. pycds.dump_code() writes one archive of all of them.
3. A fresh process (same interpreter, same PYTHONPATH) maps the archive with
   pycds.load_code(), checks every entry == compile() of its source, and
   times, in alternating rounds:
     (a) marshal.loads() of each module's .pyc data (16-byte header +
         marshal.dumps(code), made in memory: no .pyc file is written)
     (b) pycds.load_code() + getting every entry (map, check, relocate).
   The first round of each is reported on its own (cold), then the median
   of the rest.
"""

import argparse
import importlib.machinery
import importlib.util
import marshal
import os
import pickle
import subprocess
import sys
import tempfile
import time

import pycds

MODULES = """
    json json.decoder json.encoder json.scanner
    email email.message email.parser email.feedparser email.policy
    email._policybase email.header email.charset email.utils email._parseaddr
    email.errors email.encoders email.iterators email.quoprimime
    email.base64mime email.headerregistry email._header_value_parser
    email.contentmanager email.generator email.mime.text
    http http.client http.cookiejar urllib.parse urllib.request
    argparse logging logging.handlers
    asyncio asyncio.base_events asyncio.events asyncio.futures asyncio.tasks
    asyncio.streams asyncio.selector_events asyncio.unix_events asyncio.locks
    asyncio.queues asyncio.subprocess asyncio.transports asyncio.protocols
    typing dataclasses inspect pathlib textwrap ipaddress difflib
""".split()


def find_source(name):
    """Source path of module `name`, found without importing anything."""
    path = None
    spec = None
    parts = name.split(".")
    for i in range(len(parts)):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:i + 1]), path)
        if spec is None:
            return None
        path = spec.submodule_search_locations
    if not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
        return None
    return spec.origin


def compile_module(name, origin):
    loader = importlib.machinery.SourceFileLoader(name, origin)
    return loader.source_to_code(loader.get_data(origin), origin)


def pyc_data(code, origin):
    """What a timestamp-based .pyc of `code` holds, built in memory."""
    st = os.stat(origin)
    header = (importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
              + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
              + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little"))
    return header + marshal.dumps(code)


# ---------------------------------------------------------------- the child

def child(archive, rounds):
    """Runs in the fresh process: check, then time.  Reads {name: (origin,
    pyc bytes)} from stdin, writes a pickled result to stdout."""
    modules = pickle.load(sys.stdin.buffer)

    def load_pyc():
        t0 = time.perf_counter()
        for _origin, data in modules.values():
            marshal.loads(memoryview(data)[16:])
        return time.perf_counter() - t0

    def load_archive():
        t0 = time.perf_counter()
        codes = pycds.load_code(archive)
        for name in modules:
            codes[name]
        return time.perf_counter() - t0, codes

    # Cold: the first time each is done in this process.
    cold_archive, codes = load_archive()
    cold_pyc = load_pyc()

    mismatches = []
    for name, (origin, _data) in modules.items():
        if codes[name] != compile_module(name, origin):
            mismatches.append(name)

    warm_pyc, warm_archive = [], []
    for i in range(rounds):
        # Alternate which goes first, so drift hits both alike.
        if i % 2:
            warm_archive.append(load_archive()[0])
            warm_pyc.append(load_pyc())
        else:
            warm_pyc.append(load_pyc())
            warm_archive.append(load_archive()[0])

    result = dict(entries=len(codes), mismatches=mismatches,
                  cold_pyc=cold_pyc, cold_archive=cold_archive,
                  warm_pyc=warm_pyc, warm_archive=warm_archive)
    sys.stdout.buffer.write(pickle.dumps(result))


# --------------------------------------------------------------- the parent

def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def ms(seconds):
    return "%.2f ms" % (seconds * 1e3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15,
                        help="warm timing rounds after the cold one (default 15)")
    parser.add_argument("--keep", metavar="PATH",
                        help="write the archive here and keep it")
    parser.add_argument("--child", metavar="ARCHIVE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.rounds)

    t_start = time.perf_counter()
    print("pycds demo with %s %s (%s)" % (sys.implementation.name,
                                         sys.version.split()[0], sys.executable))
    print("pycds from %s" % os.path.dirname(pycds.__file__))

    codes, modules, skipped = {}, {}, []
    for name in MODULES:
        origin = find_source(name)
        if origin is None:
            skipped.append(name)
            continue
        codes[name] = compile_module(name, origin)
        modules[name] = (origin, pyc_data(codes[name], origin))
    if skipped:
        print("skipped (no source found): %s" % " ".join(skipped))
    print("compiled %d modules from source (nothing imported, no .pyc written)"
          % len(codes))

    with tempfile.TemporaryDirectory(prefix="pycds-demo-") as tmp:
        archive = args.keep or os.path.join(tmp, "stdlib.img")
        t0 = time.perf_counter()
        pycds.dump_code(archive, codes)
        t_dump = time.perf_counter() - t0
        archive_bytes = os.path.getsize(archive)
        marshal_bytes = sum(len(data) for _origin, data in modules.values())
        print("dump_code: %s in %s" % (archive, ms(t_dump)))
        print("  archive      %9d bytes" % archive_bytes)
        print("  .pyc data    %9d bytes (16-byte headers + marshal)  archive/pyc = %.2f"
              % (marshal_bytes, archive_bytes / marshal_bytes))

        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", archive,
             "--rounds", str(args.rounds)],
            input=pickle.dumps(modules), stdout=subprocess.PIPE)
        if proc.returncode != 0:
            print("demo: the checking process failed (status %d)" % proc.returncode,
                  file=sys.stderr)
            return 1
        result = pickle.loads(proc.stdout)

    print("fresh process: load_code() gave %d entries" % result["entries"])
    if result["mismatches"]:
        print("MISMATCH: entries differ from compile(): %s"
              % " ".join(result["mismatches"]))
        return 1
    print("  every entry == compile() of its source")
    print("timing, %d modules:" % len(codes))
    print("  %-44s %10s %10s" % ("", "first", "median"))
    wp, wa = median(result["warm_pyc"]), median(result["warm_archive"])
    print("  %-44s %10s %10s" % ("(a) marshal.loads of the .pyc data",
                                  ms(result["cold_pyc"]), ms(wp)))
    print("  %-44s %10s %10s" % ("(b) pycds.load_code + every entry",
                                  ms(result["cold_archive"]), ms(wa)))
    print("  ratio (a)/(b): first %.1fx, median %.1fx (of %d alternating rounds)"
          % (result["cold_pyc"] / result["cold_archive"], wp / wa, args.rounds))
    print("(neither includes finding or reading files; (b) includes mapping "
          "and checking the archive)")
    print("demo done in %.1f s" % (time.perf_counter() - t_start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
