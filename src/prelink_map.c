/* SHARE from a prelinked image: map its areas at their preferred address
 * and serve an archive's entries from them, in place.
 *
 * format.h defines the file and docs/FORMAT.md ("Prelinked image") says
 * why it is the way it is; prelink_write.c writes it.  What differs
 * between the processes that map one image is fixed per entry on its
 * first use, from its tables, and nothing else is written: pointers into
 * libpython (its load address added, zero for a non-PIE executable),
 * strings the process had interned before (the slot gets the interned
 * one), frozensets (built), the type of a data archive's FrozenDicts.
 * Each string of the strings area is interned once per process, by the
 * first entry that uses it.  This
 * file calls nothing of the relocation fallback (archive_read.c), which calls
 * it. */
#include "pycds/pycds.h"
#include "pycds/relr.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define SLOTS_END (PYCDS_PRELINK_SLOTS_START \
                   + PYCDS_PRELINK_NSLOTS * PYCDS_PRELINK_SLOT_SIZE)

/* Which strings of the image were interned, and as what.  Most become
 * the interned string themselves: two bits per word of the strings area
 * say so (STRING_CANONICAL), in zero pages of anonymous memory that only
 * the strings used make real.  The few that the process had interned an
 * equal string of before (STRING_SUPERSEDED) are looked up in an
 * open-addressed table from the string's address.  (A table of every
 * string used cost `import boto3` 1 MiB per process, 65,536 slots for
 * 18,000 strings; an array with a pointer per word of the strings area
 * cost `-c pass` under an archive of a whole stdlib and site-packages 768
 * pages, one per 4 KiB of strings used.) */
#define STRING_CANONICAL 1
#define STRING_SUPERSEDED 2

struct interned_map {
    uint64_t *keys;           /* 0: empty */
    PyObject **values;
    size_t mask, used;
};

static size_t
map_slot(const struct interned_map *m, uint64_t key)
{
    size_t i = (size_t)((key >> 3) * 0x9E3779B97F4A7C15ULL >> 20) & m->mask;
    while (m->keys[i] != 0 && m->keys[i] != key) {
        i = (i + 1) & m->mask;
    }
    return i;
}

static PyObject *
map_get(const struct interned_map *m, uint64_t key)
{
    if (m->keys == NULL) {
        return NULL;
    }
    size_t i = map_slot(m, key);
    return m->keys[i] == key ? m->values[i] : NULL;
}

/* Adds key (not in m): 0, or -1 with MemoryError. */
static int
map_put(struct interned_map *m, uint64_t key, PyObject *value)
{
    if (2 * (m->used + 1) > m->mask + 1 || m->keys == NULL) {
        struct interned_map bigger = {.mask = m->keys ? 2 * m->mask + 1
                                                      : 1023};
        bigger.keys = calloc(bigger.mask + 1, sizeof(uint64_t));
        bigger.values = malloc((bigger.mask + 1) * sizeof(PyObject *));
        if (bigger.keys == NULL || bigger.values == NULL) {
            free(bigger.keys);
            free(bigger.values);
            PyErr_NoMemory();
            return -1;
        }
        for (size_t i = 0; m->keys != NULL && i <= m->mask; i++) {
            if (m->keys[i] != 0) {
                size_t j = map_slot(&bigger, m->keys[i]);
                bigger.keys[j] = m->keys[i];
                bigger.values[j] = m->values[i];
            }
        }
        bigger.used = m->used;
        free(m->keys);
        free(m->values);
        *m = bigger;
    }
    size_t i = map_slot(m, key);
    m->keys[i] = key;
    m->values[i] = value;
    m->used++;
    return 0;
}

enum entry_use { UNTRIED, FAILED, SERVED };

struct pycds_prelinked {
    const char *path;         /* the archive's */
    struct pycds_mapped *map; /* the archive's mapping, whose tables these are */
    const struct pycds_prelink_header *h;  /* in the archive's mapping */
    const struct pycds_prelink_entry *entries;
    const struct pycds_prelink_fixup *fixups;
    const uint64_t *runtime;  /* the runtime table */
    const uint64_t *chunks;   /* the chunk table */
    /* This process's load address of libpython: added to every runtime
     * slot (0 for a non-PIE executable, which writes none). */
    uintptr_t delta;
    PyObject *interned;       /* pycds_interned_dict(), borrowed */
    unsigned char *checked;   /* a bit per chunk: its checksum matched */
    /* Per entry: enum entry_use (the archive relocates an entry the
     * image failed to serve). */
    unsigned char *use;
    unsigned char *string_state;   /* 2 bits per word of the strings
                                    * area, mapped anonymous */
    size_t string_state_size;
    struct interned_map superseded;  /* string of the strings area -> the
                                      * interned string equal to it */
    Py_ssize_t served, reinterned, frozensets, runtime_fixed;
    int warned;
    int unhashed;             /* PYCDS_OPEN_UNHASHED */
};

/* Bytes of chunk c of a strings area of size bytes (the last may be
 * short). */
static uint64_t
chunk_len(uint64_t size, uint64_t c)
{
    uint64_t left = size - c * PYCDS_PRELINK_CHUNK;
    return left < PYCDS_PRELINK_CHUNK ? left : PYCDS_PRELINK_CHUNK;
}

uint64_t
pycds_prelink_chunk_xxh3(const char *strings, uint64_t size, uint64_t c)
{
    return pycds_xxh3(strings + c * PYCDS_PRELINK_CHUNK, chunk_len(size, c));
}

uint64_t
pycds_prelink_areas_offset(const struct pycds_prelink_header *h)
{
    return pycds_prelink_page_round(
        sizeof(*h) + h->nentries * sizeof(struct pycds_prelink_entry)
        + h->nfixups * sizeof(struct pycds_prelink_fixup)
        + h->nruntime * sizeof(uint64_t)
        + pycds_prelink_nchunks(h->areas[PYCDS_AREA_STRINGS].size)
          * sizeof(uint64_t));
}

uint64_t
pycds_prelink_entry_xxh3(const struct pycds_prelink_entry *pe,
                         const uintptr_t *delta,
                         const struct pycds_prelink_fixup *fixups,
                         const uint64_t *runtime)
{
    struct pycds_prelink_entry record = *pe;
    const void *parts[PYCDS_NAREAS + 3];
    size_t sizes[PYCDS_NAREAS + 3];
    record.xxh3 = 0;
    parts[0] = &record;
    sizes[0] = sizeof(record);
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        parts[1 + k] = (const void *)(uintptr_t)(pe->spans[k].start
                                                 + delta[k]);
        sizes[1 + k] = pe->spans[k].end - pe->spans[k].start;
    }
    parts[PYCDS_NAREAS + 1] = fixups + pe->fixup_start;
    sizes[PYCDS_NAREAS + 1] = pe->nfixups * sizeof(*fixups);
    parts[PYCDS_NAREAS + 2] = runtime + pe->runtime_start;
    sizes[PYCDS_NAREAS + 2] = pe->nruntime * sizeof(*runtime);
    return pycds_xxh3_parts(parts, sizes, PYCDS_NAREAS + 3);
}

/* Damage: said once on stderr, as for a damaged archive; the archive's
 * own parts serve instead. */
static void
warn_damaged(struct pycds_prelinked *pl, const char *path, const char *why)
{
    pycds_warn_once(pl ? &pl->warned : NULL,
                    "%s: %s; relocating from the archive instead", path, why);
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
check_image_header(const struct pycds_prelink_header *h, uint64_t section_size)
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
    if (h->nentries > section_size / sizeof(struct pycds_prelink_entry)
        || h->nfixups > section_size / sizeof(struct pycds_prelink_fixup)
        || h->nruntime > section_size / sizeof(uint64_t)) {
        return "truncated";
    }
    if (h->areas[PYCDS_AREA_STRINGS].size > PYCDS_PRELINK_AREA_MAX
        || h->strings_eager > h->areas[PYCDS_AREA_STRINGS].size) {
        return "areas out of place";
    }
    uint64_t next = pycds_prelink_areas_offset(h);
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        const struct pycds_prelink_area *a = &h->areas[k];
        if (a->file_offset != next || a->size % PYCDS_PRELINK_PAGE != 0
            || a->address % PYCDS_PRELINK_PAGE != 0
            || a->address < PYCDS_PRELINK_SLOTS_START
            || a->size > PYCDS_PRELINK_AREA_MAX
            || a->address > SLOTS_END - PYCDS_PRELINK_AREA_MAX) {
            return "areas out of place";
        }
        next += a->size;
    }
    if (next != section_size) {
        return "its areas do not fill its section";
    }
    return NULL;
}

/* Why this process cannot use the image (it is sound): a static reason,
 * or NULL; *outdated set if the image does not belong with the archive
 * (writing it again mends that). */
static const char *
check_fit(const struct pycds_prelink_header *h, struct pycds_archive *ar,
          int *outdated)
{
    unsigned char secret[sizeof(h->hash_secret)];
    /* The archive's key is this interpreter's: container.c checked it. */
    const char *why = pycds_abi_key_mismatch(&h->key, &ar->map.header.key);
    if (why == NULL && h->archive_xxh3 != ar->map.header.header_xxh3) {
        why = "made from another version of the archive (pycds-dump "
              "prelink writes it again)";
    }
    if (why == NULL && h->nentries != ar->index.nentries) {
        why = "its entries are not the archive's";
    }
    if (why != NULL) {
        *outdated = 1;
        return why;
    }
    if ((h->flags & PYCDS_PRELINK_HASHES)
        && (pycds_hash_secret(secret, sizeof(secret)),
            memcmp(h->hash_secret, secret, sizeof(secret)) != 0)) {
        return "made with another PYTHONHASHSEED than this process's";
    }
    return NULL;
}

/* Maps each area from the archive file, whose image section starts at
 * file offset base. */
static int
map_areas(const struct pycds_prelink_header *h, int fd, uint64_t base)
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
                       (off_t)(base + a->file_offset));
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
 * once; a static reason if one is damaged.  A string's header, the only
 * part of it a process writes, never straddles two chunks (the writer
 * pads), so a chunk checked after a string in the chunk before it was
 * interned still holds the bytes of the file. */
static const char *
check_chunks_from(struct pycds_prelinked *pl, uint64_t c, uint64_t end)
{
    uint64_t base = pl->h->areas[PYCDS_AREA_STRINGS].address;
    uint64_t size = pl->h->areas[PYCDS_AREA_STRINGS].size;
    for (; c * PYCDS_PRELINK_CHUNK < end - base; c++) {
        if (pl->checked[c / 8] & (1 << (c % 8))) {
            continue;
        }
        uint64_t at = base + c * PYCDS_PRELINK_CHUNK;
        const char *why = pycds_lease_pin_image(pl->map, at,
                                                at + chunk_len(size, c));
        if (why != NULL) {
            return why;
        }
        if (PYCDS_SUM_DIFFERS(pl->chunks[c],
                              pycds_prelink_chunk_xxh3(
                                  (const char *)(uintptr_t)base, size, c))) {
            return "strings checksum mismatch";
        }
        pl->checked[c / 8] |= (unsigned char)(1 << (c % 8));
    }
    return NULL;
}

/* Inline: most ranges lie in one chunk checked before. */
static inline const char *
check_chunks(struct pycds_prelinked *pl, uint64_t start, uint64_t end)
{
    uint64_t base = pl->h->areas[PYCDS_AREA_STRINGS].address;
    uint64_t c = (start - base) / PYCDS_PRELINK_CHUNK;
    if ((end - base - 1) / PYCDS_PRELINK_CHUNK == c
        && pl->checked[c / 8] & (1 << (c % 8))) {
        return NULL;
    }
    return check_chunks_from(pl, c, end);
}

/* Checks the string that starts at s (its bytes' chunks, its type, its
 * size inside the area) and points its ob_type at this process's str
 * type; a static reason if it is damaged. */
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
    if ((uintptr_t)Py_TYPE(s) + pl->delta != (uintptr_t)&PyUnicode_Type) {
        return "its strings are malformed";
    }
    if (pl->delta != 0) {
        Py_SET_TYPE(s, &PyUnicode_Type);
    }
    Py_ssize_t size = pycds_layout_size(s);
    if (size <= 0 || (uint64_t)size > end - at) {
        return "its strings are malformed";
    }
    return check_chunks(pl, at, at + size);
}

/* interned_for's first use of the string s (word w of the strings area,
 * whose state is still 0): checks it, interns it and notes which it
 * became. */
static PyObject *
intern_first(struct pycds_prelinked *pl, PyObject *s, uint64_t w,
             const char **damage)
{
    if ((*damage = check_string(pl, s)) != NULL) {
        return NULL;
    }
    PyObject *t = pycds_layout_intern_image(pl->interned, s,
                                            pl->delta != 0);
    if (t == NULL
        || (t != s && map_put(&pl->superseded, (uintptr_t)s, t) < 0)) {
        return NULL;
    }
    pl->string_state[w / 4] |= (unsigned char)(
        (t == s ? STRING_CANONICAL : STRING_SUPERSEDED) << (w % 4 * 2));
    return t;
}

/* The interned string equal to s, a fix-up's string of the strings area
 * (NULL with *damage set if s lies outside it or is damaged, with an
 * exception on error): s itself unless the process interned an equal one
 * before the image was used.
 * Inline: most of the calls find a string interned before, in its two
 * bits. */
static inline PyObject *
interned_for(struct pycds_prelinked *pl, PyObject *s, const char **damage)
{
    const struct pycds_prelink_area *a = &pl->h->areas[PYCDS_AREA_STRINGS];
    uint64_t w = ((uintptr_t)s - a->address) / PYCDS_OBJECT_ALIGN;
    *damage = NULL;
    if ((uintptr_t)s % PYCDS_OBJECT_ALIGN != 0
        || (uintptr_t)s - a->address >= a->size) {
        *damage = "a string lies outside the strings area";
        return NULL;
    }
    switch (pl->string_state[w / 4] >> (w % 4 * 2) & 3) {
    case STRING_CANONICAL:
        return s;
    case STRING_SUPERSEDED:
        return map_get(&pl->superseded, (uintptr_t)s);
    }
    return intern_first(pl, s, w, damage);
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

/* Puts the strings of the entries a PRELINK run used in the interned
 * dict, before the program interns any of them itself (a C module
 * interns its names as it loads), so that the image's copies become the
 * interned strings and the slots that point to them are right without
 * being written.  The others wait for their entries: a big archive costs
 * no more at start-up than the strings it is used for.  *damage set if
 * the area is damaged. */
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
        /* The writer pads before a string whose header would straddle
         * two chunks: padding is zero, where an object's refcount is
         * not. */
        pos += (pycds_layout_size(s) + PYCDS_OBJECT_ALIGN - 1)
               & ~(uint64_t)(PYCDS_OBJECT_ALIGN - 1);
        while (pos < end && *(const uint64_t *)(uintptr_t)pos == 0) {
            pos += PYCDS_OBJECT_ALIGN;
        }
    }
    return 0;
}

/* The tables of the file at h, laid out after the header. */
static void
locate_tables(struct pycds_prelinked *pl, const struct pycds_prelink_header *h)
{
    pl->h = h;
    pl->entries = (const void *)(h + 1);
    pl->fixups = (const void *)(pl->entries + h->nentries);
    pl->runtime = (const void *)(pl->fixups + h->nfixups);
    pl->chunks = pl->runtime + h->nruntime;
}

int
pycds_prelinked_attach(struct pycds_archive *ar, int flags)
{
    struct pycds_mapped *m = &ar->map;
    struct pycds_prelinked *pl = NULL;
    const char *why = NULL, *damage = NULL;
    int outdated = 0;
    const struct pycds_prelink_header *h = (const void *)m->prelinked;
    if (!(flags & PYCDS_OPEN_PRELINKED) || m->prelinked_size == 0) {
        return 0;
    }
    if (m->prelinked_size < sizeof(*h)) {
        damage = "truncated";
        goto done;
    }
    /* The archive's pages that the image's tables are on are used as
     * mapped, like the index's (docs/IMPORT.md, "Trust and files that
     * change"). */
    if ((damage = check_image_header(h, m->prelinked_size)) != NULL
        || (why = check_fit(h, ar, &outdated)) != NULL) {
        goto done;
    }
    pl = calloc(1, sizeof(*pl));
    if (pl == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    locate_tables(pl, h);
    const struct pycds_prelink_area *strings = &h->areas[PYCDS_AREA_STRINGS];
    if (PYCDS_SUM_DIFFERS(h->chunks_xxh3,
                          pycds_xxh3(pl->chunks,
                                     pycds_prelink_nchunks(strings->size)
                                     * sizeof(uint64_t)))) {
        damage = "chunk table checksum mismatch";
        goto done;
    }
    if (map_areas(h, m->fd, m->prelinked_offset) < 0) {
        why = "its addresses are taken in this process";
        goto done;
    }
    if (pycds_lease_guard(m, h) < 0) {
        PyObject *damage = pycds_take_refusal();
        if (damage != NULL) {
            why = "its pages cannot be read";
            Py_DECREF(damage);
        }
        goto done;
    }
    /* Without a lease, the tables read from here on are copied as they
     * are read: the header and the chunk table now, an entry's when it
     * is first used. */
    if (pycds_container_pin(m, h, sizeof(*h)) < 0
        || pycds_container_pin(m, pl->chunks,
                               pycds_prelink_nchunks(strings->size)
                               * sizeof(uint64_t)) < 0) {
        PyObject *damage = pycds_take_refusal();
        if (damage != NULL) {
            why = "its pages cannot be read";
            Py_DECREF(damage);
        }
        goto done;
    }
    struct pycds_runtime_image rt;
    pycds_runtime_image(&rt);
    pl->delta = (uintptr_t)rt.base;
    pl->interned = pycds_interned_dict();
    pl->path = m->path;
    pl->map = m;
    pl->unhashed = (flags & PYCDS_OPEN_UNHASHED) != 0;
    pl->use = calloc(h->nentries + 1, 1);
    pl->checked = calloc(pycds_prelink_nchunks(strings->size) / 8 + 1, 1);
    pl->string_state_size = strings->size / PYCDS_OBJECT_ALIGN / 4 + 1;
    pl->string_state = mmap(NULL, pl->string_state_size,
                            PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (pl->string_state == MAP_FAILED) {
        pl->string_state = NULL;
    }
    if (pl->use == NULL || pl->checked == NULL || pl->string_state == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* Strings interned before a failure stay interned: they are sound.
     * The areas stay mapped after one (unused): objects of them may be
     * interned.  The eager strings are read whole (their padding too):
     * made the process's own first where it holds no lease. */
    if ((why = pycds_lease_pin_image(m, strings->address,
                                     strings->address + h->strings_eager))
        != NULL) {
        goto done;
    }
    if (intern_chars(h) < 0 || intern_eager(pl, &damage) < 0
        || damage != NULL) {
        goto done;
    }
    ar->prelinked = pl;
    pl = NULL;

done:
    if (damage != NULL) {
        warn_damaged(NULL, m->path, damage);
        why = damage;
        outdated = 1;
    }
    ar->prelinked_why = why;
    ar->prelinked_outdated = outdated;
    pycds_prelinked_free(pl);
    return PyErr_Occurred() ? -1 : 0;
}

static int
in_span(const struct pycds_prelink_span *s, uint64_t at)
{
    return at >= s->start && at < s->end;
}

/* The span of an entry that held the last word asked for: the tables
 * list slots in increasing order, so the next one is most often there. */
struct span_cursor {
    uint64_t lo, hi;
};

/* Whether the word at slot lies in one of pe's spans. */
static inline int
word_in_spans(const struct pycds_prelink_entry *pe, struct span_cursor *c,
              uint64_t slot)
{
    if (slot >= c->lo && slot < c->hi && c->hi - slot >= 8) {
        return 1;
    }
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        if (slot >= pe->spans[k].start && slot < pe->spans[k].end
            && pe->spans[k].end - slot >= 8) {
            c->lo = pe->spans[k].start;
            c->hi = pe->spans[k].end;
            return 1;
        }
    }
    return 0;
}

/* Makes the pages of entry pe's spans private in one call, where every
 * one of them is about to be written (the runtime slots of a PIE
 * interpreter: each object's ob_type): the kernel copies them without a
 * fault per page.  Where the kernel cannot (before Linux 5.14), the
 * writes fault as usual.  The run-once area is only read. */
static void
populate_for_write(const struct pycds_prelink_entry *pe)
{
    for (int k = 0; k < PYCDS_AREA_ONCE; k++) {
        uint64_t lo = pe->spans[k].start
                      & ~(uint64_t)(PYCDS_PRELINK_PAGE - 1);
        uint64_t hi = pycds_prelink_page_round(pe->spans[k].end);
        if (pe->spans[k].start < pe->spans[k].end) {
            madvise((void *)(uintptr_t)lo, hi - lo, MADV_POPULATE_WRITE);
        }
    }
}

/* Adds libpython's load address to each runtime slot of entry pe
 * (checked to lie in its spans) but those of its run-once objects, which
 * only their copies get; a static reason if one does not.  The slots
 * come a bitmap at a time: where its first and last lie in one span
 * other than the run-once one, so do the others. */
static const char *
fix_runtime(struct pycds_prelinked *pl, const struct pycds_prelink_entry *pe)
{
    const struct pycds_prelink_span *once = &pe->spans[PYCDS_AREA_ONCE];
    const char *outside = "a runtime slot lies outside its entry";
    struct pycds_relr_iter it;
    struct span_cursor c = {0, 0};
    /* Locals: the slots written could alias pl's fields, which the
     * compiler would then reload and store at every slot.  Counted in the
     * loops: without -mpopcnt, which x86-64's baseline lacks,
     * __builtin_popcountll is a call to libgcc. */
    const uintptr_t delta = pl->delta;
    Py_ssize_t fixed = 0;
    const char *why = NULL;
    uint64_t base, bits;
    int more;
    pycds_relr_iter_init(&it, pl->runtime + pe->runtime_start, pe->nruntime);
    while ((more = pycds_relr_next_group(&it, &base, &bits)) > 0) {
        uint64_t first = base + 8 * (uint64_t)__builtin_ctzll(bits);
        uint64_t last = base + 8 * (uint64_t)(63 - __builtin_clzll(bits));
        if (base % 8 != 0 || last < base || !word_in_spans(pe, &c, first)) {
            why = outside;
            goto done;
        }
        if (last < c.hi && c.hi - last >= 8 && !in_span(once, first)) {
            for (; bits != 0; bits &= bits - 1, fixed++) {
                *(uintptr_t *)(uintptr_t)(base + 8 * (uint64_t)
                                          __builtin_ctzll(bits)) += delta;
            }
            continue;
        }
        for (; bits != 0; bits &= bits - 1) {
            uint64_t slot = base + 8 * (uint64_t)__builtin_ctzll(bits);
            if (!word_in_spans(pe, &c, slot)) {
                why = outside;
                goto done;
            }
            if (!in_span(once, slot)) {
                *(uintptr_t *)(uintptr_t)slot += delta;
                fixed++;
            }
        }
    }
    if (more < 0) {
        why = outside;
    }
done:
    pl->runtime_fixed += fixed;
    return why;
}

/* The frozenset that one of the first n fix-ups of entry pe outside its
 * run-once area built for what, or NULL. */
static PyObject *
frozenset_built(struct pycds_prelinked *pl,
                const struct pycds_prelink_entry *pe, uint64_t n,
                uint64_t what)
{
    const struct pycds_prelink_fixup *f = &pl->fixups[pe->fixup_start];
    for (uint64_t j = 0; j < n; j++) {
        if (f[j].what == what
            && !in_span(&pe->spans[PYCDS_AREA_ONCE], f[j].slot)) {
            return *(PyObject **)(uintptr_t)f[j].slot;
        }
    }
    return NULL;
}

/* The frozenset fix-up k of entry pe builds, or the one an earlier
 * fix-up of the entry built from the same tuple: one frozenset per tuple,
 * however many slots hold it, as unmarshalling and SHARE make one. */
static PyObject *
frozenset_for(struct pycds_prelinked *pl,
              const struct pycds_prelink_entry *pe, uint64_t k)
{
    const struct pycds_prelink_fixup *f = &pl->fixups[pe->fixup_start + k];
    PyObject *fs = frozenset_built(pl, pe, k, f->what);
    if (fs != NULL) {
        return fs;
    }
    fs = PyFrozenSet_New((PyObject *)(uintptr_t)(f->what & ~7ULL));
    if (fs != NULL) {
        pycds_layout_keep(fs);
        pl->frozensets++;
    }
    return fs;
}

/* The interned strings, then the frozensets of entry pe, whose runtime
 * slots are fixed: a frozenset is built from a tuple whose strings are
 * the interned ones.  Not in its run-once area: copies of those objects
 * get theirs (once_slot).  -1 with ArchiveError (damage) or another
 * exception. */
static int
apply_fixups(struct pycds_prelinked *pl, const struct pycds_prelink_entry *pe)
{
    const struct pycds_prelink_fixup *f = &pl->fixups[pe->fixup_start];
    int frozensets = 0;
    for (uint64_t k = 0; k < pe->nfixups; k++) {
        PyObject **slot = (PyObject **)(uintptr_t)f[k].slot;
        PyObject *from = (PyObject *)(uintptr_t)(f[k].what & ~(uint64_t)7);
        const char *why;
        PyObject *to;
        if (in_span(&pe->spans[PYCDS_AREA_ONCE], f[k].slot)) {
            continue;
        }
        if ((f[k].what & 7) == PYCDS_FIXUP_FROZENSET) {
            frozensets = 1;
            continue;
        }
        if (f[k].what == PYCDS_FIXUP_FROZENDICT) {
            /* Before the frozensets: one may hold a FrozenDict. */
            *slot = (PyObject *)&pycds_FrozenDictType;
            continue;
        }
        if ((f[k].what & 7) != PYCDS_FIXUP_INTERN) {
            goto malformed;
        }
        if ((to = interned_for(pl, from, &why)) == NULL) {
            if (why != NULL) {
                PyErr_SetString(pycds_ArchiveError, why);
            }
            return -1;
        }
        if (*slot != to) {      /* else as predicted: the page is not written */
            *slot = to;
            pl->reinterned++;
        }
    }
    struct span_cursor c = {0, 0};
    for (uint64_t k = 0; frozensets && k < pe->nfixups; k++) {
        PyObject *from = (PyObject *)(uintptr_t)(f[k].what & ~(uint64_t)7);
        PyObject *to;
        if ((f[k].what & 7) != PYCDS_FIXUP_FROZENSET
            || in_span(&pe->spans[PYCDS_AREA_ONCE], f[k].slot)) {
            continue;
        }
        if (!word_in_spans(pe, &c, (uintptr_t)from)
            || !PyTuple_CheckExact(from)) {
            goto malformed;
        }
        if ((to = frozenset_for(pl, pe, k)) == NULL) {
            return -1;
        }
        *(PyObject **)(uintptr_t)f[k].slot = to;
    }
    return 0;

malformed:
    PyErr_SetString(pycds_ArchiveError, "a fix-up is malformed");
    return -1;
}

/* Checks entry pe's record against the areas and the tables; a static
 * reason or NULL. */
static const char *
check_record(const struct pycds_prelinked *pl,
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
    /* The root lies in one of its spans (a code object in a code area, a
     * data entry's tuple in the data or fixed area: its type is checked
     * once its runtime slots are fixed). */
    int root_in = 0;
    for (int k = PYCDS_AREA_STRINGS + 1; k < PYCDS_NAREAS; k++) {
        root_in |= in_span(&pe->spans[k], pe->root);
    }
    if (pe->root % PYCDS_OBJECT_ALIGN != 0 || !root_in
        || pe->fixup_start > h->nfixups
        || pe->nfixups > h->nfixups - pe->fixup_start
        || pe->runtime_start > h->nruntime
        || pe->nruntime > h->nruntime - pe->runtime_start) {
        return "an entry lies outside the image";
    }
    return NULL;
}

/* Checks the places of entry pe's fix-ups (its record is sound), then, if
 * hashed, its checksum (the bytes at address A of area k are at A +
 * delta[k]); a static reason or NULL. */
static const char *
check_contents(const struct pycds_prelinked *pl,
               const struct pycds_prelink_entry *pe, const uintptr_t *delta,
               int hashed)
{
    const struct pycds_prelink_fixup *f = pl->fixups + pe->fixup_start;
    struct span_cursor c = {0, 0};
    for (uint64_t k = 0; k < pe->nfixups; k++) {
        if (f[k].slot % 8 != 0 || !word_in_spans(pe, &c, f[k].slot)) {
            return "a fix-up lies outside its entry";
        }
    }
    if (hashed && PYCDS_SUM_DIFFERS(pe->xxh3, pycds_prelink_entry_xxh3(
                                        pe, delta, pl->fixups,
                                        pl->runtime))) {
        return "entry checksum mismatch";
    }
    return NULL;
}

/* Makes what entry pe's first use reads and checks the process's own
 * where it holds no lease (a no-op otherwise): its tables in the
 * archive's mapping, its spans in the areas; -1 with ArchiveError. */
static int
pin_entry(struct pycds_prelinked *pl, const struct pycds_prelink_entry *pe)
{
    if (pycds_container_pin(pl->map, pl->fixups + pe->fixup_start,
                            pe->nfixups * sizeof(*pl->fixups)) < 0
        || pycds_container_pin(pl->map, pl->runtime + pe->runtime_start,
                               pe->nruntime * sizeof(*pl->runtime)) < 0) {
        return -1;
    }
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        const char *why = pycds_lease_pin_image(pl->map, pe->spans[k].start,
                                                pe->spans[k].end);
        if (why != NULL) {
            return pycds_refuse(pl->path, "%s", why);
        }
    }
    return 0;
}

/* What a copy of entry pe's run-once objects needs to know of this
 * process (prelink_once.c), which asks about slots in increasing order:
 * its tables, in slot order too, are followed as it goes. */
struct once_slots {
    struct pycds_prelinked *pl;
    const struct pycds_prelink_entry *pe;
    const struct pycds_prelink_fixup *fixup, *fixups_end;  /* the next */
    struct pycds_relr_iter runtime;
    uint64_t next_runtime;    /* the next runtime slot */
    PyObject *frozensets;     /* tuple address -> frozenset, of this copy
                               * (made with its first one) */
    struct span_cursor c;
};

/* A new reference to the frozenset of the tuple at what & ~7 for a copy:
 * the one the entry's other objects hold, else one of this copy's. */
static PyObject *
once_frozenset(struct once_slots *os, uint64_t what)
{
    PyObject *fs = frozenset_built(os->pl, os->pe, os->pe->nfixups, what);
    if (fs != NULL) {
        return Py_NewRef(fs);
    }
    if (os->frozensets == NULL && (os->frozensets = PyDict_New()) == NULL) {
        return NULL;
    }
    PyObject *key = PyLong_FromUnsignedLongLong(what);
    if (key == NULL) {
        return NULL;
    }
    fs = PyDict_GetItemWithError(os->frozensets, key);
    if (fs != NULL || PyErr_Occurred()) {
        Py_DECREF(key);
        return Py_XNewRef(fs);
    }
    PyObject *tuple = (PyObject *)(uintptr_t)(what & ~(uint64_t)7);
    struct span_cursor c = {0, 0};
    if (!word_in_spans(os->pe, &c, (uintptr_t)tuple)
        || in_span(&os->pe->spans[PYCDS_AREA_ONCE], (uintptr_t)tuple)
        || !PyTuple_CheckExact(tuple)) {
        Py_DECREF(key);
        PyErr_SetString(pycds_ArchiveError, "a fix-up is malformed");
        return NULL;
    }
    fs = PyFrozenSet_New(tuple);
    if (fs != NULL && PyDict_SetItem(os->frozensets, key, fs) < 0) {
        Py_CLEAR(fs);
    }
    Py_DECREF(key);
    if (fs != NULL) {
        os->pl->frozensets++;
    }
    return fs;
}

/* What the slot at address slot of a run-once object, holding raw in the
 * image, holds in this process: a new reference, or NULL (with an
 * exception, or without for an object of the run-once span). */
static inline PyObject *
once_slot(struct once_slots *os, uint64_t slot, PyObject *raw)
{
    const struct pycds_prelink_fixup *f = NULL;
    while (os->fixup < os->fixups_end && os->fixup->slot < slot) {
        os->fixup++;
    }
    if (os->fixup < os->fixups_end && os->fixup->slot == slot) {
        f = os->fixup;
    }
    while (os->next_runtime < slot) {
        os->next_runtime = pycds_relr_next(&os->runtime);
    }
    if (f != NULL && (f->what & 7) == PYCDS_FIXUP_FROZENSET) {
        return once_frozenset(os, f->what);
    }
    if (f != NULL) {
        PyObject *from = (PyObject *)(uintptr_t)(f->what & ~(uint64_t)7);
        const char *why = "a fix-up is malformed";
        PyObject *to = (f->what & 7) == PYCDS_FIXUP_INTERN
                       ? interned_for(os->pl, from, &why) : NULL;
        if (to == NULL && why != NULL) {
            PyErr_SetString(pycds_ArchiveError, why);
        }
        return Py_XNewRef(to);
    }
    if (os->next_runtime == slot) {
        return Py_NewRef((PyObject *)((uintptr_t)raw + os->pl->delta));
    }
    if (in_span(&os->pe->spans[PYCDS_AREA_ONCE], (uintptr_t)raw)) {
        return NULL;
    }
    if (!word_in_spans(os->pe, &os->c, (uintptr_t)raw)) {
        PyErr_SetString(pycds_ArchiveError,
                        "a run-once object points outside its entry");
        return NULL;
    }
    return Py_NewRef(raw);
}

/* pycds_once_slots_fn over once_slot. */
static int
once_slots(void *ctx, uint64_t slot, PyObject *const *raw, Py_ssize_t n,
           PyObject **to)
{
    for (Py_ssize_t k = 0; k < n; k++, slot += 8) {
        to[k] = once_slot(ctx, slot, raw[k]);
        if (to[k] == NULL && PyErr_Occurred()) {
            return -1;
        }
    }
    return 0;
}

/* The first of the n fix-ups at f (in slot order) whose slot is at or
 * above addr. */
static const struct pycds_prelink_fixup *
first_fixup_at(const struct pycds_prelink_fixup *f, uint64_t n, uint64_t addr)
{
    uint64_t lo = 0, hi = n;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (f[mid].slot < addr) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    return f + lo;
}

/* A new reference to entry pe's code: its root where it is used in place,
 * else a copy of its run-once objects. */
static PyObject *
root_code(struct pycds_prelinked *pl, const struct pycds_prelink_entry *pe)
{
    const struct pycds_prelink_span *once = &pe->spans[PYCDS_AREA_ONCE];
    if (!in_span(once, pe->root)) {
        return Py_NewRef((PyObject *)(uintptr_t)pe->root);
    }
    const struct pycds_prelink_fixup *f = pl->fixups + pe->fixup_start;
    struct once_slots os = {.pl = pl, .pe = pe,
                            .fixup = first_fixup_at(f, pe->nfixups,
                                                    once->start),
                            .fixups_end = f + pe->nfixups};
    /* The copy asks about the run-once span's slots only, in increasing
     * order: both tables are entered at the span's start. */
    pycds_relr_iter_init(&os.runtime, pl->runtime + pe->runtime_start,
                         pe->nruntime);
    pycds_relr_seek(&os.runtime, once->start);
    PyObject *code = pycds_once_copy(once->start, once->end, pe->root,
                                     pl->delta, once_slots, &os);
    Py_XDECREF(os.frozensets);
    return code;
}

/* Whether entry pe's root is a code object (a run-once one's ob_type is
 * still the image's). */
static int
root_is_code(const struct pycds_prelinked *pl,
             const struct pycds_prelink_entry *pe)
{
    PyObject *root = (PyObject *)(uintptr_t)pe->root;
    if (in_span(&pe->spans[PYCDS_AREA_ONCE], pe->root)) {
        return (uintptr_t)Py_TYPE(root) + pl->delta
               == (uintptr_t)&PyCode_Type;
    }
    return PyCode_Check(root);
}

/* Damage as ArchiveError: said once on stderr and taken back (the
 * archive's own part serves); -1 if the exception is another. */
static int
warn_refusal(struct pycds_prelinked *pl)
{
    PyObject *damage = pycds_take_refusal();
    if (damage == NULL) {
        return -1;
    }
    warn_damaged(pl, pl->path, PyUnicode_AsUTF8(damage));
    Py_DECREF(damage);
    return 0;
}

/* Entry pe's first use: its checks and the words of this process; -1
 * (with an exception only if it is not about the image).  data: the
 * entry is a data archive's, its root a 1-tuple. */
static int
first_use(struct pycds_prelinked *pl, const struct pycds_prelink_entry *pe,
          int data)
{
    static const uintptr_t in_place[PYCDS_NAREAS];
    const char *why = check_record(pl, pe);
    if (why == NULL && pin_entry(pl, pe) < 0) {
        warn_refusal(pl);
        return -1;
    }
    if (why == NULL) {
        why = check_contents(pl, pe, in_place, !pl->unhashed);
    }
    if (why == NULL && pl->delta != 0) {
        populate_for_write(pe);
        why = fix_runtime(pl, pe);
    }
    PyObject *root = (PyObject *)(uintptr_t)pe->root;
    if (why == NULL && (data ? !PyTuple_CheckExact(root)
                               || PyTuple_GET_SIZE(root) != 1
                             : !root_is_code(pl, pe))) {
        why = data ? "a data entry's root is not a 1-tuple"
                   : "an entry's root is not a code object";
    }
    if (why != NULL) {
        warn_damaged(pl, pl->path, why);
        return -1;
    }
    /* The version's load-time work on code objects was done when the
     * image was written (3.13 versions). */
    if (apply_fixups(pl, pe) < 0) {
        warn_refusal(pl);
        return -1;
    }
    return 0;
}

PyObject *
pycds_prelinked_code(struct pycds_archive *ar, Py_ssize_t i)
{
    struct pycds_prelinked *pl = ar->prelinked;
    const struct pycds_prelink_entry *pe = &pl->entries[i];
    if (pl->use[i] == FAILED) {
        return NULL;
    }
    if (pl->use[i] == SERVED) {
        return root_code(pl, pe);
    }
    /* Once: fix-ups may be half done after a failure. */
    pl->use[i] = FAILED;
    if (pycds_container_pin(pl->map, pe, sizeof(*pe)) < 0) {
        warn_refusal(pl);
        return NULL;
    }
    if (pe->root == 0) {
        return NULL;
    }
    if (first_use(pl, pe,
                  (ar->index.entries[i].flags & PYCDS_ENTRY_DATA) != 0) < 0) {
        return NULL;
    }
    /* The first copy checks what the next ones trust. */
    PyObject *code = root_code(pl, pe);
    if (code == NULL) {
        warn_refusal(pl);
        return NULL;
    }
    pl->use[i] = SERVED;
    pl->served++;
    return code;
}

const char *
pycds_prelinked_verify(const struct pycds_mapped *m)
{
    const struct pycds_prelink_header *h = (const void *)m->prelinked;
    struct pycds_prelinked pl = {0};
    uintptr_t delta[PYCDS_NAREAS];
    const char *why;
    if (m->prelinked_size < sizeof(*h)) {
        return "truncated";
    }
    if ((why = check_image_header(h, m->prelinked_size)) != NULL) {
        return why;
    }
    locate_tables(&pl, h);
    const struct pycds_prelink_area *strings = &h->areas[PYCDS_AREA_STRINGS];
    uint64_t nchunks = pycds_prelink_nchunks(strings->size);
    if (pycds_xxh3(pl.chunks, nchunks * sizeof(uint64_t)) != h->chunks_xxh3) {
        return "chunk table checksum mismatch";
    }
    for (uint64_t c = 0; c < nchunks; c++) {
        if (pl.chunks[c] != pycds_prelink_chunk_xxh3(
                m->prelinked + strings->file_offset, strings->size, c)) {
            return "strings checksum mismatch";
        }
    }
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        delta[k] = (uintptr_t)(m->prelinked + h->areas[k].file_offset)
                   - h->areas[k].address;
    }
    for (uint64_t i = 0; i < h->nentries; i++) {
        if (pl.entries[i].root != 0
            && ((why = check_record(&pl, &pl.entries[i])) != NULL
                || (why = check_contents(&pl, &pl.entries[i], delta, 1))
                   != NULL)) {
            return why;
        }
    }
    return NULL;
}

void
pycds_prelinked_free(struct pycds_prelinked *pl)
{
    if (pl == NULL) {
        return;
    }
    /* The areas stay mapped: their objects may be referenced from
     * anywhere in the process. */
    free(pl->use);
    if (pl->string_state != NULL) {
        munmap(pl->string_state, pl->string_state_size);
    }
    free(pl->superseded.keys);
    free(pl->superseded.values);
    free(pl->checked);
    free(pl);
}

long
pycds_prelinked_slot(const struct pycds_mapped *m)
{
    const struct pycds_prelink_header *h = (const void *)m->prelinked;
    if (m->prelinked_size < sizeof(*h)
        || check_image_header(h, m->prelinked_size) != NULL) {
        return -1;
    }
    return (long)((h->areas[PYCDS_AREA_STRINGS].address
                   - PYCDS_PRELINK_SLOTS_START) / PYCDS_PRELINK_SLOT_SIZE);
}

PyObject *
pycds_prelinked_stats(struct pycds_archive *ar)
{
    struct pycds_prelinked *pl = ar->prelinked;
    if (pl == NULL) {
        return ar->prelinked_why ? PyUnicode_FromString(ar->prelinked_why)
                                 : Py_NewRef(Py_None);
    }
    return Py_BuildValue("{s:s,s:s,s:K,s:n,s:n,s:n,s:n,s:K}",
                         "path", pl->path,
                         "pages", pycds_lease_state(&ar->map),
                         "entries", (unsigned long long)pl->h->nentries,
                         "served", pl->served, "reinterned", pl->reinterned,
                         "frozensets", pl->frozensets,
                         "runtime_fixed", pl->runtime_fixed,
                         "delta", (unsigned long long)pl->delta);
}
