"""Archived code behaves like compiled code for the tools that look at it:
dis, inspect.getsource, tracebacks with source lines, sys.settrace line
events, sys.setprofile, specialisation after many calls."""

from conftest import run_json

SOURCE = '''\
import functools

def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)

def fails(x):
    y = x + 1
    return {}[y]          # KeyError here

class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def norm2(self):
        return self.x * self.x + self.y * self.y

@functools.lru_cache
def cached(n):
    return [i for i in range(n) if i % 3 == 0]

def loop(n):
    total = 0
    for i in range(n):
        if i % 2:
            total += i
        else:
            total -= 1
    return total
'''

BEHAVIOUR = r"""
import dis, inspect, io, sys, traceback, types, pycds, codecompare
path, archive = sys.argv[1], sys.argv[2]
m = pycds.load_code(archive)
with open(path) as f:
    compiled = compile(f.read(), path, 'exec')
codecompare.assert_code_equal(m['mod'], compiled, 'mod')

def module(co, name):
    mod = types.ModuleType(name)
    mod.__file__ = path
    sys.modules[name] = mod        # inspect finds a class through its module
    exec(co, mod.__dict__)
    return mod
A = module(m['mod'], 'archived')
B = module(compiled, 'compiled')
out = {}

def dis_text(f):
    s = io.StringIO()
    dis.dis(f, file=s)
    return s.getvalue()
out['dis'] = [dis_text(A.fib) == dis_text(B.fib),
              dis_text(A.Point) == dis_text(B.Point)]
# specialise, then dis with adaptive=True must still work, and the
# de-optimised bytecode (co_code) is unchanged
for _ in range(200):
    A.fib(8); A.loop(20); A.Point(1, 2).norm2()
out['co_code_after_calls'] = A.fib.__code__.co_code == B.fib.__code__.co_code
s = io.StringIO()
dis.dis(A.loop, file=s, adaptive=True)
out['adaptive_dis'] = 'loop' in s.getvalue() or 'FOR_ITER' in s.getvalue()

out['getsource'] = [inspect.getsource(A.fib) == inspect.getsource(B.fib),
                    inspect.getsource(A.Point) == inspect.getsource(B.Point),
                    inspect.getsourcelines(A.loop)[1] ==
                    inspect.getsourcelines(B.loop)[1]]

def tb(mod):
    try:
        mod.fails(1)
    except KeyError:
        return traceback.format_exc()
ta, tb_ = tb(A), tb(B)
out['traceback'] = [ta == tb_, 'return {}[y]' in ta, '~~^^^' in ta or '^' in ta]

def trace_lines(f, *args):
    events = []
    def tracer(frame, event, arg):
        if frame.f_code.co_name == f.__name__:
            events.append((event, frame.f_lineno))
        return tracer
    sys.settrace(tracer)
    try:
        f(*args)
    finally:
        sys.settrace(None)
    return events
out['settrace'] = [trace_lines(A.loop, 5) == trace_lines(B.loop, 5),
                   trace_lines(A.fib, 4) == trace_lines(B.fib, 4),
                   len(trace_lines(A.loop, 5)) > 10]

def profile(f, *args):
    calls = []
    def prof(frame, event, arg):
        if event == 'call':
            calls.append(frame.f_code.co_name)
    sys.setprofile(prof)
    try:
        f(*args)
    finally:
        sys.setprofile(None)
    return calls
out['setprofile'] = profile(A.fib, 5) == profile(B.fib, 5)
out['results'] = [A.fib(15) == B.fib(15) == 610,
                  A.cached(10) == B.cached(10),
                  A.loop(101) == B.loop(101),
                  A.Point(3, 4).norm2() == 25]
# after tracing, the code objects are still equal
codecompare.assert_code_equal(m['mod'], compiled, 'mod after tracing')
emit(out)
"""

DUMP = r"""
import sys, pycds
path = sys.argv[1]
with open(path) as f:
    co = compile(f.read(), path, 'exec')
pycds.dump_code(sys.argv[2], {'mod': co})
emit('ok')
"""


def test_tools_see_the_same_code(interp, tmp_path):
    src = tmp_path / "behaviour_mod.py"
    src.write_text(SOURCE)
    archive = tmp_path / "b.img"
    run_json(interp, DUMP, src, archive, env={"PYTHONHASHSEED": "21"})
    for flags in ([], ["-X", "dev"]):
        out, cp = run_json(interp, BEHAVIOUR, src, archive, flags=flags,
                           env={"PYTHONHASHSEED": "22"})
        bad = {k: v for k, v in out.items()
               if v is not True and (not isinstance(v, list) or not all(v))}
        assert not bad, f"{flags}: {bad}"
        assert cp.stderr == "", cp.stderr
