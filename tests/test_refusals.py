"""An archive that this interpreter cannot use (foreign build, other format
version, truncated, corrupted, not an archive at all) is refused with
pycds.ArchiveError naming the file - never a crash, never a wrong code
object."""

import os
import shutil
import struct
import subprocess
import warnings

import pytest

import elfsections as elf
from conftest import INTERPRETERS, _check_importable, run_json


class UndetectedCorruption(UserWarning):
    """A flipped byte was not noticed (the loaded code was still right)."""


# Child: load, access every entry, compare with objcorpus.build_codes(), run
# the tricky module.  Reports how it ended; crashes show as a negative rc.
PROBE = r"""
import sys, pycds, objcorpus, codecompare
path = sys.argv[1]
try:
    m = pycds.load_code(path)
except pycds.ArchiveError as e:
    emit({'state': 'refused-at-load', 'msg': str(e)})
    sys.exit(0)
except BaseException as e:
    emit({'state': 'wrong-exception-at-load', 'msg': f'{type(e).__name__}: {e}'})
    sys.exit(0)
compiled = objcorpus.build_codes()
diffs = []
try:
    names = sorted(m)
    if names != sorted(compiled):
        diffs.append(f'names {names} != {sorted(compiled)}')
    loaded = {}
    for n in names:
        loaded[n] = m[n]
except pycds.ArchiveError as e:
    emit({'state': 'refused-at-access', 'msg': str(e)})
    sys.exit(0)
except BaseException as e:
    emit({'state': 'wrong-exception-at-access',
          'msg': f'{type(e).__name__}: {e}'})
    sys.exit(0)
for n, co in loaded.items():
    if n in compiled:
        err = codecompare.code_equal_report(co, compiled[n], n)
        if err:
            diffs.append(err)
if not diffs:
    ns1, ns2 = {}, {}
    exec(loaded['tricky'], ns1)
    exec(compiled['tricky'], ns2)
    if repr(ns1['results']()) != repr(ns2['results']()):
        diffs.append('tricky.results() differs')
emit({'state': 'accepted' if not diffs else 'accepted-DIFFERENT',
      'msg': '\n'.join(diffs[:10])})
"""


def probe(interp, path, flags=()):
    res, cp = run_json(interp, PROBE, path, flags=flags, timeout=120)
    return res


def assert_refused(res, path, what):
    assert res["state"] in ("refused-at-load", "refused-at-access"), \
        f"{what}: expected ArchiveError, got {res['state']}: {res['msg']}"
    assert str(path) in res["msg"], \
        f"{what}: the path {str(path)!r} is not in the message {res['msg']!r}"


def readelf(path):
    return subprocess.run(["readelf", "-W", "-S", "-s", "-r", "-n", str(path)],
                          capture_output=True, text=True)


# --------------------------------------------------------------------------
# The file is a well-formed ELF object that readelf reads


def test_readelf_reads_archive(interp, corpus_archive):
    if not shutil.which("readelf"):
        pytest.skip("readelf not installed")
    cp = readelf(corpus_archive)
    assert cp.returncode == 0, cp.stderr
    assert "Warning" not in cp.stderr and "Error" not in cp.stderr, cp.stderr
    for name in (".note.pycds", ".pycds.heap", ".relr.pycds.heap", ".symtab",
                 ".strtab", ".pycds.modules", ".shstrtab"):
        assert name in cp.stdout, f"{name} not in readelf output:\n{cp.stdout}"
    assert "pycds" in cp.stdout and "Relocation section" in cp.stdout
    assert "Symbol table '.symtab'" in cp.stdout


def test_layout_matches_format_h(interp, corpus_archive):
    data = open(corpus_archive, "rb").read()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1
    e_type, e_machine = struct.unpack_from("<HH", data, 0x10)
    assert (e_type, e_machine) == (1, 62), "expected ET_REL, EM_X86_64"
    names = [s.name for s in elf.sections(data) if s.name]
    assert names == [".note.pycds", ".pycds.heap", ".relr.pycds.heap",
                     ".symtab", ".strtab", ".pycds.modules", ".shstrtab"], names
    heap = elf.section(data, ".pycds.heap")
    assert heap.offset % 4096 == 0, f"heap at file offset {heap.offset:#x}"
    off, descsz = elf.note_descriptor_offset(data)
    assert descsz >= elf.HDR_MIN_SIZE and descsz % 8 == 0, descsz
    assert data[off:off + 8] == b"PYCDSIMG"
    version, = struct.unpack_from("<I", data, off + elf.HDR_FORMAT_VERSION)
    assert version == elf.FORMAT_VERSION
    hexversion, = struct.unpack_from("<I", data, off + elf.HDR_HEXVERSION)
    assert hexversion == interp.hexversion
    sum_off = elf.header_sum_offset(data)
    stored, = struct.unpack_from("<Q", data, off + sum_off)
    computed = elf.xxh3_64(data[off:off + sum_off])
    if computed is None:
        pytest.skip("libxxhash not available to check header_xxh3")
    assert stored == computed, \
        "header_xxh3 is not XXH3_64bits of the header bytes before it"
    # the section checksums in the header match the sections
    for i, name in enumerate([".pycds.heap", ".relr.pycds.heap", ".symtab",
                              ".strtab", ".pycds.modules"]):
        size, xxh = struct.unpack_from("<QQ", data,
                                       off + elf.HDR_SECTION_SUMS + 16 * i)
        s = elf.section(data, name)
        assert size == s.size, (name, size, s.size)
        assert xxh == elf.xxh3_64(data[s.offset:s.offset + s.size]), name


# --------------------------------------------------------------------------
# Another build's archive


PAIRS = [(a, b) for a in INTERPRETERS for b in INTERPRETERS if a is not b]

DUMP_SMALL = r"""
import sys, pycds
pycds.dump_code(sys.argv[1], {'m': compile('x = 1', '<m>', 'exec')})
emit('ok')
"""

LOAD_SMALL = r"""
import sys, pycds
try:
    m = pycds.load_code(sys.argv[1])
    for n in m:
        m[n]
except pycds.ArchiveError as e:
    emit({'state': 'refused', 'msg': str(e)})
else:
    emit({'state': 'accepted', 'msg': ''})
"""


@pytest.mark.skipif(len(INTERPRETERS) < 2, reason="needs two interpreters")
@pytest.mark.parametrize("pair", PAIRS or [None],
                         ids=[f"{a.id}-to-{b.id}" for a, b in PAIRS] or ["none"])
def test_other_build_refused(interpreters, pair, tmp_path):
    dumper, loader = pair
    for i in pair:
        msg = _check_importable(i)
        if msg:
            pytest.fail(msg, pytrace=False)
    path = tmp_path / "other.img"
    run_json(dumper, DUMP_SMALL, path)
    res, _ = run_json(loader, LOAD_SMALL, path)
    assert res["state"] == "refused", res
    msg = res["msg"].lower()
    assert str(path).lower() in msg, res["msg"]
    assert any(w in msg for w in ("key", "hexversion", "build-id", "build_id",
                                  "build id")), \
        f"message does not say the ABI key differs: {res['msg']!r}"


def test_other_optimize_level_refused(interp, corpus_archive):
    res = probe(interp, corpus_archive, flags=["-O"])
    assert_refused(res, corpus_archive, "archive of -O0 under -O")
    assert "optimi" in res["msg"].lower() or "key" in res["msg"].lower(), res


# --------------------------------------------------------------------------
# Header fields



def _patch_header(data, field_off, fmt, value, fix_sum):
    off, _ = elf.note_descriptor_offset(bytes(data))
    sum_off = elf.header_sum_offset(bytes(data))
    struct.pack_into(fmt, data, off + field_off, value)
    if fix_sum:
        h = elf.xxh3_64(bytes(data[off:off + sum_off]))
        if h is None:
            pytest.skip("libxxhash not available to recompute header_xxh3")
        struct.pack_into("<Q", data, off + sum_off, h)


@pytest.mark.parametrize("fix_sum", [False, True], ids=["stale-sum", "fixed-sum"])
def test_wrong_format_version(interp, corpus_archive, tmp_path, fix_sum):
    data = bytearray(open(corpus_archive, "rb").read())
    _patch_header(data, elf.HDR_FORMAT_VERSION, "<I", 99, fix_sum)
    path = tmp_path / "v99.img"
    path.write_bytes(data)
    res = probe(interp, path)
    assert_refused(res, path, "format version 99")
    if fix_sum:
        assert "version" in res["msg"].lower(), res["msg"]


KEY_FIELDS = {
    # field: (offset in header, struct format, value from old -> new)
    "hexversion": (16, "<I", lambda v: v + 1),
    "pyc_magic": (20, "<I", lambda v: v ^ 0x01),
    "optimize": (24, "<i", lambda v: 2),
    "pointer_size": (28, "<I", lambda v: 4),
    "build_id": (36, "<B", lambda v: v ^ 0xFF),
}


@pytest.mark.parametrize("field", sorted(KEY_FIELDS))
def test_foreign_key_refused(interp, corpus_archive, tmp_path, field):
    """The ABI key of another build (header checksum made valid again)."""
    data = bytearray(open(corpus_archive, "rb").read())
    off, _ = elf.note_descriptor_offset(bytes(data))
    foff, fmt, change = KEY_FIELDS[field]
    old, = struct.unpack_from(fmt, data, off + foff)
    _patch_header(data, foff, fmt, change(old), fix_sum=True)
    path = tmp_path / f"key-{field}.img"
    path.write_bytes(data)
    res = probe(interp, path)
    assert_refused(res, path, f"key field {field} changed")
    msg = res["msg"].lower()
    assert "key" in msg or field.replace("_", "") in msg.replace("_", "") \
        or field.replace("_", " ") in msg or field.replace("_", "-") in msg, \
        res["msg"]


# --------------------------------------------------------------------------
# Truncated files


@pytest.mark.parametrize("length", ["0", "10", "64", "half", "heap-start",
                                    "size-1"])
def test_truncated(interp, corpus_archive, tmp_path, length):
    data = open(corpus_archive, "rb").read()
    n = {"0": 0, "10": 10, "64": 64, "half": len(data) // 2,
         "heap-start": elf.section(data, ".pycds.heap").offset,
         "size-1": len(data) - 1}[length]
    path = tmp_path / f"trunc-{length}.img"
    path.write_bytes(data[:n])
    assert_refused(probe(interp, path), path, f"truncated to {n} bytes")


# --------------------------------------------------------------------------
# One flipped byte in each section (and in the ELF headers)

SECTIONS = [".note.pycds", ".pycds.heap", ".relr.pycds.heap", ".symtab",
            ".strtab", ".pycds.modules", ".shstrtab"]
WHERE = {"first": (lambda size: 0, 0x01),
         "middle": (lambda size: size // 2, 0xFF),
         "last": (lambda size: size - 1, 0x80)}

_undetected = []


def _flip_and_probe(interp, corpus_archive, tmp_path, offset, mask, what):
    data = bytearray(open(corpus_archive, "rb").read())
    data[offset] ^= mask
    path = tmp_path / "flipped.img"
    path.write_bytes(data)
    res = probe(interp, path)
    if res["state"] == "accepted":
        _undetected.append(f"{interp.id}: {what}")
        warnings.warn(UndetectedCorruption(
            f"{interp.id}: {what} (file offset {offset:#x}, xor {mask:#x}) "
            f"went undetected; the loaded code was still right"))
        return res
    assert res["state"] != "accepted-DIFFERENT", \
        f"{what}: corruption undetected and the loaded code is WRONG:\n" \
        f"{res['msg']}"
    assert_refused(res, path, what)
    return res


@pytest.mark.parametrize("where", sorted(WHERE))
@pytest.mark.parametrize("name", SECTIONS)
def test_flipped_byte_in_section(interp, corpus_archive, tmp_path, name, where):
    data = open(corpus_archive, "rb").read()
    s = elf.section(data, name)
    assert s.size > 0, f"section {name} is empty"
    pos, mask = WHERE[where]
    _flip_and_probe(interp, corpus_archive, tmp_path, s.offset + pos(s.size),
                    mask, f"{name} byte {pos(s.size)} of {s.size} ({where})")


@pytest.mark.parametrize("eighth", range(1, 8))
def test_flipped_byte_across_heap(interp, corpus_archive, tmp_path, eighth):
    """Flips spread over the heap land in different entries' parts: each is
    caught when that entry is first accessed."""
    data = open(corpus_archive, "rb").read()
    s = elf.section(data, ".pycds.heap")
    pos = s.size * eighth // 8
    _flip_and_probe(interp, corpus_archive, tmp_path, s.offset + pos, 0x04,
                    f".pycds.heap byte {pos} of {s.size} ({eighth}/8)")


ELF_HEADER_FIELDS = {
    "e_ident-class": (4, 0x03), "e_ident-version": (6, 0x02),
    "e_type": (0x10, 0x02),
    "e_machine": (0x12, 0x01), "e_shoff": (0x28, 0x10),
    "e_shoff-high": (0x2C, 0x01), "e_shentsize": (0x3A, 0x08),
    "e_shnum": (0x3C, 0x01), "e_shstrndx": (0x3E, 0x01),
}


@pytest.mark.parametrize("field", sorted(ELF_HEADER_FIELDS))
def test_flipped_byte_in_elf_header(interp, corpus_archive, tmp_path, field):
    off, mask = ELF_HEADER_FIELDS[field]
    _flip_and_probe(interp, corpus_archive, tmp_path, off, mask,
                    f"ELF header {field}")


SHDR_FIELDS = {"sh_type": (4, 0x01), "sh_offset": (24, 0x08),
               "sh_offset-high": (28, 0x10), "sh_size": (32, 0x04),
               "sh_size-high": (38, 0x01), "sh_link": (40, 0x01),
               "sh_entsize": (56, 0x01)}


@pytest.mark.parametrize("field", sorted(SHDR_FIELDS))
@pytest.mark.parametrize("name", SECTIONS)
def test_flipped_byte_in_section_header(interp, corpus_archive, tmp_path, name,
                                        field):
    data = open(corpus_archive, "rb").read()
    s = elf.section(data, name)
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, = struct.unpack_from("<H", data, 0x3A)
    foff, mask = SHDR_FIELDS[field]
    _flip_and_probe(interp, corpus_archive, tmp_path,
                    e_shoff + s.index * e_shentsize + foff, mask,
                    f"section header of {name}: {field}")


# --------------------------------------------------------------------------
# Not an archive at all


NOT_ARCHIVES = ["empty", "text", "random", "other-elf", "directory", "missing",
                "dev-null"]


@pytest.mark.parametrize("kind", NOT_ARCHIVES)
def test_not_an_archive(interp, tmp_path, kind):
    path = tmp_path / f"not-{kind}.img"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an ELF file\n" * 100)
    elif kind == "random":
        path.write_bytes(bytes((i * 7919 + 13) % 256 for i in range(20000)))
    elif kind == "other-elf":
        shutil.copy(interp.python, path)    # an ELF, but not a pycds archive
    elif kind == "directory":
        path.mkdir()
    elif kind == "missing":
        pass
    elif kind == "dev-null":
        path = "/dev/null"
    res = probe(interp, path)
    assert res["state"] == "refused-at-load", res
    assert str(path) in res["msg"], res["msg"]


INSPECT = r"""
import sys, pycds
out = {}
for p in sys.argv[1:]:
    try:
        out[p] = ('ok', pycds.verify_archive(p))
    except pycds.ArchiveError as e:
        out[p] = ('ArchiveError', str(e))
    except BaseException as e:
        out[p] = (type(e).__name__, str(e))
emit(out)
"""


def test_verify_archive_reports_flips(interp, corpus_archive, tmp_path):
    """verify_archive() finds a flipped byte anywhere in a section (every
    checksum is checked there), or refuses the file outright."""
    data = open(corpus_archive, "rb").read()
    paths = []
    for name in SECTIONS:
        s = elf.section(data, name)
        flipped = bytearray(data)
        flipped[s.offset + s.size // 2] ^= 0xFF
        p = tmp_path / f"flip{name}.img"
        p.write_bytes(flipped)
        paths.append(str(p))
    res, _ = run_json(interp, INSPECT, corpus_archive, *paths)
    assert res[str(corpus_archive)] == ["ok", []], res[str(corpus_archive)]
    for p in paths:
        kind, detail = res[p]
        assert kind in ("ok", "ArchiveError"), (p, kind, detail)
        if kind == "ok":
            assert detail, f"verify_archive found nothing wrong in {p}"


# --------------------------------------------------------------------------
# What code branches on: ArchiveError's path, entry and kind


KINDS = r"""
import os, sys, pycds
from pycds import _dump
tmp, corpus = sys.argv[1], sys.argv[2]
out = {}
def kind_of(call, *args):
    try:
        call(*args)
    except pycds.ArchiveError as e:
        return [e.kind, e.path, e.entry]
    return None
out['missing'] = kind_of(pycds.load_code, os.path.join(tmp, 'none.img'))
text = os.path.join(tmp, 'text.img')
with open(text, 'w') as f:
    f.write('not an archive at all\n' * 10)
out['text'] = kind_of(pycds.load_code, text)
out['foreign'] = kind_of(pycds.load_code, sys.argv[3])
writable = os.path.join(tmp, 'writable.img')
with open(corpus, 'rb') as src, open(writable, 'wb') as dst:
    dst.write(src.read())
os.chmod(writable, 0o664)
out['untrusted'] = kind_of(pycds.load_code, writable)
class Local:
    pass
code = compile('x = 1', 'm', 'exec').replace(co_consts=(Local, None))
out['unarchivable'] = kind_of(pycds.dump_code, os.path.join(tmp, 'u.img'),
                              {'m': code})
# DUMP leaves such an entry out, by its kind, and archives the rest
src = os.path.join(tmp, 'good.py')
with open(src, 'w') as f:
    f.write('y = 2\n')
entries = [_dump._entry('good', src, False)[0],
           ('bad', code, src) + _dump._entry('good', src, False)[0][3:]]
failed = {}
written = _dump.write_entries(os.path.join(tmp, 'd.img'), entries,
                              'timestamp', failed)
out['left_out'] = {n: [why.kind, str(why).split(':')[0]]
                   for n, why in failed.items()}
out['written'] = [e[0] for e in written]
emit(out)
"""


def test_refusal_kinds(interp, corpus_archive, tmp_path):
    """Callers branch on ArchiveError.kind and .entry, not on the wording
    of the message (AUTO, DUMP leaving an entry out, the CLI's report)."""
    foreign = tmp_path / "foreign.img"
    data = bytearray(open(corpus_archive, "rb").read())
    off, _ = elf.note_descriptor_offset(bytes(data))
    foff, fmt, change = KEY_FIELDS["hexversion"]
    old, = struct.unpack_from(fmt, data, off + foff)
    _patch_header(data, foff, fmt, change(old), fix_sum=True)
    foreign.write_bytes(data)
    res, _ = run_json(interp, KINDS, tmp_path, corpus_archive, foreign)
    assert res["missing"] == ["missing", str(tmp_path / "none.img"), None]
    assert res["text"] == ["unusable", str(tmp_path / "text.img"), None]
    assert res["foreign"] == ["foreign", str(foreign), None]
    assert res["untrusted"] == ["untrusted", str(tmp_path / "writable.img"),
                                None]
    assert res["unarchivable"] == ["unarchivable", None, "m"]
    assert res["left_out"] == {"bad": ["unarchivable", "ArchiveError"]}
    assert res["written"] == ["good"]
