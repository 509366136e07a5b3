"""Read and edit pycds archives in memory, then recompute every checksum as
a crafted file would (tests/test_crafted.py, tests/test_fuzz_regressions.py).
Struct offsets from include/pycds/format.h."""

import pathlib
import re
import struct

try:
    import pytest
except ImportError:      # imported outside pytest
    pytest = None

import elfsections as elf

FORMAT_H = (pathlib.Path(__file__).resolve().parent.parent / "include"
            / "pycds" / "format.h").read_text()

_SCALARS = {"uint8_t": 1, "char": 1, "uint16_t": 2, "uint32_t": 4,
            "int32_t": 4, "uint64_t": 8, "int64_t": 8}


def _constant(name):
    if name.isdigit():
        return int(name)
    m = re.search(r"#define %s (\d+)" % name, FORMAT_H)
    if m:
        return int(m.group(1))
    # an enum's last member counts the ones before it (PYCDS_NKINDS)
    m = re.search(r"enum \w+ \{([^}]*)\b%s\b" % name, FORMAT_H)
    return len(re.findall(r"\bPYCDS_\w+", m.group(1)))


def struct_layout(name):
    """({field: offset}, size, alignment) of struct `name` of format.h
    (fields of nested structs as 'outer.inner'), with C's natural
    alignment."""
    body = re.search(r"struct %s \{(.*?)\n\};" % name, FORMAT_H, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields, off, align_max = {}, 0, 1
    for decl in body.split(";"):
        decl = decl.strip()
        if not decl:
            continue
        m = re.match(r"(struct \w+|\w+)\s+(.*)", decl, re.S)
        typ, names = m.group(1), m.group(2)
        if typ.startswith("struct "):
            sub, size, align = struct_layout(typ.split()[1])
        else:
            sub, size, align = None, _SCALARS[typ], _SCALARS[typ]
        for nm in names.split(","):
            nm = nm.strip()
            count = 1
            am = re.match(r"(\w+)\[(\w+)\]", nm)
            if am:
                nm, count = am.group(1), _constant(am.group(2))
            off = (off + align - 1) // align * align
            fields[nm] = off
            for k, v in (sub or {}).items():
                fields[f"{nm}.{k}"] = off + v
            off += size * count
            align_max = max(align_max, align)
    return fields, (off + align_max - 1) // align_max * align_max, align_max


HEADER, _, _ = struct_layout("pycds_header")
ENTRY, ENTRY_SIZE, _ = struct_layout("pycds_entry")
H_NLOCAL_SYMS = HEADER["nlocal_syms"]
H_GLOBALS_XXH3 = HEADER["globals_xxh3"]
H_SUMS = HEADER["heap"]                 # heap, relr, symtab, strtab, index
E = ENTRY
SYM_SIZE = 24

# offsetof(PyCodeObject, ...) and the str state word, per minor version
CODE_FIELDS = {
    (3, 11): {"co_stacksize": 68, "co_nlocalsplus": 76},
    (3, 12): {"co_stacksize": 64, "co_nlocalsplus": 72},
    (3, 13): {"co_stacksize": 64, "co_nlocalsplus": 72},
}
STR_STATE = 32


class Img:
    """An archive held in memory, edited in place, then sealed."""

    def __init__(self, data):
        self.data = bytearray(data)
        secs = {s.name: s for s in elf.sections(bytes(data))}
        self.secs = secs
        self.heap = secs[".pycds.heap"].offset
        self.relr = secs[elf.RELOC_SECTION].offset
        self.syms = secs[".symtab"].offset
        self.nsyms = secs[".symtab"].size // SYM_SIZE
        self.strtab = secs[".strtab"].offset
        self.index = secs[".pycds.modules"].offset
        self.hdr, _ = elf.note_descriptor_offset(bytes(data))
        self.nlocal = self.u64(self.hdr + H_NLOCAL_SYMS)
        self.nentries, self.nbuckets, _ = struct.unpack_from(
            "<III", self.data, self.index)

    def u64(self, off):
        return struct.unpack_from("<Q", self.data, off)[0]

    def put64(self, off, v):
        struct.pack_into("<Q", self.data, off, v & (2**64 - 1))

    # entries ------------------------------------------------------------
    def entry_off(self, i):
        return self.index + 16 + i * ENTRY_SIZE

    def entry(self, i, field):
        return self.u64(self.entry_off(i) + E[field])

    def set_entry(self, i, field, v):
        self.put64(self.entry_off(i) + E[field], v)

    # heap (offsets relative to the heap) ---------------------------------
    def word(self, off):
        return self.u64(self.heap + off)

    def set_word(self, off, v):
        self.put64(self.heap + off, v)

    def relr_words(self, i):
        start, n = self.entry(i, "relr_start"), self.entry(i, "relr_count")
        return [self.relr + 8 * (start + k) for k in range(n)]

    def slots(self, i):
        out, where = [], None
        for off in self.relr_words(i):
            w = self.u64(off)
            if w & 1 == 0:
                out.append(w)
                where = w + 8
            else:
                for b in range(1, 64):
                    if w >> b & 1:
                        out.append(where + 8 * (b - 1))
                where += 63 * 8
        return out

    # symbols --------------------------------------------------------------
    def sym_name(self, k):
        st_name, = struct.unpack_from("<I", self.data, self.syms + k * SYM_SIZE)
        end = self.data.index(b"\0", self.strtab + st_name)
        return self.data[self.strtab + st_name:end].decode()

    def global_word(self, name):
        for k in range(self.nlocal, self.nsyms):
            if self.sym_name(k) == name:
                return (k << 3) | 1
        raise KeyError(name)

    def objects(self, i, type_name):
        """Offsets of the objects of entry i whose type is type_name."""
        w = self.global_word(type_name)
        return [s - 8 for s in self.slots(i) if self.word(s) == w]

    def pointer_slots(self, i):
        """Slots that hold a heap offset (not a symbol)."""
        return [s for s in self.slots(i) if self.word(s) & 1 == 0]

    def local_syms(self, i):
        start, n = self.entry(i, "sym_start"), self.entry(i, "sym_count")
        return [self.syms + k * SYM_SIZE for k in range(start, start + n)]

    # sealing ----------------------------------------------------------------
    def seal(self):
        """Recompute every checksum, as a crafted file would."""
        x = elf.xxh3_64
        if x(b"") is None:
            pytest.skip("libxxhash not available to recompute checksums")
        d = self.data
        for i in range(self.nentries):
            hs, he = self.entry(i, "heap_start"), self.entry(i, "heap_end")
            rs, rn = self.entry(i, "relr_start"), self.entry(i, "relr_count")
            ss, sn = self.entry(i, "sym_start"), self.entry(i, "sym_count")
            if he < hs or self.heap + he > len(d):
                continue
            part = (bytes(d[self.heap + hs:self.heap + he])
                    + bytes(d[self.relr + 8 * rs:self.relr + 8 * (rs + rn)])
                    + bytes(d[self.syms + SYM_SIZE * ss:
                              self.syms + SYM_SIZE * (ss + sn)]))
            self.set_entry(i, "part_xxh3", x(part))
        if "entry_xxh3" in E:
            # of the entry (this field as 0), then its name and origin
            nb = struct.unpack_from("<I", d, self.index + 4)[0]
            pool = self.entry_off(self.nentries) + 4 * nb
            for i in range(self.nentries):
                self.set_entry(i, "entry_xxh3", 0)
                eo = self.entry_off(i)
                rec = bytes(d[eo:eo + ENTRY_SIZE])
                for f in ("name", "origin"):
                    off, n = struct.unpack_from("<II", d, eo + E[f])
                    rec += bytes(d[pool + off:pool + off + n])
                self.set_entry(i, "entry_xxh3", x(rec))
        for k, name in enumerate([".pycds.heap", elf.RELOC_SECTION, ".symtab",
                                  ".strtab", ".pycds.modules"]):
            s = self.secs[name]
            self.put64(self.hdr + H_SUMS + 16 * k + 8,
                       x(bytes(d[s.offset:s.offset + s.size])))
        self.put64(self.hdr + H_GLOBALS_XXH3,
                   x(bytes(d[self.syms + SYM_SIZE * self.nlocal:
                             self.syms + SYM_SIZE * self.nsyms])))
        sum_off = elf.header_sum_offset(bytes(d))
        self.put64(self.hdr + sum_off,
                   x(bytes(d[self.hdr:self.hdr + sum_off])))
        return bytes(d)
