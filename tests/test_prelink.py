"""Prelinked images (docs/IMPORT.md, "Prelinked images"): made by
`pycds-dump prelink` or a PYCDSMODE=PRELINK run, mapped by SHARE in
processes started with address randomisation off (setarch -R).

Covers: the fixture application served from the image with the output of
a normal run; every stdlib module's code from the image equal to what
compile() makes; the image left alone (with the archive serving) under
address randomisation, another hash seed, a rebuilt archive; damaged,
truncated or foreign images warned about once, the archive serving;
the trust rule; 3.11 refused with a reason.
"""

import json
import os
import subprocess
import time

import pytest

from conftest import child_env
from pipeline_fixtures import (FIXTURES, SETARCH, Pipeline, assert_same_run,
                               copy_tree, needs_setarch, run, run_fixed,
                               run_tool, venv)


def needs_312(v):
    if v.interp.hexversion < 0x030C0000:
        pytest.skip("prelinked images need CPython 3.12+")


# The fixture application, then what the first layer says about its image.
STATS_WRAPPER = ("import runpy, sys, json\n"
                 "sys.argv = ['app.py']\n"
                 "runpy.run_path('app.py', run_name='__main__')\n"
                 "import pycds\n"
                 "layers = pycds.layer_stats()\n"
                 "print('LAYER ' + json.dumps(layers[0] if layers else None),\n"
                 "      file=sys.stderr)\n"
                 "print('LAYERS ' + json.dumps(layers), file=sys.stderr)\n")


def layer_stats(cp):
    lines = [ln for ln in cp.stderr.splitlines() if ln.startswith("LAYER ")]
    assert len(lines) == 1, cp.describe()
    return json.loads(lines[0][6:])


def image_of(p):
    return p.img.with_name(p.img.name + ".prelinked")


@pytest.fixture
def app(venv, tmp_path):
    needs_312(venv)
    root = copy_tree(FIXTURES / "apptree", tmp_path / "app")
    work = tmp_path / "work"
    work.mkdir()
    p = Pipeline(venv, ["-c", STATS_WRAPPER], root, work)
    return p.build()


def prelink_run(p):
    """The PYCDSMODE=PRELINK run: serves, then writes the image."""
    cp = run_fixed(p.venv, p.argv, cwd=p.cwd, mode="PRELINK",
                   archive=p.img, verbose=1)
    assert cp.returncode == 0, cp.describe()
    assert image_of(p).is_file(), cp.describe()
    assert f"pycds: wrote {p.img}.prelinked" in cp.stderr, cp.describe()
    return cp


def share_fixed(p, **kw):
    return run_fixed(p.venv, p.argv, cwd=p.cwd, mode="SHARE",
                     archive=p.img, **kw)


@needs_setarch
def test_app_served_from_image(app):
    p = app
    base = p.baseline(check=True)
    prelink_run(p)
    cp = share_fixed(p, verbose=2)
    assert_same_run(base, cp)
    s = layer_stats(cp)
    image = s["prelinked"]
    assert isinstance(image, dict), s
    assert image["path"] == f"{p.img}.prelinked"
    # Every module served came from the image, none was relocated (a
    # module reloaded is served twice, from the same entry).
    assert s["served"] >= 40, s
    assert image["served"] == len(cp.verbose.served_set), s
    assert cp.verbose.warnings == [], cp.describe()
    served = cp.verbose.served_set
    for name in ("apppkg", "pickle", "inspect", "importlib.resources"):
        assert name in served, name


IMMORTAL_CHECK = r"""
import sys, json
import pycds
import email.message, json as j2
co = sys.modules['email.message'].__spec__.loader.get_code('email.message')
const = next(c for c in co.co_consts if isinstance(c, str))
print('RESULT ' + json.dumps({
    'refcnt': sys.getrefcount(const), 'code_refcnt': sys.getrefcount(co),
    'image': [l['prelinked'] for l in pycds.layer_stats()],
    'interned': sys.intern(co.co_names[0]) is co.co_names[0],
    'round': j2.loads(j2.dumps({'a': [1, 2.5, None]}))}))
"""


@needs_setarch
def test_image_objects_immortal_and_interned(venv, tmp_path):
    needs_312(venv)
    p = Pipeline(venv, ["-c", IMMORTAL_CHECK], tmp_path, tmp_path).build()
    prelink_run(p)
    cp = share_fixed(p, check=True)
    line = [ln for ln in cp.stdout.splitlines() if ln.startswith("RESULT ")]
    r = json.loads(line[0][7:])
    assert r["image"][0]["served"] >= 2, r
    assert r["refcnt"] == r["code_refcnt"] == 2 ** 32 - 1, r
    assert r["interned"] is True, r
    assert r["round"] == {"a": [1, 2.5, None]}, r


CHILD = ("import subprocess, sys, os\n"
         "print(os.environ['PYCDSMODE'])\n"
         "subprocess.run([sys.executable, '-c', 'import os; "
         "print(os.environ[\"PYCDSMODE\"])'], check=True)\n")


@needs_setarch
def test_prelink_mode(venv, tmp_path):
    needs_312(venv)
    p = Pipeline(venv, ["-c", CHILD], tmp_path, tmp_path).build()
    # Under address randomisation: a warning, served, no image.
    cp = run(venv, p.argv, cwd=tmp_path, mode="PRELINK", archive=p.img)
    assert cp.returncode == 0, cp.describe()
    assert "PYCDSMODE=PRELINK needs address randomisation off" in \
        cp.stderr, cp.describe()
    assert not image_of(p).exists()
    # The process writes the image; the one it starts serves.
    cp = run_fixed(venv, p.argv, cwd=tmp_path, mode="PRELINK",
                   archive=p.img, check=True)
    assert cp.stdout.split() == ["SHARE", "SHARE"], cp.describe()
    assert image_of(p).is_file()


@needs_setarch
def test_image_unused_where_it_does_not_fit(app):
    p = app
    base = p.baseline(check=True)
    prelink_run(p)
    # Address randomisation on: libpython is elsewhere.
    cp = p.share(verbose=1)
    assert_same_run(base, cp)
    s = layer_stats(cp)
    assert "setarch -R" in s["prelinked"], s
    assert f"{p.img}.prelinked not used" in cp.stderr
    assert s["served"] >= 40, s
    # Another hash seed: the image's hashes would be wrong.
    cp = share_fixed(p, env={"PYTHONHASHSEED": "7"})
    assert_same_run(base, cp)
    assert "PYTHONHASHSEED" in layer_stats(cp)["prelinked"]
    # The archive rebuilt: the image is stale.
    (p.cwd / "apppkg" / "__init__.py").write_text(
        (p.cwd / "apppkg" / "__init__.py").read_text() + "\n# edited\n")
    p.dump()
    base = p.baseline(check=True)
    cp = share_fixed(p, verbose=1)
    assert_same_run(base, cp)
    assert "another version of the archive" in layer_stats(cp)["prelinked"]
    assert "warning" not in cp.stderr, cp.describe()


def _area_offsets(path):
    """(file_offset, size) of each area, from the header (format.h)."""
    data = open(path, "rb").read(4096)
    # magic 8, version 4, flags 4, abi key 88, archive_xxh3 8,
    # libpython_base 8, hash_secret 24, interned_chars 32, then the areas.
    off = 8 + 4 + 4 + 88 + 8 + 8 + 24 + 32
    areas = []
    for k in range(5):
        address, size, file_offset = (int.from_bytes(
            data[off + 24 * k + 8 * j: off + 24 * k + 8 * j + 8], "little")
            for j in range(3))
        areas.append((file_offset, size))
    return areas


@needs_setarch
@pytest.mark.parametrize("damage", ["entry", "strings", "truncated",
                                    "garbage"])
def test_damaged_image_warned_once(app, damage):
    p = app
    base = p.baseline(check=True)
    prelink_run(p)
    img = image_of(p)
    areas = _area_offsets(img)
    raw = bytearray(img.read_bytes())
    if damage == "entry":
        off, size = max(areas[3:], key=lambda a: a[1])   # a code area
        raw[off + size // 2] ^= 0x40
        want = "entry checksum mismatch"
    elif damage == "strings":
        off, size = areas[0]
        raw[off + 100] ^= 0x01
        want = "strings checksum mismatch"
    elif damage == "truncated":
        raw = raw[:len(raw) // 2]
        want = "truncated"
    else:
        raw[:64] = os.urandom(64)
        want = "not a prelinked image"
    img.write_bytes(bytes(raw))
    cp = share_fixed(p, verbose=2)
    assert_same_run(base, cp)
    warnings = cp.verbose.warnings
    assert len(warnings) == 1, cp.describe()
    assert want in warnings[0] and "relocating from the archive" in \
        warnings[0], warnings
    s = layer_stats(cp)
    assert s["served"] >= 40, s
    if damage == "entry":
        # Only the damaged entries are relocated; the others still come
        # from the image.
        assert 0 < s["prelinked"]["served"] < s["served"], s


@needs_setarch
def test_image_writable_by_others_refused(app):
    p = app
    base = p.baseline(check=True)
    prelink_run(p)
    os.chmod(image_of(p), 0o666)
    cp = share_fixed(p)
    assert_same_run(base, cp)
    assert "writable by group or others" in cp.stderr, cp.describe()
    cp = share_fixed(p, env={"PYCDSTRUST": "any"})
    assert isinstance(layer_stats(cp)["prelinked"], dict)


@needs_setarch
def test_cli_prelink(app):
    p = app
    base = p.baseline(check=True)
    # pycds-dump runs itself under setarch -R.
    cp = run_tool(p.venv, ["prelink", p.img], cwd=p.cwd)
    assert cp.returncode == 0, cp.describe()
    assert cp.stdout.startswith(f"{p.img}.prelinked: "), cp.describe()
    cp = share_fixed(p, verbose=2)
    assert_same_run(base, cp)
    s = layer_stats(cp)
    assert s["prelinked"]["served"] == len(cp.verbose.served_set), s


def test_cli_prelink_refused_on_311(venv, tmp_path):
    if venv.interp.hexversion >= 0x030C0000:
        pytest.skip("3.11 only")
    if not SETARCH:
        pytest.skip("setarch -R is not allowed here")
    p = Pipeline(venv, ["-c", "import json"], tmp_path, tmp_path).build()
    cp = run_tool(venv, ["prelink", p.img], cwd=tmp_path)
    assert cp.returncode == 1, cp.describe()
    assert "3.12 or later" in cp.stderr, cp.describe()
    assert not image_of(p).exists()


STDLIB_IMAGE_CHECK = r"""
import json, os, sys, warnings
import codecompare
from pycds import _pycds
warnings.simplefilter('ignore')
path, root = sys.argv[1], sys.argv[2]
a = _pycds.Archive(path, prelinked=True)
image = a.prelinked()
failures, checked = [], 0
for name in a.names():
    p = os.path.join(root, name)
    loaded = a.get(name)
    with open(p, 'rb') as f:
        compiled = compile(f.read(), p, 'exec', dont_inherit=True)
    err = codecompare.code_equal_report(loaded, compiled, name)
    if err:
        failures.append(err)
    else:
        checked += 1
    if len(failures) >= 25:
        break
print(json.dumps({'image': image, 'after': a.prelinked(),
                  'checked': checked, 'entries': len(a),
                  'failures': failures}))
"""


@needs_setarch
def test_stdlib_from_image(interp, stdlib_archive, tmp_path):
    """Every stdlib module's code object, taken from the image, is what
    compile() makes of its source (the archive path is checked the same
    way by test_roundtrip)."""
    if interp.hexversion < 0x030C0000:
        pytest.skip("prelinked images need CPython 3.12+")
    path = tmp_path / "stdlib.img"
    os.link(stdlib_archive.path, path)
    t = time.perf_counter()
    cp = subprocess.run(["setarch", "-R", interp.python, "-m", "pycds",
                         "prelink", str(path)], capture_output=True,
                        text=True, env=child_env(interp), timeout=600,
                        cwd=str(tmp_path))
    assert cp.returncode == 0, cp.stderr
    made = time.perf_counter() - t
    cp = subprocess.run(["setarch", "-R", interp.python, "-c",
                         STDLIB_IMAGE_CHECK, str(path), stdlib_archive.root],
                        capture_output=True, text=True,
                        env=child_env(interp), timeout=600,
                        cwd=str(tmp_path))
    assert cp.returncode == 0, cp.stderr[-4000:]
    res = json.loads(cp.stdout.splitlines()[-1])
    print(f"\n{interp.id}: prelinked {res['entries']} entries in {made:.1f}s")
    assert isinstance(res["image"], dict), res["image"]
    assert not res["failures"], "\n".join(res["failures"])
    assert res["checked"] == res["entries"] == stdlib_archive.entries
    assert res["after"]["served"] == res["entries"], res["after"]


MORTAL_CHECK = r"""
import gc, sys
# Interned before the image is used, and mortal on 3.13 (sys.intern): the
# image's slots for this name must keep it alive once they point to it.
name = sys.intern(''.join(['pycds_', 'mortal_name']))
import pycds
pycds.share(sys.argv[1], verbose=1)
import mortalmod
del name
gc.collect()
# Reuse freed memory, with strings of every size near the name's.
junk = [str(i) * 3 for i in range(100000)]
junk += [('x' * 20 + str(i))[:n] for n in range(12, 21)
         for i in range(20000)]
print(mortalmod.get(), mortalmod.get.__code__.co_consts[1:])
print(pycds.layer_stats()[0]['prelinked']['served'])
"""


@needs_setarch
def test_image_keeps_mortal_interned_strings_alive(venv, tmp_path):
    needs_312(venv)
    # Only the code's constants hold the string: nothing else keeps it.
    (tmp_path / "mortalmod.py").write_text(
        "def get():\n    return 'pycds_mortal_name'\n")
    p = Pipeline(venv, ["-c", "import mortalmod"], tmp_path, tmp_path).build()
    cp = run_tool(venv, ["prelink", p.img], cwd=tmp_path)
    assert cp.returncode == 0, cp.describe()
    cp = run_fixed(venv, ["-c", MORTAL_CHECK, p.img], cwd=tmp_path,
                   check=True)
    lines = cp.stdout.splitlines()
    assert lines[0] == "pycds_mortal_name ('pycds_mortal_name',)", \
        cp.describe()
    assert int(lines[1]) >= 1, cp.describe()


@needs_setarch
def test_layers_each_with_its_image(app):
    """Two layers, each prelinked (`pycds-dump prelink`): both images are
    mapped, each at its own addresses, and each serves its modules."""
    p = app
    base = p.baseline(check=True)
    lines = p.lst.read_text().splitlines()
    header, entries = lines[0], [ln for ln in lines[1:] if ln]
    mine = [ln for ln in entries if ln.split("\t")[1].startswith(str(p.cwd))]
    rest = [ln for ln in entries if ln not in mine]
    assert mine and rest
    layers = []
    for name, part in (("app", mine), ("base", rest)):
        lst = p.work / f"{name}.lst"
        lst.write_text("\n".join([header, *part]) + "\n")
        img = p.work / f"{name}.img"
        for argv in (["create", "-l", lst, "-o", img, "-q"],
                     ["prelink", img]):
            cp = run_tool(p.venv, argv, cwd=p.cwd)
            assert cp.returncode == 0, cp.describe()
        layers.append(str(img))
    cp = run_fixed(p.venv, [*p.argv], cwd=p.cwd, mode="SHARE",
                   archive=":".join(layers), verbose=2,
                   env={"PYCDSARCHIVE": ":".join(layers)})
    assert_same_run(base, cp)
    assert cp.verbose.warnings == [], cp.describe()
    lines = [ln for ln in cp.stderr.splitlines() if ln.startswith("LAYERS ")]
    first, second = json.loads(lines[0][7:])
    assert first["prelinked"]["served"] == len(mine), first
    # Every module the base layer served came from its image.
    assert second["served"] > 50, second
    assert second["prelinked"]["served"] == second["served"], second
    assert first["prelinked"]["path"] != second["prelinked"]["path"]
