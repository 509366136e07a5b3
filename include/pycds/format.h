/* The pycds archive format, version 3.
 *
 * This header is the single definition of the on-disk layout; docs/FORMAT.md
 * describes the same thing in prose.  All integers are little-endian
 * (the archive is only ever read by the x86-64 interpreter that wrote it).
 *
 * An archive is an ELF64 relocatable object (ET_REL, EM_X86_64) with these
 * sections, in this order:
 *
 *   .note.pycds        one note, name "pycds", type PYCDS_NOTE_HEADER,
 *                      descriptor = struct pycds_header
 *   .pycds.heap        the objects; file offset page-aligned
 *   .relr.pycds.heap   SHT_RELR: the pointer slots of the heap, RELR-encoded,
 *                      one run per entry, in increasing offset
 *   .symtab            Elf64_Sym: null, then each entry's local symbols
 *                      (grouped by entry), then the global (runtime) symbols
 *   .strtab            symbol names
 *   .pycds.modules     the index: struct pycds_index_header, entries,
 *                      hash buckets, string pool
 *   .shstrtab          section names
 *   .pycds.prelinked   optional, file offset page-aligned: the prelinked
 *                      image, the same objects laid out to be mapped and
 *                      used in place (below)
 */
#ifndef PYCDS_FORMAT_H
#define PYCDS_FORMAT_H

#include <stdint.h>

#define PYCDS_FORMAT_VERSION 3

#define PYCDS_NOTE_NAME "pycds"
#define PYCDS_NOTE_HEADER 1

#define PYCDS_SECTION_NOTE ".note.pycds"
#define PYCDS_SECTION_HEAP ".pycds.heap"
#define PYCDS_SECTION_RELR ".relr.pycds.heap"
#define PYCDS_SECTION_INDEX ".pycds.modules"
#define PYCDS_SECTION_PRELINKED ".pycds.prelinked"

/* Section header index of .pycds.heap (the order above is fixed). */
#define PYCDS_HEAP_SHNDX 2

#define PYCDS_HEAP_ALIGN 4096
/* Every object (with its GC header, where it has one) starts on this. */
#define PYCDS_OBJECT_ALIGN 8

/* No chain of references between the archived objects of a part is
 * longer than this (objects that refer to nothing archived count 1): DUMP
 * refuses deeper nesting, SHARE refuses a part that has it (CPython's
 * recursive functions, tuple hashing among them, must not run out of C
 * stack on an archived object). */
#define PYCDS_MAX_NESTING 200

/* A pointer slot of the heap holds, in the file, either
 *   the heap offset of the object it points to (a multiple of 8), or
 *   (symbol index << 3) | PYCDS_SLOT_SYMBOL: the object the symbol names.
 * SHARE replaces it with the address. */
#define PYCDS_SLOT_SYMBOL 1
#define PYCDS_SLOT_TAG_BITS 3

/* Names of the symbols that are not runtime objects but objects of the
 * archive that need work at load time.  They are STB_LOCAL, defined in the
 * heap section, st_value = offset of the archived object. */
#define PYCDS_SYM_INTERN "pycds.intern"       /* str: intern it */
#define PYCDS_SYM_FROZENSET "pycds.frozenset" /* tuple: build a frozenset */

/* Global symbols (SHN_UNDEF) name runtime objects: exported data symbols of
 * libpython (PyUnicode_Type, _Py_NoneStruct, ...) or one of these
 * pycds-defined names, each followed by a decimal argument:
 *   pycds.int.N      the small int N (-5..256)
 *   pycds.char.N     the one-character latin-1 str chr(N)
 *   pycds.ichar.N    the same, interned
 *   pycds.byte.N     the one-byte bytes bytes([N])
 * and the argument-less pycds.str.empty, pycds.bytes.empty,
 * pycds.tuple.empty, and pycds.FrozenDict, the type of data archives'
 * mappings (the extension's own). */

/* Bytes of heap by object kind, for `pycds-dump info`. */
enum pycds_kind {
    PYCDS_KIND_CODE,
    PYCDS_KIND_STR,
    PYCDS_KIND_BYTES,
    PYCDS_KIND_INT,
    PYCDS_KIND_FLOAT,
    PYCDS_KIND_COMPLEX,
    PYCDS_KIND_TUPLE,
    PYCDS_KIND_FROZENSET,  /* the tuples that frozensets are built from */
    PYCDS_KIND_GC_HEADER,
    PYCDS_NKINDS
};

/* The key an archive is bound to: it is only used by an interpreter whose
 * own key is byte for byte the same. */
struct pycds_abi_key {
    uint32_t hexversion;      /* sys.hexversion */
    uint32_t pyc_magic;       /* importlib.util.MAGIC_NUMBER, little-endian */
    int32_t optimize;         /* sys.flags.optimize */
    uint32_t pointer_size;
    uint32_t build_id_len;
    uint8_t build_id[64];     /* GNU build-id of libpython or the executable */
    uint32_t reserved;
};

struct pycds_section_sum {
    uint64_t size;
    uint64_t xxh3;            /* XXH3_64bits of the section's bytes */
};

enum pycds_validation {
    PYCDS_VALIDATE_TIMESTAMP = 0,
    PYCDS_VALIDATE_CHECKED_HASH = 1,
    PYCDS_VALIDATE_UNCHECKED = 2,
};

struct pycds_header {
    char magic[8];            /* "PYCDSIMG" */
    uint32_t format_version;  /* PYCDS_FORMAT_VERSION */
    uint32_t validation;      /* enum pycds_validation, chosen at DUMP */
    struct pycds_abi_key key;
    struct pycds_section_sum heap, relr, symtab, strtab, index;
    uint64_t nlocal_syms;     /* index of the first global symbol */
    uint64_t globals_xxh3;    /* of the global symbols (checked at open) */
    uint64_t kind_bytes[PYCDS_NKINDS];
    uint64_t header_xxh3;     /* of every byte above */
};

#define PYCDS_MAGIC "PYCDSIMG"

/* .pycds.modules */
struct pycds_index_header {
    uint32_t nentries;
    uint32_t nbuckets;        /* a power of two, >= 2 * nentries */
    uint32_t strings_size;
    uint32_t reserved;
};

#define PYCDS_ENTRY_PACKAGE 0x1      /* module is a package */
#define PYCDS_ENTRY_SOURCE 0x2       /* source_* fields are meaningful */
/* A data archive's one entry (pycds.dump_data, docs/DATA.md): its root is
 * a 1-tuple holding the data, not a code object, its strings are not
 * interned, and it may hold pycds.FrozenDict objects (type symbol
 * "pycds.FrozenDict"). */
#define PYCDS_ENTRY_DATA 0x4
#define PYCDS_DATA_ENTRY_NAME "<data>"

/* A string in the index string pool: offset and length, not
 * NUL-terminated. */
struct pycds_str {
    uint32_t off;
    uint32_t len;
};

/* An entry is checked (its strings in the pool, its checksum) the first
 * time a lookup finds it, not when the archive is opened: opening costs
 * the same for ten modules or ten thousand.  A lookup that passes over
 * other entries reads only their name_hash and, bounds-checked, name. */
struct pycds_entry {
    uint64_t entry_xxh3;      /* of this entry (this field as 0), then the
                               * bytes of its name and its origin */
    uint64_t name_hash;       /* XXH3_64bits of the name */
    struct pycds_str name;
    struct pycds_str origin;  /* source path the module was compiled from;
                               * a package's search location is its
                               * directory, __cached__ follows from it */
    uint32_t flags;           /* PYCDS_ENTRY_* */
    uint32_t reserved;
    /* The entry's part: [heap_start, heap_end) of the heap, its RELR words
     * [relr_start, relr_start + relr_count) and local symbols
     * [sym_start, sym_start + sym_count).  Parts never overlap and a part
     * only refers to itself and to global symbols. */
    uint64_t heap_start, heap_end;
    uint64_t root;            /* heap offset of the module's code object */
    uint64_t relr_start, relr_count;
    uint64_t sym_start, sym_count;
    uint64_t nslots;          /* pointer slots the RELR words mark */
    uint64_t part_xxh3;       /* of heap part, then its RELR words, syms */
    int64_t source_mtime_ns;
    uint64_t source_size;
    uint64_t source_xxh3;
};

/* After the entries: uint32_t buckets[nbuckets], each 0 (empty) or
 * 1 + entry index; open addressing, linear probing from
 * name_hash & (nbuckets - 1).  Then the string pool. */


/* ---- The prelinked image (docs/FORMAT.md, "Prelinked image") ----------
 *
 * The archive's last section, .pycds.prelinked, written with the archive
 * by DUMP (pycds-dump create, AUTO) or again by `pycds-dump prelink` and a
 * PRELINK run.  It holds the archive's objects with their final internal
 * pointers, laid out at a preferred address: SHARE maps its areas there
 * from the archive file and uses the objects where they lie.  What differs between processes is
 * fixed per entry, on its first use, from the entry's tables: pointers
 * into libpython (one load address added, zero for a non-PIE
 * interpreter), strings a process interned before, frozensets.
 *
 * Section: header, entry table (one record per index entry of the
 * archive, same order), fix-up table, runtime table (RELR words: the slots
 * that point into libpython), chunk table (the XXH3 of each
 * PYCDS_PRELINK_CHUNK bytes of the strings area, checked when a string in
 * them is first used), then each area at its page-aligned file_offset,
 * counted from the section's start. */
#define PYCDS_PRELINK_MAGIC "PYCDSPLK"
#define PYCDS_PRELINK_VERSION 3
/* One page: a string's chunk is checked when the string is first used,
 * so that the bytes hashed are those of the pages a process uses. */
#define PYCDS_PRELINK_CHUNK 4096
#define PYCDS_PRELINK_PAGE 4096

/* Images live at preferred addresses in [SLOTS_START, SLOTS_END), 32-64
 * TiB: far from where Linux puts the executable, the heap, the stacks and
 * the mappings of a process (with or without address randomisation, for
 * 47-bit address spaces it places them below or near 128 TiB top-down,
 * but never this low unless memory is exhausted), and above
 * AddressSanitizer's shadow memory, which ends at 16 TiB.  An archive's
 * image takes the slot its checksum picks, or the next one that no image
 * of its other layers takes (docs/FORMAT.md, "Addresses"); each of the
 * PYCDS_NAREAS areas has an equal share of the slot. */
#define PYCDS_PRELINK_SLOTS_START 0x200000000000ULL
#define PYCDS_PRELINK_SLOT_SIZE (64ULL << 30)
#define PYCDS_PRELINK_NSLOTS 512
#define PYCDS_PRELINK_AREA_MAX \
    (PYCDS_PRELINK_SLOT_SIZE / PYCDS_NAREAS & ~(uint64_t)(PYCDS_PRELINK_PAGE - 1))

/* Areas, by what happens to their pages (docs/FORMAT.md): the interned
 * strings (one copy per value); what the code only reads (tuples, bytes,
 * other strings, numbers); the objects with a slot a process may have to
 * fix up at load (a frozenset, an interned string it may hold elsewhere);
 * code objects, whose bytecode the interpreter writes as it runs and
 * specialises it, in two areas: those that ran in the process the image
 * was made in, and the others; run-once code: the code of module and
 * class bodies (no CO_NEWLOCALS) and the tuples and bytes only such code
 * refers to, which a process only reads, to copy them to its heap (normal
 * import frees a body's code once it ran). */
enum {
    PYCDS_AREA_STRINGS, PYCDS_AREA_DATA, PYCDS_AREA_FIXED,
    PYCDS_AREA_CODE, PYCDS_AREA_HOT_CODE, PYCDS_AREA_ONCE, PYCDS_NAREAS
};

/* Strings and bytes hold their hash, computed with the hash secret below
 * (the process that made the image had PYTHONHASHSEED set). */
#define PYCDS_PRELINK_HASHES 0x1

struct pycds_prelink_area {
    uint64_t address;         /* where it is mapped */
    uint64_t size;            /* bytes, a multiple of the page size */
    uint64_t file_offset;     /* from the section's start, page-aligned */
};

struct pycds_prelink_header {
    char magic[8];            /* PYCDS_PRELINK_MAGIC */
    uint32_t version;         /* PYCDS_PRELINK_VERSION */
    uint32_t flags;           /* PYCDS_PRELINK_HASHES */
    struct pycds_abi_key key;
    uint64_t archive_xxh3;    /* header_xxh3 of the archive it was made from */
    uint8_t hash_secret[24];  /* _Py_HashSecret, with PYCDS_PRELINK_HASHES */
    /* Bit c: the one-character string chr(c), the interpreter's own, is
     * used interned (SHARE interns it at load, as it does for an
     * archive's "pycds.ichar.N"). */
    uint8_t interned_chars[32];
    struct pycds_prelink_area areas[PYCDS_NAREAS];
    /* The strings area's first strings_eager bytes hold the strings of
     * the entries a PRELINK run used: interned as the image is mapped.
     * The others are interned as entries that use them are. */
    uint64_t strings_eager;
    uint64_t chunks_xxh3;     /* of the chunk table */
    uint64_t nentries;        /* the archive's */
    uint64_t nfixups;
    uint64_t nruntime;        /* words of the runtime table */
    uint64_t header_xxh3;     /* of every byte above */
};

struct pycds_prelink_span {
    uint64_t start, end;      /* addresses */
};

struct pycds_prelink_entry {
    uint64_t root;            /* the code object's address; 0: not prelinked.
                               * In the run-once area (a module's code), it
                               * is served as a copy (docs/FORMAT.md) */
    /* Its objects in each area (none in the strings area, shared by all
     * entries), then its fix-ups and its runtime words. */
    struct pycds_prelink_span spans[PYCDS_NAREAS];
    uint64_t fixup_start, nfixups;
    uint64_t runtime_start, nruntime;
    uint64_t xxh3;            /* of this record (this field as 0), its spans,
                               * in order, its fix-ups and its runtime
                               * words: opening costs the same whatever
                               * the number of entries */
};

/* What a slot needs in each process before its entry is used: what & 7
 * says, what & ~7 is the object it is made from. */
#define PYCDS_FIXUP_INTERN 1     /* the interned string equal to the str
                                  * of the strings area at what & ~7 (the
                                  * slot holds the likely one already) */
#define PYCDS_FIXUP_FROZENSET 2  /* a frozenset of the tuple at what & ~7 */
#define PYCDS_FIXUP_FROZENDICT 3 /* what == 3, the slot an ob_type: this
                                  * process's pycds.FrozenDict type (it
                                  * lives in the extension, not libpython) */

struct pycds_prelink_fixup {
    uint64_t slot;            /* address of the pointer slot */
    uint64_t what;
};

/* The runtime table: per entry, the addresses of its slots that point
 * into libpython (every object's ob_type, None, small ints, the
 * interpreter's static strings), which hold offsets from the load address
 * of the ELF object that holds libpython (SHARE adds its own: 0 for a
 * non-PIE executable with libpython linked in), RELR-encoded (increasing addresses; an
 * even word is an address, an odd one a bitmap of the 63 words after the
 * last).  A string of the strings area points into libpython by its
 * ob_type only: it is fixed as the string is interned, not listed. */

#endif /* PYCDS_FORMAT_H */
