"""Archives used in place (docs/IMPORT.md, "Prelinked images"): DUMP
writes every archive with its prelinked image (the .pycds.prelinked
section), SHARE maps it at its preferred address and serves from it in
default conditions (address randomisation on, no PYTHONHASHSEED), on
every interpreter.

Covers: the fixture application served from the image with the output of
a normal run, on PIE interpreters (one load delta) and on non-PIE
executables linked from pyenv's python.o and libpython (no runtime
fix-up at all); every stdlib module's code from the image equal to what
compile() makes; objects immortal and interned on 3.12+; a PRELINK run;
PYCDSCHECK=1; the image left alone (the archive relocating) for another
hash seed, an image of another archive, taken addresses, an archive
without one; damaged images warned about once, and found by `verify`;
layers.
"""

import json
import os
import subprocess

import pytest

import elfsections
from conftest import ROOT, Interp, child_env
from pipeline_fixtures import (FIXTURES, IMAGE_RANGE, NSLOTS, SLOT_SIZE, Pipeline,
                               assert_same_run, image_area, list_rows,
                               copy_tree, make_venv, run, run_tool, venv,
                               verify)

# Default conditions: what env_for sets, less the fixed hash seed.
RANDOM_SEED = {"PYTHONHASHSEED": None}

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


def image_section(path):
    """(file offset, size) of the archive's prelinked image."""
    s = elfsections.section(open(path, "rb").read(), ".pycds.prelinked")
    return s.offset, s.size


def make_app(venv, tmp_path):
    root = copy_tree(FIXTURES / "apptree", tmp_path / "app")
    work = tmp_path / "work"
    work.mkdir()
    return Pipeline(venv, ["-c", STATS_WRAPPER], root, work).build()


@pytest.fixture
def app(venv, tmp_path):
    return make_app(venv, tmp_path)


def assert_all_from_image(p, cp):
    """Every module served came from the image, none was relocated (a
    module reloaded is served twice, from the same entry)."""
    s = layer_stats(cp)
    image = s["prelinked"]
    assert isinstance(image, dict), s
    assert image["path"] == str(p.img)
    assert s["served"] >= 40, s
    assert image["served"] == len(cp.verbose.served_set), s
    assert cp.verbose.warnings == [], cp.describe()
    return image


def test_app_served_in_place(app):
    p = app
    assert image_section(p.img)[1] > 0, p.dump_cp.describe()
    base = p.baseline(check=True, env=RANDOM_SEED)
    cp = p.share(verbose=2, env=RANDOM_SEED)
    assert_same_run(base, cp)
    image = assert_all_from_image(p, cp)
    served = cp.verbose.served_set
    for name in ("apppkg", "pickle", "inspect", "importlib.resources"):
        assert name in served, name
    if p.venv.interp.name == "debian":
        # Non-PIE, libpython linked in: no pointer into it to fix.
        assert image["delta"] == 0 and image["runtime_fixed"] == 0, image


IMMORTAL_CHECK = r"""
import sys, json
import pycds
import email.message, json as j2
# A function's code: the module's own is a copy on the heap, freed once
# its body ran (test_runonce.py).
co = sys.modules['email.message'].Message.get.__code__
const = next(c for c in co.co_consts if isinstance(c, str))
print('RESULT ' + json.dumps({
    'refcnt': sys.getrefcount(const), 'code_refcnt': sys.getrefcount(co),
    'image': [l['prelinked'] for l in pycds.layer_stats()],
    'interned': sys.intern(co.co_names[0]) is co.co_names[0],
    'round': j2.loads(j2.dumps({'a': [1, 2.5, None]}))}))
"""


def test_image_objects_interned_and_immortal(venv, tmp_path):
    p = Pipeline(venv, ["-c", IMMORTAL_CHECK], tmp_path, tmp_path).build()
    cp = p.share(check=True, env=RANDOM_SEED)
    line = [ln for ln in cp.stdout.splitlines() if ln.startswith("RESULT ")]
    r = json.loads(line[0][7:])
    assert r["image"][0]["served"] >= 2, r
    assert r["interned"] is True, r
    assert r["round"] == {"a": [1, 2.5, None]}, r
    if venv.interp.hexversion >= 0x030C0000:
        assert r["refcnt"] == r["code_refcnt"] == 2 ** 32 - 1, r


CHILD = ("import subprocess, sys, os\n"
         "print(os.environ['PYCDSMODE'])\n"
         "subprocess.run([sys.executable, '-c', 'import os; "
         "print(os.environ[\"PYCDSMODE\"])'], check=True)\n")


def test_prelink_mode(venv, tmp_path):
    p = Pipeline(venv, ["-c", CHILD], tmp_path, tmp_path).build()
    before = p.img.stat()
    # The process writes the image again at exit; the one it starts
    # serves.
    cp = run(venv, p.argv, cwd=tmp_path, mode="PRELINK", archive=p.img,
             verbose=1, check=True)
    assert cp.stdout.split() == ["SHARE", "SHARE"], cp.describe()
    assert f"pycds: wrote {p.img} with its prelinked image" in cp.stderr, \
        cp.describe()
    assert p.img.stat().st_ino != before.st_ino   # renamed over
    cp = p.share(verbose=1)
    assert "warning" not in cp.stderr, cp.describe()


def test_checked_mode_relocates(app):
    p = app
    base = p.baseline(check=True)
    cp = p.share(verbose=2, env={"PYCDSCHECK": "1"})
    assert_same_run(base, cp)
    s = layer_stats(cp)
    assert s["prelinked"] is None, s
    assert s["served"] >= 40, s


NO_IMAGE = r"""
import sys, json, pycds, _pycds
import email.message
pycds.dump_code(sys.argv[1], {"email.message": sys.modules[
    "email.message"].__spec__.loader.get_code("email.message")})
code = pycds.load_code(sys.argv[1])["email.message"]
a = _pycds.Archive(sys.argv[1], False, True)
print(json.dumps([a.prelinked(), code.co_name]))
"""


def test_image_unused_where_it_does_not_fit(app, tmp_path):
    p = app
    base = p.baseline(check=True)
    # Made by a PRELINK run with a fixed hash seed, it holds the hashes:
    # for processes with that seed only.
    run(p.venv, p.argv, cwd=p.cwd, mode="PRELINK", archive=p.img,
        check=True)
    cp = p.share(verbose=1, env={"PYTHONHASHSEED": "7"})
    assert_same_run(base, cp)
    assert "PYTHONHASHSEED" in layer_stats(cp)["prelinked"]
    assert "warning" not in cp.stderr, cp.describe()
    # An archive written without one (the low-level pycds.dump_code).
    cp = run(p.venv, ["-c", NO_IMAGE, tmp_path / "bare.img"], cwd=tmp_path,
             check=True)
    assert json.loads(cp.stdout) == [None, "<module>"], cp.describe()


TAKEN = r"""
import mmap, runpy, sys, pycds, _pycds
# Take every address the image could have before pycds opens it.
sys.path.insert(0, sys.argv[2])
import elfsections
data = open(sys.argv[1], 'rb').read()
image = elfsections.section(data, '.pycds.prelinked').offset
off = image + 8 + 4 + 4 + 88 + 8 + 24 + 32
addr = int.from_bytes(data[off:off + 8], 'little')
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                      ctypes.c_int, ctypes.c_int, ctypes.c_long]
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x2, 0x20, 0x100000
got = libc.mmap(addr, 4096, 0, MAP_PRIVATE | MAP_ANONYMOUS
                | MAP_FIXED_NOREPLACE, -1, 0)
assert got == addr, (hex(addr), got)
pycds.share(sys.argv[1])
import json, email.message
print(json.dumps([pycds.stats()['served'],
                  pycds.layer_stats()[0]['prelinked']]))
"""


def test_taken_addresses_relocate(venv, tmp_path):
    p = Pipeline(venv, ["-c", TAKEN, "app.img"], tmp_path, tmp_path)
    p.trace(argv=["-c", "import json, email.message"])
    p.dump()
    cp = run(venv, ["-c", TAKEN, p.img, ROOT / "tests"], cwd=tmp_path,
             check=True)
    served, why = json.loads(cp.stdout)
    assert served >= 2, cp.describe()
    assert why == "its addresses are taken in this process", why


# The prelinked image's layout (format.h): a 360-byte header whose areas
# (address, size, file offset: 24 bytes each) start at byte 168 (after
# magic 8, version 4, flags 4, abi key 88, archive_xxh3 8, hash_secret 24,
# interned_chars 32), with nentries and nfixups at 328 and 336; then the
# 144-byte entry records (spans from 8, fixup_start 104, nfixups 112,
# runtime_start 120, nruntime 128, xxh3 136), the 16-byte fix-ups, the
# runtime words.
HEADER_SIZE, AREAS_AT, NENTRIES_AT, NFIXUPS_AT = 360, 168, 328, 336
RECORD_SIZE = 144


def _u64(raw, off):
    return int.from_bytes(raw[off:off + 8], "little")


def _areas(raw, image):
    """(address, size, file offset in the section) of each area of the
    image at offset image of raw."""
    return [tuple(_u64(raw, image + AREAS_AT + 24 * k + 8 * j)
                  for j in range(3)) for k in range(6)]


def _image_slot(path):
    """The slot (format.h) of the image of the archive at path."""
    image, _ = image_section(path)
    address = _areas(open(path, "rb").read(), image)[0][0]
    return (address - IMAGE_RANGE.start) // SLOT_SIZE


def _area_offsets(path):
    """(file offset, size) of each area."""
    image, _ = image_section(path)
    raw = open(path, "rb").read()
    return [(image + offset, size) for _, size, offset in _areas(raw, image)]


@pytest.mark.parametrize("damage", ["entry", "strings", "records",
                                    "garbage"])
def test_damaged_image_warned_once(app, damage):
    p = app
    base = p.baseline(check=True)
    areas = _area_offsets(p.img)
    image, _ = image_section(p.img)
    raw = bytearray(p.img.read_bytes())
    if damage == "entry":
        off, size = max(areas[3:], key=lambda a: a[1])   # a code area
        raw[off + size // 2] ^= 0x40
        want = "entry checksum mismatch"
    elif damage == "strings":
        off, size = areas[0]
        raw[off + 100] ^= 0x01
        want = "strings checksum mismatch"
    elif damage == "records":
        # Every record of the entry table, its checksum last.
        nentries = _u64(raw, image + NENTRIES_AT)
        for k in range(nentries):
            raw[image + HEADER_SIZE + RECORD_SIZE * k + 136] ^= 0x01
        want = "entry checksum mismatch"
    else:
        raw[image:image + 64] = os.urandom(64)
        want = "not a prelinked image"
    # A new file, as a deploy writes one (rewriting a mapped file in place
    # is another matter: docs/ROBUSTNESS.md).
    p.img.unlink()
    p.img.write_bytes(bytes(raw))
    rc, report = verify(p.venv, p.img)
    assert any(want in problem for problem in report["problems"]), report
    cp = p.share(verbose=2, env=RANDOM_SEED)
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


FIXUP_INTERN = 1          # format.h, PYCDS_FIXUP_INTERN


def _tables(raw, image):
    """(records, fix-ups, runtime words): where each table starts."""
    nentries = _u64(raw, image + NENTRIES_AT)
    records = image + HEADER_SIZE
    fixups = records + RECORD_SIZE * nentries
    return records, fixups, fixups + 16 * _u64(raw, image + NFIXUPS_AT)


def _rehash_entry(raw, image, rec):
    """Gives the entry whose record is at rec the checksum of what its
    record, spans, fix-ups and runtime words hold now, as a file made to
    pass the checksums would; False without libxxhash."""
    _, fixups, runtime = _tables(raw, image)
    parts = [bytes(raw[rec:rec + 136]) + bytes(8)]
    for k, (address, _, file_offset) in enumerate(_areas(raw, image)):
        start, end = _u64(raw, rec + 8 + 16 * k), _u64(raw, rec + 16 + 16 * k)
        at = image + file_offset + start - address
        parts.append(bytes(raw[at:at + end - start]))
    first_fixup, first_word = _u64(raw, rec + 104), _u64(raw, rec + 120)
    parts.append(bytes(raw[fixups + 16 * first_fixup:
                           fixups + 16 * (first_fixup + _u64(raw, rec + 112))]))
    parts.append(bytes(raw[runtime + 8 * first_word:
                           runtime + 8 * (first_word + _u64(raw, rec + 128))]))
    digest = elfsections.xxh3_64(b"".join(parts))
    if digest is None:
        return False
    raw[rec + 136:rec + 144] = digest.to_bytes(8, "little")
    return True


def _craft_runtime(raw, image, rec):
    """The entry's first runtime word: a slot at address 8."""
    _, _, runtime = _tables(raw, image)
    if _u64(raw, rec + 128) == 0:
        return False
    at = runtime + 8 * _u64(raw, rec + 120)
    raw[at:at + 8] = (8).to_bytes(8, "little")
    return True


def _first_fixup(raw, image, rec, kind):
    """Offset in raw of the entry's first fix-up of that kind, or None."""
    _, fixups, _ = _tables(raw, image)
    first = _u64(raw, rec + 104)
    for k in range(first, first + _u64(raw, rec + 112)):
        if _u64(raw, fixups + 16 * k + 8) & 7 == kind:
            return fixups + 16 * k
    return None


def _craft_fixup_slot(raw, image, rec):
    """The entry's first interned-string fix-up: its slot at address 8."""
    at = _first_fixup(raw, image, rec, FIXUP_INTERN)
    if at is None:
        return False
    raw[at:at + 8] = (8).to_bytes(8, "little")
    return True


def _craft_fixup_string(raw, image, rec):
    """The entry's first interned-string fix-up: its string at address
    16, outside the strings area."""
    at = _first_fixup(raw, image, rec, FIXUP_INTERN)
    if at is None:
        return False
    raw[at + 8:at + 16] = (16 | FIXUP_INTERN).to_bytes(8, "little")
    return True


def _craft_run_once(raw, image, rec):
    """The first object of the entry's run-once span: its type word 0."""
    address, _, file_offset = _areas(raw, image)[5]
    start, end = _u64(raw, rec + 8 + 16 * 5), _u64(raw, rec + 16 + 16 * 5)
    if end - start < 64:
        return False
    at = image + file_offset + start - address
    if raw[at:at + 16] == bytes(16):        # a tuple's GC header
        at += 16
    raw[at + 8:at + 16] = bytes(8)
    return True


# What each craft breaks, and what SHARE says of it: on a non-PIE
# interpreter (no load address) nothing is written from the runtime
# table, which is then not read at all.
CRAFTS = {
    "runtime word": (_craft_runtime, "a runtime slot lies outside its entry"),
    "fix-up slot": (_craft_fixup_slot, "a fix-up lies outside its entry"),
    "fix-up string": (_craft_fixup_string,
                      "a string lies outside the strings area"),
    "run-once object": (_craft_run_once, "a run-once object is malformed"),
}


@pytest.mark.parametrize("craft", sorted(CRAFTS))
def test_crafted_entry_refused(app, craft):
    """An image whose checksums match but whose tables or run-once
    objects are wrong (a file made to pass the checksums, which the
    default mode trusts): the checks the default mode keeps refuse the
    entry before anything of it is written or served, say so once, and
    the module is relocated from the archive.  The program runs as it
    does without pycds."""
    p = app
    base = p.baseline(check=True)
    image, _ = image_section(p.img)
    raw = bytearray(p.img.read_bytes())
    records, _, _ = _tables(raw, image)
    edit, want = CRAFTS[craft]
    for i in range(_u64(raw, image + NENTRIES_AT)):
        rec = records + RECORD_SIZE * i
        # An entry the image holds (its root set), with what the craft
        # needs.
        if _u64(raw, rec) != 0 and edit(raw, image, rec):
            break
    else:
        pytest.skip("no entry to craft")
    if not _rehash_entry(raw, image, rec):
        pytest.skip("no libxxhash to recompute the entry's checksum")
    p.img.unlink()
    p.img.write_bytes(bytes(raw))
    cp = p.share(verbose=2, env=RANDOM_SEED)
    assert_same_run(base, cp)
    warnings = cp.verbose.warnings
    if craft == "runtime word" and layer_stats(cp)["prelinked"]["delta"] == 0:
        assert warnings == [], cp.describe()
        return
    assert len(warnings) == 1, cp.describe()
    assert want in warnings[0] and "relocating from the archive" in \
        warnings[0], warnings


def test_cli_prelink(app):
    p = app
    base = p.baseline(check=True)
    before = p.img.stat()
    cp = run_tool(p.venv, ["prelink", p.img], cwd=p.cwd, env=RANDOM_SEED)
    assert cp.returncode == 0, cp.describe()
    assert cp.stdout.startswith(f"{p.img}: "), cp.describe()
    assert p.img.stat().st_ino != before.st_ino   # renamed over
    cp = p.share(verbose=2, env=RANDOM_SEED)
    assert_same_run(base, cp)
    assert_all_from_image(p, cp)


STDLIB_IMAGE_CHECK = r"""
import json, os, sys, warnings
import codecompare
import _pycds
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


def test_stdlib_from_image(interp, stdlib_archive, tmp_path):
    """Every stdlib module's code object, taken from the image, is what
    compile() makes of its source (the archive path is checked the same
    way by test_roundtrip)."""
    path = tmp_path / "stdlib.img"
    env = child_env(interp)
    env.pop("PYTHONHASHSEED", None)
    cp = subprocess.run([interp.python, "-m", "pycds", "prelink",
                         stdlib_archive.path, "-o", str(path)],
                        capture_output=True, text=True, env=env,
                        timeout=600, cwd=str(tmp_path))
    assert cp.returncode == 0, cp.stderr
    cp = subprocess.run([interp.python, "-c", STDLIB_IMAGE_CHECK, str(path),
                         stdlib_archive.root], capture_output=True,
                        text=True, env=env, timeout=600, cwd=str(tmp_path))
    assert cp.returncode == 0, cp.stderr[-4000:]
    res = json.loads(cp.stdout.splitlines()[-1])
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


def test_image_keeps_mortal_interned_strings_alive(venv, tmp_path):
    # Only the code's constants hold the string: nothing else keeps it.
    (tmp_path / "mortalmod.py").write_text(
        "def get():\n    return 'pycds_mortal_name'\n")
    p = Pipeline(venv, ["-c", "import mortalmod"], tmp_path, tmp_path).build()
    cp = run(venv, ["-c", MORTAL_CHECK, p.img], cwd=tmp_path, check=True,
             env=RANDOM_SEED)
    lines = cp.stdout.splitlines()
    assert lines[0] == "pycds_mortal_name ('pycds_mortal_name',)", \
        cp.describe()
    assert int(lines[1]) >= 1, cp.describe()


SHARED_FIRST_CHECK = r"""
import sys
import pycds
pycds.share(sys.argv[1])
import sharer_a, sharer_b
a, b = sharer_a.__spec__.loader.get_code('sharer_a'), \
    sharer_b.__spec__.loader.get_code('sharer_b')
print(pycds.layer_stats()[0]['prelinked']['served'])
print(' '.join(str(id(n)) for n in a.co_names))
print(' '.join(str(id(n)) for n in b.co_names))
"""


def test_shared_strings_first(venv, tmp_path):
    """In the image's strings area of a `create --all` archive (each
    string interned when an entry first uses it), a string two entries use
    comes before the strings only one uses, though the first entry used
    its own first (docs/FORMAT.md, "Eager and lazy strings")."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for m in "ab":
        (lib / f"sharer_{m}.py").write_text(
            f"pycds_only_{m} = 1\npycds_both_ab = 2\n")
    img = tmp_path / "lib.img"
    env = {"PYTHONPATH": lib, **RANDOM_SEED}
    cp = run_tool(venv, ["create", "--all", "--path", lib, "-o", img, "-q"],
                  cwd=tmp_path, env=env)
    assert cp.returncode == 0, cp.describe()
    cp = run(venv, ["-c", SHARED_FIRST_CHECK, img], cwd=tmp_path,
             check=True, env=env)
    served, names_a, names_b = cp.stdout.splitlines()
    assert int(served) == 2, cp.describe()
    only_a, both_a = map(int, names_a.split())
    only_b, both_b = map(int, names_b.split())
    assert both_a == both_b, cp.describe()
    assert both_a < only_a < only_b, cp.describe()


EAGER_CHECK = r"""
import json, sys
import pycds
pycds.share(sys.argv[1])
# Made at run time: a constant of this code would be interned already.
name = sys.intern("".join(["pycds_eager_", "name"]))
import eagermod
print(json.dumps([id(name), id(eagermod.f.__code__.co_names[0]),
                  id(eagermod.f.__code__)]))
"""


@pytest.mark.parametrize("how", ["traced", "all", "prelink", "prelink -l"])
def test_traced_strings_interned_at_map(venv, tmp_path, how):
    """A traced archive's modules are what every process using it
    imports: their strings are interned as its image is mapped, so a
    string the program interns afterwards is the image's copy, and the
    slots that hold it are never rewritten.  A `create --all` archive
    interns a string when an entry first uses it (docs/FORMAT.md,
    "Entries every process uses"); so does `pycds-dump prelink` of a
    traced archive, unless given its list (`-l`)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "eagermod.py").write_text(
        "def f():\n    return pycds_eager_name\n")
    env = {"PYTHONPATH": lib, **RANDOM_SEED}
    img = tmp_path / "lib.img"
    if how == "all":
        cp = run_tool(venv, ["create", "--all", "--path", lib, "-o", img,
                             "-q"], cwd=tmp_path, env=env)
        assert cp.returncode == 0, cp.describe()
    else:
        p = Pipeline(venv, ["-c", "import eagermod"], tmp_path, tmp_path,
                     env=env).build()
        img = p.img
    if how.startswith("prelink"):
        cp = run_tool(venv, ["prelink", img, *how.split()[1:],
                             *([p.lst] if "-l" in how else [])],
                      cwd=tmp_path, env=env)
        assert cp.returncode == 0, cp.describe()
    cp = run(venv, ["-c", EAGER_CHECK, img], cwd=tmp_path, check=True,
             env=env)
    name, used, code = json.loads(cp.stdout)
    assert code in IMAGE_RANGE and name == used, cp.describe()
    assert (name in IMAGE_RANGE) == (how in ("traced", "prelink -l")), \
        cp.describe()


RAN_CHECK = r"""
import json
import ranmod
print(json.dumps({n: id(getattr(ranmod, n).__code__)
                  for n in ("called", "not_called", "normalize_encoding")}))
"""


def test_code_that_ran_kept_apart(venv, tmp_path):
    """TRACE notes in its list the code objects that ran (their bytecode
    written as they ran); `create -l` places them in the hot code area,
    with the code a process writes anyway (a name it had interned before
    it used the image: encodings' normalize_encoding, on 3.12+; 3.11's
    interned strings are out of reach), apart from the code that does not
    run, whose pages then stay shared (docs/FORMAT.md, "Areas")."""
    (tmp_path / "ranmod.py").write_text(
        "def called(x):\n    return x.upper() + str(len(x))\n\n"
        "def not_called(x):\n    return x.lower()\n\n"
        "def normalize_encoding():\n    pass\n\n"
        "for _ in range(50):\n    called('a')\n\n"
        "class Lazy:\n    def __getattr__(self, name):\n"
        "        print('looked up', name)\n\n"
        "lazy = Lazy()\n")
    p = Pipeline(venv, ["-c", "import ranmod"], tmp_path, tmp_path).build()
    # Noting what ran looks up no attribute of an object that is not a
    # function (six's lazy modules import as they are looked up).
    assert p.trace_cp.stdout == "", p.trace_cp.describe()
    assert list_rows(p.lst)[1]["ranmod"][3] == {"1:called"}, \
        p.lst.read_text()
    cp = run(venv, ["-c", RAN_CHECK], cwd=tmp_path, mode="SHARE",
             archive=p.img, env=RANDOM_SEED, check=True)
    ids = json.loads(cp.stdout)
    assert all(a in IMAGE_RANGE for a in ids.values()), cp.describe()
    areas = {n: image_area(a) for n, a in ids.items()}
    before = "hot code" if venv.interp.hexversion >= 0x030C0000 else "code"
    assert areas == {"called": "hot code", "not_called": "code",
                     "normalize_encoding": before}, cp.describe()
    # Another traced run adds what it ran to the list's.
    p.trace(["-c", "import ranmod\nfor _ in range(50): ranmod.not_called('A')"])
    assert list_rows(p.lst)[1]["ranmod"][3] == {"1:called",
                                                "4:not_called"}, \
        p.lst.read_text()


HASHED_CHECK = r"""
import json
import hashmod
print(json.dumps({"module key": id(next(iter(hashmod.KEYS))),
                  "function key": id(next(iter(hashmod.keys()))),
                  "plain": id(hashmod.PLAIN)}))
"""


def test_hashed_constants_kept_apart(venv, tmp_path):
    """TRACE notes the str constants, not interned, whose hash its run
    computed (a module's dict key, a function's), of the module bodies it
    kept and of the code alive at exit; `create -l` places them in the
    fixed area, with what a process writes as it starts using an entry,
    and the other constants in the data area, whose pages then stay
    shared (docs/FORMAT.md, "Constants that were hashed").  Of a module
    the run compiled (no .pyc before it), whose constants the compiler
    hashed, none is noted."""
    module = ("KEYS = {'module-key': 1}\n"
              "PLAIN = 'never hashed'\n\n"
              "def keys():\n    return {'function-key': 2}\n\n"
              "keys()\n")
    (tmp_path / "hashmod.py").write_text(module)
    (tmp_path / "compiled.py").write_text(module)
    run(venv, ["-m", "py_compile", "hashmod.py"], cwd=tmp_path, check=True)
    p = Pipeline(venv, ["-c", "import hashmod, compiled"], tmp_path,
                 tmp_path).build()
    rows = list_rows(p.lst)[1]
    hashed = {w for w in rows["hashmod"][3] if w.startswith("#")}
    assert len(hashed) == 2, rows["hashmod"]
    assert not any(w.startswith("#") for w in rows["compiled"][3]), \
        rows["compiled"]
    cp = run(venv, ["-c", HASHED_CHECK], cwd=tmp_path, mode="SHARE",
             archive=p.img, env=RANDOM_SEED, check=True)
    ids = json.loads(cp.stdout)
    assert all(a in IMAGE_RANGE for a in ids.values()), cp.describe()
    assert {n: image_area(a) for n, a in ids.items()} == {
        "module key": "fixed", "function key": "fixed",
        "plain": "data"}, cp.describe()


STARTUP_FIRST_CHECK = r"""
import json, sys
import aaa_late, zzz_start
import pycds
print(json.dumps([pycds.layer_stats()[0]["prelinked"]["served"],
                  "zzz_start" in sys.modules["sitecustomize"].__dict__,
                  id(zzz_start.f.__code__), id(aaa_late.f.__code__)]))
"""


def test_startup_modules_first(venv, tmp_path):
    """`create` places the modules the interpreter imports as it starts
    (here through sitecustomize) before the others, though their names
    sort after them (docs/FORMAT.md, "Entries every process uses")."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "sitecustomize.py").write_text("import zzz_start\n")
    for name in ("zzz_start", "aaa_late"):
        (lib / f"{name}.py").write_text(f"def f():\n    return {name!r}\n")
    env = {"PYTHONPATH": lib, **RANDOM_SEED}
    img = tmp_path / "lib.img"
    cp = run_tool(venv, ["create", "--all", "--path", lib, "-o", img, "-q"],
                  cwd=tmp_path, env=env)
    assert cp.returncode == 0, cp.describe()
    cp = run(venv, ["-c", STARTUP_FIRST_CHECK], cwd=tmp_path, mode="SHARE",
             archive=img, env=env, check=True)
    served, imported_at_start, start_code, late_code = json.loads(
        cp.stdout)
    assert served == 3 and imported_at_start, cp.describe()
    assert start_code < late_code, cp.describe()


EVERY_RUN_CHECK = r"""
import json, sys
import pycds
pycds.share(sys.argv[1])
# Made at run time: a constant of this code would be interned already.
print(json.dumps([id(sys.intern("".join(["pycds_", n, "_name"])))
                  for n in ("every", "once")]))
"""


def test_modules_every_run_loaded_are_eager(venv, tmp_path):
    """A list that two programs traced: the modules both runs loaded are
    what every process imports, their strings interned as the image is
    mapped; a module only one run loaded waits for its entry."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for n in ("every", "once"):
        (lib / f"{n}mod.py").write_text(f"def f():\n    return pycds_{n}_name\n")
    env = {"PYTHONPATH": lib, **RANDOM_SEED}
    p = Pipeline(venv, ["-c", "import everymod, oncemod"], tmp_path,
                 tmp_path, env=env)
    p.trace()
    p.trace(["-c", "import everymod"])
    p.dump()
    runs, rows = list_rows(p.lst)
    assert runs == 2, p.lst.read_text()
    assert rows["everymod"][2] == 2 and rows["oncemod"][2] == 1, \
        p.lst.read_text()
    cp = run(venv, ["-c", EVERY_RUN_CHECK, p.img], cwd=tmp_path, check=True,
             env=env)
    every, once = json.loads(cp.stdout)
    assert every in IMAGE_RANGE and once not in IMAGE_RANGE, cp.describe()


UNHASHED_CHECK = r"""
import ctypes, json, sys
import pycds, supmod
# The hash field of a str: after ob_refcnt, ob_type and length.
print(json.dumps([ctypes.c_ssize_t.from_address(int(a) + 24).value
                  for a in sys.argv[1:]]
                 + [pycds.layer_stats()[0]["prelinked"]["delta"]]))
"""


def _image_string(raw, image, address):
    """The text of the ASCII str of the strings area at address."""
    base, _, file_offset = _areas(raw, image)[0]
    at = image + file_offset + address - base
    return raw[at + 40:at + 40 + _u64(raw, at + 16)].decode("ascii",
                                                            "replace")


def strings_interned_before(venv, tmp_path):
    """The hash fields, in a SHARE process under a random seed, of two
    strings of the image: normalize_encoding, which the process interned
    before it used the image (encodings'), and pycds_sup_own, which the
    image interns for it."""
    (tmp_path / "supmod.py").write_text(
        "def normalize_encoding(x):\n    return pycds_sup_own\n")
    p = Pipeline(venv, ["-c", "import supmod"], tmp_path, tmp_path).build()
    image, _ = image_section(p.img)
    raw = p.img.read_bytes()
    records, fixups, _ = _tables(raw, image)
    found = {}
    for k in range(_u64(raw, image + NFIXUPS_AT)):
        what = _u64(raw, fixups + 16 * k + 8)
        if what & 7 == FIXUP_INTERN:
            found.setdefault(_image_string(raw, image, what & ~7), what & ~7)
    assert "normalize_encoding" in found, sorted(found)[:50]
    # pycds_sup_own is no fix-up's: the copy is the process's string.
    strings, size, _ = _areas(raw, image)[0]
    own = raw.find(b"pycds_sup_own", image)
    assert own > 0
    own_address = strings + own - 40 - (image + _areas(raw, image)[0][2])
    assert _image_string(raw, image, own_address) == "pycds_sup_own"
    cp = run(venv, ["-c", UNHASHED_CHECK, str(found["normalize_encoding"]),
                    str(own_address)], cwd=tmp_path, mode="SHARE",
             archive=p.img, env=RANDOM_SEED, check=True)
    return json.loads(cp.stdout), cp


def test_strings_interned_before_stay_unwritten(interp, tmp_path_factory):
    """Where libpython does not move (a non-PIE executable: delta 0), a
    string the process interned before it used the image is only looked
    up, by a hash not stored in the image's copy, whose page is then not
    written; a string the image interns for the process gets its hash.
    Where it moves, each string's page is written anyway (its ob_type):
    the hash is stored before the one lookup.  A pyenv interpreter is
    also linked non-PIE.  3.11's interned strings are out of reach:
    nothing is known to be interned before."""
    if interp.hexversion < 0x030C0000:
        pytest.skip("3.11's interned strings are out of reach")
    venvs = [make_venv(interp)]
    if interp.name.startswith("pyenv"):
        venvs.append(non_pie_venv(interp, tmp_path_factory))
    for v in venvs:
        (before, own_hash, delta), cp = strings_interned_before(
            v, tmp_path_factory.mktemp("app"))
        assert own_hash != -1, cp.describe()
        assert (before == -1) == (delta == 0), cp.describe()
    # The last, where there are two, is the non-PIE link: nothing moves.
    assert len(venvs) == 1 or delta == 0, cp.describe()


STARTUP_STATE_CHECK = r"""
import argparse, json
from pycds._dump import startup_state
modules, interned = startup_state()
print(json.dumps([modules, sorted(interned)]))
"""


def test_startup_state(venv, tmp_path):
    """What DUMP learns from a fresh run of the interpreter: the modules it
    imports as it starts (sitecustomize's), and the strings interned when
    pycds activates, which a process has before it uses an archive:
    encodings', not those of a module only the process asking imported
    (argparse here), nor those of the start-up modules, which the image
    interns itself.  3.11's interned strings are out of reach: none.
    What a sitecustomize prints does not get in the way."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "sitecustomize.py").write_text(
        "import zzz_start\nprint('sitecustomize says hello')\n")
    (lib / "zzz_start.py").write_text("pycds_startup_only = 1\n")
    cp = run(venv, ["-c", STARTUP_STATE_CHECK], cwd=tmp_path, check=True,
             env={"PYTHONPATH": lib})
    # This process runs the sitecustomize too: its line comes first.
    modules, interned = json.loads(cp.stdout.splitlines()[-1])
    assert "sitecustomize" in modules and "zzz_start" in modules, \
        cp.describe()
    assert "argparse" not in modules, cp.describe()
    if venv.interp.hexversion < 0x030C0000:
        assert interned == [], cp.describe()
    else:
        assert "normalize_encoding" in interned, cp.describe()
        assert "add_argument" not in interned, cp.describe()
        assert "pycds_startup_only" not in interned, cp.describe()


def _layer_stats(p, base, layers):
    """layer_stats() of a SHARE run of the app over layers, which must
    run as the baseline did, without a warning."""
    cp = p.share(verbose=2, archive=layers, env=RANDOM_SEED)
    assert_same_run(base, cp)
    assert cp.verbose.warnings == [], cp.describe()
    lines = [ln for ln in cp.stderr.splitlines() if ln.startswith("LAYERS ")]
    return json.loads(lines[0][7:])


def test_layers_each_with_its_image(app):
    """Two layers, each with its image: both are mapped, each at its own
    addresses, and each serves its modules."""
    p = app
    base = p.baseline(check=True)
    lines = p.lst.read_text().splitlines()
    header, entries = lines[0], [ln for ln in lines[1:] if ln]
    mine = [ln for ln in entries if ln.split("\t")[1].startswith(str(p.cwd))]
    rest = [ln for ln in entries if ln not in mine]
    assert mine and rest

    layers = [str(p.work / "app.img"), str(p.work / "base.img")]

    def create(img, part):
        lst = p.work / (os.path.basename(img) + ".lst")
        lst.write_text("\n".join([header, *part]) + "\n")
        # Written where PYCDSARCHIVE names the layers, as a user's layered
        # setting does: the second image avoids the first's slot.
        cp = run_tool(p.venv, ["create", "-l", lst, "-o", img, "-q"],
                      cwd=p.cwd, env={"PYCDSARCHIVE": ":".join(layers)})
        assert cp.returncode == 0, cp.describe()

    create(layers[0], mine)
    create(layers[1], rest)
    assert _image_slot(layers[0]) != _image_slot(layers[1])
    first, second = _layer_stats(p, base, ":".join(layers))
    # A dict where the image is in use, else why it is not (a str).
    assert isinstance(first["prelinked"], dict), first
    assert isinstance(second["prelinked"], dict), second
    assert first["prelinked"]["served"] == len(mine), first
    # Every module the base layer served came from its image.
    assert second["served"] > 50, second
    assert second["prelinked"]["served"] == second["served"], second
    assert first["prelinked"]["path"] != second["prelinked"]["path"]



def test_layer_avoids_the_slot_of_another(app):
    """Two layers whose archives want the same slot (format.h: the slot is
    the archive's checksum's; here the same archive twice): the second is
    relocated, for good, until it is written again where PYCDSARCHIVE
    names both (`pycds-dump prelink`, as AUTO and `create` do), which
    gives its image the next free slot; then both are used in place."""
    p = app
    base = p.baseline(check=True)
    first, second = p.work / "first.img", p.work / "second.img"
    cp = run_tool(p.venv, ["create", "-l", p.lst, "-o", first, "-q"],
                  cwd=p.cwd)
    assert cp.returncode == 0, cp.describe()
    second.write_bytes(first.read_bytes())
    layers = "%s:%s" % (first, second)
    one, two = _layer_stats(p, base, layers)
    assert isinstance(one["prelinked"], dict), one
    assert two["prelinked"] == "its addresses are taken in this process", two

    cp = run_tool(p.venv, ["prelink", second], cwd=p.cwd,
                  env={"PYCDSARCHIVE": layers, **RANDOM_SEED})
    assert cp.returncode == 0, cp.describe()
    assert _image_slot(second) == (_image_slot(first) + 1) % NSLOTS
    again, two = _layer_stats(p, base, layers)
    assert isinstance(two["prelinked"], dict), two
    assert again["prelinked"]["served"] == one["prelinked"]["served"] > 0

# ------------------------------------------------ non-PIE executables

_non_pie = {}


def non_pie_venv(interp, tmp_path_factory):
    """The venv of a distribution-style executable of a pyenv interpreter
    (tools/link-non-pie), linked once per session, or skip."""
    if interp.python not in _non_pie:
        where = tmp_path_factory.mktemp("nopie") / "py"
        cp = subprocess.run([str(ROOT / "tools" / "link-non-pie"),
                             interp.python, str(where)],
                            capture_output=True, text=True)
        if cp.returncode == 3:
            pytest.skip(cp.stderr.strip())
        assert cp.returncode == 0, cp.stderr
        _non_pie[interp.python] = Interp(
            python=cp.stdout.strip(), name="nopie", version=interp.version,
            hexversion=interp.hexversion)
    return make_venv(_non_pie[interp.python])


def test_non_pie_executable(interp, tmp_path_factory):
    """On a non-PIE executable with libpython linked in, nothing of the
    image points to a moved object: no runtime slot is written, under
    address randomisation."""
    if not interp.name.startswith("pyenv") or interp.hexversion < 0x030C0000:
        pytest.skip("non-PIE executables are linked from pyenv 3.12+")
    v = non_pie_venv(interp, tmp_path_factory)
    p = make_app(v, tmp_path_factory.mktemp("nopie-app"))
    base = p.baseline(check=True, env=RANDOM_SEED)
    cp = p.share(verbose=2, env=RANDOM_SEED)
    assert_same_run(base, cp)
    image = assert_all_from_image(p, cp)
    assert image["delta"] == 0 and image["runtime_fixed"] == 0, image
