/* The module index (.pycds.modules): written at DUMP, parsed and searched
 * at SHARE.  An open-addressing hash table over XXH3 of the names, so a
 * lookup, hit or miss, touches one or two cache lines. */
#include "pycds/pycds.h"

#include <stdlib.h>
#include <string.h>

struct pycds_index_builder {
    struct pycds_entry *entries;
    size_t nentries, cap;
    char *strings;
    size_t strings_size, strings_cap;
};

struct pycds_index_builder *
pycds_index_builder_new(void)
{
    return calloc(1, sizeof(struct pycds_index_builder));
}

void
pycds_index_builder_free(struct pycds_index_builder *b)
{
    if (b != NULL) {
        free(b->entries);
        free(b->strings);
        free(b);
    }
}

static int
add_string(struct pycds_index_builder *b, const char *s, Py_ssize_t len,
           struct pycds_str *out)
{
    if (len < 0 || b->strings_size + len > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "index strings too large");
        return -1;
    }
    if (pycds_grow((void **)&b->strings, &b->strings_cap,
                   b->strings_size + len, 1) < 0) {
        return -1;
    }
    if (len) {
        memcpy(b->strings + b->strings_size, s, len);
    }
    out->off = (uint32_t)b->strings_size;
    out->len = (uint32_t)len;
    b->strings_size += len;
    return 0;
}

int
pycds_index_add(struct pycds_index_builder *b, const struct pycds_entry *e,
                const struct pycds_entry_strings *strs)
{
    if (pycds_grow((void **)&b->entries, &b->cap, b->nentries + 1,
                   sizeof(*b->entries)) < 0) {
        return -1;
    }
    struct pycds_entry *ne = &b->entries[b->nentries];
    *ne = *e;
    ne->name_hash = pycds_xxh3(strs->name, strs->name_len);
    if (add_string(b, strs->name, strs->name_len, &ne->name) < 0
        || add_string(b, strs->origin, strs->origin_len, &ne->origin) < 0) {
        return -1;
    }
    b->nentries++;
    return 0;
}

struct pycds_entry *
pycds_index_entries(struct pycds_index_builder *b, size_t *n)
{
    *n = b->nentries;
    return b->entries;
}

static uint64_t
entry_xxh3(const struct pycds_entry *e, const char *strings)
{
    /* The record with its own checksum zeroed, its name, its origin. */
    struct pycds_entry copy = *e;
    copy.entry_xxh3 = 0;
    const void *parts[] = {&copy, strings + e->name.off,
                           strings + e->origin.off};
    size_t sizes[] = {sizeof(copy), e->name.len, e->origin.len};
    return pycds_xxh3_parts(parts, sizes, 3);
}

int
pycds_index_finish(struct pycds_index_builder *b, char **out, size_t *size)
{
    for (size_t i = 0; i < b->nentries; i++) {
        b->entries[i].entry_xxh3 = entry_xxh3(&b->entries[i],
                                                    b->strings);
    }
    uint32_t nbuckets = 2;
    while (nbuckets < 2 * b->nentries) {
        nbuckets *= 2;
    }
    size_t esize = b->nentries * sizeof(struct pycds_entry);
    size_t total = sizeof(struct pycds_index_header) + esize
                   + nbuckets * sizeof(uint32_t) + b->strings_size;
    char *buf = calloc(1, total);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    struct pycds_index_header h = {
        .nentries = (uint32_t)b->nentries,
        .nbuckets = nbuckets,
        .strings_size = (uint32_t)b->strings_size,
    };
    char *p = buf;
    memcpy(p, &h, sizeof(h));
    p += sizeof(h);
    if (esize) {
        memcpy(p, b->entries, esize);
    }
    p += esize;
    uint32_t *buckets = (uint32_t *)p;
    for (uint32_t i = 0; i < b->nentries; i++) {
        uint32_t j = (uint32_t)b->entries[i].name_hash & (nbuckets - 1);
        while (buckets[j] != 0) {
            j = (j + 1) & (nbuckets - 1);
        }
        buckets[j] = i + 1;
    }
    p += nbuckets * sizeof(uint32_t);
    if (b->strings_size) {
        memcpy(p, b->strings, b->strings_size);
    }
    *out = buf;
    *size = total;
    return 0;
}

static int
str_in_pool(struct pycds_str s, uint32_t pool)
{
    return s.off <= pool && s.len <= pool - s.off;
}

int
pycds_index_parse(struct pycds_index *ix, const char *data, size_t size,
                  const char *path)
{
    struct pycds_index_header h;
    if (size < sizeof(h)) {
        return pycds_refuse(path, "index is truncated");
    }
    memcpy(&h, data, sizeof(h));
    if (h.nbuckets < 2 || (h.nbuckets & (h.nbuckets - 1)) != 0
        || h.nbuckets < 2 * (uint64_t)h.nentries) {
        return pycds_refuse(path, "index has a malformed hash table");
    }
    uint64_t need = sizeof(h)
                    + (uint64_t)h.nentries * sizeof(struct pycds_entry)
                    + (uint64_t)h.nbuckets * sizeof(uint32_t)
                    + h.strings_size;
    if (need != size) {
        return pycds_refuse(path, "index size does not match its header");
    }
    ix->map = NULL;
    ix->entries = (const struct pycds_entry *)(data + sizeof(h));
    ix->nentries = h.nentries;
    ix->buckets = (const uint32_t *)(ix->entries + h.nentries);
    ix->nbuckets = h.nbuckets;
    ix->strings = (const char *)(ix->buckets + h.nbuckets);
    ix->strings_size = h.strings_size;
    return 0;
}

/* Makes [p, p + n) of a mapped index private to this process (a no-op
 * for an index in memory); -1 with ArchiveError set if the file changed. */
static int
pin(const struct pycds_index *ix, const void *p, size_t n)
{
    return ix->map == NULL ? 0 : pycds_container_pin(ix->map, p, n);
}

int
pycds_index_check_entry(const struct pycds_index *ix, Py_ssize_t i,
                        const char *path)
{
    /* The record first (private, it cannot change any more), then the
     * pages of its strings once they are known to lie in the pool, then
     * the checksum, which reads them: nothing is read from pages a
     * truncation of the file could take away. */
    const struct pycds_entry *e = &ix->entries[i];
    if (pin(ix, e, sizeof(*e)) < 0) {
        return -1;
    }
    if (!str_in_pool(e->name, ix->strings_size)
        || !str_in_pool(e->origin, ix->strings_size)) {
        return pycds_refuse(path, "index entry %zd has a string outside the "
                            "pool", i);
    }
    if (pin(ix, ix->strings + e->name.off, e->name.len) < 0
        || pin(ix, ix->strings + e->origin.off, e->origin.len) < 0) {
        return -1;
    }
    if (PYCDS_SUM_DIFFERS(e->entry_xxh3, entry_xxh3(e, ix->strings))) {
        return pycds_refuse(path, "index entry %zd: checksum mismatch", i);
    }
    return 0;
}

const char *
pycds_index_str(const struct pycds_index *ix, struct pycds_str s)
{
    return ix->strings + s.off;
}

/* Whether [p, p + n) of the index may be read: its pages are private
 * (pinned), or the index is not a mapped file's.  A file changed in place
 * makes lookups miss (the module imports normally). */
static inline int
readable(const struct pycds_index *ix, const void *p, size_t n)
{
    if (pin(ix, p, n) == 0) {
        return 1;
    }
    PyErr_Clear();
    return 0;
}

Py_ssize_t
pycds_index_find(const struct pycds_index *ix, const char *name,
                 Py_ssize_t len)
{
    uint64_t hash = pycds_xxh3(name, len);
    uint32_t mask = ix->nbuckets - 1;
    /* A well-formed table has at most nentries buckets in use, so a
     * probe meets an empty one within nentries + 1 steps: a damaged table
     * full of entries ends there, and costs no more than a good one. */
    for (uint32_t j = (uint32_t)hash & mask, n = 0;
         n <= ix->nentries && n < ix->nbuckets; j = (j + 1) & mask, n++) {
        if (!readable(ix, &ix->buckets[j], sizeof(uint32_t))) {
            return -1;
        }
        uint32_t b = ix->buckets[j];
        if (b == 0) {
            return -1;
        }
        /* Entries are checked when found, not before: a damaged bucket or
         * name can only make this miss or find an entry whose own check
         * then fails. */
        if (b > ix->nentries) {
            return -1;
        }
        const struct pycds_entry *e = &ix->entries[b - 1];
        if (!readable(ix, e, sizeof(*e))) {
            return -1;
        }
        if (e->name_hash == hash && e->name.len == (uint64_t)len
            && str_in_pool(e->name, ix->strings_size)
            && readable(ix, ix->strings + e->name.off, len)
            && memcmp(ix->strings + e->name.off, name, len) == 0) {
            return b - 1;
        }
    }
    return -1;
}
