"""Concurrency and files that change under a running process.

* 16 processes import under SHARE while another rebuilds the archive and
  renames it over the old one in a loop: none crashes, and each sees one
  archive whole (every module served, all of one generation).
* Concurrent DUMPs to one path leave one valid archive (concurrent TRACE
  into one list: tests/test_pipeline.py::test_concurrent_tracers).
* Threads of one process importing archived modules in parallel.
* The archive truncated, rewritten in place or replaced while a process
  has it mapped: that process does not crash; what it relocated before
  keeps working and later imports fall back to normal import.

Bounded: each test well under a minute."""

import inspect
import os
import subprocess
import textwrap
import time

import pytest

from conftest import (EMIT_AT_ONCE, child_env, emitted, empty_cwd, run_json,
                      run_py)

NMODS = 24


def write_sources(src, generation):
    """NMODS modules, each knowing its generation; replaced atomically."""
    for k in range(NMODS):
        body = textwrap.dedent(f"""\
            GENERATION = {generation}
            NAME = 'mod{k}'
            DATA = tuple(('item', i, {generation} * 1.5, b'x' * i)
                         for i in range({k} % 7))
            def f(x, *, y={generation}):
                def inner():
                    return x + y
                return inner() + len({{'a', 'b', {generation}}})
            """)
        p = src / f"mod{k}.py"
        tmp = src / f".mod{k}.py.tmp"
        tmp.write_text(body)
        os.replace(tmp, p)


def module_list(src):
    return "# pycds module list v1\n" + "".join(
        f"mod{k}\t{src / f'mod{k}.py'}\t0\n" for k in range(NMODS))


REBUILD = r"""
import os, sys, time, pathlib, textwrap
import pycds
NMODS = int(sys.argv[4])
src, lst, archive = map(pathlib.Path, sys.argv[1:4])
deadline = time.time() + float(sys.argv[5])
gen = 1
while time.time() < deadline:
    write_sources(src, gen)
    left = pycds.dump(str(lst), str(archive), validation='unchecked')
    assert left == {}, left
    gen += 1
emit(gen - 1)
"""

READER = r"""
import sys, pycds
sys.path.insert(0, sys.argv[2])
pycds.share(sys.argv[1], validation='unchecked')
gens = set()
for k in range(int(sys.argv[3])):
    m = __import__(f'mod{k}')
    gens.add(m.GENERATION)
    assert m.f(1) == 1 + m.GENERATION + len({'a', 'b', m.GENERATION}), k
s = pycds.stats()
print(s['served'], sorted(gens), s['reasons'])
"""


def test_share_while_archive_replaced(interp, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_sources(src, 0)
    lst = tmp_path / "app.lst"
    lst.write_text(module_list(src))
    archive = tmp_path / "app.img"
    run_py(interp, "import sys, pycds; "
                   "assert pycds.dump(sys.argv[1], sys.argv[2], "
                   "validation='unchecked') == {}", lst, archive)
    env = child_env(interp)
    writer = subprocess.Popen(
        [interp.python, "-c",
         "import json, sys\n"
         "def emit(o): print('RESULT', json.dumps(o))\n"
         + inspect.getsource(write_sources) + REBUILD,
         str(src), str(lst), str(archive), str(NMODS), "12"],
        env=env, cwd=empty_cwd(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    seen, waves = set(), 0
    try:
        while writer.poll() is None and waves < 8:
            readers = [subprocess.Popen(
                [interp.python, "-c", READER, str(archive), str(src),
                 str(NMODS)], env=env, cwd=empty_cwd(),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(16)]
            for r in readers:
                out, err = r.communicate(timeout=60)
                assert r.returncode == 0, \
                    f"reader rc={r.returncode}\n{out}\n{err}"
                served, gens, reasons = out.split(" ", 2)
                gens = eval(gens)
                # one archive, whole: every module from it, one generation
                assert int(served) == NMODS, out + err
                assert len(gens) == 1, out
                seen |= set(gens)
            waves += 1
    finally:
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    rebuilt = int(out.split("RESULT ")[-1])
    assert rebuilt >= 2, out
    assert waves >= 2
    # readers met more than one generation of the archive
    assert len(seen) >= 2 or rebuilt < 3, (seen, rebuilt)


DUMP_ONE = r"""
import sys, pycds
codes = {f'm{k}_{sys.argv[2]}': compile(f'X = ({k}, "w{sys.argv[2]}")',
                                        f'<{k}>', 'exec')
         for k in range(50)}
for _ in range(5):
    pycds.dump_code(sys.argv[1], codes)
"""


def test_concurrent_dumps_one_path(interp, tmp_path):
    archive = tmp_path / "one.img"
    env = child_env(interp)
    procs = [subprocess.Popen([interp.python, "-c", DUMP_ONE, str(archive),
                               str(w)], env=env, cwd=empty_cwd(),
                              stderr=subprocess.PIPE, text=True)
             for w in range(8)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    res, _ = run_json(interp, r"""
import sys, pycds
problems = pycds.verify_archive(sys.argv[1])
m = pycds.load_code(sys.argv[1])
names = sorted(m)
writers = {n.split('_')[1] for n in names}
ns = {}
for n in names:
    exec(m[n], ns)
emit({'problems': problems, 'n': len(names), 'writers': sorted(writers),
      'x': ns['X']})
""", archive)
    assert res["problems"] == [], res
    assert res["n"] == 50 and len(res["writers"]) == 1, res
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "one.img"]
    assert leftovers == [], leftovers


THREADS = r"""
import sys, threading, pycds
sys.path.insert(0, sys.argv[2])
assert pycds.share(sys.argv[1])
n = int(sys.argv[3])
barrier = threading.Barrier(8)
errors, results = [], {}
def work(t):
    try:
        barrier.wait()
        # every thread imports every module, in its own order
        for k in sorted(range(n), key=lambda k: (k * (t + 3)) % n):
            m = __import__(f'mod{k}')
            results[(t, k)] = m.f(2)
    except BaseException as e:
        errors.append(repr(e))
threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
for t in threads: t.start()
for t in threads: t.join()
s = pycds.stats()
emit({'errors': errors, 'values': sorted(set(results.values())),
      'served': s['served'], 'reasons': s['reasons']})
"""


def test_threads_import_in_parallel(interp, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_sources(src, 7)
    lst = tmp_path / "app.lst"
    lst.write_text(module_list(src))
    archive = tmp_path / "app.img"
    run_py(interp, "import sys, pycds; "
                   "assert pycds.dump(sys.argv[1], sys.argv[2]) == {}",
           lst, archive)
    for _ in range(3):
        res, _ = run_json(interp, THREADS, archive, src, NMODS, timeout=60)
        assert res["errors"] == [], res
        assert res["values"] == [2 + 7 + 3], res
        assert res["served"] == NMODS, res


CHANGE_UNDER = r"""
import os, sys, shutil, pycds
archive, src, how = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, src)
assert pycds.share(archive)
import mod0
before = pycds.stats()['served']
if how == 'truncate':
    os.truncate(archive, 0)
elif how == 'truncate-part':
    # into the heap: the prelinked image is the second half of the file
    os.truncate(archive, os.path.getsize(archive) // 4)
elif how == 'rewrite':
    data = open(archive, 'rb').read()
    with open(archive, 'r+b') as f:          # same size, other bytes
        f.write(bytes(len(data)))
elif how == 'replace':
    tmp = archive + '.new'
    with open(tmp, 'wb') as f:
        f.write(b'not an archive at all' * 100)
    os.replace(tmp, archive)
mods = [__import__(f'mod{k}') for k in range(1, int(sys.argv[4]))]
s = pycds.stats()
emit({'before': before, 'served': s['served'], 'refused': s['refused'],
      'missed': s['missed'],
      'f0': mod0.f(1), 'f': sorted({m.f(1) for m in mods})})
"""


STDLIB_LIST = r"""
import os, sys, sysconfig
root = sysconfig.get_paths()['stdlib']
names = sorted(n[:-3] for n in os.listdir(root)
               if n.endswith('.py') and n[:-3].isidentifier())
emit([(n, os.path.join(root, n + '.py')) for n in names[:int(sys.argv[1])]])
"""


@pytest.mark.parametrize("how", ["truncate", "truncate-part", "rewrite",
                                 "truncate-big-index"])
def test_archive_changes_while_mapped(interp, tmp_path, how):
    """A mapped archive changed in place: in the checked mode (PYCDSCHECK=1,
    every entry read into private memory) the process goes on, modules
    served before still work, later ones import normally."""
    check_changes_while_mapped(interp, tmp_path, how, "checked")


@pytest.mark.parametrize("mode", ["checked", "in place"])
def test_archive_replaced_while_mapped(interp, tmp_path, mode):
    """Renamed over (as pycds writes archives): the mapped file is the old
    one, whole, and keeps serving."""
    check_changes_while_mapped(interp, tmp_path, "replace", mode)


def check_changes_while_mapped(interp, tmp_path, how, mode):
    src = tmp_path / "src"
    src.mkdir()
    write_sources(src, 5)
    lst = tmp_path / "app.lst"
    text = module_list(src)
    if how.endswith("big-index"):
        # index pages beyond those the open touched
        extra, _ = run_json(interp, STDLIB_LIST, 300)
        text += "".join(f"{n}\t{p}\t0\n" for n, p in extra)
        how = how[:-len("-big-index")]
    lst.write_text(text)
    archive = tmp_path / "app.img"
    run_py(interp, "import sys, pycds; pycds.dump(sys.argv[1], sys.argv[2])",
           lst, archive)
    res, cp = run_json(interp, CHANGE_UNDER, archive, src, how, NMODS,
                       flags=["-X", "faulthandler"],
                       env={"PYCDSCHECK": "1"} if mode == "checked" else None)
    value = 1 + 5 + 3
    assert res["f0"] == value and res["f"] == [value], res
    assert res["before"] == 1, res
    if how == "replace":
        # renamed over: the mapped file is the old one, whole
        assert res["served"] == NMODS, res
    else:
        # changed in place: a module whose pages were copied into private
        # memory before (shared with mod0's) may still be served; the
        # others import normally (refused, or missed when the index pages
        # a lookup needs can no longer be read); none crashed
        normal = res["refused"] + res["missed"]
        assert res["served"] + normal == NMODS, res
        assert normal >= NMODS // 2, res


LIVE = r"""
import os, sys, time, pycds
archive, src, go, nmods, fork = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == '1'
if sys.argv[6] == 'no-lease':               # the signal is the program's
    import signal
    signal.signal(signal.SIGRTMIN + 4, lambda *a: None)
sys.path.insert(0, src)
assert pycds.share(archive)
import mod0
child = os.fork() if fork else 0
os.write(1, b'READY\n')            # one write: forked processes share the pipe
while not os.path.exists(go):       # the writer runs meanwhile
    time.sleep(0.01)
mods = [__import__(f'mod{k}') for k in range(1, nmods)]
s = pycds.stats()
pages = pycds.layer_stats()[0]['prelinked']
emit({'served': s['served'], 'refused': s['refused'], 'missed': s['missed'],
      'f0': mod0.f(1), 'f': sorted({m.f(1) for m in mods}),
      'pages': pages['pages'] if isinstance(pages, dict) else pages})
if child:
    _, status = os.waitpid(child, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
"""

# What a deploy does to a file in place; {a}: the archive, {new}: another
# archive of the same modules.
REWRITES = {
    "cp-same": "cp {a}.orig {a}",
    "cp-other": "cp {new} {a}",
    "truncate": "truncate -s 0 {a}",
    "truncate-part": "truncate -s %half {a}",
    "dd-notrunc": "dd if=/dev/zero of={a} bs=64k count=64 conv=notrunc "
                  "status=none",
}


@pytest.mark.parametrize("how", sorted(REWRITES))
@pytest.mark.parametrize("guard", ["lease", "no-lease"])
def test_archive_rewritten_in_place_under_live_processes(interp, tmp_path,
                                                         how, guard):
    """8 processes (2 of them forked children) use an archive in place
    while a deploy rewrites it in place: each gives its lease up after
    moving the pages it uses into private memory, the writer proceeds at
    once, and every process goes on, its modules whole and right.  A
    process that cannot have a lease (here: the program took the lease
    signal) copied the image when it mapped it, and goes on too."""
    src = tmp_path / "src"
    src.mkdir()
    write_sources(src, 5)
    lst = tmp_path / "app.lst"
    lst.write_text(module_list(src))
    archive, new = tmp_path / "app.img", tmp_path / "new.img"
    run_py(interp, "import sys, pycds; pycds.dump(sys.argv[1], sys.argv[2]); "
                   "pycds.dump(sys.argv[1], sys.argv[3], 'checked-hash')",
           lst, archive, new)
    subprocess.run(["cp", archive, f"{archive}.orig"], check=True)
    go = tmp_path / "go"
    procs = [subprocess.Popen(
        [interp.python, "-c", EMIT_AT_ONCE + LIVE, archive, src, go,
         str(NMODS), "1" if k < 2 else "0", guard],
        env=child_env(interp), cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for k in range(6)]
    try:
        for p in procs:
            assert p.stdout.readline() == "READY\n"
            if p.args[-2] == "1":
                assert p.stdout.readline() == "READY\n"
        command = REWRITES[how].format(a=archive, new=new).replace(
            "%half", str(os.path.getsize(archive) // 2))
        # A holder that did not give its lease up would hold the writer
        # for /proc/sys/fs/lease-break-time (45 s).  truncate(1) opens
        # with O_NONBLOCK: it fails at once while the holders move their
        # pages, and succeeds once they have (docs/IMPORT.md).
        for _ in range(50):
            if subprocess.run(command, shell=True, timeout=20,
                              stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"{command} never succeeded")
        go.touch()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            p.kill()
    results = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, (p.returncode, err)
        results += emitted(out)
    assert len(results) == 8, outs
    value = 1 + 5 + 3
    for res in results:
        assert res["f0"] == value and res["f"] == [value], res
        if guard == "lease":
            # the archive as it was mapped keeps serving, from private
            # memory
            assert res["served"] == NMODS, res
        else:
            # the image was copied, the index is read as lookups need it:
            # pages not read before the rewrite are refused, and those
            # modules import normally
            assert res["served"] + res["refused"] + res["missed"] == NMODS
        assert res["pages"] == (
            "copied: the file was opened for writing" if guard == "lease"
            else "copied: the lease signal has no handler of pycds"), res


NO_LEASE_USE = r"""
import signal, sys, pycds
signal.signal(signal.SIGRTMIN + 4, lambda *a: None)  # the program's: no lease
sys.path.insert(0, sys.argv[2])
assert pycds.share(sys.argv[1])
import mod0
size = rss = 0
inside = False
for line in open('/proc/self/smaps'):
    head = line.split()[0]
    if '-' in head and not head.endswith(':'):
        lo, hi = (int(x, 16) for x in head.split('-'))
        inside = 0x200000000000 <= lo < 0x200000000000 + 512 * (64 << 30)
        size += hi - lo if inside else 0
    elif inside and head == 'Rss:':
        rss += int(line.split()[1]) * 1024
image = pycds.layer_stats()[0]['prelinked']
emit({'pages': image['pages'], 'served': image['served'], 'size': size,
      'rss': rss, 'f': mod0.f(1)})
"""


def test_no_lease_copies_what_is_used(interp, tmp_path):
    """Without a lease (here: the program took the lease signal) a process
    copies into private memory the pages of the entries it uses, as it
    first uses them, not the whole image: one module of a 300-module
    archive, served in place, leaves most of the image untouched."""
    src = tmp_path / "src"
    src.mkdir()
    for k in range(300):
        funcs = "".join(f"def g{j}(x):\n    return x + {j} + len('{k}-{j}')\n"
                        for j in range(40))
        (src / f"mod{k}.py").write_text(
            f"{funcs}def f(x):\n    return x + {k}\n")
    lst = tmp_path / "app.lst"
    lst.write_text("# pycds module list v1\n" + "".join(
        f"mod{k}\t{src / f'mod{k}.py'}\t0\n" for k in range(300)))
    archive = tmp_path / "app.img"
    run_py(interp, "import sys, pycds; pycds.dump(sys.argv[1], sys.argv[2])",
           lst, archive)
    res, _ = run_json(interp, NO_LEASE_USE, archive, src)
    assert res["pages"] == "copied: the lease signal has no handler of pycds"
    assert res["served"] == 1 and res["f"] == 1, res
    assert res["size"] > 1 << 20, res
    assert res["rss"] * 4 < res["size"], res
