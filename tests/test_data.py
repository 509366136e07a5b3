"""Data archives (docs/DATA.md): pycds.dump_data and pycds.load_data.

Covers: every type round-trips, nested and with edge values, in place
from the image and relocated; FrozenDict as a read-only Mapping whose
table does not depend on the hash seed (dumped under one seed, used
under others, looked up by equal keys made elsewhere: 1 == 1.0 == True,
str built at run time, tuples, frozensets, Fractions); refusals naming
where an object sits, with nothing written; damaged, truncated, foreign,
untrusted files and archives of the other kind refused or relocated, as
code archives are; `pycds-dump info` and `verify`; the same objects for
the same file in a process and its subinterpreters.
"""

import os
import shutil

import pytest

import elfsections as elf
from conftest import INTERPRETERS, run_json, run_py

# In the child: a reference of what dump_data makes of an object, and an
# exact comparison (types, -0.0, NaN, order of dicts).
PRELUDE = r"""
import math, sys, pycds
from fractions import Fraction

def frozen(x):
    if isinstance(x, list) or type(x) is tuple:
        return tuple(frozen(i) for i in x)
    if isinstance(x, (set, frozenset)):
        return frozenset(frozen(i) for i in x)
    if isinstance(x, dict):
        return {frozen(k): frozen(v) for k, v in x.items()}
    return x

def same(a, b, where='obj'):
    # a: loaded, b: frozen(original)
    if isinstance(b, dict):
        assert type(a) is pycds.FrozenDict, (where, type(a))
        assert list(a) == list(b), (where, 'order', list(a), list(b))
        for k in b:
            same(a[k], b[k], '%s[%r]' % (where, k))
        return
    assert type(a) is type(b), (where, type(a), type(b))
    if type(b) is float:
        assert (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)), \
            (where, a, b)
    elif type(b) is complex:
        same(a.real, b.real, where + '.real')
        same(a.imag, b.imag, where + '.imag')
    elif type(b) is tuple:
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, '%s[%d]' % (where, i))
    elif type(b) is frozenset:
        assert a == b, (where, a, b)
    else:
        assert a == b, (where, a, b)

def in_image(obj):
    # Where images are mapped (format.h: 32-64 TiB).
    return 0x200000000000 <= id(obj) < 0x400000000000

def sample():
    deep = 'bottom'
    for i in range(60):
        deep = [deep] if i % 2 else {'k%d' % i: deep}
    shared = [1, 2, 3]
    return {
        'none': None, 'true': True, 'false': False,
        'ints': [0, 1, -1, 255, 256, 257, -5, -6, 2**30, 2**31 - 1, 2**62,
                 -2**63, 2**64 + 1, 10**400, -10**400],
        'floats': [0.0, -0.0, 1.5, float('inf'), float('-inf'),
                   float('nan'), 5e-324, 1.7976931348623157e308],
        'complex': [0j, complex(-0.0, -0.0), 1 + 2j,
                    complex(float('inf'), float('nan'))],
        'str': ['', 'a', 'ascii', 'caf\u00e9', '\u00ff' * 50,
                '\u20ac uro', '\U0001F600 emoji', 'x' * 100000,
                '\ud800 lone surrogate', 'nul\x00inside'],
        'bytes': [b'', b'\x00', b'\xff' * 3, bytes(range(256)) * 400],
        'tuple': (), 'tuple1': (1,), 'nested': ((), ((),), [[], [[]]]),
        'list': [], 'set': set(), 'frozenset': frozenset(),
        'sets': [{1, 2, 3}, frozenset({'a', 'b'}), {(1, 2), 'x', 3.5}],
        'dict': {}, 'dicts': [{'a': 1}, {1: 'int key', 2.5: 'float key',
                                  (1, 'x'): 'tuple key', None: 'none key',
                                  b'b': 'bytes key', frozenset({1}): 'fs'}],
        'deep': deep, 'shared': [shared, shared],
        ('tuple', 'key'): 'value',
    }
"""

ROUNDTRIP = PRELUDE + r"""
path, mode = sys.argv[1], sys.argv[2]
obj = sample()
if mode == 'dump':
    pycds.dump_data(path, obj)
    emit(None)
    sys.exit(0)
out = {}
for prelinked in (True, False):
    data = pycds.load_data(path, prelinked=prelinked)
    same(data, frozen(obj))
    out['image' if prelinked else 'relocated'] = in_image(data)
    # The sharing of the original survives: one tuple, twice.
    assert data['shared'][0] is data['shared'][1]
    out['refcount'] = sys.getrefcount(data['ints'])
    # Loading the same file again gives the same objects.
    assert pycds.load_data(path, prelinked=prelinked) is data
emit(out)
"""


def test_roundtrip_every_type(interp, tmp_path):
    """Every type, nested, with edge values: dumped in one process (seed
    1), equal in another (seed 2), from the image and relocated."""
    path = tmp_path / "sample.data"
    run_json(interp, ROUNDTRIP, path, "dump", env={"PYTHONHASHSEED": "1"})
    out, _ = run_json(interp, ROUNDTRIP, path, "load",
                      env={"PYTHONHASHSEED": "2"})
    assert out["image"] is True and out["relocated"] is False, out
    # Immortal on 3.12+; 3.11's 2**60 no run brings to zero.
    if interp.hexversion >= 0x030C0000:
        assert out["refcount"] == 2**32 - 1, out
    else:
        assert out["refcount"] > 2**60, out


MAPPING = PRELUDE + r"""
import collections.abc, copy, pickle
path, mode = sys.argv[1], sys.argv[2]
keys = ['alpha', 'b\u00e9ta', '\U0001F600', 1, 2.5, (1, 'x'), None, b'raw',
        frozenset({1, 'a'}), (), 'x' * 1000, -7, 10**30]
original = {k: i for i, k in enumerate(keys)}
original['nested'] = {'inner': [1, 2]}
if mode == 'dump':
    pycds.dump_data(path, original)
    emit(None)
    sys.exit(0)
d = pycds.load_data(path, prelinked=(mode == 'image'))
F = pycds.FrozenDict
assert type(d) is F and isinstance(d, collections.abc.Mapping)
assert list(d) == list(original) and len(d) == len(original)
assert list(d.keys()) == list(original.keys())
assert list(d.values())[:-1] == list(original.values())[:-1]
assert list(d.items())[0] == ('alpha', 0)
assert d.keys() == original.keys()
# Lookups by equal keys that are other objects, made here.
assert d[''.join(['al', 'pha'])] == 0
assert d['b' + chr(0xe9) + 'ta'] == 1 and d[chr(0x1F600)] == 2
assert d[1.0] == 3 and d[True] == 3 and d[1 + 0j] == 3 and d[Fraction(1)] == 3
assert d[Fraction(5, 2)] == 4 and d[2.5] == 4
assert d[tuple([1.0, 'x'])] == 5 and d[None] == 6
assert d[bytes([114, 97, 119])] == 7
assert d[frozenset(['a', 1.0])] == 8 and d[()] == 9 and d['x' * 1000] == 10
assert d[-7.0] == 11 and d[10**30] == 12
assert 'alpha' in d and 'gamma' not in d and 2 not in d and 'b' not in d
assert d.get('gamma') is None and d.get('gamma', 5) == 5 and d.get(1.0) == 3
try:
    d['gamma']
    raise AssertionError('no KeyError')
except KeyError as e:
    assert e.args == ('gamma',)
for unhashable in ([1], {}, {1}):
    try:
        d[unhashable]
        raise AssertionError('no TypeError')
    except TypeError:
        pass
# Read-only.
for attempt in (lambda: d.__setitem__('a', 1), lambda: d.__delitem__('alpha'),
                lambda: d.update({}), lambda: d.pop('alpha'),
                lambda: setattr(d, 'x', 1)):
    try:
        attempt()
        raise AssertionError('mutated')
    except (TypeError, AttributeError):
        pass
# Equality with a dict and another FrozenDict, in any order.
expected = frozen(original)
assert d == expected and expected == d and not (d != expected)
assert d == F(reversed(list(expected.items())))
changed = dict(expected)
changed['alpha'] = -1
assert d != changed and d != {} and d != F() and d != list(d)
# Hashable when its values are, equal hashes for equal FrozenDicts.
inner = d['nested']
assert hash(inner) == hash(F({'inner': (1, 2)}))
assert hash(F(a=1, b=2)) == hash(F(b=2, a=1))
try:
    hash(F(a=[1]))
    raise AssertionError('hashed a list value')
except TypeError:
    pass
# Pickles (and copies) to a dict.
back = pickle.loads(pickle.dumps(d))
assert type(back) is dict and back == expected
assert type(back['nested']) is dict
assert copy.copy(d) == expected
assert repr(F(a=1)) == "FrozenDict({'a': 1})"
emit({'image': in_image(d), 'order': [repr(k) for k in d][:3]})
"""


@pytest.mark.parametrize("dump_seed,load_seed", [("1", "2"), ("0", "random"),
                                                 ("random", "4242")])
def test_frozendict_under_any_seed(interp, tmp_path, dump_seed, load_seed):
    """Dumped under one hash seed, a FrozenDict is a read-only Mapping
    under another: lookups by equal keys made elsewhere, iteration in
    insertion order, == a dict, hash, pickling to a dict."""
    path = tmp_path / "map.data"
    run_json(interp, MAPPING, path, "dump", env={"PYTHONHASHSEED": dump_seed})
    for mode in ("image", "relocated"):
        out, _ = run_json(interp, MAPPING, path, mode,
                          env={"PYTHONHASHSEED": load_seed})
        assert out["image"] is (mode == "image"), out
        assert out["order"] == ["'alpha'", "'b\u00e9ta'", "'\U0001F600'"]


def test_frozendict_made_at_run_time(interp):
    """FrozenDict() takes what dict() takes, and keys of any hashable
    type (its own hash for the types archives do not hold)."""
    out, _ = run_json(interp, PRELUDE + r"""
import enum
class Color(enum.IntEnum):
    RED = 1
class Key:
    def __hash__(self): return 7
    def __eq__(self, other): return isinstance(other, Key)
F = pycds.FrozenDict
d = F([('a', 1)], b=2)
assert list(d.items()) == [('a', 1), ('b', 2)]
e = F({Color.RED: 'red', Key(): 'key', 3: [1]})
assert e[1] == 'red' and e[Key()] == 'key' and e[3] == [1]
assert F() == {} and len(F()) == 0 and list(F()) == []
big = F({i: str(i) for i in range(100000)})
assert all(big[i] == str(i) for i in range(0, 100000, 7))
assert big[99999.0] == '99999' and 100000 not in big
emit('ok')
""")
    assert out == "ok"


REFUSE = PRELUDE + r"""
import collections, os
path = sys.argv[1]
class Thing:
    pass
Point = collections.namedtuple('Point', 'x y')
cyclic = [1]
cyclic.append(cyclic)
too_deep = 'bottom'
for i in range(300):
    too_deep = [too_deep]
cases = {
    'object': {'users': [0, 1, 2, Thing()]},
    'set element': {'tags': {1, Thing()}},
    'dict key': [{'a': 1, Thing(): 2}],
    'subclass': {'p': Point(1, 2)},
    'bytearray': [bytearray(b'x')],
    'cycle': {'c': cyclic},
    'deep': too_deep,
    'function': {'f': len},
    'set of FrozenDicts': {'s': {pycds.FrozenDict(a=1)}},
}
out = {}
for name, obj in cases.items():
    try:
        pycds.dump_data(path, obj)
        out[name] = 'written'
    except pycds.ArchiveError as e:
        out[name] = [e.kind, str(e), os.path.exists(path)]
emit(out)
"""


def test_refusals_name_where(interp, tmp_path):
    """Anything but plain data is refused with ArchiveError naming its
    type and where it sits, and nothing is written (an existing archive
    stays as it was)."""
    path = tmp_path / "refused.data"
    out, _ = run_json(interp, REFUSE, path)
    where = {
        "object": "obj['users'][3]: cannot archive object of type 'Thing'",
        "set element": "obj['tags']{...}: cannot archive object of type "
                       "'Thing'",
        "dict key": "obj[0].keys()[1]: cannot archive object of type "
                    "'Thing'",
        "subclass": "obj['p']: cannot archive object of type 'Point'",
        "bytearray": "obj[0]: cannot archive object of type 'bytearray'",
        "cycle": "obj['c'][1]: a reference cycle through an object of type "
                 "'list'",
        "deep": "nesting too deep",
        "set of FrozenDicts": "obj['s']: a FrozenDict cannot be archived "
                              "in a set: object of type 'set'",
        "function": "obj['f']: cannot archive object of type "
                    "'builtin_function_or_method'",
    }
    for name, text in where.items():
        kind, msg, exists = out[name]
        assert kind == "unarchivable", (name, out[name])
        assert text in msg and str(path) in msg, (name, msg)
        assert not exists, name
    # An archive already there is left alone.
    run_py(interp, "import pycds, sys; pycds.dump_data(sys.argv[1], [1])",
           path)
    before = path.read_bytes()
    out, _ = run_json(interp, REFUSE, path)
    assert path.read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


PROBE = PRELUDE + r"""
path = sys.argv[1]
try:
    data = pycds.load_data(path, trust_any='trust_any' in sys.argv,
                           verify='verify' in sys.argv)
    same(data, frozen(sample()))
    emit({'state': 'loaded', 'image': in_image(data)})
except pycds.ArchiveError as e:
    emit({'state': 'refused', 'kind': e.kind, 'msg': str(e)})
except AssertionError as e:
    emit({'state': 'different', 'msg': str(e)})
"""


@pytest.fixture
def sample_archive(interp, tmp_path):
    path = tmp_path / "sample.data"
    run_py(interp, PRELUDE + "pycds.dump_data(sys.argv[1], sample())", path)
    return path


# The sample's big bytes object, to be damaged where it lies.
PATTERN = bytes(range(256)) * 2


def _flip(path, section):
    """Flips a byte of the sample's big bytes object in the section."""
    data = bytearray(path.read_bytes())
    s = elf.section(bytes(data), section)
    at = data.index(PATTERN, s.offset, s.offset + s.size) + 1000
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


def test_damaged_image_is_relocated(interp, sample_archive):
    """A flipped byte in the image's data, load_data(verify=True): one
    warning, and the data relocated from the archive, every object
    checked.  Without verify the image's bytes are trusted as mapped (not
    hashed: opening costs O(1)): the flipped byte is what the data holds,
    and `verify` finds it."""
    _flip(sample_archive, ".pycds.prelinked")
    out, cp = run_json(interp, PROBE, sample_archive, "verify")
    assert out == {"state": "loaded", "image": False}, out
    assert cp.stderr.count("pycds: warning:") == 1, cp.stderr
    assert "checksum mismatch" in cp.stderr, cp.stderr
    out, cp = run_json(interp, PROBE, sample_archive)
    assert out["state"] == "different" and "obj['bytes'][3]" in out["msg"]
    # PYCDSCHECK=1: relocated, every object checked, the image unused.
    out, cp = run_json(interp, PROBE, sample_archive,
                       env={"PYCDSCHECK": "1"})
    assert out == {"state": "loaded", "image": False}, out
    assert "warning" not in cp.stderr, cp.stderr
    out, _ = run_json(interp, "import sys, pycds; "
                      "emit(pycds.verify_archive(sys.argv[1]))",
                      sample_archive)
    assert any("checksum mismatch" in p for p in out), out


def test_damaged_truncated_foreign_refused(interp, interpreters, tmp_path,
                                           sample_archive):
    """A damaged heap (image damaged too), a truncated file, another
    interpreter's archive, a file others may write, a missing one: all
    ArchiveError naming the file, never a crash."""
    data = sample_archive.read_bytes()
    both = tmp_path / "both.data"
    shutil.copy(sample_archive, both)
    _flip(both, ".pycds.heap")
    _flip(both, ".pycds.prelinked")
    truncated = tmp_path / "truncated.data"
    truncated.write_bytes(data[:len(data) // 2])
    garbage = tmp_path / "garbage.data"
    garbage.write_bytes(b"\x7fELF" + b"\x00" * 5000)
    for path, kind, text in [
            (both, "unusable", "checksum mismatch"),
            (truncated, "unusable", ""),
            (garbage, "unusable", ""),
            (tmp_path / "missing.data", "missing", "")]:
        out, cp = run_json(interp, PROBE, path, "verify")
        assert out["state"] == "refused", (path, out)
        assert out["kind"] == kind and str(path) in out["msg"], out
        assert text in out["msg"], out
    untrusted = tmp_path / "untrusted.data"
    shutil.copy(sample_archive, untrusted)
    os.chmod(untrusted, 0o666)
    out, _ = run_json(interp, PROBE, untrusted)
    assert out["state"] == "refused" and out["kind"] == "untrusted", out
    out, _ = run_json(interp, PROBE, untrusted, "trust_any", "verify")
    assert out["state"] == "loaded", out
    others = [i for i in interpreters if i.version != interp.version]
    if not others:
        pytest.skip("one interpreter version only")
    out, _ = run_json(others[0], PROBE, sample_archive)
    assert out["state"] == "refused" and out["kind"] == "foreign", out


def test_code_and_data_archives_kept_apart(interp, tmp_path,
                                           sample_archive):
    """load_data refuses a code archive; a data archive serves no code:
    load_code refuses its entry, SHARE imports normally."""
    code = tmp_path / "code.img"
    out, cp = run_json(interp, r"""
import sys, pycds
pycds.dump_code(sys.argv[1], {'m': compile('x = 1', 'm.py', 'exec')})
res = {}
try:
    pycds.load_data(sys.argv[1])
except pycds.ArchiveError as e:
    res['load_data'] = str(e)
m = pycds.load_code(sys.argv[2])
try:
    m['<data>']
except pycds.ArchiveError as e:
    res['load_code'] = str(e)
res['share'] = pycds.share(sys.argv[2])
import json
res['served'] = pycds.stats()['served']
emit(res)
""", code, sample_archive)
    assert "not a data archive: it holds code" in out["load_data"], out
    assert "holds data, not code" in out["load_code"], out
    assert out["served"] == 0, out


def test_info_and_verify(interp, sample_archive):
    """`pycds-dump info` says an archive holds data; verify checks it."""
    cp = run_py(interp, "import sys; from pycds.cli import main; "
                "sys.exit(main(sys.argv[1:]))", "info", sample_archive)
    assert "contents:       data" in cp.stdout, cp.stdout
    assert "used in place by load_data" in cp.stdout, cp.stdout
    cp = run_py(interp, "import sys; from pycds.cli import main; "
                "sys.exit(main(sys.argv[1:]))", "verify", sample_archive)
    assert "ok: checksums match" in cp.stdout, cp.stdout
    out, _ = run_json(interp, "import sys, pycds; "
                      "emit(pycds.inspect_archive(sys.argv[1]))",
                      sample_archive)
    assert out["contents"] == "data" and out["entries"][0]["data"], out


SUBINTERPRETERS = PRELUDE + r"""
path = sys.argv[1]
data = pycds.load_data(path)
try:
    import _interpreters as interpreters          # 3.13
    interp = interpreters.create('legacy')
    run = lambda code: interpreters.run_string(interp, code)
except ImportError:
    import _xxsubinterpreters as interpreters     # 3.12
    interp = interpreters.create(isolated=False)
    run = lambda code: interpreters.run_string(interp, code)
r, w = __import__('os').pipe()
run('''
import os, pycds
d = pycds.load_data(%r)
assert d['str'][3] == 'caf\\u00e9' and d[('tuple', 'key')] == 'value'
os.write(%d, b'%%d %%d' %% (id(d), id(d['dicts'][1])))
''' % (str(path), w))
sub = [int(x) for x in __import__('os').read(r, 100).split()]
interpreters.destroy(interp)
emit({'same': sub == [id(data), id(data['dicts'][1])],
      'image': in_image(data)})
"""


def test_subinterpreters_share_the_objects(interp, sample_archive):
    """A subinterpreter (3.12+, sharing the main one's GIL) that loads
    the same file gets the very objects the main one has."""
    if interp.hexversion < 0x030C0000:
        pytest.skip("subinterpreters from Python: 3.12+")
    out, _ = run_json(interp, SUBINTERPRETERS, sample_archive)
    assert out == {"same": True, "image": True}, out


LAZY = r"""
import sys, pycds
path = sys.argv[1]
if sys.argv[2] == 'dump':
    pycds.dump_data(path, [bytes([i]) * 100000 for i in range(200)])
    emit(None)
    sys.exit(0)
with open(sys.executable, 'rb') as f:
    exec_type = f.read(18)[16]
# Nothing of the image is written at load where libpython does not move:
# an ET_EXEC executable with libpython linked in.
fixed = exec_type == 2 and 'libpython' not in open('/proc/self/maps').read()
data = pycds.load_data(path)
first = data[150][:3]

def image_rss():
    rss, in_image = 0, False
    for line in open('/proc/self/smaps'):
        if '-' in line.split()[0] and ':' not in line.split()[0]:
            lo = int(line.split('-')[0], 16)
            in_image = 0x200000000000 <= lo < 0x400000000000
        elif in_image and line.startswith('Rss:'):
            rss += int(line.split()[1]) * 1024
    return rss
in_image = [0x200000000000 <= id(o) < 0x400000000000
            for o in (data, data[150])]
emit({'fixed': fixed, 'rss': image_rss(), 'first': list(first),
      'in_image': in_image})
"""


def test_load_is_lazy(interp, tmp_path):
    """Opening reads no page of the data: 20 MB of bytes, one used, a few
    pages resident (where libpython does not move: a PIE interpreter
    writes every object's ob_type at load)."""
    path = tmp_path / "lazy.data"
    run_json(interp, LAZY, path, "dump")
    out, _ = run_json(interp, LAZY, path, "load")
    assert out["first"] == [150] * 3
    # The objects are the image's, not copies (nothing of data is run once).
    assert out["in_image"] == [True, True], out
    if out["fixed"]:
        assert out["rss"] < 1 << 20, out
    else:
        assert out["rss"] > 20 * 10**6, out
