"""Minimal ELF64 little-endian section-header reader for the tests (no
dependency on the extension: used to corrupt archives on purpose)."""

import ctypes
import ctypes.util
import pathlib
import re
import struct
from collections import namedtuple

Section = namedtuple("Section", "index name type flags addr offset size link "
                                "info addralign entsize")

SHT_NOBITS = 8

# The version this tree writes, from the one definition of the format.
FORMAT_VERSION = int(re.search(
    r"#define PYCDS_FORMAT_VERSION (\d+)",
    (pathlib.Path(__file__).resolve().parent.parent / "include" / "pycds"
     / "format.h").read_text()).group(1))

# The heap's relocation section: .rela.pycds.heap (format 1) or
# .relr.pycds.heap (format 2), as format.h defines it.
_FORMAT_H = (pathlib.Path(__file__).resolve().parent.parent / "include"
             / "pycds" / "format.h").read_text()
_m = re.search(r'#define PYCDS_SECTION_REL[AR] "([^"]+)"', _FORMAT_H)
RELOC_SECTION = _m.group(1) if _m else ".rela.pycds.heap"

# Every section of an archive, in file order (format.h).
SECTIONS = [".note.pycds", ".pycds.heap", RELOC_SECTION, ".symtab", ".strtab",
            ".pycds.modules", ".shstrtab"]

# struct pycds_header (include/pycds/format.h)
HDR_MAGIC = 0
HDR_FORMAT_VERSION = 8
HDR_VALIDATION = 12
HDR_KEY = 16
HDR_HEXVERSION = 16
HDR_BUILD_ID_LEN = 32
HDR_BUILD_ID = 36
HDR_SECTION_SUMS = 104            # heap, relr, symtab, strtab, index
HDR_MIN_SIZE = 184
# header_xxh3 is the last field and covers every byte before it: its offset
# is the descriptor size - 8 (see header_sum_offset()).


def sections(data):
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not an ELF64 little-endian file")
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = []
    for i in range(e_shnum):
        off = e_shoff + i * e_shentsize
        raw.append(struct.unpack_from("<IIQQQQIIQQ", data, off))
    strtab = raw[e_shstrndx]
    stroff = strtab[4]
    result = []
    for i, (name, typ, flags, addr, offset, size, link, info, align,
            entsize) in enumerate(raw):
        end = data.index(b"\0", stroff + name)
        result.append(Section(i, data[stroff + name:end].decode(), typ, flags,
                              addr, offset, size, link, info, align, entsize))
    return result


def section(data, name):
    for s in sections(data):
        if s.name == name:
            return s
    raise KeyError(name)


def note_descriptor_offset(data):
    """(file offset, size) of struct pycds_header inside .note.pycds
    (4-byte aligned note: name "pycds\\0" padded to 8)."""
    s = section(data, ".note.pycds")
    namesz, descsz, ntype = struct.unpack_from("<III", data, s.offset)
    assert data[s.offset + 12:s.offset + 12 + namesz] == b"pycds\0", \
        data[s.offset:s.offset + 32]
    return s.offset + 12 + ((namesz + 3) & ~3), descsz


def header_sum_offset(data):
    """Offset (inside the descriptor) of header_xxh3, the last field."""
    _, descsz = note_descriptor_offset(data)
    return descsz - 8


_xxh = None


def xxh3_64(data):
    """XXH3_64bits through the system's libxxhash; None when unavailable."""
    global _xxh
    if _xxh is None:
        name = ctypes.util.find_library("xxhash") or "libxxhash.so.0"
        try:
            lib = ctypes.CDLL(name)
            lib.XXH3_64bits.restype = ctypes.c_uint64
            lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
            _xxh = lib
        except OSError:
            _xxh = False
    if not _xxh:
        return None
    return _xxh.XXH3_64bits(bytes(data), len(data))
