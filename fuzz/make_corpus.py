"""Write the fuzzer's seed corpus: small real archives (each < 50 KB).

Run by `make fuzz-corpus` under pyenv 3.11.7 with the built extension on
PYTHONPATH: pycds.dump_code(path, {name: code}) of short sources that
between them hold every kind of object an archive carries (code with cell
and free variables, str of each kind, interned or not, bytes, small and
big ints, floats, complex, tuples, nested tuples, frozensets) and of a few
small stdlib modules; and data archives (pycds.dump_data) holding every
type they carry, FrozenDicts among them.  The archives are only usable by the interpreter
that wrote them (ABI key): the fuzzer links the same libpython.
"""
import os
import sys
import sysconfig

import pycds

SNIPPETS = {
    "empty": "",
    "names": "import os\nx = os.sep\ny = x + 'abc'\n",
    "strs": "A = 'ascii'\nB = 'caf\\xe9'\nC = '\\u20ac uro'\nD = '\\U0001d11e x'\n"
            "E = '\\ud800 lone'\nF = 'x' * 3\n",
    "ints": "I = (0, 1, -5, 256, 257, -6, 2**30, 2**31 - 1, -2**62, 2**100,"
            " -10**40)\n",
    "floats": "F = (0.0, -0.0, 1.5, 1e300, float('inf'))\nC = (1j, -0.0-0j,"
              " 2.5+3j)\n",
    "bytes": "B = (b'', b'a', b'\\x00\\xff', b'hello bytes', bytes(10))\n",
    "tuples": "T = ((), (1,), (1, (2, (3, ('x', b'y')))), (None, True, False,"
              " ...))\n",
    "sets": "def f(x):\n    return x in {1, 'a', 2.5, b'b', (1, 2), None}\n"
            "S = frozenset({frozenset({1, 2}), 'z'})\n",
    "closure": "def outer(a, b=2, *args, c, d=4, **kw):\n    e = a + b\n"
               "    def inner(f, /, g):\n        nonlocal e\n"
               "        e += f\n        return e + g + c\n    return inner\n",
    "classes": "class K:\n    '''doc'''\n    x = 1\n    def m(self):\n"
               "        return [i * self.x for i in range(3)]\n"
               "    async def a(self):\n        yield 1\n",
    "lambdas": "L = [lambda x: x + 1, lambda *a, **k: (a, k)]\n"
               "G = (i for i in range(3))\n",
    "excepts": "try:\n    pass\nexcept (ValueError, TypeError) as e:\n"
               "    raise\nfinally:\n    x = 1\n"
               "with open('f') as f, open('g') as g:\n    pass\n",
}

# Data archives (pycds.dump_data): every type, nested, edge values.
DATA = {
    "scalars": [None, True, False, 0, -5, 256, 257, 2**100, -10**40, 0.0,
                -0.0, float("inf"), float("nan"), 1j, 2.5 - 3j, "",
                "a", "caf\xe9", "\u20ac", "\U0001d11e", "\ud800", b"",
                b"\x00", b"bytes"],
    "dicts": {"a": 1, 2: "two", 2.5: None, (1, "x"): [1, 2],
              None: {"nested": {}}, b"k": frozenset({1, "s"}),
              frozenset({3}): {"deeper": {"x": ()}}},
    "nesting": [[[[[[{"k": [[["v"]]]}]]]]]],
    "sets": [set(), {1, 2, 3}, frozenset({"a", (1, 2), b"b"})],
}

STDLIB = ["this", "keyword", "colorsys", "bisect", "stat", "glob",
          "fnmatch", "genericpath", "numbers"]


def write(out, name, codes):
    path = os.path.join(out, name + ".img")
    pycds.dump_code(path, codes)
    size = os.path.getsize(path)
    if size > 50_000:
        os.unlink(path)
        print(f"skipped {name}: {size} bytes")
    else:
        print(f"{path}: {size} bytes, {len(codes)} entries")


def write_data(out, name, obj):
    path = os.path.join(out, name + ".data")
    pycds.dump_data(path, obj)
    print(f"{path}: {os.path.getsize(path)} bytes, data")


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, obj in DATA.items():
        write_data(out, "data-" + name, obj)
    for name, src in SNIPPETS.items():
        write(out, "snippet-" + name,
              {name: compile(src, f"<{name}>", "exec", dont_inherit=True)})
    write(out, "snippets-all",
          {n: compile(s, f"<{n}>", "exec", dont_inherit=True)
           for n, s in SNIPPETS.items()})
    root = sysconfig.get_paths()["stdlib"]
    for mod in STDLIB:
        p = os.path.join(root, mod + ".py")
        with open(p, "rb") as f:
            write(out, "stdlib-" + mod,
                  {mod: compile(f.read(), p, "exec", dont_inherit=True)})


if __name__ == "__main__":
    main()
