/* DUMP: lay code objects out as a relocatable heap image.
 *
 * Each entry's objects form one contiguous part of the heap, written in
 * post-order (an object after everything it points to), with its pointer
 * slots listed in increasing order and its own local symbols.  That order
 * is what lets SHARE relocate a part in one pass: when a slot is patched,
 * the objects it refers to are already complete.  Parts never share
 * objects, so each can be relocated alone, on first import. */
#include "pycds/pycds.h"
#include "pycds/relr.h"

#include <marshal.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH PYCDS_MAX_NESTING

/* A reference to an object, as the writer records it. */
enum ref_kind { REF_HEAP, REF_LOCAL, REF_GLOBAL };
#define REF(kind, n) (((uint64_t)(kind) << 62) | (uint64_t)(n))
#define REF_KIND(r) ((enum ref_kind)((r) >> 62))
#define REF_VALUE(r) ((r) & (((uint64_t)1 << 62) - 1))

/* Until the number of local symbols is known, a slot that refers to a
 * global symbol holds the global's number with this tag. */
#define SLOT_PROVISIONAL_GLOBAL 3

static const char strtab_head[] =
    "\0" PYCDS_SYM_INTERN "\0" PYCDS_SYM_FROZENSET;
#define STR_INTERN 1
#define STR_FROZENSET (1 + sizeof(PYCDS_SYM_INTERN))

struct writer {
    char *heap;
    size_t heap_size, heap_cap;
    uint64_t *slots;          /* pointer slots of the current entry */
    size_t nslots, slots_cap;
    struct pycds_relr relr;   /* the slots of every entry, encoded */
    Elf64_Sym *locals;        /* local symbols of all entries, in order */
    size_t nlocals, locals_cap;
    PyObject *global_ids;     /* symbol name -> global number */
    PyObject *global_names;   /* list of names, by number */
    PyObject *memo;           /* id(object) -> ref, for the current entry */
    uint64_t kind_bytes[PYCDS_NKINDS];
    int depth;
    /* Per 8-byte word of the current entry's part: the height of the
     * object placed there (1 + the largest height among the archived
     * objects it points to), as SHARE computes it (archive_read.c). */
    uint8_t *heights;
    size_t heights_cap, heights_used;
    uint64_t part_start;
    /* Where the walk is, for error messages: "co_consts[3][1]". */
    char where[512];
    size_t where_len;
    const char *entry;
    int data;                 /* the entry is a data archive's */
};

/* Reserves size zeroed bytes of heap; returns their offset or -1. */
static int64_t
heap_alloc(struct writer *w, size_t size)
{
    size_t off = (w->heap_size + PYCDS_OBJECT_ALIGN - 1)
                 & ~(size_t)(PYCDS_OBJECT_ALIGN - 1);
    if (pycds_grow((void **)&w->heap, &w->heap_cap, off + size, 1) < 0) {
        return -1;
    }
    w->heap_size = off + size;
    return (int64_t)off;
}

/* Records a pointer slot at heap offset slot, and what it refers to. */
static int
add_reloc(struct writer *w, uint64_t slot, uint64_t ref)
{
    if (pycds_grow((void **)&w->slots, &w->slots_cap, w->nslots + 1,
             sizeof(uint64_t)) < 0) {
        return -1;
    }
    w->slots[w->nslots++] = slot;
    uint64_t content = 0;
    switch (REF_KIND(ref)) {
    case REF_HEAP:
        content = REF_VALUE(ref);
        break;
    case REF_LOCAL:
        content = ((1 + REF_VALUE(ref)) << PYCDS_SLOT_TAG_BITS)
                  | PYCDS_SLOT_SYMBOL;
        break;
    case REF_GLOBAL:
        content = (REF_VALUE(ref) << PYCDS_SLOT_TAG_BITS)
                  | SLOT_PROVISIONAL_GLOBAL;
        break;
    }
    memcpy(w->heap + slot, &content, sizeof(content));
    return 0;
}

static int
add_local(struct writer *w, uint32_t name, uint64_t value, uint64_t size,
          uint64_t *ref)
{
    if (pycds_grow((void **)&w->locals, &w->locals_cap, w->nlocals + 1,
             sizeof(Elf64_Sym)) < 0) {
        return -1;
    }
    Elf64_Sym *s = &w->locals[w->nlocals];
    s->st_name = name;
    s->st_info = ELF64_ST_INFO(STB_LOCAL, STT_OBJECT);
    s->st_other = STV_DEFAULT;
    s->st_shndx = PYCDS_HEAP_SHNDX;
    s->st_value = value;
    s->st_size = size;
    *ref = REF(REF_LOCAL, w->nlocals);
    w->nlocals++;
    return 0;
}

static int
global_ref(struct writer *w, const char *name, uint64_t *ref)
{
    PyObject *key = PyUnicode_FromString(name);
    if (key == NULL) {
        return -1;
    }
    PyObject *id = PyDict_GetItemWithError(w->global_ids, key);
    if (id == NULL) {
        if (PyErr_Occurred()) {
            goto error;
        }
        id = PyLong_FromSsize_t(PyList_GET_SIZE(w->global_names));
        if (id == NULL || PyDict_SetItem(w->global_ids, key, id) < 0
            || PyList_Append(w->global_names, key) < 0) {
            Py_XDECREF(id);
            goto error;
        }
        Py_DECREF(id);  /* the dict holds it */
    }
    *ref = REF(REF_GLOBAL, PyLong_AsSize_t(id));
    Py_DECREF(key);
    return 0;
error:
    Py_DECREF(key);
    return -1;
}

static void
where_push(struct writer *w, const char *field, Py_ssize_t index,
           size_t *saved)
{
    *saved = w->where_len;
    size_t room = sizeof(w->where) - w->where_len;
    int n;
    if (field != NULL) {
        n = snprintf(w->where + w->where_len, room, "%s%s",
                     w->where_len ? "." : "", field);
    }
    else {
        n = snprintf(w->where + w->where_len, room, "[%zd]", index);
    }
    if (n > 0) {
        w->where_len += (size_t)n < room ? (size_t)n : room - 1;
    }
}

static void
where_pop(struct writer *w, size_t saved)
{
    w->where_len = saved;
    w->where[saved] = '\0';
}

static int
refuse_object(struct writer *w, PyObject *op, const char *why)
{
    return pycds_refuse_as(PYCDS_REFUSED_UNARCHIVABLE, NULL, w->entry,
                           "entry '%s': %s: %s object of type '%.100s'",
                           w->entry, w->where_len ? w->where : "(root)", why,
                           Py_TYPE(op)->tp_name);
}

static int heap_emit(struct writer *w, PyObject *op, uint64_t *ref);

static int
heap_emit_child(void *ctx, PyObject *target, size_t slot, const char *field,
           Py_ssize_t index)
{
    struct writer *w = ctx;
    uint64_t ref;
    size_t saved;
    if (target == NULL) {
        return 0;
    }
    where_push(w, field, index, &saved);
    int rc = heap_emit(w, target, &ref);
    where_pop(w, saved);
    return rc;
}

struct reloc_ctx {
    struct writer *w;
    uint64_t object;
    unsigned height;          /* largest height among the children */
};

/* The height of the archived object ref stands for (0: a runtime one). */
static unsigned
ref_height(struct writer *w, uint64_t ref)
{
    uint64_t off;
    switch (REF_KIND(ref)) {
    case REF_HEAP:
        off = REF_VALUE(ref);
        break;
    case REF_LOCAL:
        off = w->locals[REF_VALUE(ref)].st_value;
        break;
    default:
        return 0;
    }
    return w->heights[(off - w->part_start) / 8];
}

/* Second visit: the children are emitted (and memoised), so heap_emit() only
 * looks their references up. */
static int
reloc_child(void *ctx, PyObject *target, size_t slot, const char *field,
            Py_ssize_t index)
{
    struct reloc_ctx *rc = ctx;
    uint64_t ref;
    if (target == NULL) {
        return 0;
    }
    if (heap_emit(rc->w, target, &ref) < 0) {
        return -1;
    }
    unsigned h = ref_height(rc->w, ref);
    if (h > rc->height) {
        rc->height = h;
    }
    return add_reloc(rc->w, rc->object + slot, ref);
}

static enum pycds_kind
kind_of(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    return tp == &PyCode_Type ? PYCDS_KIND_CODE
           : tp == &PyUnicode_Type ? PYCDS_KIND_STR
           : tp == &PyBytes_Type ? PYCDS_KIND_BYTES
           : tp == &PyLong_Type ? PYCDS_KIND_INT
           : tp == &PyFloat_Type ? PYCDS_KIND_FLOAT
           : tp == &PyComplex_Type ? PYCDS_KIND_COMPLEX
           /* Tuples, and the FrozenDicts of data archives: a kind of
            * their own would change the header (format version). */
           : PYCDS_KIND_TUPLE;
}

/* Writes op (whose children are already emitted) into the heap; returns
 * the object's offset in *offset. */
static int
heap_place(struct writer *w, PyObject *op, enum pycds_kind kind,
      uint64_t *offset)
{
    Py_ssize_t size = pycds_layout_size(op);
    size_t gc = PyObject_IS_GC(op) ? pycds_layout_gc_header_size : 0;
    int64_t start = heap_alloc(w, gc + size);
    if (start < 0) {
        return -1;
    }
    uint64_t obj = (uint64_t)start + gc;
    PyObject *img = (PyObject *)(w->heap + obj);
    if (pycds_layout_write(op, (char *)img) < 0) {
        return -1;
    }
    img->ob_refcnt = pycds_layout_image_refcnt;
    uint64_t type_ref;
    if (global_ref(w, pycds_type_symbol(Py_TYPE(op)), &type_ref) < 0
        || add_reloc(w, obj + offsetof(PyObject, ob_type), type_ref) < 0) {
        return -1;
    }
    struct reloc_ctx rc = {w, obj, 0};
    if (pycds_layout_visit(op, reloc_child, &rc) < 0) {
        return -1;
    }
    /* SHARE refuses a part whose objects nest deeper; shared objects can
     * make a chain longer than the recursion depth heap_emit() bounds. */
    if (rc.height + 1 > PYCDS_MAX_NESTING) {
        return refuse_object(w, op, "nesting too deep at");
    }
    size_t word = (obj - w->part_start) / 8;
    if (pycds_grow((void **)&w->heights, &w->heights_cap, word + 1, 1) < 0) {
        return -1;
    }
    w->heights[word] = (uint8_t)(rc.height + 1);
    if (word + 1 > w->heights_used) {
        w->heights_used = word + 1;
    }
    w->kind_bytes[kind] += size;
    w->kind_bytes[PYCDS_KIND_GC_HEADER] += gc;
    *offset = obj;
    return 0;
}

/* Sort key of a frozenset element: its marshal (version 2, no reference
 * flags) bytes, so that the same set gives the same image whatever the
 * hash seed. */
PyObject *
pycds_sorted_elements(PyObject *fs)
{
    PyObject *pairs = PyList_New(0), *it = NULL, *item, *result = NULL;
    if (pairs == NULL || (it = PyObject_GetIter(fs)) == NULL) {
        goto done;
    }
    while ((item = PyIter_Next(it)) != NULL) {
        PyObject *key = PyMarshal_WriteObjectToString(item, 2);
        PyObject *pair = key ? PyTuple_Pack(2, key, item) : NULL;
        Py_XDECREF(key);
        Py_DECREF(item);
        if (pair == NULL || PyList_Append(pairs, pair) < 0) {
            Py_XDECREF(pair);
            goto done;
        }
        Py_DECREF(pair);
    }
    if (PyErr_Occurred() || PyList_Sort(pairs) < 0) {
        goto done;
    }
    result = PyTuple_New(PyList_GET_SIZE(pairs));
    if (result == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pairs); i++) {
        PyObject *elem = PyTuple_GET_ITEM(PyList_GET_ITEM(pairs, i), 1);
        Py_INCREF(elem);
        PyTuple_SET_ITEM(result, i, elem);
    }
done:
    Py_XDECREF(it);
    Py_XDECREF(pairs);
    return result;
}

/* A frozenset is archived as the tuple of its elements plus a local
 * symbol that tells SHARE to build the frozenset from it. */
static int
heap_emit_frozenset(struct writer *w, PyObject *fs, uint64_t *ref)
{
    uint64_t off;
    PyObject *elems = pycds_sorted_elements(fs);
    if (elems == NULL) {
        return -1;
    }
    /* The tuple is not memoised: it dies here and its id may be reused. */
    int rc = pycds_layout_visit(elems, heap_emit_child, w);
    if (rc == 0) {
        rc = heap_place(w, elems, PYCDS_KIND_FROZENSET, &off);
    }
    if (rc == 0) {
        rc = add_local(w, STR_FROZENSET, off, pycds_layout_size(elems), ref);
    }
    Py_DECREF(elems);
    return rc;
}

/* A memo maps an object, by identity, to what it became: the writers
 * (this file, prelink_write.c) keep the objects alive while they run. */
int
pycds_memo_get(PyObject *memo, PyObject *op, uint64_t *value)
{
    PyObject *key = PyLong_FromVoidPtr(op);
    if (key == NULL) {
        return -1;
    }
    PyObject *v = PyDict_GetItemWithError(memo, key);
    Py_DECREF(key);
    if (v == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    *value = PyLong_AsUnsignedLongLong(v);
    return 1;
}

int
pycds_memo_set(PyObject *memo, PyObject *op, uint64_t value)
{
    PyObject *key = PyLong_FromVoidPtr(op);
    PyObject *v = PyLong_FromUnsignedLongLong(value);
    int rc = (key && v) ? PyDict_SetItem(memo, key, v) : -1;
    Py_XDECREF(key);
    Py_XDECREF(v);
    return rc;
}

static int
heap_emit(struct writer *w, PyObject *op, uint64_t *ref)
{
    char buf[32];
    const char *name = pycds_runtime_name(op, buf, sizeof(buf));
    if (name != NULL) {
        return global_ref(w, name, ref);
    }
    int found = pycds_memo_get(w->memo, op, ref);
    if (found != 0) {
        return found < 0 ? -1 : 0;
    }
    if (w->depth >= MAX_DEPTH) {
        return refuse_object(w, op, "nesting too deep at");
    }
    w->depth++;
    int rc;
    PyTypeObject *tp = Py_TYPE(op);
    if (tp == &PyFrozenSet_Type) {
        rc = heap_emit_frozenset(w, op, ref);
    }
    else if (pycds_type_symbol(tp) == NULL || pycds_layout_size(op) < 0
             || (tp == &pycds_FrozenDictType && !w->data)) {
        rc = refuse_object(w, op, "cannot archive");
    }
    else {
        uint64_t off;
        rc = pycds_layout_visit(op, heap_emit_child, w);
        if (rc == 0) {
            rc = heap_place(w, op, kind_of(op), &off);
        }
        if (rc == 0) {
            /* Data is not interned: interning costs a lookup per
             * string at load, and data is loaded lazily. */
            if (tp == &PyUnicode_Type && PyUnicode_CHECK_INTERNED(op)
                && !w->data) {
                rc = add_local(w, STR_INTERN, off, pycds_layout_size(op),
                               ref);
            }
            else {
                *ref = REF(REF_HEAP, off);
            }
        }
    }
    w->depth--;
    if (rc == 0) {
        rc = pycds_memo_set(w->memo, op, *ref);
    }
    return rc;
}

/* ---- entries ---------------------------------------------------------- */

struct entry_args {
    PyObject *name, *code;
    const char *origin;
    Py_ssize_t origin_len;
    unsigned int flags;
    long long mtime_ns;
    unsigned long long size, xxh3;
};

static int
parse_entry(PyObject *item, struct entry_args *a)
{
    memset(a, 0, sizeof(*a));
    a->origin = "";
    if (!PyTuple_Check(item)) {
        PyErr_SetString(PyExc_TypeError, "entries must be tuples");
        return -1;
    }
    if (!PyArg_ParseTuple(item, "UO|s#ILKK:entry", &a->name, &a->code,
                          &a->origin, &a->origin_len, &a->flags,
                          &a->mtime_ns, &a->size, &a->xxh3)) {
        return -1;
    }
    /* A data entry's root is a 1-tuple (pycds_dump_data), any other's a
     * code object. */
    if ((a->flags & PYCDS_ENTRY_DATA)
            ? !(PyTuple_CheckExact(a->code) && PyTuple_GET_SIZE(a->code) == 1)
            : !PyCode_Check(a->code)) {
        PyErr_Format(PyExc_TypeError, "entry: the root must be %s, not %.100s",
                     (a->flags & PYCDS_ENTRY_DATA) ? "a 1-tuple"
                                                   : "a code object",
                     Py_TYPE(a->code)->tp_name);
        return -1;
    }
    return 0;
}

static int
emit_entry(struct writer *w, struct pycds_index_builder *ix,
           PyObject *item)
{
    struct entry_args a;
    struct pycds_entry e;
    struct pycds_entry_strings strs;
    uint64_t ref;

    if (parse_entry(item, &a) < 0) {
        return -1;
    }
    strs.name = PyUnicode_AsUTF8AndSize(a.name, &strs.name_len);
    if (strs.name == NULL) {
        return -1;
    }
    w->entry = strs.name;
    w->data = (a.flags & PYCDS_ENTRY_DATA) != 0;
    where_pop(w, 0);
    memset(&e, 0, sizeof(e));
    e.heap_start = (w->heap_size + PYCDS_OBJECT_ALIGN - 1)
                   & ~(uint64_t)(PYCDS_OBJECT_ALIGN - 1);
    w->part_start = e.heap_start;
    if (w->heights_used) {
        memset(w->heights, 0, w->heights_used);
        w->heights_used = 0;
    }
    e.relr_start = w->relr.n;
    e.sym_start = 1 + w->nlocals;
    w->nslots = 0;
    Py_XSETREF(w->memo, PyDict_New());
    if (w->memo == NULL || heap_emit(w, a.code, &ref) < 0) {
        return -1;
    }
    e.root = REF_VALUE(ref);
    e.heap_end = w->heap_size;
    if (pycds_relr_encode(&w->relr, w->slots, w->nslots) < 0) {
        return -1;
    }
    e.relr_count = w->relr.n - e.relr_start;
    e.nslots = w->nslots;
    e.sym_count = 1 + w->nlocals - e.sym_start;
    e.flags = a.flags;
    e.source_mtime_ns = a.mtime_ns;
    e.source_size = a.size;
    e.source_xxh3 = a.xxh3;
    strs.origin = a.origin;
    strs.origin_len = a.origin_len;
    return pycds_index_add(ix, &e, &strs);
}

/* ---- finishing -------------------------------------------------------- */

struct tables {
    Elf64_Sym *syms;
    size_t nsyms;
    char *strtab;
    size_t strtab_size;
};

static int
build_tables(struct writer *w, struct tables *t)
{
    Py_ssize_t nglobals = PyList_GET_SIZE(w->global_names);
    size_t strsize = sizeof(strtab_head);
    for (Py_ssize_t i = 0; i < nglobals; i++) {
        strsize += PyUnicode_GET_LENGTH(PyList_GET_ITEM(w->global_names, i))
                   + 1;
    }
    t->nsyms = 1 + w->nlocals + nglobals;
    t->syms = calloc(t->nsyms, sizeof(Elf64_Sym));
    t->strtab = calloc(1, strsize);
    if (t->syms == NULL || t->strtab == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (w->nlocals) {
        memcpy(t->syms + 1, w->locals, w->nlocals * sizeof(Elf64_Sym));
    }
    memcpy(t->strtab, strtab_head, sizeof(strtab_head));
    size_t pos = sizeof(strtab_head);
    for (Py_ssize_t i = 0; i < nglobals; i++) {
        Py_ssize_t n;
        const char *name = PyUnicode_AsUTF8AndSize(
            PyList_GET_ITEM(w->global_names, i), &n);
        if (name == NULL) {
            return -1;
        }
        Elf64_Sym *s = &t->syms[1 + w->nlocals + i];
        s->st_name = (Elf64_Word)pos;
        s->st_info = ELF64_ST_INFO(STB_GLOBAL, STT_OBJECT);
        s->st_shndx = SHN_UNDEF;
        memcpy(t->strtab + pos, name, n + 1);
        pos += n + 1;
    }
    t->strtab_size = strsize;
    return 0;
}

/* Now that the number of local symbols is known, slots that refer to
 * global symbols get their final symbol numbers.  DUMP wrote the RELR
 * words itself: they are well formed. */
static void
fix_globals(struct writer *w)
{
    uint64_t first_global = 1 + w->nlocals, slot, v;
    struct pycds_relr_iter it;
    pycds_relr_iter_init(&it, w->relr.words, w->relr.n);
    while ((slot = pycds_relr_next(&it)) != PYCDS_RELR_END) {
        memcpy(&v, w->heap + slot, sizeof(v));
        if ((v & ((1 << PYCDS_SLOT_TAG_BITS) - 1))
            == SLOT_PROVISIONAL_GLOBAL) {
            v = ((first_global + (v >> PYCDS_SLOT_TAG_BITS))
                 << PYCDS_SLOT_TAG_BITS) | PYCDS_SLOT_SYMBOL;
            memcpy(w->heap + slot, &v, sizeof(v));
        }
    }
}

static void
sum_parts(struct writer *w, struct pycds_entry *entries, size_t n,
          const Elf64_Sym *syms)
{
    for (size_t i = 0; i < n; i++) {
        struct pycds_entry *e = &entries[i];
        e->part_xxh3 = pycds_part_xxh3(w->heap + e->heap_start,
                                       e->heap_end - e->heap_start,
                                       w->relr.words + e->relr_start,
                                       e->relr_count,
                                       syms + e->sym_start, e->sym_count);
    }
}

int
pycds_dump(const char *path, PyObject *entries, uint32_t validation)
{
    struct writer w;
    struct tables t = {0};
    struct pycds_index_builder *ix = pycds_index_builder_new();
    char *index = NULL;
    size_t index_size, nentries;
    int rc = -1;

    memset(&w, 0, sizeof(w));
    w.global_ids = PyDict_New();
    w.global_names = PyList_New(0);
    PyObject *seq = PySequence_Fast(entries, "entries must be a sequence");
    if (ix == NULL || w.global_ids == NULL || w.global_names == NULL
        || seq == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        goto done;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        if (emit_entry(&w, ix, PySequence_Fast_GET_ITEM(seq, i)) < 0) {
            goto done;
        }
    }
    if (build_tables(&w, &t) < 0) {
        goto done;
    }
    fix_globals(&w);
    struct pycds_entry *es = pycds_index_entries(ix, &nentries);
    sum_parts(&w, es, nentries, t.syms);
    if (pycds_index_finish(ix, &index, &index_size) < 0) {
        goto done;
    }
    struct pycds_image img = {
        .heap = w.heap, .heap_size = w.heap_size,
        .relr = w.relr.words, .nrelr = w.relr.n,
        .syms = t.syms, .nsyms = t.nsyms, .nlocal_syms = 1 + w.nlocals,
        .strtab = t.strtab, .strtab_size = t.strtab_size,
        .index = index, .index_size = index_size,
        .validation = validation,
    };
    memcpy(img.kind_bytes, w.kind_bytes, sizeof(img.kind_bytes));
    rc = pycds_container_write(path, &img);

done:
    Py_XDECREF(seq);
    Py_XDECREF(w.global_ids);
    Py_XDECREF(w.global_names);
    Py_XDECREF(w.memo);
    free(w.heap);
    free(w.slots);
    free(w.relr.words);
    free(w.locals);
    free(w.heights);
    free(t.syms);
    free(t.strtab);
    free(index);
    pycds_index_builder_free(ix);
    return rc;
}
