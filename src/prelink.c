/* The prelinked image: written by `pycds-dump prelink`, mapped by SHARE.
 *
 * format.h defines the file and docs/FORMAT.md ("Prelinked image") says
 * why it is the way it is; this file alone writes and reads it.
 *
 * An image holds an archive's objects with their final addresses: copies
 * of the objects SHARE relocated in the process that made it, whose
 * pointers to the runtime (types, None, small ints, the interpreter's
 * static strings) are the addresses libpython has in every process where
 * it is loaded at the same place, as it is with address randomisation
 * off.  What differs between such processes is only which strings are
 * interned already and the frozensets, built at load: the fix-ups. */
#include "pycds/pycds.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGE 4096
#define PAGE_ROUND(n) (((n) + PAGE - 1) & ~(uint64_t)(PAGE - 1))
/* Images live at fixed addresses in [SLOTS_START, SLOTS_END), 32-64 TiB:
 * far from where Linux puts the executable, the heap and the mappings of
 * a process without address randomisation, and above AddressSanitizer's
 * shadow memory (which ends at 16 TiB).  An archive's image takes the
 * slot its checksum picks, so that two layers rarely want the same one
 * (if they do, the second is not mapped). */
#define SLOTS_START 0x200000000000ULL
#define SLOT_SIZE (64ULL << 30)
#define NSLOTS 512
#define SLOTS_END (SLOTS_START + NSLOTS * SLOT_SIZE)
#define AREA_MAX (SLOT_SIZE / PYCDS_NAREAS & ~(uint64_t)(PAGE - 1))

/* The versions of an image's code objects (3.13 keeps one in each):
 * CODE_VERSIONS_BASE + slot * 2^22 + n, unique among the images of a
 * process and far above the interpreter's own counter. */
#define CODE_VERSIONS_BASE 0x80000000u
#define CODE_VERSIONS_MASK ((1u << 22) - 1)

#define TAG_FROZENSET 1     /* a memoised address that stands for one */

/* The checksum of chunk c of a strings area of size bytes at data. */
static uint64_t
chunk_xxh3(const char *data, uint64_t size, uint64_t c)
{
    uint64_t at = c * PYCDS_PRELINK_CHUNK, left = size - at;
    return pycds_xxh3(data + at, left < PYCDS_PRELINK_CHUNK
                                     ? left : PYCDS_PRELINK_CHUNK);
}

/* Chunks of PYCDS_PRELINK_CHUNK bytes in n bytes of strings. */
static size_t
nchunks(uint64_t n)
{
    return (n + PYCDS_PRELINK_CHUNK - 1) / PYCDS_PRELINK_CHUNK;
}

/* ---- writing ---------------------------------------------------------- */

struct buffer {
    char *data;
    size_t len, cap;
};

struct prelinker {
    struct pycds_archive *ar;
    struct pycds_runtime_image rt;
    int hashes;
    uint64_t base[PYCDS_NAREAS];
    struct buffer area[PYCDS_NAREAS];
    struct buffer entries;    /* struct pycds_prelink_entry */
    struct buffer fixups;     /* struct pycds_prelink_fixup */
    PyObject *strings;        /* id(str) -> its address, for all entries */
    PyObject *preinterned;    /* ids of the strings interned before */
    uint32_t code_version;    /* the next code object's */
    uint8_t interned_chars[32];  /* as in the header */
    uint64_t strings_eager;   /* as in the header */
    PyObject *memo;           /* id(object) -> address, the entry's */
    const char *entry;        /* its name, for messages */
};

static void *
buffer_grow(struct buffer *b, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->len + n) {
            cap *= 2;
        }
        char *p = realloc(b->data, cap);
        if (p == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        b->data = p;
        b->cap = cap;
    }
    void *p = b->data + b->len;
    memset(p, 0, n);
    b->len += n;
    return p;
}

static int
in_runtime(const struct prelinker *pl, const void *p)
{
    return (uintptr_t)p >= pl->rt.lo && (uintptr_t)p < pl->rt.hi;
}

static int
refuse(struct prelinker *pl, PyObject *op, const char *why)
{
    PyErr_Format(pycds_ArchiveError, "entry '%s': %s (object of type "
                 "'%.100s')", pl->entry, why, Py_TYPE(op)->tp_name);
    return -1;
}

/* Whether the process had op interned before it used the archive. */
static int
interned_before(struct prelinker *pl, PyObject *op)
{
    PyObject *id = PyLong_FromVoidPtr(op);
    int before = id ? PySet_Contains(pl->preinterned, id) : -1;
    Py_XDECREF(id);
    return before;
}

static int emit(struct prelinker *pl, PyObject *op, uint64_t *addr);

static int
emit_child(void *ctx, PyObject *target, size_t slot, const char *field,
           Py_ssize_t index)
{
    uint64_t addr;
    (void)slot, (void)field, (void)index;
    return target ? emit(ctx, target, &addr) : 0;
}

struct fill_ctx {
    struct prelinker *pl;
    int area;
    uint64_t object;          /* the object's offset in its area */
};

/* Second visit: the children are placed; write their addresses into the
 * slots and note the slots that need a fix-up at load. */
static int
fill_child(void *ctx, PyObject *target, size_t slot, const char *field,
           Py_ssize_t index)
{
    struct fill_ctx *fc = ctx;
    struct prelinker *pl = fc->pl;
    uint64_t addr;
    (void)field, (void)index;
    if (target == NULL) {
        return 0;
    }
    if (emit(pl, target, &addr) < 0) {
        return -1;
    }
    uint64_t where = fc->object + slot;
    uint64_t what = 0;
    if (addr & TAG_FROZENSET) {
        addr &= ~(uint64_t)TAG_FROZENSET;
        what = addr | PYCDS_FIXUP_FROZENSET;
    }
    else if (addr - pl->base[PYCDS_AREA_STRINGS]
             < pl->area[PYCDS_AREA_STRINGS].len) {
        /* addr is the image's copy, the key to look the interned string
         * up by.  The slot holds the likely answer: the string this
         * process had interned before it made the image, if it had (the
         * interpreter interns the same names at the same addresses at
         * every start with address randomisation off), else the copy. */
        what = addr | PYCDS_FIXUP_INTERN;
        int before = interned_before(pl, target);
        if (before < 0) {
            return -1;
        }
        if (before) {
            addr = (uintptr_t)target;
        }
    }
    memcpy(pl->area[fc->area].data + where, &addr, sizeof(addr));
    if (what != 0) {
        struct pycds_prelink_fixup *f = buffer_grow(&pl->fixups, sizeof(*f));
        if (f == NULL) {
            return -1;
        }
        f->slot = pl->base[fc->area] + where;
        f->what = what;
    }
    return 0;
}

/* Copies op, whose children are placed, into area; its address in
 * *addr. */
static int
place(struct prelinker *pl, PyObject *op, int area, uint64_t *addr)
{
    Py_ssize_t size = pycds_layout_size(op);
    if (size < 0) {
        return refuse(pl, op, "cannot be prelinked");
    }
    if (!in_runtime(pl, Py_TYPE(op))) {
        return refuse(pl, op, "its type is not libpython's");
    }
    size_t gc = PyObject_IS_GC(op) ? pycds_layout_gc_header_size : 0;
    size_t n = (gc + size + PYCDS_OBJECT_ALIGN - 1)
               & ~(size_t)(PYCDS_OBJECT_ALIGN - 1);
    struct buffer *b = &pl->area[area];
    if (b->len + n > AREA_MAX) {
        return refuse(pl, op, "the image would be too large");
    }
    char *start = buffer_grow(b, n);
    if (start == NULL) {
        return -1;
    }
    uint64_t object = (uint64_t)(start - b->data) + gc;
    PyObject *img = (PyObject *)(b->data + object);
    if (pycds_layout_write(op, (char *)img) < 0) {
        return -1;
    }
    img->ob_refcnt = pycds_layout_image_refcnt;
    img->ob_type = Py_TYPE(op);
    if (PyCode_Check(op) && (++pl->code_version & CODE_VERSIONS_MASK) == 0) {
        return refuse(pl, op, "too many code objects");
    }
    if (pycds_layout_prelink(op, img, area == PYCDS_AREA_STRINGS,
                             pl->hashes, pl->code_version) < 0) {
        return -1;
    }
    struct fill_ctx fc = {pl, area, object};
    if (pycds_layout_visit(op, fill_child, &fc) < 0) {
        return -1;
    }
    *addr = pl->base[area] + object;
    return 0;
}

/* Whether a pointer to target is a slot a process may have to write at
 * load: a frozenset, built then, or a string that processes intern
 * before they use the image, somewhere else in each. */
static int
is_fixed(struct prelinker *pl, PyObject *target)
{
    if (PyFrozenSet_CheckExact(target)) {
        return 1;
    }
    if (!PyUnicode_CheckExact(target) || !PyUnicode_CHECK_INTERNED(target)
        || in_runtime(pl, target)) {
        return 0;
    }
    return interned_before(pl, target);
}

struct fixed_search {
    struct prelinker *pl;
    int found;
};

static int
find_fixed(void *ctx, PyObject *target, size_t slot, const char *field,
           Py_ssize_t index)
{
    struct fixed_search *fs = ctx;
    (void)slot, (void)field, (void)index;
    int fixed = target && !fs->found ? is_fixed(fs->pl, target) : 0;
    if (fixed > 0) {
        fs->found = 1;
    }
    return fixed < 0 ? -1 : 0;
}

/* Whether code ran: its bytecode is no longer what a code object that
 * never ran holds (adaptive counters, specialised instructions).  Code
 * that ran while the image was made runs again in the processes that use
 * it, and writes its pages there: it is kept apart. */
static int
code_ran(PyObject *code)
{
    PyObject *fresh = PyObject_CallMethod(code, "replace", NULL);
    if (fresh == NULL) {
        return -1;
    }
    int ran = Py_SIZE(fresh) != Py_SIZE(code)
              || memcmp(((PyCodeObject *)fresh)->co_code_adaptive,
                        ((PyCodeObject *)code)->co_code_adaptive,
                        Py_SIZE(code) * PyCode_Type.tp_itemsize) != 0;
    Py_DECREF(fresh);
    return ran;
}

/* The area op goes to. */
static int
area_of(struct prelinker *pl, PyObject *op)
{
    if (PyCode_Check(op)) {
        int ran = code_ran(op);
        return ran < 0 ? -1 : ran ? PYCDS_AREA_HOT_CODE : PYCDS_AREA_CODE;
    }
    struct fixed_search fs = {pl, 0};
    if (pycds_layout_visit(op, find_fixed, &fs) < 0) {
        return -1;
    }
    return fs.found ? PYCDS_AREA_FIXED : PYCDS_AREA_DATA;
}

static int
emit_string(struct prelinker *pl, PyObject *op, uint64_t *addr)
{
    int found = pycds_memo_get(pl->strings, op, addr);
    if (found != 0) {
        return found < 0 ? -1 : 0;
    }
    if (place(pl, op, PYCDS_AREA_STRINGS, addr) < 0) {
        return -1;
    }
    return pycds_memo_set(pl->strings, op, *addr);
}

/* A frozenset is built at load from a tuple of its elements, as SHARE
 * builds one from an archive, in the same order (the order of insertion
 * decides the order of iteration). */
static int
emit_frozenset(struct prelinker *pl, PyObject *fs, uint64_t *addr)
{
    PyObject *elems = pycds_sorted_elements(fs);
    if (elems == NULL) {
        return -1;
    }
    int rc = pycds_layout_visit(elems, emit_child, pl);
    if (rc == 0) {
        rc = place(pl, elems, PYCDS_AREA_DATA, addr);
    }
    Py_DECREF(elems);
    *addr |= TAG_FROZENSET;
    return rc;
}

/* The address op will have in the image, placing it (and what it points
 * to) first if need be. */
static int
emit(struct prelinker *pl, PyObject *op, uint64_t *addr)
{
    char buf[32];
    if (pycds_runtime_name(op, buf, sizeof(buf)) != NULL) {
        if (!in_runtime(pl, op)) {
            return refuse(pl, op, "a runtime singleton outside libpython");
        }
        if (PyUnicode_CheckExact(op) && PyUnicode_CHECK_INTERNED(op)
            && PyUnicode_GET_LENGTH(op) == 1) {
            Py_UCS4 c = PyUnicode_READ_CHAR(op, 0);
            if (c < 256) {
                pl->interned_chars[c / 8] |= (uint8_t)(1 << (c % 8));
            }
        }
        *addr = (uintptr_t)op;
        return 0;
    }
    if (PyUnicode_CheckExact(op) && PyUnicode_CHECK_INTERNED(op)) {
        if (in_runtime(pl, op)) {
            /* One of the interpreter's static strings: where it is in
             * every process with libpython at the same place. */
            *addr = (uintptr_t)op;
            return 0;
        }
        return emit_string(pl, op, addr);
    }
    int found = pycds_memo_get(pl->memo, op, addr);
    if (found != 0) {
        return found < 0 ? -1 : 0;
    }
    int rc;
    if (PyFrozenSet_CheckExact(op)) {
        rc = emit_frozenset(pl, op, addr);
    }
    else {
        /* Relocated objects nest at most PYCDS_MAX_NESTING deep: the
         * recursion is bounded. */
        rc = pycds_layout_visit(op, emit_child, pl);
        int area = rc == 0 ? area_of(pl, op) : -1;
        rc = area < 0 ? -1 : place(pl, op, area, addr);
    }
    return rc < 0 ? -1 : pycds_memo_set(pl->memo, op, *addr);
}

PyObject *
pycds_interned_ids(void)
{
    PyObject *dict = pycds_interned_dict(), *ids = PySet_New(NULL);
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    if (ids == NULL || dict == NULL) {
        if (ids != NULL) {
            PyErr_SetString(pycds_ArchiveError, "prelinked images need "
                            "CPython 3.12 or later");
        }
        Py_XDECREF(ids);
        return NULL;
    }
    while (PyDict_Next(dict, &pos, &key, &value)) {
        PyObject *id = PyLong_FromVoidPtr(value);
        if (id == NULL || PySet_Add(ids, id) < 0) {
            Py_XDECREF(id);
            Py_DECREF(ids);
            return NULL;
        }
        Py_DECREF(id);
    }
    return ids;
}

/* The checksum of entry pe: its spans, in area order, then its
 * fix-ups; the bytes at address A of area k are at A + delta[k]. */
static uint64_t
entry_xxh3(const struct pycds_prelink_entry *pe, const uintptr_t *delta,
           const struct pycds_prelink_fixup *fixups)
{
    const void *parts[PYCDS_NAREAS + 1];
    size_t sizes[PYCDS_NAREAS + 1];
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        parts[k] = (const void *)(uintptr_t)(pe->spans[k].start + delta[k]);
        sizes[k] = pe->spans[k].end - pe->spans[k].start;
    }
    parts[PYCDS_NAREAS] = fixups + pe->fixup_start;
    sizes[PYCDS_NAREAS] = pe->nfixups * sizeof(*fixups);
    return pycds_xxh3_parts(parts, sizes, PYCDS_NAREAS + 1);
}

/* Copies entry i, relocated by this process, into the image; an entry
 * the archive cannot serve is left out (root 0). */
static int
prelink_entry(struct prelinker *pl, Py_ssize_t i)
{
    size_t pe_off = i * sizeof(struct pycds_prelink_entry);
    struct pycds_prelink_entry *pe;
    const struct pycds_entry *e = pycds_archive_entry(pl->ar, i);
    PyObject *code = e ? pycds_archive_entry_code(pl->ar, i) : NULL;
    if (code == NULL) {
        PyObject *why = pycds_take_refusal();
        Py_XDECREF(why);
        return why ? 0 : -1;
    }
    pl->entry = pycds_index_str(&pl->ar->index, e->name);
    uint64_t start[PYCDS_NAREAS];
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        start[k] = pl->area[k].len;
    }
    uint64_t fixup_start = pl->fixups.len / sizeof(struct pycds_prelink_fixup);
    uint64_t root;
    pl->memo = PyDict_New();
    if (pl->memo == NULL || emit(pl, code, &root) < 0) {
        Py_CLEAR(pl->memo);
        return -1;
    }
    Py_CLEAR(pl->memo);
    pe = (struct pycds_prelink_entry *)(pl->entries.data + pe_off);
    pe->root = root;
    uintptr_t delta[PYCDS_NAREAS];
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        /* The strings area is shared by all entries: no span there. */
        uint64_t from = k == PYCDS_AREA_STRINGS ? pl->area[k].len : start[k];
        pe->spans[k].start = pl->base[k] + from;
        pe->spans[k].end = pl->base[k] + pl->area[k].len;
        delta[k] = (uintptr_t)pl->area[k].data - pl->base[k];
    }
    pe->fixup_start = fixup_start;
    pe->nfixups = pl->fixups.len / sizeof(struct pycds_prelink_fixup)
                  - fixup_start;
    pe->xxh3 = entry_xxh3(pe, delta,
                          (const struct pycds_prelink_fixup *)pl->fixups.data);
    return 0;
}

static int
write_all(int fd, const void *p, size_t n, off_t off)
{
    for (size_t done = 0; done < n;) {
        ssize_t w = pwrite(fd, (const char *)p + done, n - done, off + done);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0) {
            return -1;
        }
        done += w;
    }
    return 0;
}

struct image_file {
    struct prelinker *pl;
    struct pycds_prelink_header h;
    uint64_t *chunks;         /* the chunk table */
    size_t nchunks;
};

static int
fill_image(int fd, void *arg)
{
    struct image_file *f = arg;
    struct prelinker *pl = f->pl;
    off_t off = sizeof(f->h);
    if (write_all(fd, &f->h, sizeof(f->h), 0) < 0
        || write_all(fd, pl->entries.data, pl->entries.len, off) < 0
        || write_all(fd, pl->fixups.data, pl->fixups.len,
                     off + pl->entries.len) < 0
        || write_all(fd, f->chunks, f->nchunks * sizeof(uint64_t),
                     off + pl->entries.len + pl->fixups.len) < 0) {
        return -1;
    }
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        const struct pycds_prelink_area *a = &f->h.areas[k];
        if (write_all(fd, pl->area[k].data, pl->area[k].len,
                      a->file_offset) < 0) {
            return -1;
        }
    }
    const struct pycds_prelink_area *last = &f->h.areas[PYCDS_NAREAS - 1];
    return ftruncate(fd, last->file_offset + last->size);
}

static int
write_image(struct prelinker *pl, const char *out_path)
{
    struct image_file f = {.pl = pl};
    struct pycds_prelink_header *h = &f.h;
    memcpy(h->magic, PYCDS_PRELINK_MAGIC, sizeof(h->magic));
    h->version = PYCDS_PRELINK_VERSION;
    if (pycds_abi_key_current(&h->key) < 0) {
        return -1;
    }
    h->archive_xxh3 = pl->ar->map.header.header_xxh3;
    h->libpython_base = pl->rt.base;
    memcpy(h->interned_chars, pl->interned_chars, sizeof(h->interned_chars));
    if (pl->hashes) {
        h->flags |= PYCDS_PRELINK_HASHES;
        pycds_hash_secret(h->hash_secret, sizeof(h->hash_secret));
    }
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        /* Whole pages, as they are mapped and checked. */
        size_t pad = PAGE_ROUND(pl->area[k].len) - pl->area[k].len;
        if (pad && buffer_grow(&pl->area[k], pad) == NULL) {
            return -1;
        }
    }
    const struct buffer *strings = &pl->area[PYCDS_AREA_STRINGS];
    f.nchunks = nchunks(strings->len);
    f.chunks = calloc(f.nchunks + 1, sizeof(uint64_t));
    if (f.chunks == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t c = 0; c < f.nchunks; c++) {
        f.chunks[c] = chunk_xxh3(strings->data, strings->len, c);
    }
    h->chunks_xxh3 = pycds_xxh3(f.chunks, f.nchunks * sizeof(uint64_t));
    h->strings_eager = pl->strings_eager;
    uint64_t off = PAGE_ROUND(sizeof(*h) + pl->entries.len + pl->fixups.len
                              + f.nchunks * sizeof(uint64_t));
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        h->areas[k].address = pl->base[k];
        h->areas[k].size = pl->area[k].len;
        h->areas[k].file_offset = off;
        off += h->areas[k].size;
    }
    h->nentries = pl->entries.len / sizeof(struct pycds_prelink_entry);
    h->nfixups = pl->fixups.len / sizeof(struct pycds_prelink_fixup);
    h->entries_xxh3 = pycds_xxh3(pl->entries.data, pl->entries.len);
    h->header_xxh3 = pycds_xxh3(h, offsetof(struct pycds_prelink_header,
                                            header_xxh3));
    int rc = pycds_write_atomic(out_path, fill_image, &f);
    free(f.chunks);
    return rc;
}

int
pycds_prelink(const char *archive_path, const char *out_path, int hashes,
              int trust_any, PyObject *preinterned,
              struct pycds_archive *served)
{
    int rc = -1;
    struct prelinker pl = {.hashes = hashes};
    int persona = personality(0xffffffff);
    pycds_runtime_image(&pl.rt);
    if (pl.rt.base != 0 && (persona < 0 || !(persona & ADDR_NO_RANDOMIZE))) {
        /* libpython is placed at random: the image would fit no other
         * process.  The CLI restarts itself under setarch -R. */
        PyErr_SetString(pycds_ArchiveError, "address randomisation is on "
                        "in this process: prelink under setarch -R");
        return -1;
    }
    pl.ar = served ? served
                   : pycds_archive_open(archive_path,
                                        trust_any ? PYCDS_OPEN_ANY_OWNER : 0);
    if (pl.ar == NULL) {
        return -1;
    }
    uint64_t slot = pl.ar->map.header.header_xxh3 % NSLOTS;
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        pl.base[k] = SLOTS_START + slot * SLOT_SIZE + k * AREA_MAX;
    }
    pl.code_version = CODE_VERSIONS_BASE + (uint32_t)slot *
                      (CODE_VERSIONS_MASK + 1);
    pl.strings = PyDict_New();
    pl.preinterned = preinterned ? Py_NewRef(preinterned)
                                 : pycds_interned_ids();
    if (pl.strings == NULL || pl.preinterned == NULL) {
        goto done;
    }
    Py_ssize_t n = pl.ar->index.nentries;
    if (buffer_grow(&pl.entries, n * sizeof(struct pycds_prelink_entry))
        == NULL) {
        goto done;
    }
    /* First the entries this process used (all, if it did not serve the
     * archive): their strings go first in the strings area, interned as
     * the image is mapped. */
    for (int used = 1; used >= 0; used--) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if ((served == NULL || served->roots[i] != NULL) == used
                && prelink_entry(&pl, i) < 0) {
                goto done;
            }
        }
        if (used) {
            pl.strings_eager = pl.area[PYCDS_AREA_STRINGS].len;
        }
    }
    rc = write_image(&pl, out_path);

done:
    Py_XDECREF(pl.strings);
    Py_XDECREF(pl.preinterned);
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        free(pl.area[k].data);
    }
    free(pl.entries.data);
    free(pl.fixups.data);
    /* The relocated objects stay: they are interned, never freed. */
    if (served == NULL) {
        pycds_archive_free(pl.ar);
    }
    return rc;
}

/* ---- reading ---------------------------------------------------------- */

struct pycds_prelinked {
    char *path;
    const struct pycds_prelink_header *h;  /* the whole file, read-only */
    size_t file_size;
    const struct pycds_prelink_entry *entries;
    const struct pycds_prelink_fixup *fixups;
    const uint64_t *chunks;   /* the chunk table */
    unsigned char *checked;   /* a bit per chunk: its checksum matched */
    /* Per entry: tried already (the archive relocates an entry the image
     * failed to serve; one it served is never asked for again). */
    unsigned char *tried;
    PyObject **interned;      /* per word of the strings area: the interned
                               * string equal to the one that starts there */
    Py_ssize_t served, reinterned, frozensets;
    int warned;
};

/* Damage: said once on stderr, as for a damaged archive; the archive's
 * own parts serve instead. */
static void
warn_damaged(struct pycds_prelinked *pl, const char *path, const char *why)
{
    if (pl == NULL || !pl->warned) {
        fprintf(stderr, "pycds: warning: %s: %s; relocating from the "
                "archive instead\n", path, why);
    }
    if (pl != NULL) {
        pl->warned = 1;
    }
}

static int
area_holds(const struct pycds_prelink_area *a, uint64_t start, uint64_t end)
{
    return start <= end && start >= a->address
           && end <= a->address + a->size;
}

/* Checks of the header that do not depend on this process; a static
 * reason or NULL. */
static const char *
check_header(const struct pycds_prelink_header *h, size_t file_size)
{
    if (memcmp(h->magic, PYCDS_PRELINK_MAGIC, sizeof(h->magic)) != 0) {
        return "not a prelinked image";
    }
    if (h->version != PYCDS_PRELINK_VERSION) {
        return "made by another version of pycds";
    }
    if (PYCDS_SUM_DIFFERS(h->header_xxh3,
                          pycds_xxh3(h, offsetof(struct pycds_prelink_header,
                                                 header_xxh3)))) {
        return "header checksum mismatch";
    }
    uint64_t tables = sizeof(*h);
    if (h->nentries > file_size / sizeof(struct pycds_prelink_entry)
        || h->nfixups > file_size / sizeof(struct pycds_prelink_fixup)) {
        return "truncated";
    }
    if (h->areas[PYCDS_AREA_STRINGS].size > AREA_MAX
        || h->strings_eager > h->areas[PYCDS_AREA_STRINGS].size) {
        return "areas out of place";
    }
    tables += h->nentries * sizeof(struct pycds_prelink_entry)
              + h->nfixups * sizeof(struct pycds_prelink_fixup)
              + nchunks(h->areas[PYCDS_AREA_STRINGS].size) * sizeof(uint64_t);
    uint64_t next = PAGE_ROUND(tables);
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        const struct pycds_prelink_area *a = &h->areas[k];
        if (a->file_offset != next || a->size % PAGE != 0
            || a->address % PAGE != 0 || a->address < SLOTS_START
            || a->size > AREA_MAX || a->address > SLOTS_END - AREA_MAX) {
            return "areas out of place";
        }
        next += a->size;
    }
    if (next != file_size) {
        return "truncated or extended since it was written";
    }
    return NULL;
}

/* Why this process cannot use the image (it is sound): a static reason,
 * or NULL. */
static const char *
check_fit(const struct pycds_prelink_header *h, struct pycds_archive *ar)
{
    struct pycds_runtime_image rt;
    unsigned char secret[sizeof(h->hash_secret)];
    /* The archive's key is this interpreter's: container.c checked it. */
    const char *why = pycds_abi_key_mismatch(&h->key, &ar->map.header.key);
    if (why != NULL) {
        return why;
    }
    if (h->archive_xxh3 != ar->map.header.header_xxh3) {
        return "made from another version of the archive (run pycds-dump "
               "prelink again)";
    }
    if (h->nentries != ar->index.nentries) {
        return "its entries are not the archive's";
    }
    pycds_runtime_image(&rt);
    if (h->libpython_base != rt.base) {
        return "libpython is loaded at another address in this process "
               "(start it with address randomisation off: setarch -R)";
    }
    if ((h->flags & PYCDS_PRELINK_HASHES)
        && (pycds_hash_secret(secret, sizeof(secret)),
            memcmp(h->hash_secret, secret, sizeof(secret)) != 0)) {
        return "made with another PYTHONHASHSEED than this process's";
    }
    return NULL;
}

static int
map_areas(const struct pycds_prelink_header *h, int fd)
{
    int k;
    for (k = 0; k < PYCDS_NAREAS; k++) {
        const struct pycds_prelink_area *a = &h->areas[k];
        if (a->size == 0) {
            continue;
        }
        /* Private: the pages stay the page cache's until written. */
        void *want = (void *)(uintptr_t)a->address;
        void *p = mmap(want, a->size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd,
                       (off_t)a->file_offset);
        if (p != want) {
            if (p != MAP_FAILED) {
                munmap(p, a->size);  /* a kernel without the flag */
            }
            break;
        }
    }
    if (k == PYCDS_NAREAS) {
        return 0;
    }
    while (--k >= 0) {
        if (h->areas[k].size != 0) {
            munmap((void *)(uintptr_t)h->areas[k].address, h->areas[k].size);
        }
    }
    return -1;
}

/* Checks the chunks of the strings area that [start, end) touches, each
 * once; a static reason if one is damaged. */
static const char *
check_chunks(struct pycds_prelinked *pl, uint64_t start, uint64_t end)
{
    uint64_t base = pl->h->areas[PYCDS_AREA_STRINGS].address;
    uint64_t size = pl->h->areas[PYCDS_AREA_STRINGS].size;
    for (uint64_t c = (start - base) / PYCDS_PRELINK_CHUNK;
         c * PYCDS_PRELINK_CHUNK < end - base; c++) {
        if (pl->checked[c / 8] & (1 << (c % 8))) {
            continue;
        }
        if (PYCDS_SUM_DIFFERS(pl->chunks[c],
                              chunk_xxh3((const char *)(uintptr_t)base,
                                         size, c))) {
            return "strings checksum mismatch";
        }
        pl->checked[c / 8] |= (unsigned char)(1 << (c % 8));
    }
    return NULL;
}

/* Checks the string that starts at s (its bytes' chunks, its type, its
 * size inside the area); a static reason if it is damaged. */
static const char *
check_string(struct pycds_prelinked *pl, PyObject *s)
{
    const struct pycds_prelink_area *a = &pl->h->areas[PYCDS_AREA_STRINGS];
    uint64_t at = (uintptr_t)s, end = a->address + a->size;
    if (at % PYCDS_OBJECT_ALIGN != 0 || at < a->address
        || end - at < sizeof(PyASCIIObject)) {
        return "a string lies outside the strings area";
    }
    const char *why = check_chunks(pl, at, at + sizeof(PyASCIIObject));
    if (why != NULL) {
        return why;
    }
    Py_ssize_t size = PyUnicode_CheckExact(s) ? pycds_layout_size(s) : -1;
    if (size <= 0 || (uint64_t)size > end - at) {
        return "its strings are malformed";
    }
    return check_chunks(pl, at, at + size);
}

/* The interned string equal to s, a string of the strings area (NULL
 * with *damage set if s is damaged, with an exception on error): s itself
 * unless the process interned an equal one before the image was used. */
static PyObject *
interned_for(struct pycds_prelinked *pl, PyObject *s, const char **damage)
{
    uint64_t k = ((uintptr_t)s - pl->h->areas[PYCDS_AREA_STRINGS].address)
                 / 8;
    *damage = NULL;
    if (pl->interned[k] != NULL) {
        return pl->interned[k];
    }
    if ((*damage = check_string(pl, s)) != NULL) {
        return NULL;
    }
    PyObject *dict = pycds_interned_dict();
    if (dict == NULL) {
        PyErr_SetString(PyExc_SystemError, "no interned dict");
        return NULL;
    }
    /* The dict holds s now if it held no equal string: s is immortal,
     * the references it takes write nothing. */
    PyObject *t = PyDict_SetDefault(dict, s, s);
    if (t == NULL) {
        return NULL;
    }
    if (t != s) {
        /* An equal string interned before: slots of the image will point
         * to it for good, as an archive's do.  3.13 interns mortal strings
         * too (sys.intern, the names of a C module): make it immortal the
         * way an archive's names are interned (pycds_layout_intern), with
         * a reference that is never released. */
        Py_INCREF(t);
        if (pycds_layout_intern(&t) < 0) {
            return NULL;
        }
    }
    pl->interned[k] = t;
    return t;
}

static int
intern_chars(const struct pycds_prelink_header *h)
{
    for (int c = 0; c < 256; c++) {
        if (h->interned_chars[c / 8] & (1 << (c % 8))) {
            PyObject *s = PyUnicode_FromOrdinal(c);
            if (s == NULL) {
                return -1;
            }
            PyUnicode_InternInPlace(&s);
            Py_DECREF(s);
        }
    }
    return 0;
}

/* Puts the strings of the entries the making process used in the
 * interned dict, before the program interns any of them itself (a C
 * module interns its names as it loads), so that the image's copies
 * become the interned strings and the slots that point to them are
 * right without being written.  The others wait for their entries: a big
 * archive costs no more at start-up than the strings it is used for.  A
 * static reason if the area is damaged. */
static int
intern_eager(struct pycds_prelinked *pl, const char **damage)
{
    const struct pycds_prelink_area *a = &pl->h->areas[PYCDS_AREA_STRINGS];
    uint64_t pos = a->address, end = a->address + pl->h->strings_eager;
    while (pos < end) {
        PyObject *s = (PyObject *)(uintptr_t)pos;
        if (interned_for(pl, s, damage) == NULL) {
            return *damage != NULL ? 0 : -1;
        }
        pos += (pycds_layout_size(s) + PYCDS_OBJECT_ALIGN - 1)
               & ~(uint64_t)(PYCDS_OBJECT_ALIGN - 1);
    }
    return 0;
}

int
pycds_prelinked_attach(struct pycds_archive *ar, const char *path,
                       int flags)
{
    struct pycds_prelinked *pl = NULL;
    const char *why = NULL, *damage = NULL;
    char *ipath = malloc(strlen(path) + sizeof(PYCDS_PRELINK_SUFFIX));
    const char *file = MAP_FAILED;
    struct stat st;
    int fd = -1;
    if (!(flags & PYCDS_OPEN_PRELINKED)) {
        free(ipath);
        return 0;
    }
    if (ipath == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    sprintf(ipath, "%s%s", path, PYCDS_PRELINK_SUFFIX);
    fd = open(ipath, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT) {
            damage = "cannot be opened";
        }
        goto done;
    }
    if (fstat(fd, &st) < 0 || (size_t)st.st_size < sizeof(*pl->h)) {
        damage = "truncated";
        goto done;
    }
    if ((damage = pycds_untrusted(&st, flags)) != NULL) {
        goto done;
    }
    file = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (file == MAP_FAILED) {
        damage = "cannot be mapped";
        goto done;
    }
    const struct pycds_prelink_header *h = (const void *)file;
    if ((damage = check_header(h, st.st_size)) != NULL
        || (why = check_fit(h, ar)) != NULL) {
        goto done;
    }
    const struct pycds_prelink_entry *entries = (const void *)(h + 1);
    if (PYCDS_SUM_DIFFERS(h->entries_xxh3,
                          pycds_xxh3(entries, h->nentries * sizeof(*entries)))) {
        damage = "entry table checksum mismatch";
        goto done;
    }
    if (map_areas(h, fd) < 0) {
        why = "its addresses are taken in this process";
        goto done;
    }
    const struct pycds_prelink_area *strings = &h->areas[PYCDS_AREA_STRINGS];
    const uint64_t *chunks = (const void *)((const char *)(entries
        + h->nentries) + h->nfixups * sizeof(struct pycds_prelink_fixup));
    if (PYCDS_SUM_DIFFERS(h->chunks_xxh3,
                          pycds_xxh3(chunks, nchunks(strings->size)
                                             * sizeof(uint64_t)))) {
        /* The areas stay mapped (unused): cheaper than being careful. */
        damage = "chunk table checksum mismatch";
        goto done;
    }
    pl = calloc(1, sizeof(*pl));
    if (pl == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    pl->file_size = st.st_size;
    file = MAP_FAILED;          /* pl's now */
    pl->h = h;
    pl->entries = entries;
    pl->fixups = (const void *)(entries + h->nentries);
    pl->path = strdup(ipath);
    pl->tried = calloc(h->nentries + 1, 1);
    pl->interned = calloc(strings->size / 8 + 1, sizeof(PyObject *));
    pl->chunks = chunks;
    pl->checked = calloc(nchunks(strings->size) / 8 + 1, 1);
    if (pl->path == NULL || pl->tried == NULL || pl->interned == NULL
        || pl->checked == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* Strings interned before a failure stay interned: they are sound. */
    if (intern_chars(h) < 0 || intern_eager(pl, &damage) < 0
        || damage != NULL) {
        goto done;
    }
    ar->prelinked = pl;
    pl = NULL;

done:
    if (damage != NULL) {
        warn_damaged(NULL, ipath, damage);
        why = damage;
    }
    ar->prelinked_why = why;
    pycds_prelinked_free(pl);
    if (file != MAP_FAILED) {
        munmap((void *)file, st.st_size);
    }
    if (fd >= 0) {
        close(fd);
    }
    free(ipath);
    return PyErr_Occurred() ? -1 : 0;
}

static int
in_spans(const struct pycds_prelink_entry *pe, uint64_t start, uint64_t end)
{
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        if (start >= pe->spans[k].start && end <= pe->spans[k].end) {
            return 1;
        }
    }
    return 0;
}

static int
apply_fixups(struct pycds_prelinked *pl, const struct pycds_prelink_entry *pe)
{
    const struct pycds_prelink_area *strings = &pl->h->areas[PYCDS_AREA_STRINGS];
    for (uint64_t k = 0; k < pe->nfixups; k++) {
        const struct pycds_prelink_fixup *f = &pl->fixups[pe->fixup_start + k];
        PyObject **slot = (PyObject **)(uintptr_t)f->slot;
        PyObject *from = (PyObject *)(uintptr_t)(f->what & ~(uint64_t)7);
        PyObject *to;
        switch (f->what & 7) {
        case PYCDS_FIXUP_INTERN:
            if (!area_holds(strings, (uintptr_t)from, (uintptr_t)from + 8)
                || !PyUnicode_CheckExact(from)) {
                goto malformed;
            }
            const char *why;
            if ((to = interned_for(pl, from, &why)) == NULL) {
                if (why != NULL) {
                    PyErr_SetString(pycds_ArchiveError, why);
                }
                return -1;
            }
            if (*slot == to) {
                continue;       /* as predicted: the page is not written */
            }
            pl->reinterned++;
            break;
        case PYCDS_FIXUP_FROZENSET:
            if (!in_spans(pe, (uintptr_t)from, (uintptr_t)from + 8)
                || !PyTuple_CheckExact(from)) {
                goto malformed;
            }
            /* One frozenset per tuple, however many slots hold it, as
             * unmarshalling and SHARE make one. */
            to = NULL;
            for (uint64_t j = 0; j < k && to == NULL; j++) {
                const struct pycds_prelink_fixup *g =
                    &pl->fixups[pe->fixup_start + j];
                if (g->what == f->what) {
                    to = *(PyObject **)(uintptr_t)g->slot;
                }
            }
            if (to == NULL) {
                if ((to = PyFrozenSet_New(from)) == NULL) {
                    return -1;
                }
                pycds_layout_keep(to);
                pl->frozensets++;
            }
            break;
        default:
            goto malformed;
        }
        *slot = to;
    }
    return 0;

malformed:
    PyErr_SetString(pycds_ArchiveError, "a fix-up is malformed");
    return -1;
}

/* Checks entry pe's record against the areas, then its checksum; a
 * static reason or NULL. */
static const char *
check_entry(const struct pycds_prelinked *pl,
            const struct pycds_prelink_entry *pe)
{
    const struct pycds_prelink_header *h = pl->h;
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        if (!area_holds(&h->areas[k], pe->spans[k].start, pe->spans[k].end)
            || (k == PYCDS_AREA_STRINGS
                && pe->spans[k].start != pe->spans[k].end)) {
            return "an entry lies outside the image";
        }
    }
    const struct pycds_prelink_span *code = &pe->spans[PYCDS_AREA_CODE];
    const struct pycds_prelink_span *hot = &pe->spans[PYCDS_AREA_HOT_CODE];
    if (pe->root % PYCDS_OBJECT_ALIGN != 0
        || !((pe->root >= code->start && pe->root < code->end)
             || (pe->root >= hot->start && pe->root < hot->end))
        || pe->fixup_start > h->nfixups
        || pe->nfixups > h->nfixups - pe->fixup_start) {
        return "an entry lies outside the image";
    }
    const struct pycds_prelink_fixup *f = pl->fixups + pe->fixup_start;
    for (uint64_t k = 0; k < pe->nfixups; k++) {
        if (f[k].slot % 8 != 0 || !in_spans(pe, f[k].slot, f[k].slot + 8)) {
            return "a fix-up lies outside its entry";
        }
    }
    static const uintptr_t in_place[PYCDS_NAREAS];
    if (PYCDS_SUM_DIFFERS(pe->xxh3, entry_xxh3(pe, in_place, pl->fixups))) {
        return "entry checksum mismatch";
    }
    if (!PyCode_Check((PyObject *)(uintptr_t)pe->root)) {
        return "an entry's root is not a code object";
    }
    return NULL;
}

PyObject *
pycds_prelinked_code(struct pycds_archive *ar, Py_ssize_t i)
{
    struct pycds_prelinked *pl = ar->prelinked;
    const struct pycds_prelink_entry *pe = &pl->entries[i];
    PyObject *root = (PyObject *)(uintptr_t)pe->root;
    if (pl->tried[i] || pe->root == 0) {
        return NULL;
    }
    /* Once: fix-ups may be half done after a failure. */
    pl->tried[i] = 1;
    const char *why = check_entry(pl, pe);
    if (why != NULL) {
        warn_damaged(pl, pl->path, why);
        return NULL;
    }
    /* The version's load-time work on code objects was done at prelink
     * (3.13 versions). */
    if (apply_fixups(pl, pe) < 0) {
        PyObject *damage = pycds_take_refusal();
        if (damage != NULL) {
            warn_damaged(pl, pl->path, PyUnicode_AsUTF8(damage));
            Py_DECREF(damage);
        }
        return NULL;
    }
    pl->served++;
    return root;
}

void
pycds_prelinked_free(struct pycds_prelinked *pl)
{
    if (pl == NULL) {
        return;
    }
    /* The areas stay mapped: their objects may be referenced from
     * anywhere in the process.  The tables are no longer needed. */
    munmap((void *)pl->h, pl->file_size);
    free(pl->path);
    free(pl->tried);
    free(pl->interned);
    free(pl->checked);
    free(pl);
}

PyObject *
pycds_prelinked_stats(struct pycds_archive *ar)
{
    struct pycds_prelinked *pl = ar->prelinked;
    if (pl == NULL) {
        return ar->prelinked_why ? PyUnicode_FromString(ar->prelinked_why)
                                 : Py_NewRef(Py_None);
    }
    return Py_BuildValue("{s:s,s:K,s:n,s:n,s:n}", "path", pl->path,
                         "entries", (unsigned long long)pl->h->nentries,
                         "served", pl->served, "reinterned", pl->reinterned,
                         "frozensets", pl->frozensets);
}
