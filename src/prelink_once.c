/* SHARE in place: an entry's run-once objects (its module's code, the
 * code of its class bodies, the tuples and bytes only they refer to; the
 * run-once area of docs/FORMAT.md) served as copies on the heap.
 *
 * Normal import frees a module's code once its body ran; in an image the
 * objects would stay for the life of the process, and on a PIE
 * interpreter (a load address to add to each ob_type) or a 3.11 one
 * (reference counts) every page they are on would be the process's own.
 * So a process only reads them: each request for the entry's code copies
 * them, in the order the writer laid them out (an object after what it
 * refers to), into objects of its own with reference counts, which the
 * interpreter frees as it frees unmarshalled ones.  What they refer to
 * outside the area is used in place: prelink_map.c says, slot by slot,
 * what a slot that does not point into the area holds in this process
 * (a pointer into libpython, an interned string, a frozenset, an object
 * of the entry's other areas). */
#include "pycds/pycds.h"

#include <string.h>

struct copied {
    uint64_t from;            /* the object's address in the image */
    PyObject *to;             /* its copy (owned) */
};

struct copier {
    uint64_t start, end;      /* the entry's run-once span */
    uintptr_t delta;          /* libpython's load address */
    pycds_once_slots_fn slot_values;
    void *ctx;
    struct copied *done;      /* in increasing address order */
    size_t ndone, cap;
};

/* Bytes each object of a span takes at least: a bytes object of none
 * (a tuple of none with its GC header takes as many, code more). */
#define MIN_OBJECT_SIZE \
    ((offsetof(PyBytesObject, ob_sval) + 1 + PYCDS_OBJECT_ALIGN - 1) \
     & ~(size_t)(PYCDS_OBJECT_ALIGN - 1))

static PyObject *
malformed(void)
{
    PyErr_SetString(pycds_ArchiveError, "a run-once object is malformed");
    return NULL;
}

/* The copy of the object at address from, copied already. */
static PyObject *
copy_of(const struct copier *c, uint64_t from)
{
    size_t lo = 0, hi = c->ndone;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c->done[mid].from < from) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    return lo < c->ndone && c->done[lo].from == from ? c->done[lo].to : NULL;
}

/* Points each of the n slots at to (from address slot on, holding raw[k]
 * in the image) to what it holds in a copy: a new reference each; -1
 * with an exception (the references made are in to[]). */
static int
resolve(const struct copier *c, uint64_t slot, PyObject *const *raw,
        Py_ssize_t n, PyObject **to)
{
    if (c->slot_values(c->ctx, slot, raw, n, to) < 0) {
        return -1;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        if (to[k] != NULL) {
            continue;
        }
        /* Run-once as well: laid out, and copied, before. */
        PyObject *copy = (uintptr_t)raw[k] - c->start < c->end - c->start
                         ? copy_of(c, (uintptr_t)raw[k]) : NULL;
        if (copy == NULL) {
            malformed();
            return -1;
        }
        to[k] = Py_NewRef(copy);
    }
    return 0;
}

struct code_fields {
    char *code;               /* the copy */
    size_t slot[16];          /* more than any version has (9) */
    PyObject *raw[16];
    int n;
};

/* Takes each pointer field out of a code object copied byte for byte,
 * leaving NULL (what its deallocator skips) until it is resolved. */
static int
take_field(void *ctx, PyObject *target, size_t slot, const char *field,
           Py_ssize_t index)
{
    struct code_fields *cf = ctx;
    (void)field, (void)index;
    *(PyObject **)(cf->code + slot) = NULL;
    if (cf->n < (int)(sizeof(cf->slot) / sizeof(cf->slot[0]))) {
        cf->slot[cf->n] = slot;
        cf->raw[cf->n] = target;
    }
    cf->n++;
    return 0;
}

static PyObject *
copy_code(const struct copier *c, uint64_t at, const PyVarObject *img,
          Py_ssize_t size)
{
    PyCodeObject *co = PyObject_NewVar(PyCodeObject, &PyCode_Type,
                                       Py_SIZE(img));
    if (co == NULL) {
        return NULL;
    }
    /* Everything after the header, as the writer left it: caches reset
     * (docs/FORMAT.md, "Heap"), the bytecode of code that never ran. */
    memcpy((char *)co + sizeof(PyVarObject),
           (const char *)img + sizeof(PyVarObject),
           size - sizeof(PyVarObject));
    struct code_fields cf = {.code = (char *)co};
    if (pycds_layout_visit((PyObject *)co, take_field, &cf) < 0
        || cf.n > (int)(sizeof(cf.slot) / sizeof(cf.slot[0]))) {
        malformed();
        goto error;
    }
    for (int k = 0; k < cf.n; k++) {
        if (resolve(c, at + cf.slot[k], &cf.raw[k], 1,
                    (PyObject **)(cf.code + cf.slot[k])) < 0) {
            goto error;
        }
    }
    return (PyObject *)co;

error:
    Py_DECREF(co);
    return NULL;
}

static PyObject *
copy_tuple(const struct copier *c, uint64_t at, const PyVarObject *img)
{
    Py_ssize_t n = Py_SIZE(img);
    PyObject *t = PyTuple_New(n);
    /* The items resolved in place: a tuple deallocates the NULLs of one
     * that failed half-way. */
    if (t != NULL && n > 0
        && resolve(c, at + offsetof(PyTupleObject, ob_item),
                   ((const PyTupleObject *)img)->ob_item, n,
                   ((PyTupleObject *)t)->ob_item) < 0) {
        Py_CLEAR(t);
    }
    return t;
}

/* Copies the object at address at (whose type tp, of size bytes, is
 * checked), then notes its copy. */
static int
copy_object(struct copier *c, uint64_t at, PyTypeObject *tp, Py_ssize_t size)
{
    const PyVarObject *img = (const PyVarObject *)(uintptr_t)at;
    PyObject *to;
    if (tp == &PyCode_Type) {
        to = copy_code(c, at, img, size);
    }
    else if (tp == &PyTuple_Type) {
        to = copy_tuple(c, at, img);
    }
    else {
        to = PyBytes_FromStringAndSize(((const PyBytesObject *)img)->ob_sval,
                                       Py_SIZE(img));
    }
    if (to == NULL) {
        return -1;
    }
    c->done[c->ndone++] = (struct copied){at, to};
    return 0;
}

/* Copies each object of the span in turn; -1 with an exception. */
static int
copy_span(struct copier *c)
{
    uint64_t at = c->start;
    int gc = 0;
    while (at < c->end) {
        uint64_t word[2];
        if (c->end - at < sizeof(PyVarObject)) {
            goto error;
        }
        memcpy(word, (const void *)(uintptr_t)at, sizeof(word));
        if (word[0] == 0 && !gc) {
            /* An untracked GC header: a tuple follows (an object's
             * refcount is never zero). */
            gc = 1;
            at += pycds_layout_gc_header_size;
            continue;
        }
        PyTypeObject *tp = (PyTypeObject *)(uintptr_t)(word[1] + c->delta);
        const PyVarObject *img = (const PyVarObject *)(uintptr_t)at;
        if ((tp != &PyCode_Type && tp != &PyTuple_Type && tp != &PyBytes_Type)
            || gc != (tp == &PyTuple_Type)
            || Py_SIZE(img) < 0 || (uint64_t)Py_SIZE(img) > c->end - at) {
            goto error;
        }
        Py_ssize_t size = pycds_layout_size_as((PyObject *)img, tp);
        if ((uint64_t)size > c->end - at || c->ndone == c->cap
            || copy_object(c, at, tp, size) < 0) {
            goto error;
        }
        at += (size + PYCDS_OBJECT_ALIGN - 1)
              & ~(uint64_t)(PYCDS_OBJECT_ALIGN - 1);
        gc = 0;
    }
    if (gc) {
        goto error;
    }
    return 0;

error:
    if (!PyErr_Occurred()) {
        malformed();
    }
    return -1;
}

PyObject *
pycds_once_copy(uint64_t start, uint64_t end, uint64_t root, uintptr_t delta,
                pycds_once_slots_fn slot_values, void *ctx)
{
    /* Room for as many objects as the span can hold: made once, not
     * grown (which cost 4 M instructions of 20 for `import boto3`). */
    size_t cap = (end - start) / MIN_OBJECT_SIZE;
    struct copier c = {start, end, delta, slot_values, ctx,
                       PyMem_Malloc((cap ? cap : 1) * sizeof(struct copied)),
                       0, cap};
    PyObject *copy = NULL;
    if (c.done == NULL) {
        return PyErr_NoMemory();
    }
    if (copy_span(&c) == 0) {
        copy = copy_of(&c, root);
        copy = copy ? Py_NewRef(copy) : malformed();
    }
    for (size_t k = 0; k < c.ndone; k++) {
        Py_DECREF(c.done[k].to);
    }
    PyMem_Free(c.done);
    return copy;
}
