"""SHARE behaves as normal import where programs can look: specs and
loaders.

- A served module's ``__spec__`` compares equal to the spec ``PathFinder``
  builds for it, its loader is of importlib's exact type with the
  ``__dict__`` normal import gives it, and ``pydoc.importfile`` of it
  (which compares the two specs in CPython's own tests) works; the code
  that runs is still the archive's.
"""

import json

import pytest

from pipeline_fixtures import Pipeline, run, venv, write

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

@pytest.fixture
def tree(venv, tmp_path):
    """A/{mod,legacy(.pyc only),pkg/{__init__,sub}}, traced and dumped."""
    t = tmp_path / "tree"
    write(t / "A" / "mod.py", "WHO = 'mod'\n")
    write(t / "A" / "pkg" / "__init__.py", "WHO = 'pkg'\n")
    write(t / "A" / "pkg" / "sub.py", "WHO = 'sub'\n")
    src = write(tmp_path / "legacy.py", "WHO = 'legacy'\n")
    run(venv, ["-c", "import py_compile, sys; py_compile.compile("
               "sys.argv[1], cfile=sys.argv[2], doraise=True)",
               src, t / "A" / "legacy.pyc"], cwd=tmp_path, check=True)
    write(t / "S" / "specs.py", SPECS)
    env = {"PYTHONPATH": t / "A"}
    p = Pipeline(venv, ["specs.py"], t / "S", tmp_path, env=env)
    p.trace()
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
