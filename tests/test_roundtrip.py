"""Round trip: code objects dumped into an archive by one process come back
identical in another process (with another hash seed)."""

import os
import time

import pytest

from conftest import run_json, run_py


# --------------------------------------------------------------------------
# (1) the whole stdlib in one archive

STDLIB_CHECK = r"""
import os, sys, time, warnings, collections.abc
import pycds, codecompare
warnings.simplefilter('ignore')
path, root = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
m = pycds.load_code(path)
t1 = time.perf_counter()
assert isinstance(m, collections.abc.Mapping), type(m)
names = sorted(m)
failures, checked, ncode = [], 0, 0
for name in names:
    p = os.path.join(root, name)
    try:
        loaded = m[name]
    except Exception as e:
        failures.append(f'{name}: access raised {type(e).__name__}: {e}')
        continue
    with open(p, 'rb') as f:
        src = f.read()
    compiled = compile(src, p, 'exec', dont_inherit=True)
    err = codecompare.code_equal_report(loaded, compiled, name)
    if err:
        failures.append(err)
    else:
        checked += 1
        ncode += sum(1 for _ in codecompare.iter_code(loaded))
    if len(failures) >= 25:
        break
t2 = time.perf_counter()
emit({'entries': len(m), 'names': len(names), 'checked': checked,
      'code_objects': ncode, 'failures': failures,
      'load_s': t1 - t0, 'check_s': t2 - t1})
"""


def test_stdlib_roundtrip(interp, stdlib_archive):
    a = stdlib_archive
    # Every stdlib file that compiles is in the archive.
    assert a.files > 500, a.info
    assert len(a.compile_failed) <= 0.02 * a.files, a.compile_failed
    assert a.entries == a.files - len(a.compile_failed), a.info
    assert a.entries >= 600, a.info
    if os.path.isfile(os.path.join(a.root, "test", "test_grammar.py")):
        assert a.entries > 1500, a.info        # a full stdlib with Lib/test

    t = time.perf_counter()
    res, _ = run_json(interp, STDLIB_CHECK, a.path, a.root,
                      env={"PYTHONHASHSEED": "2"}, timeout=600)
    elapsed = time.perf_counter() - t
    print(f"\n{interp.id}: {a.entries} entries, dump: compile "
          f"{a.info['compile_s']:.1f}s + dump {a.info['dump_s']:.1f}s, "
          f"{a.info['bytes']} bytes; check: load {res['load_s']:.3f}s, "
          f"compare {res['check_s']:.1f}s ({res['code_objects']} code objects), "
          f"child {elapsed:.1f}s")
    assert not res["failures"], "\n".join(res["failures"])
    assert res["entries"] == a.entries
    assert res["names"] == a.entries
    assert res["checked"] == a.entries


MAPPING_CHECK = r"""
import sys, collections.abc, pycds
m = pycds.load_code(sys.argv[1])
assert isinstance(m, collections.abc.Mapping), type(m)
assert not isinstance(m, collections.abc.MutableMapping), type(m)
names = list(m)
assert len(names) == len(m) == len(set(names))
assert all(type(n) is str for n in names)
first = names[0]
assert first in m and 'no/such/entry.py' not in m
assert m.get('no/such/entry.py') is None
try:
    m['no/such/entry.py']
except KeyError:
    pass
else:
    raise AssertionError('missing entry did not raise KeyError')
# repeated access gives the same object
assert m[first] is m[first]
assert type(m[first]).__name__ == 'code'
try:
    m[first] = None
except TypeError:
    pass
else:
    raise AssertionError('mapping accepted an assignment')
emit(len(m))
"""


def test_load_code_is_readonly_mapping(interp, stdlib_archive):
    n, _ = run_json(interp, MAPPING_CHECK, stdlib_archive.path)
    assert n == stdlib_archive.entries


# --------------------------------------------------------------------------
# (2) tricky constants, and the loaded code runs like the compiled code

CORPUS_CHECK = r"""
import sys, types, pycds, codecompare, objcorpus
m = pycds.load_code(sys.argv[1])
compiled = objcorpus.build_codes()
assert sorted(m) == sorted(compiled), (sorted(m), sorted(compiled))
for name, co in compiled.items():
    codecompare.assert_code_equal(m[name], co, name)

# Run the loaded tricky module and the compiled one: same results.
ns_loaded, ns_compiled = {'__name__': 'tricky'}, {'__name__': 'tricky'}
exec(m['tricky'], ns_loaded)
exec(compiled['tricky'], ns_compiled)
r_loaded, r_compiled = ns_loaded['results'](), ns_compiled['results']()
assert repr(r_loaded) == repr(r_compiled), (r_loaded, r_compiled)
# and again (3.11 quickens after a few calls)
for _ in range(20):
    again = ns_loaded['results']()
assert repr(again) == repr(r_compiled)

# Functions made from the crafted constants run.
crafted = m['crafted']
leaf = [c for c in crafted.co_consts if type(c) is types.CodeType][0]
assert types.FunctionType(leaf, {})() == 'leaf'
exec(crafted, {})
emit({'entries': len(m), 'results': len(r_loaded)})
"""


def test_tricky_constants_roundtrip(interp, corpus_archive):
    res, _ = run_json(interp, CORPUS_CHECK, corpus_archive,
                      env={"PYTHONHASHSEED": "4"})
    assert res["entries"] >= 10


SPECIFIC_CONSTS = r"""
import sys, math, struct, pycds, objcorpus
m = pycds.load_code(sys.argv[1])
c = m['crafted'].co_consts
bits = lambda f: struct.pack('<d', f)
nan, mnan = c[1], c[2]
assert type(nan) is float and math.isnan(nan) and math.isnan(mnan)
assert bits(nan) == bits(float('nan')) and bits(mnan) == bits(-float('nan'))
assert c[3] == math.inf and c[4] == -math.inf
assert bits(c[5]) == bits(-0.0) and bits(c[6]) == bits(0.0)
assert bits(c[7].real) == bits(-0.0) and math.isnan(c[7].imag)
fs_in_tuple = c[12]
assert type(fs_in_tuple) is tuple and type(fs_in_tuple[0]) is frozenset
assert fs_in_tuple[0] == {1, 2, 3} and 2 in fs_in_tuple[0]
nested = c[13]
assert type(nested) is frozenset and frozenset({1, 'a'}) in nested
assert frozenset() in nested and 2.5 in nested
inner = [x for x in nested if type(x) is frozenset and x]
assert len(inner) == 1 and type(inner[0]) is frozenset and 'a' in inner[0]
assert c[15] == frozenset() and type(c[15]) is frozenset
assert bits(next(iter(c[16]))) == bits(-0.0)
assert bits(next(iter(c[17]))) == bits(0.0)
assert c[18] == frozenset(range(-5, 300))
assert all(i in c[18] for i in range(-5, 300)) and 300 not in c[18]
t = objcorpus.compile_tricky()
ns = {}
exec(m['tricky'], ns)
assert ns['STRS'][7] == '\ud800' and len(ns['STRS'][7]) == 1
assert ns['LONG_UCS4'] == '\U0001d11e' * 1000 + 'z'
assert ns['LONG_SURR'] == ('\udc00' + 'q') * 300
assert ns['LONG_BYTES'] == b'\x00\x01\xfe\xff' * 4000
assert ns['BIG'] == 2**200 and ns['NEG_BIG'] == -2**200
assert ns['INTS'] == (0, -1, 1, 256, 257, -5, -6, 2**30 - 1, 2**30, 2**31,
                      2**60, 2**63, -2**63, 2**64, 2**200, -2**200, 10**100,
                      -10**100)
assert ns['in_set']('𝄞') and ns['in_set'](-0.0) and not ns['in_set']('zz')
emit('ok')
"""


def test_specific_constants(interp, corpus_archive):
    res, _ = run_json(interp, SPECIFIC_CONSTS, corpus_archive,
                      env={"PYTHONHASHSEED": "5"})
    assert res == "ok"


# --------------------------------------------------------------------------
# (3) frozensets are built right whatever the seeds of dumper and loader

FS_SOURCE = r'''
def member(x):
    return x in {'alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta',
                 'theta', 'iota', 'kappa', 'lambda', 'mu', b'nu', b'xi', 1, 2,
                 3, 1180591620717411303424, 4.5, -0.0, (1, 'tuple'), 'é', '€', '𝄞'}
def words():
    for w in {'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight'}:
        yield w
'''

FS_EXPECTED = ("{'alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta', "
               "'theta', 'iota', 'kappa', 'lambda', 'mu', b'nu', b'xi', 1, 2, 3, "
               "1180591620717411303424, 4.5, -0.0, (1, 'tuple'), 'é', '€', '𝄞'}")

FS_DUMP = r"""
import sys, pycds
src = sys.argv[2]
co = compile(src, '<fs>', 'exec', dont_inherit=True)
extra = compile('pass', '<fs2>', 'exec').replace(co_consts=(
    None,
    frozenset({'k%d' % i for i in range(100)}),
    (frozenset({'a', 'b', 'c'}), frozenset({frozenset({'x', 'y'}), 'z'})),
))
pycds.dump_code(sys.argv[1], {'fs': co, 'extra': extra})
emit('ok')
"""

FS_LOAD = r"""
import sys, types, pycds
m = pycds.load_code(sys.argv[1])
expected = eval(sys.argv[2])
ns = {}
exec(m['fs'], ns)
member = ns['member']
fs = [c for c in member.__code__.co_consts if type(c) is frozenset]
assert len(fs) == 1, member.__code__.co_consts
fs = fs[0]
assert type(fs) is frozenset
assert fs == expected and set(fs) == expected and len(fs) == len(expected)
assert hash(fs) == hash(frozenset(expected))
for x in expected:
    assert x in fs, x
    assert member(x), x
    assert member(type(x)(x) if type(x) is not tuple else tuple(list(x))), x
for x in ('alphA', 'omega', b'alpha', 5, 4.25, (1, 'tuple', 2), 'e'):
    assert x not in fs and not member(x), x
assert 0.0 in fs and 0 in fs    # -0.0 == 0.0 == 0: lookups by value work
d = {fs: 'key'}
assert d[frozenset(expected)] == 'key'
assert fs | {'new'} == expected | {'new'}
assert sorted(ns['words']()) == sorted(['one', 'two', 'three', 'four', 'five',
                                        'six', 'seven', 'eight'])
big, pair = m['extra'].co_consts[1:]
assert type(big) is frozenset and big == {'k%d' % i for i in range(100)}
assert all(('k%d' % i) in big for i in range(100)) and 'k100' not in big
a, b = pair
assert type(a) is frozenset and a == {'a', 'b', 'c'} and 'b' in a
assert type(b) is frozenset and frozenset({'x', 'y'}) in b and 'z' in b
inner = [x for x in b if type(x) is frozenset][0]
assert type(inner) is frozenset and 'y' in inner
emit('ok')
"""


@pytest.mark.parametrize("seeds", [(0, 1), (1, 0), (1, 2), (12345, 987654321),
                                   (4294967295, 7)],
                         ids=lambda s: f"dump{s[0]}-load{s[1]}")
def test_frozenset_across_hash_seeds(interp, tmp_path, seeds):
    path = tmp_path / "fs.img"
    run_json(interp, FS_DUMP, path, FS_SOURCE,
             env={"PYTHONHASHSEED": seeds[0]})
    res, _ = run_json(interp, FS_LOAD, path, FS_EXPECTED,
                      env={"PYTHONHASHSEED": seeds[1]})
    assert res == "ok"


def test_frozenset_random_seeds(interp, tmp_path):
    """Dumper and loader both with hash randomisation on (no fixed seed)."""
    path = tmp_path / "fs.img"
    run_json(interp, FS_DUMP, path, FS_SOURCE, env={"PYTHONHASHSEED": None})
    for _ in range(3):
        res, _ = run_json(interp, FS_LOAD, path, FS_EXPECTED,
                          env={"PYTHONHASHSEED": None})
        assert res == "ok"


# --------------------------------------------------------------------------
# (4) reproducible archives

# The second dump is of the same code objects: compiling again in the same
# process need not give the same objects (3.13: code creation interns a
# class body's qualname, and when an equal string is interned already, the
# __qualname__ constant stays a separate, not interned, copy; pycds
# archives what compile() made).  The first dumps of two processes compare
# fresh compiles.
CORPUS_DUMP_TWICE = r"""
import sys, pycds, objcorpus
codes = objcorpus.build_codes()
pycds.dump_code(sys.argv[1], codes)
pycds.dump_code(sys.argv[2], codes)
emit('ok')
"""


def test_reproducible_across_hash_seeds(interp, tmp_path):
    paths = [tmp_path / f"r{i}.img" for i in range(4)]
    run_json(interp, CORPUS_DUMP_TWICE, paths[0], paths[1],
             env={"PYTHONHASHSEED": "1"})
    run_json(interp, CORPUS_DUMP_TWICE, paths[2], paths[3],
             env={"PYTHONHASHSEED": "2"})
    data = [p.read_bytes() for p in paths]
    assert len(data[0]) > 0
    assert data[0] == data[1], "two dumps in one process differ"
    assert data[2] == data[3], "two dumps in one process differ"
    if data[0] != data[2]:
        first = next(i for i, (x, y) in enumerate(zip(data[0], data[2]))
                     if x != y) if len(data[0]) == len(data[2]) else None
        pytest.fail(f"PYTHONHASHSEED=1 and =2 give different archives "
                    f"(sizes {len(data[0])}, {len(data[2])}, first differing "
                    f"byte at {first})")


def test_stdlib_reproducible(interp, stdlib_archive, tmp_path):
    """The whole stdlib dumped again under another seed: the same bytes."""
    from conftest import STDLIB_DUMP
    path = tmp_path / "again.img"
    run_json(interp, STDLIB_DUMP, path, env={"PYTHONHASHSEED": "99"},
             timeout=600)
    a = open(stdlib_archive.path, "rb").read()
    b = path.read_bytes()
    if a != b:
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y),
                     min(len(a), len(b)))
        pytest.fail(f"stdlib archives dumped with PYTHONHASHSEED=1 and 99 "
                    f"differ (sizes {len(a)}, {len(b)}; first differing byte "
                    f"at offset {first:#x})")


# --------------------------------------------------------------------------
# (5) unsupported objects are refused, nothing is written

BAD_OBJECTS = {
    # id: (expression, type name the message must give)
    "list": ("[1, 2]", "list"),
    "dict": ("{1: 2}", "dict"),
    "set": ("{1, 2}", "set"),
    "bytearray": ("bytearray(b'x')", "bytearray"),
    "object": ("object()", "object"),
    "range": ("range(3)", "range"),
    "slice": ("slice(1, 2)", "slice"),
    "type": ("int", "type"),            # a type the archive names as a symbol
    "type-list": ("list", "type"),
    "function": ("(lambda: 0)", "function"),
    "str-subclass": ("type('MyStr', (str,), {})('abc')", "MyStr"),
    "int-subclass": ("type('MyInt', (int,), {})(5)", "MyInt"),
    "float-subclass": ("type('MyFloat', (float,), {})(1.5)", "MyFloat"),
    "tuple-subclass": ("type('MyTuple', (tuple,), {})((1, 2))", "MyTuple"),
    "frozenset-subclass": ("type('MyFS', (frozenset,), {})({1})", "MyFS"),
}

BAD_DUMP = r"""
import os, sys, pycds
path, where, expr = sys.argv[1], sys.argv[2], sys.argv[3]
bad = eval(expr)
good = compile('x = 1\ndef f():\n    return 2\n', '<good>', 'exec')
if where == 'top':
    co = good.replace(co_consts=good.co_consts + (bad,))
    expect = ['co_consts[%d]' % (len(good.co_consts))]
elif where == 'tuple':
    co = good.replace(co_consts=good.co_consts + ((1, ('a', bad)),))
    expect = ['co_consts[%d]' % (len(good.co_consts))]
elif where == 'nested-code':
    idx = [i for i, c in enumerate(good.co_consts)
           if type(c).__name__ == 'code'][0]
    f = good.co_consts[idx]
    f2 = f.replace(co_consts=f.co_consts + (bad,))
    consts = list(good.co_consts)
    consts[idx] = f2
    co = good.replace(co_consts=tuple(consts))
    expect = ['co_consts[%d]' % idx, 'co_consts[%d]' % len(f.co_consts)]
codes = {'fine': compile('y = 2', '<fine>', 'exec'), 'the_bad_entry': co}
try:
    pycds.dump_code(path, codes)
except pycds.ArchiveError as e:
    emit({'raised': 'ArchiveError', 'msg': str(e), 'expect': expect})
except BaseException as e:
    emit({'raised': type(e).__name__, 'msg': str(e), 'expect': expect})
else:
    emit({'raised': None, 'msg': None, 'expect': expect})
"""

GOOD_DUMP = r"""
import sys, pycds
pycds.dump_code(sys.argv[1], {'m': compile('z = 3', '<m>', 'exec')})
emit('ok')
"""


@pytest.mark.parametrize("where", ["top", "tuple", "nested-code"])
@pytest.mark.parametrize("bad", sorted(BAD_OBJECTS))
def test_unsupported_object_refused(interp, tmp_path, bad, where):
    expr, tname = BAD_OBJECTS[bad]
    d = tmp_path / "out"
    d.mkdir()
    # 1. no file at the path: none is created
    target = d / "new.img"
    res, _ = run_json(interp, BAD_DUMP, target, where, expr)
    assert res["raised"] == "ArchiveError", res
    msg = res["msg"]
    assert tname in msg, f"type name {tname!r} not in message {msg!r}"
    assert "the_bad_entry" in msg, f"entry name not in message {msg!r}"
    for part in res["expect"]:
        assert part in msg, f"{part!r} (where it sits) not in message {msg!r}"
    assert sorted(os.listdir(d)) == [], os.listdir(d)

    # 2. an existing archive at the path stays as it was
    target = d / "existing.img"
    run_json(interp, GOOD_DUMP, target)
    assert sorted(os.listdir(d)) == ["existing.img"], os.listdir(d)
    before = target.read_bytes()
    st = os.stat(target)
    listing = sorted(os.listdir(d))
    res, _ = run_json(interp, BAD_DUMP, target, where, expr)
    assert res["raised"] == "ArchiveError", res
    assert target.read_bytes() == before
    st2 = os.stat(target)
    assert (st2.st_ino, st2.st_mtime_ns, st2.st_size) == \
        (st.st_ino, st.st_mtime_ns, st.st_size)
    assert sorted(os.listdir(d)) == listing, "stray files left behind"
    # and it still loads
    run_py(interp, """
        import sys, pycds
        m = pycds.load_code(sys.argv[1])
        ns = {}
        exec(m['m'], ns)
        assert ns['z'] == 3
    """, target)
