"""Per-version runtime state of archived objects.

On 3.12 and 3.13 archived objects are immortal: `sys.getrefcount` reports
the immortal value and no INCREF/DECREF ever writes them.  On 3.11 the
refcount is one no run can bring to zero.  Specialisation works on archived
code as on compiled code (the bytecode is the de-optimised `co_code`, whose
counters start at zero; 3.13 also needs a fresh `co_version` per code
object, drawn at load).  Strings the archive makes the interned ones
survive interpreter finalisation, which on 3.13 frees interned strings
that it does not know to be static.
"""

import pytest

from conftest import run_json

IMMORTAL = 2**32 - 1          # _Py_IMMORTAL_REFCNT on 64-bit 3.12/3.13
IMAGE_REFCNT_311 = 2**60      # layout_311.c

SOURCE = r'''
BIG = 123456789012345678901234567890
NEG = -1000
FLOAT = 2.5
COMPLEX = 1.5j
BYTES = b'pycds bytes'
SPACED = 'not an identifier'
WIDE = 'caf\xe9 \u20ac \U0001d11e'
TUPLE = (1000, 'x y', (2.5, b'zz'))
def member(x):
    return x in {'pycds_member_a', 'pycds_member_b', 4000}
def add(a, b):
    return a + b
def caller(n):
    t = 0
    for i in range(n):
        t = add(t, i)
    return t
class Point:
    def __init__(self, x):
        self.pycds_unique_attr_5d21 = x
    def get(self):
        return self.pycds_unique_attr_5d21
def attrs(n):
    p = Point(3)
    s = 0
    for i in range(n):
        s += p.get() + p.pycds_unique_attr_5d21
    return s
'''

DUMP = r"""
import sys, pycds
src = sys.argv[2]
pycds.dump_code(sys.argv[1], {'imm': compile(src, '/imm.py', 'exec',
                                             dont_inherit=True)})
emit(True)
"""


@pytest.fixture
def imm_archive(interp, tmp_path):
    path = tmp_path / "imm.img"
    run_json(interp, DUMP, path, SOURCE)
    return path


REFCOUNTS = r"""
import sys, types, pycds
co = pycds.load_code(sys.argv[1])['imm']
ns = {'__name__': 'imm'}
exec(co, ns)
ns['caller'](100); ns['attrs'](100); ns['member']('x')
counts = []
def walk(x, where):
    t = type(x)
    if t is types.CodeType:
        counts.append((where, 'code', sys.getrefcount(x)))
        for i, c in enumerate(x.co_consts):
            walk(c, f'{where}.co_consts[{i}]')
        for i, n in enumerate(x.co_names):
            counts.append((f'{where}.co_names[{i}]', 'name',
                           sys.getrefcount(n)))
    elif t in (tuple, frozenset) and len(x):
        counts.append((where, t.__name__, sys.getrefcount(x)))
        for i, e in enumerate(sorted(x, key=repr)):
            walk(e, f'{where}[{i}]')
    elif t in (int, float, complex, bytes, str):
        counts.append((where, t.__name__, sys.getrefcount(x)))
walk(co, 'imm')
named = {k: sys.getrefcount(ns[k]) for k in
         ('BIG', 'NEG', 'FLOAT', 'COMPLEX', 'BYTES', 'SPACED', 'WIDE', 'TUPLE')}
emit({'counts': counts, 'named': named, 'none': sys.getrefcount(None)})
"""


def test_archived_constants_refcount(interp, imm_archive):
    res, _ = run_json(interp, REFCOUNTS, imm_archive)
    counts, named = res["counts"], res["named"]
    kinds = {kind for _, kind, _ in counts}
    assert {"code", "name", "tuple", "frozenset", "int", "float", "complex",
            "bytes", "str"} <= kinds, kinds
    if interp.hexversion >= 0x030C0000:
        # everything: archived objects, frozensets built at load, interned
        # names and the runtime singletons they resolve to
        assert res["none"] == IMMORTAL
        wrong = [c for c in counts if c[2] != IMMORTAL]
        assert not wrong, f"not immortal on {interp.id}: {wrong}"
    else:
        # 3.11: no immortality; archived objects start at 2**60, and
        # INCREF/DECREF move that by what is live
        wrong = {k: v for k, v in named.items()
                 if abs(v - IMAGE_REFCNT_311) > 2**20}
        assert not wrong, wrong


SPECIALISE = r"""
import dis, sys, pycds
src = sys.argv[2]
archived = {'__name__': 'imm'}
exec(pycds.load_code(sys.argv[1])['imm'], archived)
compiled = {'__name__': 'imm'}
exec(compile(src, '/imm.py', 'exec', dont_inherit=True), compiled)
out = {}
for ns, which in ((archived, 'archived'), (compiled, 'compiled')):
    for i in range(20):
        assert ns['caller'](200) == 19900
        assert ns['attrs'](200) == 1200
        assert ns['member']('pycds_member_b')
    out[which] = {name: [ins.opname for ins in
                         dis.get_instructions(ns[name], adaptive=True)]
                  for name in ('caller', 'attrs', 'add', 'member')}
    out[which]['get'] = [ins.opname for ins in dis.get_instructions(
        ns['Point'].get, adaptive=True)]
emit(out)
"""


def test_specialisation_as_compiled(interp, imm_archive):
    """After the same calls, archived functions hold the same specialised
    instructions as compiled ones: calls to Python functions (3.13 keys
    them on co_version), globals, attributes, binary operations."""
    res, _ = run_json(interp, SPECIALISE, imm_archive, SOURCE)
    assert res["archived"] == res["compiled"]
    caller = res["archived"]["caller"]
    assert "CALL_PY_EXACT_ARGS" in caller, caller
    assert "LOAD_GLOBAL_MODULE" in caller, caller
    assert any(op.startswith("LOAD_ATTR_") for op in res["archived"]["get"])


CO_VERSIONS = r"""
import ctypes, sys, types, pycds
# co_version: uint32 after ten ints that follow co_consts, co_names and
# co_exceptiontable (cpython/code.h, 3.12 and 3.13).
OFFSET = 3 * 8 + 3 * 8 + 11 * 4
def version(c):
    return ctypes.c_uint32.from_address(id(c) + OFFSET).value
def codes(c):
    yield c
    for k in c.co_consts:
        if isinstance(k, types.CodeType):
            yield from codes(k)
probe = compile('def f(): pass', 'p', 'exec')
fresh = [version(c) for c in codes(probe)]
co = pycds.load_code(sys.argv[1])['imm']
loaded = [version(c) for c in codes(co)]
after = [version(c) for c in codes(compile('def g(): pass', 'q', 'exec'))]
emit({'fresh': fresh, 'loaded': loaded, 'after': after})
"""


def test_co_version_drawn_at_load(interp, imm_archive):
    if interp.hexversion < 0x030D0000:
        pytest.skip("only 3.13 derives function versions from co_version")
    res, _ = run_json(interp, CO_VERSIONS, imm_archive)
    fresh, loaded, after = res["fresh"], res["loaded"], res["after"]
    # the offset is right: fresh code objects hold consecutive versions
    assert sorted(fresh) == list(range(min(fresh), min(fresh) + len(fresh)))
    assert len(loaded) >= 7 and 0 not in loaded
    everything = fresh + loaded + after
    assert len(set(everything)) == len(everything), res
    assert max(fresh) < min(loaded) and max(loaded) < min(after), res


INTERNED_EXIT = r"""
import sys, pycds
co = pycds.load_code(sys.argv[1])['imm']
ns = {'__name__': 'imm'}
exec(co, ns)
# names no runtime string had before: the archived strings became the
# interned ones, and the runtime's equal strings are them
name = ''.join(['pycds_unique_', 'attr_5d21'])
archived = [n for n in ns['Point'].get.__code__.co_names
            if n == name][0]
assert sys.intern(name) is archived
member = [c for c in ns['member'].__code__.co_consts
          if isinstance(c, frozenset)][0]
key = sys.intern(''.join(['pycds_member', '_a']))
assert any(e is key for e in member)
emit(ns['attrs'](10))
# finalisation clears the interned dict with these strings in it
"""


@pytest.mark.parametrize("flags", [[], ["-X", "dev"]], ids=["plain", "dev"])
def test_interned_strings_survive_exit(interp, imm_archive, flags):
    res, cp = run_json(interp, INTERNED_EXIT, imm_archive, flags=flags)
    assert res == 60
    assert cp.returncode == 0 and cp.stderr == ""
