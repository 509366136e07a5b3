/* Internal API between the C files of pycds. */
#ifndef PYCDS_PYCDS_H
#define PYCDS_PYCDS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <elf.h>
#include <sys/stat.h>

#include "pycds/format.h"

/* module.c: raised for every refusal */
extern PyObject *pycds_ArchiveError;

/* abikey.c */
int pycds_abi_key_current(struct pycds_abi_key *key);
/* NULL when equal, else a static description of the first difference. */
const char *pycds_abi_key_mismatch(const struct pycds_abi_key *archive,
                                   const struct pycds_abi_key *current);
/* NULL when equal, else the first difference as a user reads it (both
 * Python versions when they differ), written into buf. */
const char *pycds_abi_key_refusal(const struct pycds_abi_key *archive,
                                  const struct pycds_abi_key *current,
                                  char *buf, size_t size);
PyObject *pycds_abi_key_as_dict(const struct pycds_abi_key *key);
/* This interpreter build's short name, pycds.abi_tag(): version, GNU
 * build-id prefix, optimisation level ('3.12.1-1a2b3c4d-O1'). */
PyObject *pycds_abi_tag(void);
/* Where the ELF object that holds the interpreter (libpython, or the
 * executable) is loaded: its load bias and the span of its segments. */
struct pycds_runtime_image {
    uintptr_t base, lo, hi;
};
void pycds_runtime_image(struct pycds_runtime_image *image);

/* layout_3XX.c: how the running CPython version lays objects out.  Exactly
 * one of those files is compiled in. */
typedef int (*pycds_visit_fn)(void *ctx, PyObject *target, size_t slot,
                              const char *field, Py_ssize_t index);
/* Bytes of op's image, not counting a GC header; -1 if op's type cannot be
 * archived (no exception set). */
Py_ssize_t pycds_layout_size(PyObject *op);
/* The same for an object of an image whose ob_type does not hold this
 * process's pointer yet: tp is the type it stands for. */
Py_ssize_t pycds_layout_size_as(PyObject *op, PyTypeObject *tp);
/* Calls visit for each pointer field of op other than ob_type, in
 * increasing slot order; slot is the field's offset within the object. */
int pycds_layout_visit(PyObject *op, pycds_visit_fn visit, void *ctx);
/* Writes op's image into dst (pycds_layout_size bytes, zeroed): every
 * field but the pointers, with per-process state reset. */
int pycds_layout_write(PyObject *op, char *dst);
/* Bytes of the GC header in front of a GC object. */
extern const size_t pycds_layout_gc_header_size;
/* The refcount of an archived object: never reaches zero. */
extern const Py_ssize_t pycds_layout_image_refcnt;
/* Intern *p the way the running version interns for good. */
int pycds_layout_intern(PyObject **p);
/* Finishes img, the image op was written to (pycds_layout_write), for a
 * prelinked image, doing now the load-time work SHARE does on the
 * archive's objects: an interned string marked interned for good, the
 * hash of a str or bytes stored if hashes, a code object given
 * code_version where the version keeps one (pycds_layout_ready_code). */
int pycds_layout_prelink(PyObject *op, PyObject *img, int interned,
                         int hashes, uint32_t code_version);
/* The interned string equal to s, a string of a prelinked image whose
 * ob_type is set, interning s itself if the process holds no equal one:
 * a reference kept for good; NULL with an exception on error.  interned:
 * pycds_interned_dict(), asked once by the caller.  page_written: s's
 * page is the process's own already (its ob_type was fixed), so writing
 * its hash costs no page. */
PyObject *pycds_layout_intern_image(PyObject *interned, PyObject *s,
                                    int page_written);
/* Make an object built at load time live for good. */
void pycds_layout_keep(PyObject *op);
/* SHARE's checks of an archived object, in two steps around the
 * relocation of its pointer fields (archive_read.c walks a part object by
 * object).  A crafted archive recomputes its checksums: these checks are
 * what stands between its bytes and the runtime. */
struct pycds_shape {
    size_t size;              /* bytes of the image, without a GC header */
    const uint16_t *fields;   /* offsets of the pointer fields other than */
    size_t nfields;           /* ob_type, increasing */
    size_t items, nitems;     /* then nitems pointers from offset items */
};
/* op is an archived object of type tp (one of the types archives hold;
 * ob_type set, nothing else relocated) with avail bytes of its part from
 * op on.  Checks every field that is not a pointer to another object
 * (sizes against avail, counts, flags, per-process state reset, pointers
 * the image must leave NULL) and fills shape.  NULL when valid, else a
 * static reason. */
const char *pycds_layout_check(PyObject *op, PyTypeObject *tp, size_t avail,
                               struct pycds_shape *shape);
/* After op's pointer fields are relocated (to objects already checked):
 * checks that what they point to agrees with op, a code object (types of
 * its fields, counts derived from them).  NULL or a static reason;
 * an exception may be set (MemoryError). */
const char *pycds_layout_check_links(PyObject *op);
/* Per-interpreter state a relocated code object needs before it is used
 * (3.13: a fresh co_version); called once for each code object of a part. */
int pycds_layout_ready_code(PyObject *code);

/* runtime_names.c: runtime objects the heap refers to by symbol name */
/* The symbol name of op if it is a runtime object (type, singleton) that
 * archives refer to by name, else NULL.  buf holds at least 32 bytes. */
const char *pycds_runtime_name(PyObject *op, char *buf, size_t size);
const char *pycds_type_symbol(PyTypeObject *tp);
/* Borrowed reference to the runtime object a global symbol names, or
 * NULL (no exception set) if the name is not one we know. */
PyObject *pycds_runtime_resolve(const char *name);

/* container.c: the ELF file */
/* Bytes of a section written from several pieces: size bytes at offset
 * from the section's start. */
struct pycds_blob {
    const void *data;
    size_t size;
    uint64_t offset;
};
struct pycds_image {
    /* what DUMP produced, to be written */
    const char *heap;
    size_t heap_size;
    const uint64_t *relr;
    size_t nrelr;
    const Elf64_Sym *syms;
    size_t nsyms;
    size_t nlocal_syms;
    const char *strtab;
    size_t strtab_size;
    const char *index;
    size_t index_size;
    uint32_t validation;
    uint64_t kind_bytes[PYCDS_NKINDS];
    /* The prelinked image, if any: nprelinked pieces of a section of
     * prelinked_size bytes (gaps are zero). */
    const struct pycds_blob *prelinked;
    size_t nprelinked;
    uint64_t prelinked_size;
};
int pycds_container_write(const char *path, const struct pycds_image *img);

/* A mapped archive file, its sections located and its header checked. */
struct pycds_mapped {
    char *path;
    int fd;                   /* kept to notice in-place rewrites */
    struct stat st;           /* the file as it was mapped */
    char *base;               /* MAP_PRIVATE, writable */
    size_t size;
    unsigned char *pinned;    /* a bit per page: copied into private
                               * memory (pycds_container_pin) */
    /* Set while nobody can change the file under the mapping without
     * this process moving its pages first (lease.c: a read lease held,
     * a read-only mount, PYCDSIMMUTABLE): pins are not needed then. */
    int stable;
    struct pycds_header header;
    char *heap;
    const uint64_t *relr;
    size_t nrelr;
    const Elf64_Sym *syms;
    size_t nsyms;
    const char *strtab;
    size_t strtab_size;
    const char *index;
    size_t index_size;
    /* The prelinked image's section: at prelinked (page-aligned file
     * offset prelinked_offset) for prelinked_size bytes; size 0: none. */
    const char *prelinked;
    uint64_t prelinked_offset, prelinked_size;
};
/* The sections of the archive at m as the writer takes them, for writing
 * it again with another prelinked image. */
void pycds_container_sections(const struct pycds_mapped *m,
                              struct pycds_image *img);
#define PYCDS_OPEN_ANY_KEY 0x1   /* do not require this interpreter's key */
#define PYCDS_OPEN_ANY_OWNER 0x2 /* trust a file others could have written */
int pycds_container_open(struct pycds_mapped *m, const char *path,
                         int flags);
void pycds_container_close(struct pycds_mapped *m);
/* Why a file with these stat results must not be used as code (another
 * user's, or writable by others), or NULL. */
const char *pycds_untrusted(const struct stat *st, int flags);
/* Whether a writer may put an archive where path is: *why is NULL when
 * nothing is there, or an empty file, or a pycds archive of any
 * interpreter or format version, damaged or not; else why not.  -1 with
 * OSError set when the file cannot be examined. */
int pycds_container_replaceable(const char *path, const char **why);
/* Whether the file open at fd is m's file as it was mapped (same inode,
 * size and mtime): not rewritten in place since. */
int pycds_container_unchanged(const struct pycds_mapped *m, int fd);
/* Makes [p, p + n) of the mapping private to this process (copied from
 * the file now), after checking that the file was not rewritten in place
 * since it was mapped; what is checked after this cannot change.  A
 * no-op while m->stable. */
int pycds_container_pin(struct pycds_mapped *m, const void *p, size_t n);
/* lease.c: keeping what a process uses in place alive when its archive
 * is rewritten in place (docs/IMPORT.md, "Files rewritten in place"). */
/* Moves [start, start + len), page-aligned, of a file's mapping into
 * anonymous memory: 0, or -1 with errno. */
int pycds_make_anonymous(void *start, size_t len);
/* Once per process, before an image is mapped: handler (lease_break)
 * for the signal a lease break sends, unless the program has its own (the
 * images are then copied as used, not shared), and after_fork
 * (lease_after_fork) for a forked child; files_immutable: archives are
 * never rewritten in place, no lease is needed.  -1 with an exception. */
int pycds_lease_handle_signal(PyObject *handler, PyObject *after_fork,
                              int files_immutable);
/* Guards the areas of the image of m, just mapped at h's addresses: a
 * read lease, or copies as pages are used.  -1 with an exception set. */
int pycds_lease_guard(struct pycds_mapped *m,
                      const struct pycds_prelink_header *h);
/* Makes [start, end) of the image of m, at its addresses, the process's
 * own where it holds no lease (moved into anonymous memory before it is
 * checked); a no-op otherwise.  NULL, or a static reason why it cannot
 * (the file was rewritten in place, truncated). */
const char *pycds_lease_pin_image(const struct pycds_mapped *m,
                                  uint64_t start, uint64_t end);
/* The archive at m is closed: its areas stay guarded. */
void pycds_lease_forget(const struct pycds_mapped *m);
/* The state of an image whose file is another user's, who holds no
 * CAP_LEASE (_pycds.LEASE_NOT_OWNER: `pycds-dump status` warns of it). */
extern const char pycds_lease_not_owner[];
/* How the image of m is kept safe (static), or NULL. */
const char *pycds_lease_state(const struct pycds_mapped *m);
/* On the lease signal: detaches every image whose lease is being broken.
 * -1 with an exception set if one could not be copied. */
int pycds_lease_release_broken(void);
/* In a forked child: a lease of its own on each leased file. */
int pycds_lease_after_fork(void);

/* refusal.c: ArchiveError, raised with what callers branch on as
 * attributes: path, entry, kind (docs/API.md). */
#define PYCDS_REFUSED_UNUSABLE "unusable"     /* damaged, malformed, ... */
#define PYCDS_REFUSED_MISSING "missing"       /* no such file */
#define PYCDS_REFUSED_UNTRUSTED "untrusted"   /* the trust rule */
#define PYCDS_REFUSED_FOREIGN "foreign"       /* another interpreter's or
                                               * format version's */
#define PYCDS_REFUSED_UNARCHIVABLE "unarchivable"  /* DUMP: an entry holds
                                                    * what an archive cannot */
/* Creates ArchiveError, once per process. */
int pycds_refusal_init(void);
/* Sets ArchiveError "PATH: what" of that kind, about that entry (path
 * and entry may be NULL; without a path the message is "what"), and
 * returns -1. */
int pycds_refuse_as(const char *kind, const char *path, const char *entry,
                    const char *fmt, ...);
/* The same of kind unusable, about no one entry. */
#define pycds_refuse(path, ...) \
    pycds_refuse_as(PYCDS_REFUSED_UNUSABLE, (path), NULL, __VA_ARGS__)
/* "pycds: warning: <fmt>" on stderr, unless *warned (then set; NULL:
 * always): damage is said once per archive, then modules import
 * normally or are relocated. */
void pycds_warn_once(int *warned, const char *fmt, ...);
/* The pending ArchiveError, cleared, as its message; NULL (the error left
 * pending) if the pending error is another one. */
PyObject *pycds_take_refusal(void);

/* index.c: the module index */
struct pycds_index_builder;
struct pycds_index_builder *pycds_index_builder_new(void);
void pycds_index_builder_free(struct pycds_index_builder *b);
struct pycds_entry_strings {
    const char *name, *origin;
    Py_ssize_t name_len, origin_len;
};
/* Adds an entry; its strings are copied into the pool. */
int pycds_index_add(struct pycds_index_builder *b,
                    const struct pycds_entry *e,
                    const struct pycds_entry_strings *strs);
struct pycds_entry *pycds_index_entries(struct pycds_index_builder *b,
                                        size_t *n);
/* Serialises into a malloc'd buffer. */
int pycds_index_finish(struct pycds_index_builder *b, char **out,
                       size_t *size);

struct pycds_index {
    const struct pycds_entry *entries;
    uint32_t nentries;
    const uint32_t *buckets;
    uint32_t nbuckets;
    const char *strings;
    uint32_t strings_size;
    /* When set, lookups copy each page of the index they read into
     * private memory first (pycds_container_pin): a file truncated under
     * the process must not make a lookup raise SIGBUS. */
    struct pycds_mapped *map;
};
/* Checks the index's header and sizes: O(1), entries are checked one by
 * one with pycds_index_check_entry when first found. */
int pycds_index_parse(struct pycds_index *ix, const char *data, size_t size,
                      const char *path);
/* Entry number of name, or -1. */
Py_ssize_t pycds_index_find(const struct pycds_index *ix, const char *name,
                            Py_ssize_t len);
const char *pycds_index_str(const struct pycds_index *ix,
                            struct pycds_str s);
/* Checks entry i: its strings lie in the pool, its checksum matches
 * (the pages it reads made private first, for a mapped index). */
int pycds_index_check_entry(const struct pycds_index *ix, Py_ssize_t i,
                            const char *path);
/* hash.c: XXH3-64 of data */
uint64_t pycds_xxh3(const void *data, size_t size);
/* The XXH3-64 of parts[0..n) one after the other. */
uint64_t pycds_xxh3_parts(const void *const *parts, const size_t *sizes,
                          size_t n);
/* Whether a stored checksum differs from the computed one.  Fuzzing builds
 * (libFuzzer's FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, fuzz/) accept any:
 * a crafted file recomputes its checksums, so what they guard must hold
 * without them, and a fuzzer could not get past them otherwise. */
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#define PYCDS_SUM_DIFFERS(stored, computed) ((void)(stored), (void)(computed), 0)
#else
#define PYCDS_SUM_DIFFERS(stored, computed) ((stored) != (computed))
#endif
/* The checksum of an entry's part: its heap bytes, then its RELR words,
 * then its local symbols. */
uint64_t pycds_part_xxh3(const char *heap, size_t heap_size,
                         const uint64_t *relr, size_t nrelr,
                         const Elf64_Sym *syms, size_t nsyms);

/* heap_write.c: DUMP.  entries: a sequence of tuples
 * (name, code[, origin, flags, mtime_ns, size, xxh3]). */
int pycds_dump(const char *path, PyObject *entries, uint32_t validation);
/* A memo (a dict) from an object, by identity, to a value: 1 and *value
 * if found, 0 if not, -1 on error. */
int pycds_memo_get(PyObject *memo, PyObject *op, uint64_t *value);
int pycds_memo_set(PyObject *memo, PyObject *op, uint64_t value);
/* The elements of frozenset fs as a tuple, in the order an archive keeps
 * them (whatever the hash seed). */
PyObject *pycds_sorted_elements(PyObject *fs);

/* archive_read.c: SHARE */
struct pycds_archive {
    struct pycds_mapped map;
    struct pycds_index index;
    PyObject **roots;         /* per entry: its code object once relocated */
    char *state;              /* per entry: enum entry_state (archive_read.c) */
    PyObject **globals;       /* resolved global symbols */
    /* Where relocated parts live: read from the file into private
     * memory that is never freed (archive_read.c). */
    char *arena;
    size_t arena_left;
    /* The prelinked image serving this archive's entries, if one is in
     * use (prelink_map.c); else why not, a static string (NULL: none found
     * or not asked for). */
    struct pycds_prelinked *prelinked;
    const char *prelinked_why;
    /* Set when the image is not used for a fault of the file's that
     * writing the archive again mends (damaged, made by another version
     * of pycds or from another version of the archive), not of this
     * process's (its addresses taken, another hash seed). */
    int prelinked_outdated;
};
#define PYCDS_ARENA_CHUNK (1 << 20)
#define PYCDS_OPEN_PRELINKED 0x4 /* use the prelinked image where it fits */
/* With PYCDS_OPEN_PRELINKED: an entry of the image is used without
 * hashing its objects' bytes, its record, tables and fix-ups checked as
 * ever (load_data's default: opening costs O(1) in the data size; the
 * pages are read as the data is used, and trusted as mapped). */
#define PYCDS_OPEN_UNHASHED 0x8
struct pycds_archive *pycds_archive_open(const char *path, int flags);
void pycds_archive_free(struct pycds_archive *ar);
/* Entry i, its index record checked on first use; NULL with ArchiveError
 * set if it is damaged.  Read no field of an entry before this. */
const struct pycds_entry *pycds_archive_entry(struct pycds_archive *ar,
                                              Py_ssize_t i);
/* New reference to entry i's code object, relocating it on first use
 * (from the image: a copy of its run-once objects at each call); NULL
 * with ArchiveError set on failure (a data entry's too). */
PyObject *pycds_archive_entry_code(struct pycds_archive *ar, Py_ssize_t i);
/* The same for entry i's root, of a data entry (its 1-tuple) too. */
PyObject *pycds_archive_entry_root(struct pycds_archive *ar, Py_ssize_t i);
/* Whether entry i's root was handed out. */
int pycds_archive_entry_used(const struct pycds_archive *ar, Py_ssize_t i);
/* Checks entry i's ranges and the checksum of its part. */
int pycds_archive_check_entry(struct pycds_mapped *m,
                              const struct pycds_index *ix, Py_ssize_t i);

/* growable.c: makes the array at *buf, of *cap items of item bytes,
 * hold need items (doubling; the new items zeroed): 0, or -1 with
 * MemoryError. */
int pycds_grow(void **buf, size_t *cap, size_t need, size_t item);

/* atomic_file.c: writes path as fill(fd) writes it, atomically (a
 * temporary file renamed over path). */
int pycds_write_atomic(const char *path, int (*fill)(int fd, void *arg),
                       void *arg);

/* prelink_write.c: writes the archive at archive_path again, to
 * out_path (atomically; the same path will do), with a new prelinked
 * image (format.h).  hashes: store hashes made with this process's hash
 * secret (PYTHONHASHSEED is set); preinterned: a set of the strings the
 * processes that will use it intern before they use it
 * (pycds_interned_strings() taken then), NULL for those interned now;
 * served: the same archive as this process served from (its code
 * objects that ran are told apart, the entries it used placed first),
 * NULL to open it afresh; first: without served, a sequence of the names
 * of the modules every process uses (a trace's, or those the
 * interpreter imports as it starts), placed first with their strings
 * interned as the image is mapped, or NULL (none placed first: each
 * string is interned with the first entry that uses it); written: a
 * dict of module name -> set of the words of its objects traced runs
 * wrote ("firstlineno:qualname" of code that ran, "#" and the XXH3 of a
 * str constant hashed: kept apart with what a process writes), or
 * NULL; avoid: a set of the slots (format.h) the images of the archives
 * this one is layered with take, or NULL: the image takes the slot its
 * archive's checksum picks, or the next one not in avoid.  Predicted
 * addresses of preinterned strings are written only when this process
 * runs with address randomisation off. */
int pycds_prelink(const char *archive_path, const char *out_path,
                  int hashes, int trust_any, PyObject *preinterned,
                  struct pycds_archive *served, PyObject *first,
                  PyObject *written, PyObject *avoid);
/* A set of the interned strings (empty on 3.11, whose interned dict is
 * out of reach). */
PyObject *pycds_interned_strings(void);

/* prelink_map.c: SHARE from a prelinked image.  Maps the areas of ar's
 * image if it has one and it fits this process; -1 only on an exception
 * that is not about the image (MemoryError). */
int pycds_prelinked_attach(struct pycds_archive *ar, int flags);
/* Entry i's root (code object, or a data entry's 1-tuple) from the
 * image, ready to use (a new reference: a copy where it is run-once,
 * prelink_once.c); NULL without an exception if the image does not hold
 * it (the archive's own part is relocated instead), with one on
 * MemoryError and the like. */
PyObject *pycds_prelinked_code(struct pycds_archive *ar, Py_ssize_t i);
/* prelink_once.c: a copy on the heap of the run-once objects at
 * [start, end) of an image (an entry's span of its run-once area, which
 * holds root), made as they are laid out; delta is added to each
 * ob_type.  slot_values(ctx, slot, raw, n, to), asked about slots in
 * increasing order, says what the n pointer slots from address slot on,
 * holding raw[0..n-1] in the image, hold in this process: to[k] a new
 * reference, or NULL where raw[k] is an object of the span; 0, or -1
 * with an exception (the references already in to[] are the caller's).
 * A new reference, or NULL with an exception. */
typedef int (*pycds_once_slots_fn)(void *ctx, uint64_t slot,
                                   PyObject *const *raw, Py_ssize_t n,
                                   PyObject **to);
PyObject *pycds_once_copy(uint64_t start, uint64_t end, uint64_t root,
                          uintptr_t delta, pycds_once_slots_fn slot_values,
                          void *ctx);
/* Checks every checksum of the image of the archive at m (which has one)
 * without mapping it: NULL, or a static reason. */
const char *pycds_prelinked_verify(const struct pycds_mapped *m);
/* The slot (format.h) the archive's image takes; -1 without a sound image
 * header. */
long pycds_prelinked_slot(const struct pycds_mapped *m);
/* Frees what pycds_prelinked_attach allocated but the mapped areas. */
void pycds_prelinked_free(struct pycds_prelinked *pl);
/* {"path", "entries", "served", "reinterned", "frozensets",
 * "runtime_fixed", "delta"}, else why no image is used (str) or None */
PyObject *pycds_prelinked_stats(struct pycds_archive *ar);
/* The format's checksums, for the writer and the mapper: of chunk c of a
 * strings area of size bytes; of entry pe (its spans, in area order, the
 * bytes at address A of area k being at A + delta[k], then its fix-ups
 * and its runtime words). */
uint64_t pycds_prelink_chunk_xxh3(const char *strings, uint64_t size,
                                  uint64_t c);
uint64_t pycds_prelink_entry_xxh3(const struct pycds_prelink_entry *pe,
                                  const uintptr_t *delta,
                                  const struct pycds_prelink_fixup *fixups,
                                  const uint64_t *runtime);
/* Chunks of PYCDS_PRELINK_CHUNK bytes in n bytes of strings. */
static inline uint64_t
pycds_prelink_nchunks(uint64_t n)
{
    return (n + PYCDS_PRELINK_CHUNK - 1) / PYCDS_PRELINK_CHUNK;
}
static inline uint64_t
pycds_prelink_page_round(uint64_t n)
{
    return (n + PYCDS_PRELINK_PAGE - 1) & ~(uint64_t)(PYCDS_PRELINK_PAGE - 1);
}
/* Where the first area starts in the image's section: after the header
 * and the tables its counts and the strings area's size say. */
uint64_t pycds_prelink_areas_offset(const struct pycds_prelink_header *h);
/* internals.c: what only CPython's internal headers reach.  The
 * interpreter's dict of interned strings (3.12+, borrowed; NULL on 3.11);
 * the hash secret, size bytes of it; the hash of str s, not stored in s
 * (whose page that would write). */
PyObject *pycds_interned_dict(void);
void pycds_hash_secret(unsigned char *out, size_t size);
Py_hash_t pycds_str_hash_unstored(PyObject *s);

/* frozendict.c: pycds.FrozenDict, a data archive's read-only mapping
 * (docs/DATA.md), and its seed-independent key hash. */
typedef struct {
    PyObject_HEAD
    PyObject *keys;           /* tuple, in insertion order */
    PyObject *values;         /* tuple, as many */
    PyObject *table;          /* bytes: the key hashes, then the buckets */
} pycds_FrozenDictObject;
extern PyTypeObject pycds_FrozenDictType;
/* The key hash of key: equal keys hash equal in every process, whatever
 * PYTHONHASHSEED (docs/DATA.md).  -1 with TypeError for an unhashable
 * key. */
int pycds_key_hash(PyObject *key, uint64_t *h);
/* A new FrozenDict of distinct keys and their values (tuples). */
PyObject *pycds_frozendict_from_items(PyObject *keys, PyObject *values);
/* After relocation: whether the fields of FrozenDict fd agree (types,
 * lengths, the table's size).  NULL or a static reason. */
const char *pycds_frozendict_check(PyObject *fd);

/* data_write.c: pycds.dump_data: obj frozen (list -> tuple, set ->
 * frozenset, dict -> FrozenDict) into a data archive at path, with its
 * prelinked image.  ArchiveError (unarchivable, naming where) for what an
 * archive cannot carry, nothing written. */
int pycds_dump_data(const char *path, PyObject *obj);
/* data_map.c: pycds.load_data: the data of the archive at path, in place
 * from its image where it fits (else relocated, every object checked);
 * the same objects again for the same file in this process.  flags as
 * pycds_archive_open's. */
PyObject *pycds_load_data(const char *path, int flags);

/* prelink_write.c: the word a trace notes of a str constant its run
 * hashed ("#" and the XXH3 of its UTF-8, 16 hex digits), new. */
PyObject *pycds_hashed_word(PyObject *s);

/* module.c: the C side of a _pycds.Archive; NULL + TypeError if
 * archive is not one. */
struct pycds_archive *pycds_archive_of(PyObject *archive);
extern PyTypeObject pycds_ArchiveType;

/* finder.c: the meta-path finder type */
extern PyTypeObject pycds_FinderType;

/* layers.c: the layers SHARE serves from (docs/IMPORT.md, "Layers") */
/* The names of the validation modes, by PYCDS_VALIDATE_* value. */
extern const char *const pycds_validation_names[];
/* path (str or bytes) with {abi} replaced by pycds_abi_tag(). */
PyObject *pycds_expand_abi(PyObject *path);
/* The archive paths of text (str or bytes) separated by ':', empty ones
 * left out, each expanded: a new list. */
PyObject *pycds_split_layers(PyObject *text);
/* A Finder over archive (an Archive) with importlib's loaders;
 * validation: a PYCDS_VALIDATE_* override, or -1. */
PyObject *pycds_finder_over(PyObject *archive, int validation, int verbose);
/* A Finder over the archive at path, or why it cannot be opened (str,
 * said on stderr if warn); verbose: also why its prelinked image is not
 * used; prelinked: use the image in place where it fits. */
PyObject *pycds_open_finder(PyObject *path, int validation, int verbose,
                            int trust_any, int warn, int prelinked);
/* Puts finders (over the archives at paths) into sys.meta_path just
 * before PathFinder, in place of those installed before. */
int pycds_install(PyObject *finders, PyObject *paths);
/* SHARE from the archives at paths (a list): a finder over each that can
 * be used, each that cannot said once on stderr and left out, installed;
 * 1 if any is, 0 if none, -1 with an exception. */
int pycds_share_layers(PyObject *paths, int validation, int verbose,
                       int trust_any, int prelinked);
/* (finders, paths) installed, new lists. */
PyObject *pycds_installed(void);

/* activate.c: activation from the environment, its common case */
/* The words of a yes/no variable, NULL-terminated (pycds._env's too). */
extern const char *const pycds_yes_words[];
extern const char *const pycds_no_words[];
/* Activation from the environment, once, in the main interpreter: SHARE
 * in its common case here, anything else by importing pycds._boot; None,
 * or NULL with an exception.  module: _pycds. */
PyObject *pycds_activate(PyObject *module);

/* served.c: the archived code of a served module's loader: code, entry i
 * of archive (a _pycds.Archive) */
int pycds_served_add(PyObject *loader, PyObject *code, PyObject *archive,
                     Py_ssize_t i);
/* New reference: the code (handed over; the next call asks the archive
 * again), or None for a loader SHARE did not make. */
PyObject *pycds_served_code(PyObject *loader);
/* Gives loader_type (SourceFileLoader, SourcelessFileLoader) the get_code
 * that hands out the archived code of the loaders pycds made, and its own
 * get_code's result for any other; once per class. */
int pycds_serve_code(PyObject *loader_type);

/* searchpath.c: whether normal import would find an archived file */
struct pycds_searchpath {
    PyObject *listings;       /* directory -> listing (searchpath.c) */
    PyObject *path_key;       /* the sys.path the dirs below are for */
    PyObject *path_dirs;      /* its entries: (absolute directory, key in
                               * sys.path_importer_cache) */
    PyObject *finders;        /* key -> its FileFinder, checked to be one
                               * of the default path hook */
    PyObject *importer_cache; /* PathFinder._path_importer_cache */
    PyObject *file_finder;    /* importlib's FileFinder */
    PyObject *file_loaders;   /* the _loaders of the default hook's */
    PyObject *abspath;        /* os.path.abspath */
    PyObject *suffixes;       /* every suffix importlib loads */
    PyObject *ext_suffixes;   /* extension module suffixes */
    PyObject *dot, *init;     /* ".", "__init__" */
};
int pycds_searchpath_init(struct pycds_searchpath *sp);
void pycds_searchpath_invalidate(struct pycds_searchpath *sp);
void pycds_searchpath_fini(struct pycds_searchpath *sp);
/* None if normal import of name, searching path (None: sys.path), would
 * load origin; else a str saying why not; NULL on error. */
PyObject *pycds_searchpath_shadowed(struct pycds_searchpath *sp,
                                    PyObject *name, PyObject *path,
                                    PyObject *origin, int package);

/* validate.c: has the source changed since DUMP?  None if not, else a
 * str saying how; NULL on error. */
PyObject *pycds_source_stale(const struct pycds_entry *e, uint32_t mode,
                             PyObject *origin);

/* verify.c: whole-file checks and description */
PyObject *pycds_verify(const char *path);
PyObject *pycds_inspect(const char *path, int trust_any);

#endif /* PYCDS_PYCDS_H */
