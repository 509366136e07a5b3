"""Crafted archives: well-formed files with valid checksums whose contents
lie.  The checksums are integrity, not authenticity (a crafted file
recomputes them), so what they guard must be checked on its own: every
offset, length, count, relocation target, symbol index and object extent.
Each crafted archive must be refused with pycds.ArchiveError naming the
file - never a crash, never a code object built from the lie - and under
SHARE the module imports normally.

The archive editor below reads the format from docs/FORMAT.md /
include/pycds/format.h (struct offsets) and finds objects by their ob_type
word, which in the file names a global symbol (`(sym << 3) | 1`), so that
it needs almost no per-version layout knowledge (CODE_FIELDS)."""

import struct

import pytest

from conftest import run_json, run_py

from archive_edit import (CODE_FIELDS, ENTRY_SIZE, STR_STATE, Img)


SOURCE = r'''
def f(a, b=(1, 'x', 2.5), *args, c=None, **kw):
    d = a + b[0]
    def g():
        return d, 'caf\xe9', '\u20ac', b'bytes', 10**30, -7, 1.5j
    return g, a in {1, 2, 'set'}
X = ('tuple', ('nested', 3, ('deeper', None)), 'identifier', 2**40)
'''

DUMP = r"""
import sys, pycds
src = sys.argv[2]
pycds.dump_code(sys.argv[1], {
    'm0': compile(src, '<m0>', 'exec', dont_inherit=True),
    'm1': compile('y = ("second", 2)\n' + src, '<m1>', 'exec',
                  dont_inherit=True)})
emit('ok')
"""

PROBE = r"""
import sys, pycds
path = sys.argv[1]
try:
    m = pycds.load_code(path)
except pycds.ArchiveError as e:
    emit({'state': 'refused-at-load', 'msg': str(e)})
    sys.exit(0)
states = {}
for n in ('m0', 'm1'):
    try:
        co = m[n]
    except pycds.ArchiveError as e:
        states[n] = 'refused: ' + str(e)
        continue
    except KeyError:
        states[n] = 'missing'
        continue
    ns = {}
    exec(co, ns)
    g, inset = ns['f'](1)
    states[n] = repr((g(), inset, ns['X']))
emit({'state': 'loaded', 'entries': states,
      'missing_name': 'nope' in m})
"""

EXPECTED = ("((2, 'café', '€', b'bytes', 1000000000000000000000000000000, "
            "-7, 1.5j), True, ('tuple', ('nested', 3, ('deeper', None)), "
            "'identifier', 1099511627776))")


@pytest.fixture(scope="module")
def base_archive(interp, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"crafted-{interp.id}") / "base.img"
    run_json(interp, DUMP, path, SOURCE)
    return path.read_bytes()


def version(interp):
    return ((interp.hexversion >> 24) & 0xff, (interp.hexversion >> 16) & 0xff)


# Each craft edits entry 0 (m0) of an Img; entry 1 (m1) stays valid unless
# the craft says otherwise.  A craft returns False when the archive has
# nothing it can edit (then the test fails: the base archive always has).

def slot_into_header(img, interp):
    w = img.relr_words(0)[0]
    img.put64(w, img.u64(w) - 8)          # the first ob_type -> ob_refcnt


def extra_slot(img, interp):
    for off in img.relr_words(0):
        w = img.u64(off)
        if w & 1 and w != 2**64 - 1:
            for b in range(1, 64):
                if not w >> b & 1:
                    img.put64(off, w | 1 << b)
                    return True
    return False


def missing_slot(img, interp):
    for off in img.relr_words(0):
        w = img.u64(off)
        if w & 1 and w >> 1:
            img.put64(off, w & (w - 2) | 1)     # clear the lowest set bit
            return True
    return False


def tuple_size_overlaps(img, interp):
    t = img.objects(0, "PyTuple_Type")[0]
    img.set_word(t + 16, img.word(t + 16) + 1)


def tuple_size_negative(img, interp):
    t = img.objects(0, "PyTuple_Type")[0]
    img.set_word(t + 16, -1)


def tuple_size_huge(img, interp):
    t = img.objects(0, "PyTuple_Type")[-1]
    img.set_word(t + 16, 2**61)


def str_length_past_part(img, interp):
    s = img.objects(0, "PyUnicode_Type")[-1]
    img.set_word(s + 16, 10**6)


def str_length_into_next(img, interp):
    # (+1 may only take a NUL of the padding: a valid str, 'x\0')
    s = img.objects(0, "PyUnicode_Type")[0]
    img.set_word(s + 16, img.word(s + 16) + 16)


def str_kind_lies(img, interp):
    s = img.objects(0, "PyUnicode_Type")[0]
    state = img.word(s + STR_STATE)
    img.set_word(s + STR_STATE, (state & ~0x1c) | (4 << 2))


def str_hash_set(img, interp):
    s = img.objects(0, "PyUnicode_Type")[0]
    img.set_word(s + 24, 12345)


def bytes_size_lies(img, interp):
    b = img.objects(0, "PyBytes_Type")[0]
    img.set_word(b + 16, img.word(b + 16) + 100000)


def int_digit_invalid(img, interp):
    n = img.objects(0, "PyLong_Type")[0]
    struct.pack_into("<I", img.data, img.heap + n + 24, 0xffffffff)


def code_size_lies(img, interp):
    c = img.objects(0, "PyCode_Type")[0]
    img.set_word(c + 16, img.word(c + 16) + 4)


def code_size_huge(img, interp):
    c = img.objects(0, "PyCode_Type")[-1]
    img.set_word(c + 16, 2**40)


def code_nlocalsplus_lies(img, interp):
    c = img.objects(0, "PyCode_Type")[0]
    off = img.heap + c + CODE_FIELDS[version(interp)]["co_nlocalsplus"]
    n, = struct.unpack_from("<i", img.data, off)
    struct.pack_into("<i", img.data, off, n + 5)


def code_stacksize_huge(img, interp):
    c = img.objects(0, "PyCode_Type")[0]
    off = img.heap + c + CODE_FIELDS[version(interp)]["co_stacksize"]
    struct.pack_into("<i", img.data, off, 2**30)


def code_names_not_a_tuple(img, interp):
    c = img.objects(0, "PyCode_Type")[0]
    # co_consts, co_names, co_exceptiontable are the first three fields on
    # every version: co_names -> the exception table (bytes)
    img.set_word(c + 32, img.word(c + 40))


def symbol_out_of_range(img, interp):
    w = img.relr_words(0)[0]
    slot = img.u64(w)
    img.set_word(slot, ((img.nsyms + 10) << 3) | 1)


def local_symbol_of_other_entry(img, interp):
    # a slot of m0 names a local symbol of m1
    s1 = img.entry(1, "sym_start")
    c = img.objects(0, "PyCode_Type")[0]
    img.set_word(c + 24, (s1 << 3) | 1)


def type_as_value(img, interp):
    t = img.objects(0, "PyTuple_Type")[0]
    img.set_word(t + 24, img.global_word("PyCode_Type"))


def tuple_typed_as_str(img, interp):
    t = img.objects(0, "PyTuple_Type")[0]
    img.set_word(t + 8, img.global_word("PyUnicode_Type"))


def str_typed_as_tuple(img, interp):
    s = img.objects(0, "PyUnicode_Type")[0]
    img.set_word(s + 8, img.global_word("PyTuple_Type"))


def pointer_into_middle(img, interp):
    s = img.pointer_slots(0)[0]
    img.set_word(s, img.word(s) + 8)


def pointer_to_itself(img, interp):
    t = img.objects(0, "PyTuple_Type")[-1]
    img.set_word(t + 24, t)                  # item 0 -> the tuple itself


def pointer_forward(img, interp):
    t = img.objects(0, "PyTuple_Type")[0]
    img.set_word(t + 24, img.entry(0, "root"))


def pointer_outside_part(img, interp):
    s = img.pointer_slots(0)[0]
    img.set_word(s, img.entry(1, "root"))


def refcount_lies(img, interp):
    c = img.objects(0, "PyCode_Type")[0]
    img.set_word(c, 1)


def gc_header_nonzero(img, interp):
    t = img.objects(0, "PyTuple_Type")[0]
    img.set_word(t - 16, 0x1000)


def root_not_code(img, interp):
    img.set_entry(0, "root", img.objects(0, "PyTuple_Type")[0])


def root_inside_code(img, interp):
    img.set_entry(0, "root", img.entry(0, "root") + 8)


def local_symbol_into_middle(img, interp):
    s = img.local_syms(0)[0]
    img.put64(s + 8, img.u64(s + 8) + 8)      # st_value


def local_symbol_forward(img, interp):
    s = img.local_syms(0)[0]
    img.put64(s + 8, img.entry(0, "root"))


def local_symbol_wrong_section(img, interp):
    s = img.local_syms(0)[0]
    struct.pack_into("<H", img.data, s + 6, 1)   # st_shndx


def heap_end_inside_object(img, interp):
    img.set_entry(0, "heap_end", img.entry(0, "heap_end") - 8)


CRAFTS = [slot_into_header, extra_slot, missing_slot, tuple_size_overlaps,
          tuple_size_negative, tuple_size_huge, str_length_past_part,
          str_length_into_next, str_kind_lies, str_hash_set, bytes_size_lies,
          int_digit_invalid, code_size_lies, code_size_huge,
          code_nlocalsplus_lies, code_stacksize_huge, code_names_not_a_tuple,
          symbol_out_of_range, local_symbol_of_other_entry, type_as_value,
          tuple_typed_as_str, str_typed_as_tuple, pointer_into_middle,
          pointer_to_itself, pointer_forward, pointer_outside_part,
          refcount_lies, gc_header_nonzero, root_not_code, root_inside_code,
          local_symbol_into_middle, local_symbol_forward,
          local_symbol_wrong_section, heap_end_inside_object]


def probe(interp, path):
    res, _ = run_json(interp, PROBE, path, env={"PYCDSTRUST": "any"})
    return res


def test_base_archive_loads(interp, base_archive, tmp_path):
    path = tmp_path / "sealed.img"
    path.write_bytes(Img(base_archive).seal())   # sealing alone changes nothing
    assert path.read_bytes() == base_archive
    res = probe(interp, path)
    assert res["state"] == "loaded", res
    assert res["entries"] == {"m0": EXPECTED, "m1": EXPECTED}, res
    assert res["missing_name"] is False


@pytest.mark.parametrize("craft", CRAFTS, ids=[c.__name__ for c in CRAFTS])
def test_crafted_entry_refused(interp, base_archive, tmp_path, craft):
    img = Img(base_archive)
    assert craft(img, interp) is not False, "nothing to craft"
    data = img.seal()
    assert data != base_archive
    path = tmp_path / f"{craft.__name__}.img"
    path.write_bytes(data)
    res = probe(interp, path)
    if res["state"] == "refused-at-load":
        assert str(path) in res["msg"], res
        return
    m0 = res["entries"]["m0"]
    assert m0.startswith("refused: ") and str(path) in m0, \
        f"{craft.__name__}: m0 was not refused: {m0}"
    # the other entry's part is intact and still served
    if craft not in (local_symbol_of_other_entry, pointer_outside_part):
        assert res["entries"]["m1"] == EXPECTED, res


def test_overlapping_parts_refused(interp, base_archive, tmp_path):
    """m1's part claims m0's bytes: m0 still loads (each part is relocated
    in its own private copy) and m1 is refused (its slots do not match
    the objects its range now begins with)."""
    img = Img(base_archive)
    img.set_entry(1, "heap_start", img.entry(0, "heap_start"))
    path = tmp_path / "overlap.img"
    path.write_bytes(img.seal())
    res = probe(interp, path)
    assert res["state"] == "loaded", res
    assert res["entries"]["m0"] == EXPECTED, res
    assert res["entries"]["m1"].startswith("refused: "), res


def test_index_cycle_terminates(interp, base_archive, tmp_path):
    """Every bucket full: a lookup of a name the archive lacks must end."""
    img = Img(base_archive)
    buckets = img.index + 16 + img.nentries * ENTRY_SIZE
    for j in range(img.nbuckets):
        struct.pack_into("<I", img.data, buckets + 4 * j, 1 + j % 2)
    path = tmp_path / "cycle.img"
    path.write_bytes(img.seal())
    res = probe(interp, path)
    assert res["state"] == "loaded", res
    assert res["missing_name"] is False
    assert res["entries"] == {"m0": EXPECTED, "m1": EXPECTED}, res


SHARE_RUN = r"""
import sys, pycds
sys.path.insert(0, sys.argv[2])
pycds.share(sys.argv[1], verbose=1)
import m0
g, inset = m0.f(1)
print(repr((g(), inset, m0.X)))
s = pycds.stats()
print(s['served'], s['refused'])
"""

DUMP_LIST = r"""
import sys, pycds
left_out = pycds.dump(sys.argv[1], sys.argv[2])
emit(left_out)
"""


def test_crafted_archive_under_share_imports_normally(interp, tmp_path):
    """The module whose part lies imports from its source, after one
    warning; no crash."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "m0.py").write_text(SOURCE)
    lst = tmp_path / "app.lst"
    lst.write_text(f"# pycds module list v1\nm0\t{src / 'm0.py'}\t0\n")
    good = tmp_path / "good.img"
    left_out, _ = run_json(interp, DUMP_LIST, lst, good)
    assert left_out == {}, left_out
    cp = run_py(interp, SHARE_RUN, good, src)
    assert cp.stdout.splitlines() == [EXPECTED, "1 0"], cp.stdout
    img = Img(good.read_bytes())
    tuple_size_overlaps(img, interp)
    bad = tmp_path / "bad.img"
    bad.write_bytes(img.seal())
    cp = run_py(interp, SHARE_RUN, bad, src)
    assert cp.stdout.splitlines() == [EXPECTED, "0 1"], cp.stdout
    warnings = [ln for ln in cp.stderr.splitlines()
                if "warning" in ln and str(bad) in ln]
    assert len(warnings) == 1, cp.stderr


NESTING = r"""
import sys, pycds
co = compile('X = 1', 'm', 'exec')
deep = ()
for i in range(150):
    deep = (deep, i)
# emitted first near the root, then shared from deeper down: the chain
# below the second use is longer than DUMP's recursion ever went
ok = co.replace(co_consts=(deep, ((((deep,),),),)) + co.co_consts)
deep2 = deep
for i in range(60):
    deep2 = (deep2,)
too_deep = co.replace(co_consts=(deep, deep2) + co.co_consts)
pycds.dump_code(sys.argv[1], {'ok': ok})
loaded = pycds.load_code(sys.argv[1])['ok'].co_consts == ok.co_consts
try:
    pycds.dump_code(sys.argv[1] + '.2', {'too_deep': too_deep})
    refused = None
except pycds.ArchiveError as e:
    refused = str(e)
emit({'loaded': loaded, 'refused': refused})
"""


def test_dump_refuses_nesting_share_would_refuse(interp, tmp_path):
    """DUMP and SHARE bound the same thing (PYCDS_MAX_NESTING): an archive
    DUMP writes is never refused by SHARE for its nesting."""
    res, _ = run_json(interp, NESTING, tmp_path / "n.img")
    assert res["loaded"] is True, res
    assert res["refused"] and "nesting too deep" in res["refused"], res
