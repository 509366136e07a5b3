/* SHARE: open an archive and hand out its entries' code objects: from its
 * prelinked image where that fits (prelink_map.c), else relocated from
 * the heap, each on first use.
 *
 * Opening costs the same whatever the archive's size: map the file, check
 * the header, the index, the string table and the global symbols.  An
 * entry's part is checked (ranges, checksum) and relocated in one pass
 * over its relocations the first time its code object is asked for. */
#include "pycds/pycds.h"
#include "pycds/relr.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include <string.h>

/* An entry goes FRESH -> CHECKED (its index record) -> IN_PLACE (served
 * from the image), or RELOCATING -> READY, or to BAD_RECORD / BROKEN on
 * the first failure, for good. */
enum entry_state {
    ENTRY_FRESH, ENTRY_CHECKED, ENTRY_IN_PLACE, ENTRY_RELOCATING,
    ENTRY_READY, ENTRY_BAD_RECORD, ENTRY_BROKEN
};

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
    ar->index.map = &ar->map;
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
    if (pycds_prelinked_attach(ar, flags) < 0) {
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
    /* Relocated objects live in the arena, which is never freed: they may
     * be referenced from anywhere in the process.  The file is no longer
     * needed. */
    pycds_container_close(&ar->map);
    pycds_prelinked_free(ar->prelinked);
    free(ar->roots);
    free(ar->state);
    free(ar->globals);
    free(ar);
}

/* The length to print of entry e's name in a message ("%.*s"). */
#define NAME_LEN(e) ((int)((e)->name.len < 200 ? (e)->name.len : 200))

/* Checks that entry e's part lies inside its sections. */
static int
check_ranges(const struct pycds_mapped *m, const struct pycds_entry *e,
             const char *name)
{
    if (e->heap_start > e->heap_end || e->heap_end > m->header.heap.size
        || e->heap_start % PYCDS_OBJECT_ALIGN != 0
        || e->root < e->heap_start || e->root >= e->heap_end
        || e->root % PYCDS_OBJECT_ALIGN != 0) {
        return pycds_refuse(m->path, "entry '%.*s' has a heap range outside "
                            "the heap", NAME_LEN(e), name);
    }
    if (e->relr_start > m->nrelr || e->relr_count > m->nrelr - e->relr_start
        || e->sym_start < 1 || e->sym_start > m->header.nlocal_syms
        || e->sym_count > m->header.nlocal_syms - e->sym_start) {
        return pycds_refuse(m->path, "entry '%.*s' has relocations or "
                            "symbols outside their tables", NAME_LEN(e),
                            name);
    }
    return 0;
}

static int
check_part_sum(const struct pycds_mapped *m, const struct pycds_entry *e,
          const char *name, const char *heap, const uint64_t *relr,
          const Elf64_Sym *syms)
{
    uint64_t sum = pycds_part_xxh3(heap, e->heap_end - e->heap_start, relr,
                                   e->relr_count, syms, e->sym_count);
    if (PYCDS_SUM_DIFFERS(e->part_xxh3, sum)) {
        return pycds_refuse(m->path, "entry '%.*s': checksum mismatch",
                            NAME_LEN(e), name);
    }
    return 0;
}

int
pycds_archive_check_entry(struct pycds_mapped *m,
                          const struct pycds_index *ix, Py_ssize_t i)
{
    const struct pycds_entry *e = &ix->entries[i];
    const char *name = pycds_index_str(ix, e->name);
    if (check_ranges(m, e, name) < 0) {
        return -1;
    }
    return check_part_sum(m, e, name, m->heap + e->heap_start,
                     m->relr + e->relr_start, m->syms + e->sym_start);
}

/* A part read into private memory: what relocation works on. */
struct part {
    char *heap;               /* heap offset X is at heap + X */
    uint64_t *relr;           /* the part's RELR words */
    Elf64_Sym *syms;          /* symbol k of the part is syms[k - sym_start] */
};

static int
read_exact(struct pycds_mapped *m, void *buf, size_t n, const void *at)
{
    off_t off = (const char *)at - m->base;
    for (size_t got = 0; got < n;) {
        ssize_t r = pread(m->fd, (char *)buf + got, n - got, off + got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return pycds_refuse(m->path, "cannot read the file (%s)",
                                r < 0 ? strerror(errno)
                                      : "truncated since it was mapped");
        }
        got += r;
    }
    return 0;
}

/* n bytes, 8-aligned, that live as long as the process: objects of a part
 * may be referenced from anywhere once relocation starts. */
static char *
arena_alloc(struct pycds_archive *ar, size_t n)
{
    n = (n + PYCDS_OBJECT_ALIGN - 1) & ~(size_t)(PYCDS_OBJECT_ALIGN - 1);
    if (n > ar->arena_left) {
        size_t chunk = n > PYCDS_ARENA_CHUNK / 4 ? n : PYCDS_ARENA_CHUNK;
        char *p = mmap(NULL, chunk, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            PyErr_NoMemory();
            return NULL;
        }
        if (chunk == n) {
            return p;           /* a big part has its own mapping */
        }
        ar->arena = p;
        ar->arena_left = chunk;
    }
    char *p = ar->arena;
    ar->arena += n;
    ar->arena_left -= n;
    return p;
}

/* Reads entry e's part into private memory and checks it.  The part is
 * rewritten by relocation anyway (every object's ob_type), so a private
 * copy costs no memory a mapping would not; read with pread, it is
 * immune to the file being truncated or rewritten later (no SIGBUS), and
 * what is checked is what is used. */
static int
read_part(struct pycds_archive *ar, const struct pycds_entry *e,
          const char *name, struct part *p)
{
    struct pycds_mapped *m = &ar->map;
    size_t heap_len = e->heap_end - e->heap_start;
    p->relr = NULL;
    p->syms = NULL;
    if (check_ranges(m, e, name) < 0) {
        return -1;
    }
    char *heap = arena_alloc(ar, heap_len ? heap_len : 1);
    p->relr = malloc(e->relr_count * sizeof(uint64_t) + 1);
    p->syms = malloc(e->sym_count * sizeof(Elf64_Sym) + 1);
    if (heap == NULL || p->relr == NULL || p->syms == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        return -1;
    }
    p->heap = heap - e->heap_start;
    if (read_exact(m, heap, heap_len, m->heap + e->heap_start) < 0
        || read_exact(m, p->relr, e->relr_count * sizeof(uint64_t),
                      m->relr + e->relr_start) < 0
        || read_exact(m, p->syms, e->sym_count * sizeof(Elf64_Sym),
                      m->syms + e->sym_start) < 0) {
        return -1;
    }
    return check_part_sum(m, e, name, heap, p->relr, p->syms);
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

/* The runtime object global symbol sym names, or NULL with an exception
 * set.  Not cached here: see global_value and object_type. */
static PyObject *
resolve_global(struct pycds_archive *ar, uint64_t sym)
{
    const char *name = symbol_name(ar, &ar->map.syms[sym]);
    PyObject *op = name ? pycds_runtime_resolve(name) : NULL;
    if (op == NULL && !PyErr_Occurred()) {
        pycds_refuse(ar->map.path, "unknown runtime symbol '%.100s'",
                     name ? name : "?");
    }
    return op;
}

/* ar->globals caches resolved global symbols; the types of archived
 * objects are cached with their low bit set, so that a value slot can
 * refuse one (types are only ever an ob_type: marshal cannot carry one)
 * without looking at it. */
#define GLOBAL_TYPE_TAG 1

static inline int
is_archive_type(PyObject *op)
{
    return op == (PyObject *)&PyCode_Type || op == (PyObject *)&PyUnicode_Type
           || op == (PyObject *)&PyTuple_Type
           || op == (PyObject *)&PyBytes_Type || op == (PyObject *)&PyLong_Type
           || op == (PyObject *)&PyFloat_Type
           || op == (PyObject *)&PyComplex_Type
           || op == (PyObject *)&pycds_FrozenDictType;
}

static PyObject *
cache_global(struct pycds_archive *ar, uint64_t sym)
{
    PyObject *op = resolve_global(ar, sym);
    if (op == NULL) {
        return NULL;
    }
    PyObject *cached = op;
    if (Py_IS_TYPE(op, &PyType_Type)) {
        if (!is_archive_type(op)) {
            pycds_refuse(ar->map.path, "symbol %llu names a type archives "
                         "do not hold", (unsigned long long)sym);
            return NULL;
        }
        cached = (PyObject *)((uintptr_t)op | GLOBAL_TYPE_TAG);
    }
    ar->globals[sym - ar->map.header.nlocal_syms] = cached;
    return cached;
}

/* Relocation of one part.
 *
 * The part is walked object by object, in the order DUMP wrote them: an
 * object starts on an 8-byte boundary, a GC object (a tuple) after an
 * all-zero GC header; an object whose ob_type word is zero is not one
 * (that word always holds a symbol), which tells a GC header from an
 * object.  For each object the layout of the running version
 * (pycds_layout_check) says, from its type and its header, how big it is
 * and where its pointer fields are; those must be exactly the next slots
 * of the part's RELR list, and each one must point to a runtime object
 * that is not a type, or to an object of the part that ends before it
 * (post-order: so everything a slot points to is already checked and
 * relocated, and no reference cycle can exist).  Objects cannot overlap
 * (each begins where the previous one ends), nothing the walk did not
 * find can be pointed to, and the nesting of the objects is bounded
 * (heights below).  Then pycds_layout_check_links checks what the fields
 * point to. */
struct part_ctx {
    struct pycds_archive *ar;
    const struct pycds_entry *e;
    char *heap;               /* heap offset X is at heap + X */
    const Elf64_Sym *syms;    /* the part's local symbols, from sym_start */
    uint64_t lo, span;        /* the part: [lo, lo + span) */
    PyObject **cache;         /* the part's resolved local symbols */
    /* Per 8-byte word of the part: 0, or the height of the object that
     * starts there once it is checked and relocated (1 + the largest
     * height among the objects of the part it points to). */
    uint8_t *height;
    struct pycds_relr_iter relr;
    const char *why;          /* static reason for a refusal */
};

#define REFUSE(ctx, reason) ((ctx)->why = (reason), -1)

/* The height of a checked object of the part at offset whose type is tp
 * (NULL: any), or 0. */
static unsigned
checked_object(struct part_ctx *ctx, uint64_t offset, PyTypeObject *tp)
{
    if (offset - ctx->lo >= ctx->span || (offset & 7) != 0) {
        return 0;
    }
    unsigned h = ctx->height[(offset - ctx->lo) >> 3];
    if (h != 0 && tp != NULL
        && Py_TYPE((PyObject *)(ctx->heap + offset)) != tp) {
        return 0;
    }
    return h;
}

static PyObject *
resolve_local(struct part_ctx *ctx, uint64_t sym, unsigned *height)
{
    struct pycds_archive *ar = ctx->ar;
    const struct pycds_entry *e = ctx->e;
    PyObject **slot = &ctx->cache[sym - e->sym_start];
    const Elf64_Sym *s = &ctx->syms[sym - e->sym_start];
    if (*slot != NULL) {
        /* Checked when it was resolved: built from an object of the
         * part. */
        *height = ctx->height[(s->st_value - ctx->lo) >> 3];
        return *slot;
    }
    const char *name = symbol_name(ar, s);
    PyObject *op = NULL;
    if (name == NULL || s->st_shndx != PYCDS_HEAP_SHNDX) {
        goto bad;
    }
    int intern = strcmp(name, PYCDS_SYM_INTERN) == 0;
    if (!intern && strcmp(name, PYCDS_SYM_FROZENSET) != 0) {
        goto bad;
    }
    /* What the symbol stands for is built from an object of the part
     * that is already checked. */
    *height = checked_object(ctx, s->st_value,
                             intern ? &PyUnicode_Type : &PyTuple_Type);
    if (*height == 0) {
        goto bad;
    }
    op = (PyObject *)(ctx->heap + s->st_value);
    if (intern) {
        /* The archive's reference: the string may become the interned
         * one, which the interned dict does not own on 3.11. */
        Py_INCREF(op);
        if (pycds_layout_intern(&op) < 0) {
            return NULL;
        }
    }
    else {
        op = PyFrozenSet_New(op);
        if (op == NULL) {
            return NULL;
        }
    }
    pycds_layout_keep(op);
    *slot = op;
    return op;

bad:
    pycds_refuse(ar->map.path, "malformed local symbol %llu",
                 (unsigned long long)sym);
    return NULL;
}

/* Relocates the pointer field at heap offset slot, which must be the next
 * slot of the RELR list; raises *height to the height of its target. */
static inline __attribute__((always_inline)) int
relocate_field(struct part_ctx *ctx, uint64_t slot, unsigned *height)
{
    if (pycds_relr_next(&ctx->relr) != slot) {
        return REFUSE(ctx, "its pointer slots are not its objects' pointer "
                           "fields");
    }
    uint64_t *p = (uint64_t *)(ctx->heap + slot);
    uint64_t v = *p;
    if ((v & PYCDS_SLOT_SYMBOL) == 0) {
        /* Unsigned wrap-around makes the range test one comparison. */
        unsigned h = checked_object(ctx, v, NULL);
        if (h == 0) {
            return REFUSE(ctx, "a pointer does not lead to an earlier "
                               "object of its entry");
        }
        if (h > *height) {
            *height = h;
        }
        *p = v + (uintptr_t)ctx->heap;
        return 0;
    }
    struct pycds_archive *ar = ctx->ar;
    uint64_t sym = v >> PYCDS_SLOT_TAG_BITS;
    uint64_t nlocal = ar->map.header.nlocal_syms;
    PyObject *op;
    if (sym >= nlocal && sym < ar->map.nsyms) {
        /* Most symbol slots name a runtime singleton already resolved. */
        op = ar->globals[sym - nlocal];
        if (op == NULL && (op = cache_global(ar, sym)) == NULL) {
            return -1;
        }
        if ((uintptr_t)op & GLOBAL_TYPE_TAG) {
            return REFUSE(ctx, "a type object is used as a value");
        }
    }
    else if (sym - ctx->e->sym_start < ctx->e->sym_count) {
        unsigned h;
        if ((op = resolve_local(ctx, sym, &h)) == NULL) {
            return -1;
        }
        if (h > *height) {
            *height = h;
        }
    }
    else {
        return pycds_refuse(ar->map.path, "a relocation names symbol %llu "
                            "outside its entry", (unsigned long long)sym);
    }
    *p = (uintptr_t)op;
    return 0;
}

/* The type an ob_type word names: a global symbol of one of the types
 * archives hold. */
static PyTypeObject *
object_type(struct part_ctx *ctx, uint64_t v)
{
    struct pycds_archive *ar = ctx->ar;
    uint64_t nlocal = ar->map.header.nlocal_syms;
    uint64_t sym = v >> PYCDS_SLOT_TAG_BITS;
    if ((v & 7) != PYCDS_SLOT_SYMBOL || sym < nlocal
        || sym >= ar->map.nsyms) {
        return NULL;
    }
    PyObject *op = ar->globals[sym - nlocal];
    if (op == NULL && (op = cache_global(ar, sym)) == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (((uintptr_t)op & GLOBAL_TYPE_TAG) == 0) {
        return NULL;
    }
    return (PyTypeObject *)((uintptr_t)op & ~(uintptr_t)GLOBAL_TYPE_TAG);
}

/* Checks and relocates the object that starts at heap offset obj (its GC
 * header, if any, before it); returns its size in *size. */
static int
relocate_object(struct part_ctx *ctx, uint64_t obj, int gc, size_t *size)
{
    uint64_t avail = ctx->lo + ctx->span - obj;
    PyObject *op = (PyObject *)(ctx->heap + obj);
    if (avail < sizeof(PyObject)) {
        return REFUSE(ctx, "an object runs past the end of its entry");
    }
    if (op->ob_refcnt != pycds_layout_image_refcnt) {
        return REFUSE(ctx, "an object has the wrong reference count");
    }
    if (pycds_relr_next(&ctx->relr) != obj + offsetof(PyObject, ob_type)) {
        return REFUSE(ctx, "its pointer slots are not its objects' pointer "
                           "fields");
    }
    PyTypeObject *tp = object_type(ctx, (uint64_t)(uintptr_t)op->ob_type);
    if (tp == NULL) {
        return REFUSE(ctx, "an object's type is not one archives hold");
    }
    if ((PyType_IS_GC(tp) != 0) != gc) {
        return REFUSE(ctx, "an object's GC header does not match its type");
    }
    if (tp == &pycds_FrozenDictType && !(ctx->e->flags & PYCDS_ENTRY_DATA)) {
        return REFUSE(ctx, "a FrozenDict is outside a data archive");
    }
    Py_SET_TYPE(op, tp);
    struct pycds_shape shape;
    const char *why = pycds_layout_check(op, tp, avail, &shape);
    if (why != NULL) {
        return REFUSE(ctx, why);
    }
    unsigned height = 0;
    for (size_t k = 0; k < shape.nfields; k++) {
        if (relocate_field(ctx, obj + shape.fields[k], &height) < 0) {
            return -1;
        }
    }
    for (size_t k = 0; k < shape.nitems; k++) {
        if (relocate_field(ctx, obj + shape.items + 8 * k, &height) < 0) {
            return -1;
        }
    }
    if (tp == &PyCode_Type && (why = pycds_layout_check_links(op)) != NULL) {
        return PyErr_Occurred() ? -1 : REFUSE(ctx, why);
    }
    if (tp == &pycds_FrozenDictType
        && (why = pycds_frozendict_check(op)) != NULL) {
        return REFUSE(ctx, why);
    }
    if (++height > PYCDS_MAX_NESTING) {
        return REFUSE(ctx, "its objects are nested too deeply");
    }
    ctx->height[(obj - ctx->lo) >> 3] = (uint8_t)height;
    *size = shape.size;
    return 0;
}

/* Relocates entry e's part, read into p, and returns its root: a code
 * object, or a data entry's 1-tuple. */
static PyObject *
relocate_part(struct pycds_archive *ar, const struct pycds_entry *e,
              const struct part *p)
{
    struct part_ctx ctx = {
        .ar = ar, .e = e, .heap = p->heap, .syms = p->syms,
        .lo = e->heap_start,
        .span = e->heap_end - e->heap_start,
        .cache = calloc(e->sym_count + 1, sizeof(PyObject *)),
        .height = calloc((e->heap_end - e->heap_start) / 8 + 1, 1),
    };
    PyObject *root = NULL;
    if (ctx.cache == NULL || ctx.height == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    pycds_relr_iter_init(&ctx.relr, p->relr, e->relr_count);
    uint64_t pos = e->heap_start, end = e->heap_end;
    while (pos < end) {
        const uint64_t *w = (const uint64_t *)(ctx.heap + pos);
        int gc = 0;
        size_t size;
        if (end - pos < sizeof(PyObject)) {
            ctx.why = "an object runs past the end of its entry";
            goto refuse;
        }
        if (w[1] == 0) {
            /* Not an ob_type: a GC header, all zero (untracked). */
            if (w[0] != 0 || pycds_layout_gc_header_size != 16) {
                ctx.why = "a GC header is not all zero";
                goto refuse;
            }
            pos += pycds_layout_gc_header_size;
            gc = 1;
        }
        if (relocate_object(&ctx, pos, gc, &size) < 0) {
            if (PyErr_Occurred()) {
                goto done;
            }
            goto refuse;
        }
        /* size <= end - pos (pycds_layout_check): no overflow. */
        pos += (size + PYCDS_OBJECT_ALIGN - 1)
               & ~(uint64_t)(PYCDS_OBJECT_ALIGN - 1);
    }
    if (pycds_relr_next(&ctx.relr) != PYCDS_RELR_END) {
        ctx.why = "its pointer slots are not its objects' pointer fields";
        goto refuse;
    }
    int data = (e->flags & PYCDS_ENTRY_DATA) != 0;
    if (checked_object(&ctx, e->root, data ? &PyTuple_Type : &PyCode_Type)
        == 0) {
        ctx.why = "it does not hold its root where the index says";
        goto refuse;
    }
    root = (PyObject *)(ctx.heap + e->root);
    if (data && PyTuple_GET_SIZE(root) != 1) {
        ctx.why = "its root is not a 1-tuple";
        root = NULL;
        goto refuse;
    }
    goto done;

refuse:
    pycds_refuse(ar->map.path, "entry '%.*s': %s", NAME_LEN(e),
                 pycds_index_str(&ar->index, e->name), ctx.why);
done:
    free(ctx.cache);
    free(ctx.height);
    return root;
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

const struct pycds_entry *
pycds_archive_entry(struct pycds_archive *ar, Py_ssize_t i)
{
    const struct pycds_entry *e = &ar->index.entries[i];
    if (ar->state[i] == ENTRY_FRESH) {
        if (pycds_index_check_entry(&ar->index, i, ar->map.path) < 0) {
            ar->state[i] = ENTRY_BAD_RECORD;
            return NULL;
        }
        ar->state[i] = ENTRY_CHECKED;
    }
    if (ar->state[i] == ENTRY_BAD_RECORD) {
        pycds_refuse(ar->map.path, "index entry %zd is damaged", i);
        return NULL;
    }
    return e;
}

PyObject *
pycds_archive_entry_code(struct pycds_archive *ar, Py_ssize_t i)
{
    const struct pycds_entry *e = pycds_archive_entry(ar, i);
    if (e != NULL && (e->flags & PYCDS_ENTRY_DATA)) {
        pycds_refuse(ar->map.path, "entry '%.*s' holds data, not code "
                     "(pycds.load_data reads it)", NAME_LEN(e),
                     pycds_index_str(&ar->index, e->name));
        return NULL;
    }
    return e == NULL ? NULL : pycds_archive_entry_root(ar, i);
}

PyObject *
pycds_archive_entry_root(struct pycds_archive *ar, Py_ssize_t i)
{
    const struct pycds_entry *e = pycds_archive_entry(ar, i);
    if (e == NULL) {
        return NULL;
    }
    switch (ar->state[i]) {
    case ENTRY_READY:
        return Py_NewRef(ar->roots[i]);
    case ENTRY_IN_PLACE:
        return pycds_prelinked_code(ar, i);
    case ENTRY_BROKEN:
        pycds_refuse(ar->map.path, "entry '%.*s' is unusable (an earlier "
                     "load failed)", NAME_LEN(e),
                     pycds_index_str(&ar->index, e->name));
        return NULL;
    case ENTRY_RELOCATING:
        /* Relocation rewrites slots in place, so it cannot run twice: a
         * re-entrant import of this module (a finaliser run by a GC pass
         * during relocation) falls back to normal import. */
        pycds_refuse(ar->map.path, "entry '%.*s' is being loaded",
                     NAME_LEN(e), pycds_index_str(&ar->index, e->name));
        return NULL;
    default:
        break;
    }
    if (ar->prelinked != NULL) {
        PyObject *code = pycds_prelinked_code(ar, i);
        if (code != NULL || PyErr_Occurred()) {
            if (code != NULL) {
                ar->state[i] = ENTRY_IN_PLACE;
            }
            return code;
        }
    }
    /* A part is relocated once: its state moves on before any object of
     * it can be handed out, and a failure is final (some of its slots may
     * be rewritten, some of its strings interned). */
    struct part part;
    ar->state[i] = ENTRY_RELOCATING;
    PyObject *root = NULL;
    if (read_part(ar, e, pycds_index_str(&ar->index, e->name), &part) == 0) {
        root = relocate_part(ar, e, &part);
    }
    free(part.relr);
    free(part.syms);
    if (root != NULL && PyCode_Check(root) && ready_codes(root) < 0) {
        root = NULL;
    }
    if (root == NULL) {
        ar->state[i] = ENTRY_BROKEN;
        return NULL;
    }
    ar->roots[i] = root;
    ar->state[i] = ENTRY_READY;
    return Py_NewRef(root);
}

int
pycds_archive_entry_used(const struct pycds_archive *ar, Py_ssize_t i)
{
    return ar->state[i] == ENTRY_IN_PLACE || ar->state[i] == ENTRY_READY;
}
