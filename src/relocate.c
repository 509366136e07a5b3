/* SHARE: open an archive and relocate its entries, each on first use.
 *
 * Opening costs the same whatever the archive's size: map the file, check
 * the header, the index, the string table and the global symbols.  An
 * entry's part is checked (ranges, checksum) and relocated in one pass
 * over its relocations the first time its code object is asked for. */
#include "pycds/pycds.h"
#include "pycds/relr.h"

#include <stdlib.h>
#include <string.h>

enum entry_state { ENTRY_FRESH, ENTRY_RELOCATING, ENTRY_READY, ENTRY_BROKEN };

struct pycds_archive *
pycds_archive_open(const char *path, int flags)
{
    struct pycds_archive *ar = calloc(1, sizeof(*ar));
    if (ar == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    if (pycds_container_open(&ar->map, path, flags) < 0) {
        free(ar);
        return NULL;
    }
    if (pycds_index_parse(&ar->index, ar->map.index, ar->map.index_size,
                          path) < 0) {
        goto error;
    }
    /* calloc'd tables of this size are zero pages the kernel fills in on
     * first touch: no cost in proportion to the archive until used. */
    size_t n = ar->index.nentries ? ar->index.nentries : 1;
    ar->roots = calloc(n, sizeof(PyObject *));
    ar->state = calloc(n, 1);
    ar->globals = calloc(ar->map.nsyms - ar->map.header.nlocal_syms + 1,
                         sizeof(PyObject *));
    if (ar->roots == NULL || ar->state == NULL || ar->globals == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    return ar;

error:
    pycds_archive_free(ar);
    return NULL;
}

void
pycds_archive_free(struct pycds_archive *ar)
{
    if (ar == NULL) {
        return;
    }
    /* Once any entry was relocated, objects of the heap may be referenced
     * from anywhere in the process: the mapping stays for good. */
    int used = 0;
    for (uint32_t i = 0; ar->state != NULL && i < ar->index.nentries; i++) {
        used |= ar->state[i] != ENTRY_FRESH;
    }
    if (!used) {
        pycds_container_close(&ar->map);
    }
    free(ar->roots);
    free(ar->state);
    free(ar->globals);
    free(ar);
}

int
pycds_archive_check_entry(struct pycds_mapped *m,
                          const struct pycds_index *ix, Py_ssize_t i)
{
    const struct pycds_entry *e = &ix->entries[i];
    const char *name = pycds_index_str(ix, e->name);
    int nlen = (int)(e->name.len < 200 ? e->name.len : 200);
    if (e->heap_start > e->heap_end || e->heap_end > m->header.heap.size
        || e->heap_start % PYCDS_OBJECT_ALIGN != 0
        || e->root < e->heap_start || e->root >= e->heap_end
        || e->root % PYCDS_OBJECT_ALIGN != 0) {
        return pycds_refuse(m->path, "entry '%.*s' has a heap range outside "
                            "the heap", nlen, name);
    }
    if (e->relr_start > m->nrelr || e->relr_count > m->nrelr - e->relr_start
        || e->sym_start < 1 || e->sym_start > m->header.nlocal_syms
        || e->sym_count > m->header.nlocal_syms - e->sym_start) {
        return pycds_refuse(m->path, "entry '%.*s' has relocations or "
                            "symbols outside their tables", nlen, name);
    }
    if (pycds_container_pin(m, m->heap + e->heap_start,
                            e->heap_end - e->heap_start) < 0
        || pycds_container_pin(m, m->relr + e->relr_start,
                               e->relr_count * sizeof(uint64_t)) < 0
        || pycds_container_pin(m, m->syms + e->sym_start,
                               e->sym_count * sizeof(Elf64_Sym)) < 0) {
        return -1;
    }
    uint64_t sum = pycds_part_xxh3(m->heap + e->heap_start,
                                   e->heap_end - e->heap_start,
                                   m->relr + e->relr_start, e->relr_count,
                                   m->syms + e->sym_start, e->sym_count);
    if (sum != e->part_xxh3) {
        return pycds_refuse(m->path, "entry '%.*s': checksum mismatch",
                            nlen, name);
    }
    return 0;
}

/* The object of the entry's part at offset, if the part holds at least
 * its header and its type is tp. */
static PyObject *
part_object(struct pycds_archive *ar, const struct pycds_entry *e,
            uint64_t offset, PyTypeObject *tp)
{
    if (offset < e->heap_start || offset % PYCDS_OBJECT_ALIGN != 0
        || offset > e->heap_end
        || e->heap_end - offset < sizeof(PyVarObject)) {
        return NULL;
    }
    PyObject *op = (PyObject *)(ar->map.heap + offset);
    if (Py_TYPE(op) != tp) {
        return NULL;
    }
    return op;
}

static const char *
symbol_name(struct pycds_archive *ar, const Elf64_Sym *s)
{
    /* The string table ends with a NUL (checked at open). */
    if (s->st_name >= ar->map.strtab_size) {
        return NULL;
    }
    return ar->map.strtab + s->st_name;
}

static PyObject *
resolve_global(struct pycds_archive *ar, uint64_t sym)
{
    PyObject **slot = &ar->globals[sym - ar->map.header.nlocal_syms];
    if (*slot != NULL) {
        return *slot;
    }
    const char *name = symbol_name(ar, &ar->map.syms[sym]);
    PyObject *op = name ? pycds_runtime_resolve(name) : NULL;
    if (op == NULL) {
        if (!PyErr_Occurred()) {
            pycds_refuse(ar->map.path, "unknown runtime symbol '%.100s'",
                         name ? name : "?");
        }
        return NULL;
    }
    *slot = op;
    return op;
}

static PyObject *
resolve_local(struct pycds_archive *ar, const struct pycds_entry *e,
              uint64_t sym, PyObject **cache)
{
    PyObject **slot = &cache[sym - e->sym_start];
    if (*slot != NULL) {
        return *slot;
    }
    const Elf64_Sym *s = &ar->map.syms[sym];
    const char *name = symbol_name(ar, s);
    PyObject *op = NULL;
    if (name == NULL || s->st_shndx != PYCDS_HEAP_SHNDX) {
        goto bad;
    }
    if (strcmp(name, PYCDS_SYM_INTERN) == 0) {
        op = part_object(ar, e, s->st_value, &PyUnicode_Type);
        if (op == NULL) {
            goto bad;
        }
        /* The archive's reference: the string may become the interned
         * one, which the interned dict does not own on 3.11. */
        Py_INCREF(op);
        if (pycds_layout_intern(&op) < 0) {
            return NULL;
        }
    }
    else if (strcmp(name, PYCDS_SYM_FROZENSET) == 0) {
        PyObject *items = part_object(ar, e, s->st_value, &PyTuple_Type);
        if (items == NULL) {
            goto bad;
        }
        op = PyFrozenSet_New(items);
        if (op == NULL) {
            return NULL;
        }
    }
    else {
        goto bad;
    }
    pycds_layout_keep(op);
    *slot = op;
    return op;

bad:
    pycds_refuse(ar->map.path, "malformed local symbol %llu",
                 (unsigned long long)sym);
    return NULL;
}

struct part_ctx {
    struct pycds_archive *ar;
    const struct pycds_entry *e;
    char *heap;
    uint64_t lo, span;        /* the part: [lo, lo + span) */
    PyObject **cache;         /* the part's resolved local symbols */
};

static int
slot_symbol(struct part_ctx *ctx, uint64_t sym, uint64_t *value)
{
    struct pycds_archive *ar = ctx->ar;
    const struct pycds_entry *e = ctx->e;
    uint64_t nlocal = ar->map.header.nlocal_syms;
    PyObject *op;
    /* Most slots are an ob_type: a global already resolved. */
    if (sym >= nlocal && sym < ar->map.nsyms) {
        op = ar->globals[sym - nlocal];
        if (op == NULL) {
            op = resolve_global(ar, sym);
        }
    }
    else if (sym - e->sym_start < e->sym_count) {
        op = resolve_local(ar, e, sym, ctx->cache);
    }
    else {
        return pycds_refuse(ar->map.path, "a relocation names symbol %llu "
                            "outside its entry", (unsigned long long)sym);
    }
    *value = (uintptr_t)op;
    return op == NULL ? -1 : 0;
}

/* Replaces what a pointer slot holds in the file with the address it
 * stands for.  Inlined into the RELR loop: it runs for every slot. */
static inline int
relocate_slot(void *arg, uint64_t slot)
{
    struct part_ctx *ctx = arg;
    uint64_t v;
    /* Unsigned wrap-around makes each range test one comparison. */
    if (slot - ctx->lo > ctx->span - sizeof(v) || (slot & 7) != 0) {
        return pycds_refuse(ctx->ar->map.path, "a relocation lies outside "
                            "its entry");
    }
    uint64_t *p = (uint64_t *)(ctx->heap + slot);
    v = *p;
    if (v & PYCDS_SLOT_SYMBOL) {
        if (slot_symbol(ctx, v >> PYCDS_SLOT_TAG_BITS, &v) < 0) {
            return -1;
        }
    }
    else if (v - ctx->lo >= ctx->span || (v & 7) != 0) {
        return pycds_refuse(ctx->ar->map.path, "a pointer leads outside its "
                            "entry");
    }
    else {
        v += (uintptr_t)ctx->heap;
    }
    *p = v;
    return 0;
}

static int
relocate_part(struct pycds_archive *ar, const struct pycds_entry *e)
{
    struct part_ctx ctx = {ar, e, ar->map.heap, e->heap_start,
                           e->heap_end - e->heap_start,
                           calloc(e->sym_count + 1, sizeof(PyObject *))};
    if (ctx.cache == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = pycds_relr_each(ar->map.relr + e->relr_start, e->relr_count,
                             relocate_slot, &ctx);
    free(ctx.cache);
    return rc;
}

/* The version's load-time work on code and on every code object nested in
 * its constants (DUMP bounds the nesting). */
static int
ready_codes(PyObject *code)
{
    if (pycds_layout_ready_code(code) < 0) {
        return -1;
    }
    PyObject *consts = ((PyCodeObject *)code)->co_consts;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(consts); k++) {
        PyObject *c = PyTuple_GET_ITEM(consts, k);
        if (PyCode_Check(c) && ready_codes(c) < 0) {
            return -1;
        }
    }
    return 0;
}

PyObject *
pycds_archive_entry_code(struct pycds_archive *ar, Py_ssize_t i)
{
    const struct pycds_entry *e = &ar->index.entries[i];
    switch (ar->state[i]) {
    case ENTRY_READY:
        return ar->roots[i];
    case ENTRY_BROKEN:
        pycds_refuse(ar->map.path, "entry '%.*s' is unusable (an earlier "
                     "load failed)", (int)e->name.len,
                     pycds_index_str(&ar->index, e->name));
        return NULL;
    case ENTRY_RELOCATING:
        /* Relocation rewrites slots in place, so it cannot run twice: a
         * re-entrant import of this module (a finaliser run by a GC pass
         * during relocation) falls back to normal import. */
        pycds_refuse(ar->map.path, "entry '%.*s' is being loaded",
                     (int)e->name.len, pycds_index_str(&ar->index, e->name));
        return NULL;
    default:
        /* The checksum covers the bytes as written, before relocation
         * changes them. */
        if (pycds_archive_check_entry(&ar->map, &ar->index, i) < 0) {
            ar->state[i] = ENTRY_BROKEN;
            return NULL;
        }
        ar->state[i] = ENTRY_RELOCATING;
        break;
    }
    PyObject *root = NULL;
    if (relocate_part(ar, e) == 0) {
        root = part_object(ar, e, e->root, &PyCode_Type);
        if (root == NULL) {
            pycds_refuse(ar->map.path, "entry '%.*s' does not hold a code "
                         "object", (int)e->name.len,
                         pycds_index_str(&ar->index, e->name));
        }
    }
    if (root != NULL && ready_codes(root) < 0) {
        root = NULL;
    }
    if (root == NULL) {
        ar->state[i] = ENTRY_BROKEN;
        return NULL;
    }
    ar->roots[i] = root;
    ar->state[i] = ENTRY_READY;
    return root;
}
