"""Code objects for the object-layer tests, built the same way in any process.

``build_codes()`` returns ``{name: code}``:

* ``tricky``: TRICKY_SOURCE compiled (every kind of constant, nested
  functions, classes, comprehensions, generators, async code; it defines
  ``results()`` whose return value depends on all of it);
* ``crafted``: code whose co_consts were set with code.replace() to things
  compile() never produces (frozenset inside a tuple, nested frozensets,
  nan/-nan/complex(-0.0, nan), deep tuples, interned and non-interned
  strings of every kind);
* a few stdlib modules (``json.decoder`` ...), compiled from their source.

Importable by the children (tests/ is on their PYTHONPATH) and by the parent.
"""

import os
import sys
import sysconfig

TRICKY_FILENAME = "<pycds-tricky>"

TRICKY_SOURCE = r'''
"""Module docstring with non-ASCII: é € 𝄞."""
import os, sys

NEG_ZERO = -0.0
POS_ZERO = 0.0
INF = 1e999
NEG_INF = -1e999
CPLX = -0.0 - 0j
CPLX2 = 1.5 + 2.5j
CPLX3 = -1e999j
INTS = (0, -1, 1, 256, 257, -5, -6, 2**30 - 1, 2**30, 2**31, 2**60, 2**63,
        -2**63, 2**64, 2**200, -2**200, 10**100, -10**100)
BIG = 2**200
NEG_BIG = -2**200
STRS = ('', 'a', 'é', 'ÿ', 'Ā', '€', '𝄞', '\ud800', 'a\udfffb', '\udc80\udc81',
        'hello world!', 'identifier_like', 'café', 'Āb€', '𝄞x\ud800',
        'a\x00b', '\x00', '\x7f', '\x80', '\xa0')
LONG_LATIN1 = 'é' * 1000 + 'x'
LONG_UCS2 = '€' * 1000 + 'y'
LONG_UCS4 = '𝄞' * 1000 + 'z'
LONG_ASCII = 'abcdefghij' * 500
LONG_SURR = ('\udc00' + 'q') * 300
BYTES = (b'', b'\x00', b'\xff', b'a', b'\x00\xff' * 3, bytes(range(256)))
LONG_BYTES = b'\x00\x01\xfe\xff' * 4000
NESTED = (1, (2.5, ('three', (b'four', (None, (True, (False, (Ellipsis, ())))))), ()))
EMPTY = ()
ONE = ((),)
SINGLETONS = (None, True, False, Ellipsis, ...)

café = 'non-ascii identifier'
Āname = 'ucs2 identifier'
变量 = 'cjk identifier'

def in_set(x):
    return x in {1, 'a', 2.5, b'b', (1, 2), -0.0, None, 'é', '𝄞',
                 1267650600228229401496703205376}

def not_in_set(x):
    return x not in {'alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta'}

def for_set():
    return sorted(repr(x) for x in {3, 1, 2, 'x', 'y'})

def defaults(a, b=-0.0, /, c=(1, ()), *args, d=frozenset(), e='€', **kw):
    return (a, b, c, args, d, e, sorted(kw.items()))

def closure(n):
    total = 0
    def add(k):
        nonlocal total
        total += k
        return total
    return add

def generator(n):
    for i in range(n):
        yield i * 2
    return 'done'

def gen_send():
    got = []
    x = yield 'start'
    while x is not None:
        got.append(x)
        x = yield len(got)
    return got

async def coro_inner(x):
    return x * 3

async def coro(x):
    a = await coro_inner(x)
    b = [await coro_inner(i) for i in range(3)]
    return a, b

async def agen(n):
    for i in range(n):
        yield i + 100

async def use_agen():
    return [x async for x in agen(3)]

def run_coro(c):
    try:
        c.send(None)
    except StopIteration as e:
        return e.value
    raise RuntimeError('coroutine suspended')

class Base:
    attr = 'class attribute'
    def __init__(self, v):
        self.v = v
    def method(self):
        return self.v + 1
    @property
    def prop(self):
        return ('prop', self.v)
    @staticmethod
    def stat(x):
        return -x
    @classmethod
    def cls(cls):
        return cls.__name__

class Derived(Base):
    def method(self):
        return super().method() * 10
    class Inner:
        def deep(self):
            return [lambda q: q + i for i in range(3)]

def comprehensions(n):
    lst = [i * i for i in range(n) if i % 2]
    st = {i % 3 for i in range(n)}
    dct = {str(i): i for i in range(n)}
    gen = sum(i for i in range(n))
    nested = [[j for j in range(i)] for i in range(4)]
    return lst, sorted(st), dct, gen, nested

def exceptions(x):
    out = []
    try:
        try:
            out.append(1 / x)
        except ZeroDivisionError as e:
            out.append(type(e).__name__)
            raise ValueError('wrapped') from e
        else:
            out.append('else')
        finally:
            out.append('finally')
    except ValueError as e:
        out.append(str(e))
    return out

def exc_group():
    try:
        raise ExceptionGroup('eg', [KeyError('k'), TypeError('t')])
    except* KeyError as e:
        k = len(e.exceptions)
    except* TypeError as e:
        t = len(e.exceptions)
    return k, t

def matcher(v):
    match v:
        case {'k': [1, 2, *rest]}:
            return ('dict', rest)
        case (1, 'a') | (2, 'b'):
            return 'tuple'
        case Base(v=3):
            return 'base3'
        case str() as s if len(s) > 2:
            return 'long str ' + s
        case -0.0:
            return 'zero'
        case _:
            return 'other'

def fstrings(x):
    return f'{x!r:>10}|{x:^5}|{"é"}{x=}'

def walrus(data):
    return [y for x in data if (y := x * 2) > 2]

def with_stmt():
    class CM:
        def __enter__(self):
            return 'entered'
        def __exit__(self, *a):
            return False
    with CM() as v:
        return v

def star(*a, **k):
    first, *middle, last = a
    return first, middle, last, k

def uses_names(x):
    # identifiers that the runtime has interned already
    lst = []
    lst.append(x)
    p = os.path.join('a', 'b')
    return lst, p, sys.maxsize > 0, len(lst)

def annotated(a: int, b: 'str' = 'x') -> tuple:
    return a, b

def deep_lambda():
    return (lambda a: (lambda b: (lambda c: a + b + c)))(1)(2)(3)

def results():
    c = closure(0)
    g = gen_send()
    g_out = [next(g), g.send('x'), g.send('y')]
    try:
        g.send(None)
    except StopIteration as e:
        g_out.append(e.value)
    d = Derived(4)
    return [
        NEG_ZERO, POS_ZERO, INF, NEG_INF, CPLX, CPLX2, CPLX3, INTS, BIG, NEG_BIG,
        STRS, len(LONG_LATIN1), LONG_UCS2[-3:], LONG_UCS4[-3:], len(LONG_ASCII),
        len(LONG_SURR), BYTES, len(LONG_BYTES), NESTED, EMPTY, ONE, SINGLETONS,
        café, Āname, 变量,
        [in_set(v) for v in (1, 'a', 2.5, b'b', (1, 2), 0.0, None, 'é', '𝄞',
                             2**100, 3, 'zz', b'', (1,))],
        [not_in_set(v) for v in ('alpha', 'omega')], for_set(),
        defaults(1), defaults(1, 2, 3, 4, 5, d=6, z=7),
        [c(1), c(2), c(3)], list(generator(4)), g_out,
        run_coro(coro(2)), run_coro(use_agen()),
        d.method(), d.prop, Derived.stat(5), Derived.cls(), Base.attr,
        [f(10) for f in Derived.Inner().deep()],
        comprehensions(7), exceptions(0), exceptions(2), exc_group(),
        [matcher(v) for v in ({'k': [1, 2, 3, 4]}, (1, 'a'), (2, 'b'), Base(3),
                              'abcd', 0.0, 'ab', 42)],
        fstrings(3.5), walrus([1, 2, 3]), with_stmt(), star(1, 2, 3, 4, k=5),
        uses_names('v'), annotated(1), annotated.__annotations__,
        deep_lambda(), __doc__,
    ]
'''

STDLIB_MODULES = ("json/decoder.py", "json/encoder.py", "textwrap.py",
                  "colorsys.py", "string.py", "dataclasses.py", "enum.py",
                  "ast.py")


def stdlib_root():
    return sysconfig.get_paths()["stdlib"]


def compile_tricky():
    return compile(TRICKY_SOURCE, TRICKY_FILENAME, "exec", dont_inherit=True)


def _leaf():
    def leaf():
        return 'leaf'
    return leaf.__code__


def crafted_code():
    """A code object whose constants compile() would never produce."""
    nan = float("nan")
    deep = ()
    for i in range(60):
        deep = (i, deep)
    uninterned = "".join(["not ", "an identifier"])        # not interned
    interned_odd = sys.intern("".join(["interned ", "with space"]))
    consts = (
        None,
        nan, -nan, float("inf"), -float("inf"), -0.0, 0.0,
        complex(-0.0, nan), complex(nan, -0.0), complex(-0.0, -0.0),
        complex(0.0, 0.0), complex(float("inf"), -float("inf")),
        (frozenset({1, 2, 3}), "x"),                         # frozenset in tuple
        frozenset({frozenset({1, "a"}), frozenset(), 2.5}),  # nested frozensets
        frozenset({(1, frozenset({"in", "side"})), "é", "𝄞", b"\xff"}),
        frozenset(),
        frozenset({-0.0}), frozenset({0.0}),
        frozenset(range(-5, 300)),
        frozenset("".join(["s", str(i)]) for i in range(40)),
        deep,
        ((((),),),),
        uninterned, interned_odd,
        "\ud800", "\udfff" * 5, "x\ud800y\U0010ffff",
        "\U0010ffff", "\uffff", "\u0100", "\xff", "\x00",
        b"\x00" * 3, bytes(range(256)) * 3,
        -(2**30), -(2**30) + 1, 2**30, 2**45, -(2**45), 2**90, 10**300,
        -(10**300),
        True, False, Ellipsis,
        _leaf(),
        (_leaf(), (_leaf(),)),
    )
    base = compile("pass", "<pycds-crafted>", "exec", dont_inherit=True)
    return base.replace(co_consts=consts)


def build_codes():
    codes = {"tricky": compile_tricky(), "crafted": crafted_code()}
    root = stdlib_root()
    for rel in STDLIB_MODULES:
        path = os.path.join(root, rel)
        with open(path, "rb") as f:
            src = f.read()
        name = rel[:-3].replace("/", ".")
        codes[name] = compile(src, path, "exec", dont_inherit=True)
    return codes
