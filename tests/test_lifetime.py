"""Archived objects live as long as the process: they survive the garbage
collector, dropping every reference (also to the mapping), code.replace(),
marshal, exec, specialisation, and a clean interpreter exit, also under
``python -X dev`` (debug memory allocator: freeing an archived object would
be caught there)."""

import pytest

from conftest import run_json, run_py

DEV = ["-X", "dev"]
MODES = {"plain": [], "dev": DEV}

LIFETIME = r"""
import gc, sys, types, marshal, weakref, pycds, objcorpus, codecompare

def load():
    return pycds.load_code(sys.argv[1])

m = load()
names = sorted(m)
compiled = objcorpus.build_codes()

# 1. exec the tricky module, call everything, many times (3.11 quickens
#    and specialises the archived bytecode in place)
ns = {'__name__': 'tricky'}
exec(m['tricky'], ns)
ns_compiled = {'__name__': 'tricky'}
exec(compiled['tricky'], ns_compiled)
expected = repr(ns_compiled['results']())
for i in range(50):
    assert repr(ns['results']()) == expected, i
funcs = [v for v in ns.values() if isinstance(v, types.FunctionType)]
assert len(funcs) > 20

# 2. marshal round trip of the loaded (and by now executed) code objects
for name in names:
    data = marshal.dumps(m[name])
    back = marshal.loads(data)
    codecompare.assert_code_equal(back, compiled[name], name + ' (marshal)')
    # (bytes are not compared: marshal's FLAG_REF bits follow refcounts, and
    # the archive shares singletons, such as one-byte bytes, that compile()
    # left private: even re-loaded objects marshal differently)

# 3. code.replace() on archived code and its nested code
tc = m['tricky']
r1 = tc.replace(co_name='renamed')
assert r1.co_name == 'renamed' and r1.co_consts == tc.co_consts
r2 = tc.replace(co_consts=tc.co_consts + ('extra',))
assert r2.co_consts[-1] == 'extra'
inner = [c for c in tc.co_consts if type(c) is types.CodeType]
assert inner
inner2 = [c.replace(co_firstlineno=c.co_firstlineno + 1000) for c in inner]
del r1, r2, inner2
gc.collect()

# 4. drop every reference: functions, namespace, code objects, the mapping
keep_values = repr(ns['results']())
held = {n: m[n] for n in names}
del ns, funcs, inner, tc
for _ in range(3):
    gc.collect()
del m
for _ in range(3):
    gc.collect()
# the code objects taken before still work after the mapping is gone
ns = {'__name__': 'tricky'}
exec(held['tricky'], ns)
assert repr(ns['results']()) == keep_values
for name in names:
    codecompare.assert_code_equal(held[name], compiled[name], name)
del held, ns
gc.collect()

# 5. load again (a second mapping of the same file), twice at once
m1, m2 = load(), load()
for name in names:
    codecompare.assert_code_equal(m1[name], compiled[name], name)
    codecompare.assert_code_equal(m2[name], m1[name], name)
# run a stdlib module from the archive as a module
mod = types.ModuleType('textwrap_from_archive')
exec(m1['textwrap'], mod.__dict__)
assert mod.dedent('   a\n   b\n') == 'a\nb\n'
assert mod.fill('aaa bbb ccc', width=4) == 'aaa\nbbb\nccc'
mod2 = types.ModuleType('colorsys_from_archive')
exec(m2['colorsys'], mod2.__dict__)
assert mod2.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
del m1, m2, mod, mod2
for _ in range(3):
    gc.collect()

# 6. tracebacks through archived code
ns = {'__name__': 'tricky'}
exec(load()['tricky'], ns)
import traceback
def tb_of(namespace):
    try:
        namespace['exceptions']('not a number')
    except TypeError:
        return traceback.format_exc()
    raise AssertionError('no TypeError')
tb = tb_of(ns)
assert "exceptions" in tb and "line" in tb, tb
assert tb == tb_of(ns_compiled), (tb, tb_of(ns_compiled))
gc.collect()
print('lifetime ok')
"""


@pytest.mark.parametrize("mode", sorted(MODES))
def test_lifetime(interp, corpus_archive, mode):
    cp = run_py(interp, LIFETIME, corpus_archive, flags=MODES[mode],
                env={"PYTHONHASHSEED": "8"})
    assert cp.returncode == 0
    assert "lifetime ok" in cp.stdout
    assert cp.stderr == "", cp.stderr


STDLIB_TOUCH = r"""
import gc, sys, types, pycds
m = pycds.load_code(sys.argv[1])
n = ncodes = 0
def touch(co):
    global ncodes
    ncodes += 1
    # read what the runtime computes lazily from archived data
    co.co_code; co.co_varnames; co.co_cellvars; co.co_freevars
    list(co.co_lines()); list(co.co_positions())
    hash(co); repr(co)
    for c in co.co_consts:
        if type(c) is types.CodeType:
            touch(c)
        else:
            hash(c) if type(c) is not tuple or all(
                type(e) is not types.CodeType for e in c) else None
for name in m:
    touch(m[name])
    n += 1
del m
gc.collect()
print(n, ncodes)
"""


@pytest.mark.parametrize("mode", sorted(MODES))
def test_stdlib_touch_and_exit(interp, stdlib_archive, mode):
    cp = run_py(interp, STDLIB_TOUCH, stdlib_archive.path, flags=MODES[mode],
                env={"PYTHONHASHSEED": "9"}, timeout=600)
    n, ncodes = map(int, cp.stdout.split())
    assert n == stdlib_archive.entries
    assert ncodes > n
    assert cp.stderr == "", cp.stderr


EXIT_WITH_LIVE_OBJECTS = r"""
import sys, pycds
m = pycds.load_code(sys.argv[1])
ns = {'__name__': 'tricky'}
exec(m['tricky'], ns)
ns['results']()
# keep everything alive in module globals and in a reference cycle until
# the interpreter tears down
cycle = [m, ns]
cycle.append(cycle)
sys.modules['__keep__'] = type(sys)('__keep__')
sys.modules['__keep__'].stuff = cycle
print('ok')
"""


@pytest.mark.parametrize("mode", sorted(MODES))
def test_exit_with_live_archived_objects(interp, corpus_archive, mode):
    cp = run_py(interp, EXIT_WITH_LIVE_OBJECTS, corpus_archive,
                flags=MODES[mode])
    assert cp.stdout.strip() == "ok" and cp.stderr == "", cp.stderr


EXIT_AFTER_DROP = r"""
import gc, sys, pycds
m = pycds.load_code(sys.argv[1])
for n in m:
    m[n]
del m
gc.collect()
sys.exit(0)
"""


@pytest.mark.parametrize("mode", sorted(MODES))
def test_exit_after_dropping_all(interp, corpus_archive, mode):
    cp = run_py(interp, EXIT_AFTER_DROP, corpus_archive, flags=MODES[mode])
    assert cp.stderr == "", cp.stderr


SUBINTERP = r"""
import sys, pycds
try:
    import _interpreters as subs            # 3.13
except ImportError:
    import _xxsubinterpreters as subs       # 3.11, 3.12
m = pycds.load_code(sys.argv[1])
ns = {}
exec(m['tricky'], ns)
ns['results']()
sid = subs.create()
subs.run_string(sid, '''
import sys
sys.path[:0] = %r
import pycds
m = pycds.load_code(%r)
ns = {}
exec(m['tricky'], ns)
ns['results']()
''' % (sys.path[:3], sys.argv[1]))
subs.destroy(sid)
ns['results']()
print('ok')
"""


def test_subinterpreter_does_not_crash(interp, corpus_archive):
    """DESIGN: an archive serves the main interpreter; a subinterpreter maps
    its own copy or imports normally, and must not crash.  An ArchiveError
    or ImportError raised inside the subinterpreter is acceptable; a crash
    is not."""
    cp = run_py(interp, SUBINTERP, corpus_archive, check=False)
    assert cp.returncode >= 0, f"crashed: rc={cp.returncode}\n{cp.stderr}"
    if cp.returncode != 0:
        acceptable = ("ArchiveError", "ImportError", "RunFailedError",
                      "not supported")
        assert any(a in cp.stderr for a in acceptable), cp.stderr
