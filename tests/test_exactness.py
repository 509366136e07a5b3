"""SHARE behaves as normal import where programs can look: specs, loaders
and path hooks.

- A served module's ``__spec__`` compares equal to the spec ``PathFinder``
  builds for it, its loader is of importlib's exact type with the
  ``__dict__`` normal import gives it, and ``pydoc.importfile`` of it
  (which compares the two specs in CPython's own tests) works; the code
  that runs is still the archive's.
- ``sys.path_hooks`` installed at run time and ``sys.path_importer_cache``
  entries a program sets are consulted exactly as ``PathFinder`` consults
  them: a hook that takes a directory gets its modules, one that declines
  leaves them to pycds.
"""

import json

import pytest

from pipeline_fixtures import Pipeline, assert_same_run, run, venv, write

SERVED = ["mod", "pkg", "pkg.sub", "legacy", "json.decoder"]

SPECS = """
import json, os, sys
import pydoc
from importlib.machinery import PathFinder
import mod, pkg.sub, legacy, json.decoder
try:
    from pycds import served_code
except ImportError:
    served_code = lambda loader: None
out = {}
for name in NAMES:
    m = sys.modules[name]
    parent = name.rpartition(".")[0]
    normal = PathFinder.find_spec(
        name, sys.modules[parent].__path__ if parent else None)
    spec, loader = m.__spec__, m.__spec__.loader
    out[name] = {
        "spec_eq": spec == normal and normal == spec,
        "loader_eq": loader == normal.loader and normal.loader == loader,
        "hash_eq": hash(loader) == hash(normal.loader),
        "exact_type": type(loader) is type(normal.loader),
        "type": type(loader).__name__,
        "vars_eq": vars(loader) == vars(normal.loader),
        "vars": sorted(vars(loader)),
        "same_code": loader.get_code(name) == normal.loader.get_code(name),
        "module_loader": m.__loader__ is loader,
        "served": served_code(loader) is not None,
    }
loaded = pydoc.importfile(mod.__file__)
out["importfile"] = {"spec_eq": loaded.__spec__ == mod.__spec__,
                     "new_module": loaded is not mod, "WHO": loaded.WHO,
                     "file": loaded.__file__ == mod.__file__}
print(json.dumps(out, sort_keys=True))
""".replace("NAMES", repr(SERVED))

HOOKS = """
import importlib.util, os, sys
H = os.environ["HOOKDIR"]
calls = []

class HookLoader:
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        module.WHO = "hook"

class HookFinder:
    def __init__(self, path):
        self.path = path
    def find_spec(self, fullname, target=None):
        calls.append(("find_spec", fullname))
        if fullname != "hooked":
            return None
        return importlib.util.spec_from_loader(fullname, HookLoader())
    def invalidate_caches(self):
        pass

def hook(path):
    calls.append(("hook", os.path.basename(path)))
    if os.environ["HOOK"] == "take" and path == H:
        return HookFinder(path)
    raise ImportError("not mine")

if os.environ.get("HOOK") in ("take", "decline"):
    sys.path_hooks.insert(0, hook)
elif os.environ.get("HOOK") == "cache":
    # A program (or a tool) may set a directory's finder directly.
    sys.path_importer_cache[H] = HookFinder(H)
sys.path.insert(0, H)
import hooked
if hooked.WHO == "file":
    import hooked.sub
    print(hooked.WHO, hooked.sub.WHO, calls)
else:
    print(hooked.WHO, calls)
print(type(sys.path_importer_cache.get(H)).__name__)
"""


BROKEN = """
import os, sys, tempfile
d = tempfile.mkdtemp()
with open(os.path.join(d, "broken.py"), "w") as f:
    f.write("def (:\\n")
sys.path.insert(0, d)
try:
    import broken
except SyntaxError as e:
    files, tb = [], e.__traceback__
    while tb:
        name = tb.tb_frame.f_code.co_filename
        if not files or files[-1] != name:
            files.append(name)
        tb = tb.tb_next
    print([os.path.basename(f) for f in files])
"""


@pytest.fixture
def tree(venv, tmp_path):
    """A/{mod,legacy(.pyc only),pkg/{__init__,sub}}, H/hooked/{__init__,sub}
    (put on sys.path by the program), traced without hooks and dumped."""
    t = tmp_path / "tree"
    write(t / "A" / "mod.py", "WHO = 'mod'\n")
    write(t / "A" / "pkg" / "__init__.py", "WHO = 'pkg'\n")
    write(t / "A" / "pkg" / "sub.py", "WHO = 'sub'\n")
    src = write(tmp_path / "legacy.py", "WHO = 'legacy'\n")
    run(venv, ["-c", "import py_compile, sys; py_compile.compile("
               "sys.argv[1], cfile=sys.argv[2], doraise=True)",
               src, t / "A" / "legacy.pyc"], cwd=tmp_path, check=True)
    write(t / "H" / "hooked" / "__init__.py", "WHO = 'file'\n")
    write(t / "H" / "hooked" / "sub.py", "WHO = 'file sub'\n")
    write(t / "S" / "specs.py", SPECS)
    write(t / "S" / "hooks.py", HOOKS)
    write(t / "S" / "broken.py", BROKEN)
    env = {"PYTHONPATH": t / "A", "HOOKDIR": t / "H"}
    p = Pipeline(venv, ["specs.py"], t / "S", tmp_path, env=env)
    p.trace()
    p.trace(["hooks.py"])
    p.dump()
    return p


def test_served_spec_equals_normal_spec(tree):
    base = tree.baseline(check=True)
    share = tree.share(check=True)
    served = share.verbose.served_set
    assert set(SERVED) <= served, share.describe()
    out = json.loads(share.stdout)
    normal = json.loads(base.stdout)
    for name in SERVED:
        assert not normal[name].pop("served"), base.describe()
        assert normal[name] == {k: v for k, v in out[name].items()
                                if k != "served"}, (name, share.describe())
    for name in SERVED:
        got = out[name]
        assert got["served"], (name, got)
        assert got == {**got, "spec_eq": True, "loader_eq": True,
                       "hash_eq": True, "exact_type": True, "vars_eq": True,
                       "vars": ["name", "path"], "same_code": True,
                       "module_loader": True}, (name, got)
    assert out["legacy"]["type"] == "SourcelessFileLoader"
    assert out["mod"]["type"] == "SourceFileLoader"
    assert out["importfile"] == {"spec_eq": True, "new_module": True,
                                 "WHO": "mod", "file": True}


def test_import_traceback_shows_only_the_importer(tree):
    """importlib trims its own frames from the traceback of a module that
    does not compile; pycds's get_code must not show either."""
    base = tree.baseline(["broken.py"], check=True)
    share = tree.share(["broken.py"], check=True)
    assert_same_run(base, share)
    assert share.stdout == "['broken.py']\n", share.describe()


@pytest.mark.parametrize("hook", ["take", "cache"])
def test_path_entry_finder_of_the_program_gets_its_modules(tree, hook):
    argv = ["hooks.py"]
    base = tree.baseline(argv, env={"HOOK": hook}, check=True)
    share = tree.share(argv, env={"HOOK": hook}, check=True)
    assert_same_run(base, share)
    assert share.stdout.startswith("hook [("), share.describe()
    assert "hooked" not in share.verbose.served_set, share.describe()
    assert "hooked" in share.verbose.refused, share.describe()


def test_declining_path_hook_is_called_and_pycds_serves(tree):
    argv = ["hooks.py"]
    base = tree.baseline(argv, env={"HOOK": "decline"}, check=True)
    share = tree.share(argv, env={"HOOK": "decline"}, check=True)
    assert_same_run(base, share)
    assert share.stdout.startswith("file file sub [('hook', 'H')"), \
        share.describe()
    assert share.stdout.endswith("\nFileFinder\n"), share.describe()
    assert {"hooked", "hooked.sub"} <= share.verbose.served_set, \
        share.describe()


def test_entries_no_hook_takes_are_skipped(tree, tmp_path):
    """PathFinder skips a search path entry every hook declines (a plain
    file, a missing directory): it shadows nothing and pycds serves what
    comes after it."""
    plain = write(tmp_path / "plain-file", "not a directory\n")
    path = f"{plain}:{tmp_path / 'missing'}:{tree.env['PYTHONPATH']}"
    base = tree.baseline(env={"PYTHONPATH": path}, check=True)
    share = tree.share(env={"PYTHONPATH": path}, check=True)
    assert json.loads(share.stdout)["mod"]["spec_eq"], share.describe()
    assert {"mod", "pkg", "legacy"} <= share.verbose.served_set, \
        share.describe()
    assert json.loads(base.stdout)["mod"]["spec_eq"], base.describe()
