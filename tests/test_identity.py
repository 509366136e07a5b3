"""Identity that CPython relies on survives the archive: singletons are the
runtime's own objects, identifier strings are interned and shared with the
runtime's equal interned strings."""

import pytest

from conftest import run_json

IDENTITY_SOURCE = r'''
SMALL = (-5, -4, -1, 0, 1, 2, 7, 100, 255, 256)
NOT_SMALL = (-6, 257, 1000)
EMPTY = ()
NESTED_EMPTY = ((), ((),), (1, ()))
CHARS = ('a', 'z', '\x00', '\x7f', '\x80', '\xe9', '\xff', ' ', '!')
EMPTY_STR = ''
EMPTY_BYTES = b''
ONE_BYTES = (b'\x00', b'a', b'\xff')
SINGLETONS = (None, True, False, ...)
SPACED = 'hello world!'
def f(x):
    x.append(1)                 # 'append' is interned by the runtime already
    return x.path, x.pycds_unique_attribute_name_7f3a
def g(pycds_unique_local_9c1e, path):
    return pycds_unique_local_9c1e + path
def h():
    return 5 in {-5, 0, 1, 256, 'q', ''}
'''

IDENTITY_CHECK = r"""
import sys, types, pycds
# Interned strings that exist in the runtime before the archive is loaded;
# build the lookup keys from pieces so that they are fresh objects.
pre_append = sys.intern(''.join(['app', 'end']))
pre_path = sys.intern(''.join(['pa', 'th']))
pre_x = sys.intern(''.join(['x']))
m = pycds.load_code(sys.argv[1])
co = m['ident']
ns = {}
exec(co, ns)
errors = []
def check(cond, what):
    if not cond:
        errors.append(what)

def fresh(s):
    # a new str object equal to s (unless s is a runtime singleton)
    return (s + '\x00')[:-1]

def is_interned(s):
    return sys.intern(fresh(s)) is s

one_bytes = b'\x00\x01\x02' + bytes(range(256))
def runtime_char(c):
    # the runtime's own object for a one-character latin-1 str: chr()'s
    # singleton, or (3.11, identifier-like) the interned copy compile() uses
    n = ord(c)
    return (chr(n), sys.intern(chr(n)))

def walk(x, y, where):
    # x: loaded, y: the same constant compiled in this process
    t = type(x)
    if t is not type(y):
        errors.append(f'{where}: type {t.__name__} != {type(y).__name__}')
        return
    if t is tuple or t is frozenset:
        if t is tuple and len(x) == 0:
            check(x is tuple(), f'{where}: empty tuple is not the runtime ()')
        if t is frozenset:
            x = sorted(x, key=repr); y = sorted(y, key=repr)
        for i, (e, f) in enumerate(zip(x, y)):
            walk(e, f, f'{where}[{i}]')
    elif t is int:
        if -5 <= x <= 256:
            check(x is x + 0, f'{where}: small int {x} is not the runtime one')
            check(x is y, f'{where}: small int {x} is not the compiled one')
    elif t is str:
        if len(x) == 1 and ord(x) < 256:
            check(any(x is r for r in runtime_char(x)),
                  f'{where}: {x!r} is not the runtime chr() or interned char')
            check(x is y, f'{where}: {x!r} is not what compile() gives')
        if x == '':
            check(x is str(), f"{where}: '' is not the runtime ''")
    elif t is bytes:
        if x == b'':
            check(x is bytes(), f"{where}: b'' is not the runtime b''")
        if len(x) == 1:
            rt = one_bytes[3 + x[0]:4 + x[0]]
            check(x is rt, f'{where}: {x!r} is not the runtime one-byte bytes')
    elif t is types.CodeType:
        for i, (c, d) in enumerate(zip(x.co_consts, y.co_consts)):
            walk(c, d, f'{where}.co_consts[{i}]')
        for attr in ('co_names', 'co_varnames', 'co_cellvars', 'co_freevars'):
            for i, (s, u) in enumerate(zip(getattr(x, attr), getattr(y, attr))):
                check(type(s) is str and is_interned(s),
                      f'{where}.{attr}[{i}]: {s!r} is not interned')
                check(s is u, f'{where}.{attr}[{i}]: {s!r} is not the '
                              'object compile() gives')
        for attr in ('co_name', 'co_qualname'):
            s = getattr(x, attr)
            if s.isidentifier() and len(s) > 1:
                check(is_interned(s), f'{where}.{attr}: {s!r} is not interned')
        if len(x.co_names) == 0:
            check(x.co_names is tuple(), f'{where}.co_names: () not the runtime ()')
    elif x is None or x is True or x is False or x is Ellipsis:
        check(x is y, f'{where}: {x!r}')
    elif t in (type(None), bool, type(Ellipsis)):
        errors.append(f'{where}: a copy of {x!r}, not the singleton')
walk(co, compile(sys.argv[2], '<ident>', 'exec'), 'ident')

check(ns['SMALL'] == (-5, -4, -1, 0, 1, 2, 7, 100, 255, 256), 'SMALL value')
for i, x in enumerate(ns['SMALL']):
    check(x is x + 0, f'SMALL[{i}] = {x} is not the runtime small int')
    check(x is int(str(x)), f'SMALL[{i}] = {x}: int(str(x)) differs')
check(ns['NOT_SMALL'] == (-6, 257, 1000), 'NOT_SMALL value')
check(ns['EMPTY'] is tuple(), 'EMPTY is not the runtime ()')
check(ns['NESTED_EMPTY'][0] is tuple(), 'NESTED_EMPTY[0]')
check(ns['NESTED_EMPTY'][1][0] is tuple(), 'NESTED_EMPTY[1][0]')
check(ns['NESTED_EMPTY'][2][1] is tuple(), 'NESTED_EMPTY[2][1]')
for i, c in enumerate(ns['CHARS']):
    check(any(c is r for r in runtime_char(c)),
          f'CHARS[{i}] = {c!r} is neither chr({ord(c)}) nor its interned copy')
check(ns['EMPTY_STR'] is str() and ns['EMPTY_STR'] is ''.join([]), "''")
check(ns['EMPTY_BYTES'] is bytes(), "b''")
for s in ('SINGLETONS',):
    v = ns[s]
    check(v[0] is None and v[1] is True and v[2] is False and v[3] is Ellipsis,
          'None/True/False/Ellipsis are not the singletons')
check(ns['SPACED'] == 'hello world!' and type(ns['SPACED']) is str, 'SPACED')

# Names that the runtime had interned before the load are the same objects.
f_names = ns['f'].__code__.co_names
append = [n for n in f_names if n == 'append'][0]
path = [n for n in f_names if n == 'path'][0]
check(append is pre_append, "'append' in co_names is not the runtime's")
check(path is pre_path, "'path' in co_names is not the runtime's")
check(append is list.append.__name__, "'append' is not list.append.__name__")
g_vars = ns['g'].__code__.co_varnames
check([v for v in g_vars if v == 'path'][0] is pre_path,
      "'path' in co_varnames is not the runtime's")
check([v for v in ns['h'].__code__.co_consts if v == 5][0] is 5 + 0, '5')
# Names that are new: interned, and what the runtime interns later is them.
uniq = [n for n in f_names if n.startswith('pycds_unique_attribute')][0]
check(sys.intern(fresh(uniq)) is uniq, 'unique attribute name not interned')
uniq_local = [v for v in g_vars if v.startswith('pycds_unique_local')][0]
check(sys.intern(fresh(uniq_local)) is uniq_local, 'unique local not interned')
# Code compiled now shares the archived interned strings.
co2 = compile('def f(x):\n    x.append(1)\n    return x.path, '
              'x.pycds_unique_attribute_name_7f3a\n', '<now>', 'exec')
f2 = [c for c in co2.co_consts if type(c) is types.CodeType][0]
for n in f2.co_names:
    other = [k for k in f_names if k == n][0]
    check(n is other, f'{n!r} compiled now is not the archived object')
# Attribute access through the archived names works (dict lookups by
# identity-then-hash of interned keys).
class X:
    path = 'P'
    pycds_unique_attribute_name_7f3a = 'U'
    def append(self, v):
        pass
check(ns['f'](X()) == ('P', 'U'), 'attribute lookups')
check(ns['g'](1, 2) == 3 and ns['g'](pycds_unique_local_9c1e=1, path=2) == 3,
      'keyword arguments by archived names')
check(ns['h']() is False, 'h()')
emit(errors)
"""

INTERN_DUMP = r"""
import sys, pycds
pycds.dump_code(sys.argv[1], {'ident': compile(sys.argv[2], '<ident>', 'exec')})
emit('ok')
"""


@pytest.mark.parametrize("seeds", [(1, 2), (7, 7)], ids=["seed1-2", "seed7-7"])
def test_identity(interp, tmp_path, seeds):
    path = tmp_path / "ident.img"
    run_json(interp, INTERN_DUMP, path, IDENTITY_SOURCE,
             env={"PYTHONHASHSEED": seeds[0]})
    errors, _ = run_json(interp, IDENTITY_CHECK, path, IDENTITY_SOURCE,
                         env={"PYTHONHASHSEED": seeds[1]})
    assert errors == [], "\n".join(errors)


CORPUS_INTERNED = r"""
import sys, types, pycds, objcorpus, codecompare
m = pycds.load_code(sys.argv[1])
compiled = objcorpus.build_codes()
errors = []
def fresh(s):
    return (s + '\x00')[:-1]
def strings(co):
    for attr in ('co_names', 'co_varnames', 'co_cellvars', 'co_freevars'):
        for i, s in enumerate(getattr(co, attr)):
            yield f'{attr}[{i}]', s
    for attr in ('co_name', 'co_qualname', 'co_filename'):
        yield attr, getattr(co, attr)
    def walk(x, w):
        if type(x) is str:
            yield w, x
        elif type(x) is tuple:
            for i, e in enumerate(x):
                yield from walk(e, f'{w}[{i}]')
    for i, c in enumerate(co.co_consts):
        yield from walk(c, f'co_consts[{i}]')
checked = 0
for name, orig in compiled.items():
    loaded = m[name]
    pairs = list(zip(codecompare.iter_code(loaded), codecompare.iter_code(orig)))
    for (sub, lc), (_, oc) in pairs:
        for (w, ls), (_, os_) in zip(strings(lc), strings(oc)):
            if len(os_) <= 1:
                continue
            # interned in the compiled original <=> interned in the archive;
            # both interned and equal => the very same object.
            if sys.intern(fresh(os_)) is os_:
                checked += 1
                if ls is not os_:
                    errors.append(f'{name}: {sub}.{w}: {ls!r} is not the '
                                  'interned object')
emit({'errors': errors[:50], 'checked': checked})
"""


def test_interned_strings_match_compiled(interp, corpus_archive):
    """Every string that compile() interned is, in the loaded code, the very
    same interned object (co_names, co_varnames, names, constants)."""
    res, _ = run_json(interp, CORPUS_INTERNED, corpus_archive,
                      env={"PYTHONHASHSEED": "11"})
    assert res["errors"] == [], "\n".join(res["errors"])
    assert res["checked"] > 1000


STDLIB_SINGLETONS = r"""
import os, sys, types, warnings, pycds
warnings.simplefilter('ignore')
m = pycds.load_code(sys.argv[1])
root = sys.argv[2]
errors, n = [], 0
def walk(x, y, where):
    global n
    t = type(x)
    if t is not type(y):
        errors.append(f'{where}: type {t.__name__} != {type(y).__name__}')
    elif t is int and -5 <= x <= 256:
        n += 1
        if x is not x + 0 or x is not y:
            errors.append(f'{where}: small int {x}')
    elif t is str and len(x) <= 1 and (not x or ord(x) < 256):
        n += 1
        if x is not y:
            errors.append(f'{where}: {x!r} is not what compile() gives')
        elif x and ord(x) < 256 and not (x is chr(ord(x))
                                         or x is sys.intern(chr(ord(x)))):
            errors.append(f'{where}: {x!r} not a runtime char')
    elif t is tuple:
        if not x and x is not tuple():
            errors.append(f'{where}: ()')
        for i, (e, f) in enumerate(zip(x, y)):
            walk(e, f, f'{where}[{i}]')
    elif t is frozenset:
        for i, (e, f) in enumerate(zip(sorted(x, key=repr), sorted(y, key=repr))):
            walk(e, f, f'{where}{{{i}}}')
    elif t is types.CodeType:
        for i, (c, d) in enumerate(zip(x.co_consts, y.co_consts)):
            walk(c, d, f'{where}.co_consts[{i}]')
        for attr in ('co_names', 'co_varnames', 'co_freevars', 'co_cellvars'):
            for i, (s, u) in enumerate(zip(getattr(x, attr), getattr(y, attr))):
                if s is not u:
                    errors.append(f'{where}.{attr}[{i}] {s!r} is not the '
                                  'interned object compile() gives')
    elif t in (type(None), bool, type(Ellipsis)):
        if x is not y:
            errors.append(f'{where}: copy of {x!r}')
for name in m:
    p = os.path.join(root, name)
    with open(p, 'rb') as f:
        compiled = compile(f.read(), p, 'exec', dont_inherit=True)
    walk(m[name], compiled, name)
    if len(errors) > 30:
        break
emit({'errors': errors, 'n': n})
"""


def test_stdlib_singletons(interp, stdlib_archive):
    res, _ = run_json(interp, STDLIB_SINGLETONS, stdlib_archive.path,
                      stdlib_archive.root, env={"PYTHONHASHSEED": "6"}, timeout=600)
    assert res["errors"] == [], "\n".join(res["errors"])
    assert res["n"] > 10000
