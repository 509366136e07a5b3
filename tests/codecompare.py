"""Exact comparison of code objects, imported inside the child processes.

``assert_code_equal(a, b, path)`` compares two code objects attribute by
attribute, recursively through nested code objects, with constants compared
by exact type and value:

* float: by their IEEE bits (so -0.0 != 0.0, and nan == nan of the same bits)
* complex: each component by bits
* str/bytes: exact type, value, and hash (a stale cached hash from the
  dumping process would show up as a different hash here)
* tuple: element by element
* frozenset: exact type, same size, membership of every element (exercises
  the table built in this process) and pairwise after a canonical sort
* code: recursively
* None/True/False/Ellipsis: identity

Failures raise ``CodeMismatch`` (an AssertionError) saying where, e.g.
``json.decoder: co_consts[3].co_consts[1]: float bits differ: -0.0 != 0.0``.
"""

import struct
import types

__all__ = ["CodeMismatch", "assert_code_equal", "assert_const_equal",
           "code_equal_report", "iter_code", "const_key", "has_nan"]


class CodeMismatch(AssertionError):
    pass


# Every attribute that a code object of 3.11+ carries and that must match.
CODE_ATTRS = (
    "co_argcount", "co_posonlyargcount", "co_kwonlyargcount", "co_nlocals",
    "co_stacksize", "co_flags", "co_firstlineno", "co_code", "co_consts",
    "co_names", "co_varnames", "co_freevars", "co_cellvars", "co_filename",
    "co_name", "co_qualname", "co_linetable", "co_exceptiontable",
)

_TUPLE_ATTRS = ("co_names", "co_varnames", "co_freevars", "co_cellvars")
_STR_ATTRS = ("co_filename", "co_name", "co_qualname")


def _short(x, n=200):
    r = repr(x)
    return r if len(r) <= n else r[:n] + f"...<{len(r)} chars>"


def _where(path, sub):
    return f"{path}: {sub}" if sub else f"{path}"


def _fail(path, sub, msg):
    raise CodeMismatch(f"{_where(path, sub)}: {msg}")


def _join(sub, part):
    if not sub:
        return part
    if part.startswith("["):
        return sub + part
    return sub + "." + part


def _float_bits(x):
    return struct.pack("<d", x)


def has_nan(x):
    """True when x is or holds (in tuples, frozensets, complex, nested code
    constants) a nan: such constants are never == to a copy of themselves,
    so == on the containing tuple/code cannot hold between two copies."""
    t = type(x)
    if t is float:
        return x != x
    if t is complex:
        return x.real != x.real or x.imag != x.imag
    if t is tuple or t is frozenset:
        return any(has_nan(e) for e in x)
    if t is types.CodeType:
        return any(has_nan(e) for e in x.co_consts)
    return False


def const_key(x):
    """A canonical, totally ordered key of a constant (leaves are str)."""
    t = type(x)
    if t is float:
        return ("float", _float_bits(x).hex())
    if t is complex:
        return ("complex", _float_bits(x.real).hex() + _float_bits(x.imag).hex())
    if t is tuple:
        return ("tuple", tuple(const_key(e) for e in x))
    if t is frozenset:
        return ("frozenset", tuple(sorted(const_key(e) for e in x)))
    if t is types.CodeType:
        return ("code", repr((x.co_qualname, x.co_firstlineno, x.co_code)))
    return (t.__qualname__, repr(x))


def assert_const_equal(a, b, path, sub=""):
    ta, tb = type(a), type(b)
    if ta is not tb:
        _fail(path, sub, f"type {ta.__qualname__} != {tb.__qualname__}: "
                         f"{_short(a)} != {_short(b)}")
    if ta is float:
        if _float_bits(a) != _float_bits(b):
            _fail(path, sub, f"float bits differ: {a!r} != {b!r}")
    elif ta is complex:
        if (_float_bits(a.real) != _float_bits(b.real)
                or _float_bits(a.imag) != _float_bits(b.imag)):
            _fail(path, sub, f"complex bits differ: {a!r} != {b!r}")
    elif ta is int:
        if a != b:
            _fail(path, sub, f"int {_short(a)} != {_short(b)}")
        if hash(a) != hash(b):
            _fail(path, sub, f"hash of int {_short(a)} differs")
    elif ta is str or ta is bytes:
        if a != b:
            _fail(path, sub, f"{ta.__name__} {_short(a)} != {_short(b)}")
        if len(a) != len(b):
            _fail(path, sub, f"{ta.__name__} length {len(a)} != {len(b)}")
        if hash(a) != hash(b):
            _fail(path, sub, f"hash of {ta.__name__} {_short(a)} differs "
                             f"({hash(a)} != {hash(b)}): stale cached hash?")
    elif ta is tuple:
        if len(a) != len(b):
            _fail(path, sub, f"tuple length {len(a)} != {len(b)}: "
                             f"{_short(a)} != {_short(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            assert_const_equal(x, y, path, _join(sub, f"[{i}]"))
        if not has_nan(a) and a != b:
            _fail(path, sub, f"tuple {_short(a)} != {_short(b)}")
    elif ta is frozenset:
        if len(a) != len(b):
            _fail(path, sub, f"frozenset size {len(a)} != {len(b)}: "
                             f"{_short(a)} != {_short(b)}")
        for x in b:
            if has_nan(x):
                continue
            if x not in a:
                _fail(path, sub, f"{_short(x)} not in loaded frozenset "
                                 f"{_short(a)} (hash table wrong?)")
        for x in a:
            if has_nan(x):
                continue
            if x not in b:
                _fail(path, sub, f"{_short(x)} of loaded frozenset not in "
                                 f"{_short(b)}")
        sa = sorted(a, key=const_key)
        sb = sorted(b, key=const_key)
        for i, (x, y) in enumerate(zip(sa, sb)):
            assert_const_equal(x, y, path, _join(sub, f"{{sorted {i}}}"))
        if not has_nan(a) and (a != b or hash(a) != hash(b)):
            _fail(path, sub, f"frozenset {_short(a)} != {_short(b)}")
    elif ta is types.CodeType:
        _assert_code(a, b, path, sub)
    elif a is None or a is Ellipsis or ta is bool:
        if a is not b:
            _fail(path, sub, f"{_short(a)} is not {_short(b)}")
    else:
        if a != b:
            _fail(path, sub, f"{ta.__qualname__} {_short(a)} != {_short(b)}")


def _assert_code(a, b, path, sub):
    if type(a) is not types.CodeType or type(b) is not types.CodeType:
        _fail(path, sub, f"not both code objects: {type(a).__qualname__}, "
                         f"{type(b).__qualname__}")
    for attr in CODE_ATTRS:
        if not hasattr(b, attr):
            continue
        if not hasattr(a, attr):
            _fail(path, sub, f"{attr} missing on the loaded code object")
        x, y = getattr(a, attr), getattr(b, attr)
        here = _join(sub, attr)
        if attr == "co_consts" or attr in _TUPLE_ATTRS or attr in _STR_ATTRS:
            assert_const_equal(x, y, path, here)
        elif type(x) is not type(y) or x != y:
            _fail(path, here, f"{_short(x)} != {_short(y)}")
    for meth in ("co_lines", "co_positions"):
        if hasattr(b, meth):
            x, y = list(getattr(a, meth)()), list(getattr(b, meth)())
            if x != y:
                first = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q),
                             min(len(x), len(y)))
                _fail(path, _join(sub, meth + "()"),
                      f"differ at item {first} (lengths {len(x)}, {len(y)}): "
                      f"{x[first:first + 1]} != {y[first:first + 1]}")
    if has_nan(b):
        return      # nan != nan: == and hash cannot hold between copies
    if not (a == b):
        _fail(path, sub, "code objects compare unequal although every "
                         "attribute matched")
    if hash(a) != hash(b):
        _fail(path, sub, "hash of the code objects differs")


def assert_code_equal(a, b, path):
    """Assert that code objects ``a`` (e.g. loaded) and ``b`` (e.g. freshly
    compiled) are the same in every respect; ``path`` names the root in
    error messages (e.g. the module name)."""
    _assert_code(a, b, path, "")


def code_equal_report(a, b, path):
    """None when equal, else the mismatch message."""
    try:
        assert_code_equal(a, b, path)
    except CodeMismatch as e:
        return str(e)
    return None


def iter_code(co, sub=""):
    """Yield (sub-path, code) for ``co`` and every code object nested in its
    constants (also inside tuples and frozensets)."""
    yield sub, co

    def walk(x, s):
        if type(x) is types.CodeType:
            yield from iter_code(x, s)
        elif type(x) in (tuple, frozenset):
            for i, e in enumerate(sorted(x, key=const_key)
                                  if type(x) is frozenset else x):
                yield from walk(e, f"{s}[{i}]")

    for i, c in enumerate(co.co_consts):
        yield from walk(c, _join(sub, f"co_consts[{i}]"))
