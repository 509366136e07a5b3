/* How CPython 3.12 lays out the objects an archive holds, and what must be
 * reset in them.  See ../shared/CPYTHON-NOTES.md and docs/VERSIONS.md. */
#include "pycds/pycds.h"

#if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030D0000

/* Immortal: the low 32 bits all ones.  INCREF/DECREF skip the object, so
 * its pages are never written by reference counting. */
const Py_ssize_t pycds_layout_image_refcnt = _Py_IMMORTAL_REFCNT;

/* PyGC_Head: two words; all zero means untracked. */
const size_t pycds_layout_gc_header_size = 2 * sizeof(uintptr_t);

#define ROUND8(n) (((n) + 7) & ~(size_t)7)

/* pycore_long.h: lv_tag = ndigits << _PyLong_NON_SIZE_BITS | sign. */
#define LONG_NON_SIZE_BITS 3

static Py_ssize_t
long_ndigits(PyObject *op)
{
    return (Py_ssize_t)(((PyLongObject *)op)->long_value.lv_tag
                        >> LONG_NON_SIZE_BITS);
}

static Py_ssize_t
str_size(PyObject *op)
{
    if (!PyUnicode_IS_COMPACT(op)) {
        return -1;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(op) + 1;
    if (PyUnicode_IS_ASCII(op)) {
        return sizeof(PyASCIIObject) + n;
    }
    return sizeof(PyCompactUnicodeObject) + n * PyUnicode_KIND(op);
}

Py_ssize_t
pycds_layout_size(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    if (tp == &PyCode_Type) {
        return ROUND8(PyCode_Type.tp_basicsize
                      + Py_SIZE(op) * PyCode_Type.tp_itemsize);
    }
    if (tp == &PyUnicode_Type) {
        return str_size(op);
    }
    if (tp == &PyBytes_Type) {
        return offsetof(PyBytesObject, ob_sval) + Py_SIZE(op) + 1;
    }
    if (tp == &PyLong_Type) {
        /* Zero has no digit in use but one allocated, as _PyLong_New
         * allocates it. */
        Py_ssize_t nd = long_ndigits(op);
        return offsetof(PyLongObject, long_value.ob_digit)
               + (nd ? nd : 1) * sizeof(digit);
    }
    if (tp == &PyFloat_Type) {
        return sizeof(PyFloatObject);
    }
    if (tp == &PyComplex_Type) {
        return sizeof(PyComplexObject);
    }
    if (tp == &PyTuple_Type) {
        return offsetof(PyTupleObject, ob_item)
               + Py_SIZE(op) * sizeof(PyObject *);
    }
    return -1;
}

#define VISIT(field)                                                       \
    do {                                                                   \
        if (visit(ctx, co->field, offsetof(PyCodeObject, field), #field,   \
                  -1) < 0) {                                               \
            return -1;                                                     \
        }                                                                  \
    } while (0)

int
pycds_layout_visit(PyObject *op, pycds_visit_fn visit, void *ctx)
{
    if (PyCode_Check(op)) {
        PyCodeObject *co = (PyCodeObject *)op;
        VISIT(co_consts);
        VISIT(co_names);
        VISIT(co_exceptiontable);
        VISIT(co_localsplusnames);
        VISIT(co_localspluskinds);
        VISIT(co_filename);
        VISIT(co_name);
        VISIT(co_qualname);
        VISIT(co_linetable);
        return 0;
    }
    if (PyTuple_CheckExact(op)) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(op); i++) {
            size_t slot = offsetof(PyTupleObject, ob_item)
                          + i * sizeof(PyObject *);
            if (visit(ctx, PyTuple_GET_ITEM(op, i), slot, NULL, i) < 0) {
                return -1;
            }
        }
    }
    return 0;
}

#undef VISIT

static int
write_code(PyCodeObject *co, PyCodeObject *img)
{
    /* The bytecode as _PyCode_Quicken leaves it in a code object that has
     * never run: 3.12 quickens at creation, forming superinstructions
     * (LOAD_FAST__LOAD_FAST ...) and setting each adaptive counter to its
     * warm-up value.  co_code is not that: it undoes superinstructions
     * too, and code copied from it never gets them.  code.replace() with
     * no change builds that state from co_code (de-optimised, so whatever
     * ran in co does not matter) through the constructor, which is what
     * unmarshalling a .pyc runs too. */
    PyCodeObject *fresh = (PyCodeObject *)PyObject_CallMethod(
        (PyObject *)co, "replace", NULL);
    if (fresh == NULL) {
        return -1;
    }
    if (!PyCode_Check(fresh) || Py_SIZE(fresh) != Py_SIZE(co)) {
        Py_DECREF(fresh);
        PyErr_SetString(PyExc_SystemError, "code.replace() changed the code");
        return -1;
    }
    Py_SET_SIZE(img, Py_SIZE(co));
    img->co_flags = co->co_flags;
    img->co_argcount = co->co_argcount;
    img->co_posonlyargcount = co->co_posonlyargcount;
    img->co_kwonlyargcount = co->co_kwonlyargcount;
    img->co_stacksize = co->co_stacksize;
    img->co_firstlineno = co->co_firstlineno;
    img->co_nlocalsplus = co->co_nlocalsplus;
    img->co_framesize = co->co_framesize;
    img->co_nlocals = co->co_nlocals;
    img->co_ncellvars = co->co_ncellvars;
    img->co_nfreevars = co->co_nfreevars;
    /* 3.12 does not derive function versions from co_version, and 0 is
     * what a version-less code object holds. */
    img->co_version = 0;
    /* Instrumentation is per interpreter: 0 and no monitoring data is a
     * code object that was never instrumented, which RESUME brings up to
     * the interpreter's monitoring version on first execution. */
    img->_co_instrumentation_version = 0;
    img->_co_firsttraceable = co->_co_firsttraceable;
    /* co_weakreflist, _co_cached, _co_monitoring, co_extra stay NULL */
    memcpy(img->co_code_adaptive, fresh->co_code_adaptive,
           Py_SIZE(co) * PyCode_Type.tp_itemsize);
    Py_DECREF(fresh);
    return 0;
}

static void
write_str(PyObject *op, char *dst)
{
    PyASCIIObject *img = (PyASCIIObject *)dst;
    Py_ssize_t n = PyUnicode_GET_LENGTH(op);
    int kind = PyUnicode_KIND(op);
    img->length = n;
    img->hash = -1;
    img->state.interned = SSTATE_NOT_INTERNED;
    img->state.kind = kind;
    img->state.compact = 1;
    img->state.ascii = PyUnicode_IS_ASCII(op);
    /* Not static: the interning of an immortal string below keeps it out
     * of the runtime-wide table of static strings. */
    img->state.statically_allocated = 0;
    char *data = dst + sizeof(PyASCIIObject);
    if (!PyUnicode_IS_ASCII(op)) {
        /* utf8/utf8_length stay 0: a UTF-8 copy is cached lazily by
         * whoever asks for one. */
        data = dst + sizeof(PyCompactUnicodeObject);
    }
    memcpy(data, PyUnicode_DATA(op), (n + 1) * kind);
}

static void
write_long(PyObject *op, PyLongObject *img)
{
    /* lv_tag holds only the digit count and the sign on 3.12. */
    Py_ssize_t nd = long_ndigits(op);
    img->long_value.lv_tag = ((PyLongObject *)op)->long_value.lv_tag;
    memcpy(img->long_value.ob_digit, ((PyLongObject *)op)->long_value.ob_digit,
           (nd ? nd : 1) * sizeof(digit));
}

int
pycds_layout_write(PyObject *op, char *dst)
{
    PyTypeObject *tp = Py_TYPE(op);
    if (tp == &PyCode_Type) {
        return write_code((PyCodeObject *)op, (PyCodeObject *)dst);
    }
    if (tp == &PyUnicode_Type) {
        write_str(op, dst);
        return 0;
    }
    if (tp == &PyBytes_Type) {
        PyBytesObject *img = (PyBytesObject *)dst;
        Py_SET_SIZE(img, Py_SIZE(op));
        /* Deprecated for readers, but it is the cache to reset. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
        img->ob_shash = -1;
#pragma GCC diagnostic pop
        memcpy(img->ob_sval, PyBytes_AS_STRING(op), Py_SIZE(op) + 1);
        return 0;
    }
    if (tp == &PyLong_Type) {
        write_long(op, (PyLongObject *)dst);
        return 0;
    }
    if (tp == &PyFloat_Type) {
        ((PyFloatObject *)dst)->ob_fval = PyFloat_AS_DOUBLE(op);
        return 0;
    }
    if (tp == &PyComplex_Type) {
        ((PyComplexObject *)dst)->cval = ((PyComplexObject *)op)->cval;
        return 0;
    }
    if (tp == &PyTuple_Type) {
        Py_SET_SIZE((PyVarObject *)dst, Py_SIZE(op));
        return 0;
    }
    PyErr_Format(PyExc_SystemError, "no layout for %s", tp->tp_name);
    return -1;
}

int
pycds_layout_intern(PyObject **p)
{
    /* 3.12 interns for good: every interned string is immortal.  An
     * archived string is immortal already, so when it becomes the
     * interned one it is marked SSTATE_INTERNED_IMMORTAL_STATIC, which
     * interpreter finalisation leaves alone (it never makes such a string
     * mortal, so nothing tries to free it). */
    PyUnicode_InternInPlace(p);
    return 0;
}

void
pycds_layout_keep(PyObject *op)
{
    /* Immortal, like the archived objects that point to it.  A GC object
     * (a frozenset) moves to the permanent generation at the next
     * collection. */
    Py_SET_REFCNT(op, _Py_IMMORTAL_REFCNT);
}

int
pycds_layout_ready_code(PyObject *code)
{
    /* Nothing to do: see co_version in write_code. */
    (void)code;
    return 0;
}

/* ---- SHARE's checks (pycds_layout_check, pycds_layout_check_links) ---- */

/* pycore_code.h: the kinds of co_localspluskinds */
#define FAST_LOCAL 0x20
#define FAST_CELL 0x40
#define FAST_FREE 0x80
/* Bounds no compiled code comes near; they keep frame sizes (computed in
 * int, then in bytes) far from overflow. */
#define MAX_STACKSIZE (1 << 26)
#define MAX_NLOCALSPLUS (1 << 24)
/* pycore_long.h: the sign in lv_tag's low bits */
#define LONG_SIGN_MASK 3
#define LONG_SIGN_ZERO 1
#define LONG_SIGN_NEGATIVE 2

static const uint16_t code_fields[] = {
    offsetof(PyCodeObject, co_consts),
    offsetof(PyCodeObject, co_names),
    offsetof(PyCodeObject, co_exceptiontable),
    offsetof(PyCodeObject, co_localsplusnames),
    offsetof(PyCodeObject, co_localspluskinds),
    offsetof(PyCodeObject, co_filename),
    offsetof(PyCodeObject, co_name),
    offsetof(PyCodeObject, co_qualname),
    offsetof(PyCodeObject, co_linetable),
};

static const char *
check_code(PyCodeObject *co, size_t avail, struct pycds_shape *shape)
{
    size_t base = offsetof(PyCodeObject, co_code_adaptive);
    if (avail < base) {
        return "a code object runs past the end of its entry";
    }
    Py_ssize_t n = Py_SIZE(co);
    if (n <= 0 || (size_t)n > (avail - base) / sizeof(_Py_CODEUNIT)
        || n > INT_MAX / (Py_ssize_t)sizeof(_Py_CODEUNIT)) {
        return "a code object's bytecode size does not fit its entry";
    }
    shape->size = ROUND8(base + n * sizeof(_Py_CODEUNIT));
    if (shape->size > avail) {
        return "a code object runs past the end of its entry";
    }
    if (co->co_flags < 0 || co->co_argcount < 0
        || co->co_posonlyargcount < 0
        || co->co_posonlyargcount > co->co_argcount
        || co->co_kwonlyargcount < 0 || co->co_stacksize < 0
        || co->co_stacksize > MAX_STACKSIZE || co->co_nlocalsplus < 0
        || co->co_nlocalsplus > MAX_NLOCALSPLUS
        || co->_co_firsttraceable < 0 || co->_co_firsttraceable > n) {
        return "a code object has impossible counts";
    }
    /* Caches the runtime fills in itself, and what they hang on; an
     * instrumentation version other than 0 would claim monitoring data
     * the code object does not have. */
    if (co->co_weakreflist != NULL || co->_co_cached != NULL
        || co->_co_monitoring != NULL || co->_co_instrumentation_version != 0
        || co->co_extra != NULL) {
        return "a code object's caches are not reset";
    }
    shape->fields = code_fields;
    shape->nfields = sizeof(code_fields) / sizeof(code_fields[0]);
    shape->links = 1;
    return NULL;
}

static int
tuple_of_str(PyObject *t)
{
    if (!PyTuple_CheckExact(t)) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(t, i))) {
            return 0;
        }
    }
    return 1;
}

/* co_framesize - co_nlocalsplus - co_stacksize: the frame's own words
 * (pycore_frame.h: FRAME_SPECIALS_SIZE), read once from a fresh code
 * object; -1 with an exception set on failure. */
static int
frame_specials(void)
{
    static int specials = -1;
    if (specials < 0) {
        PyCodeObject *probe = PyCode_NewEmpty("", "", 0);
        if (probe == NULL) {
            return -1;
        }
        specials = probe->co_framesize - probe->co_nlocalsplus
                   - probe->co_stacksize;
        Py_DECREF(probe);
    }
    return specials;
}

const char *
pycds_layout_check_links(PyObject *op)
{
    PyCodeObject *co = (PyCodeObject *)op;
    if (!PyTuple_CheckExact(co->co_consts) || !tuple_of_str(co->co_names)
        || !tuple_of_str(co->co_localsplusnames)
        || !PyBytes_CheckExact(co->co_localspluskinds)
        || !PyBytes_CheckExact(co->co_exceptiontable)
        || !PyBytes_CheckExact(co->co_linetable)
        || !PyUnicode_CheckExact(co->co_filename)
        || !PyUnicode_CheckExact(co->co_name)
        || !PyUnicode_CheckExact(co->co_qualname)) {
        return "a code object's fields have the wrong types";
    }
    /* What code object creation derives from the names and kinds
     * (codeobject.c: get_localsplus_counts, _PyCode_Validate). */
    Py_ssize_t n = PyTuple_GET_SIZE(co->co_localsplusnames);
    if (n != co->co_nlocalsplus
        || PyBytes_GET_SIZE(co->co_localspluskinds) != n) {
        return "a code object's co_nlocalsplus does not match its names";
    }
    const unsigned char *kinds =
        (const unsigned char *)PyBytes_AS_STRING(co->co_localspluskinds);
    int nlocals = 0, ncellvars = 0, nfreevars = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (kinds[i] & FAST_LOCAL) {
            nlocals++;
            ncellvars += (kinds[i] & FAST_CELL) != 0;
        }
        else if (kinds[i] & FAST_CELL) {
            ncellvars++;
        }
        else if (kinds[i] & FAST_FREE) {
            nfreevars++;
        }
    }
    if (nlocals != co->co_nlocals || ncellvars != co->co_ncellvars
        || nfreevars != co->co_nfreevars) {
        return "a code object's variable counts do not match its kinds";
    }
    long args = (long)co->co_argcount + co->co_kwonlyargcount
                + ((co->co_flags & CO_VARARGS) != 0)
                + ((co->co_flags & CO_VARKEYWORDS) != 0);
    if (args > nlocals) {
        return "a code object has more arguments than local variables";
    }
    int specials = frame_specials();
    if (specials < 0) {
        return "cannot create a code object";
    }
    if (co->co_framesize != co->co_nlocalsplus + co->co_stacksize + specials) {
        return "a code object's frame size does not match its counts";
    }
    return NULL;
}

/* The largest character of n of the given kind at data; for kind 1 only
 * whether it is above 0x7f is exact (0x80 stands for any such), which is
 * all check_str asks. */
static Py_UCS4
max_char(unsigned kind, const void *data, Py_ssize_t n)
{
    Py_UCS4 max = 0;
    Py_ssize_t i = 0;
    if (kind == 1) {
        const unsigned char *p = data;
        uint64_t any = 0;
        for (; i + 8 <= n; i += 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            any |= w;
        }
        for (; i < n; i++) {
            any |= p[i];
        }
        return (any & 0x8080808080808080ULL) ? 0x80 : 0;
    }
    for (; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        max = c > max ? c : max;
    }
    return max;
}

static const char *
check_str(PyObject *op, size_t avail, struct pycds_shape *shape)
{
    if (avail < sizeof(PyASCIIObject)) {
        return "a str runs past the end of its entry";
    }
    PyASCIIObject *a = (PyASCIIObject *)op;
    unsigned kind = a->state.kind;
    int ascii = a->state.ascii;
    if (a->state.interned != SSTATE_NOT_INTERNED || !a->state.compact
        || a->state.statically_allocated || a->hash != -1
        || (kind != 1 && kind != 2 && kind != 4) || (ascii && kind != 1)) {
        return "a str has a malformed header";
    }
    size_t head = sizeof(PyASCIIObject);
    if (!ascii) {
        head = sizeof(PyCompactUnicodeObject);
        PyCompactUnicodeObject *c = (PyCompactUnicodeObject *)op;
        if (avail < head || c->utf8_length != 0 || c->utf8 != NULL) {
            return "a str has a malformed header";
        }
    }
    Py_ssize_t n = a->length;
    if (n < 0 || (size_t)n >= (avail - head) / kind) {
        return "a str runs past the end of its entry";
    }
    shape->size = head + (n + 1) * kind;
    const void *data = (const char *)op + head;
    /* Canonical, as CPython makes every str: the narrowest kind. */
    Py_UCS4 max = max_char(kind, data, n);
    if (PyUnicode_READ(kind, data, n) != 0
        || (ascii ? max > 0x7f
            : kind == 1 ? max < 0x80
            : kind == 2 ? max < 0x100
            : max < 0x10000 || max > 0x10ffff)) {
        return "a str's characters do not match its kind";
    }
    return NULL;
}

static const char *
check_long(PyLongObject *op, size_t avail, struct pycds_shape *shape)
{
    size_t base = offsetof(PyLongObject, long_value.ob_digit);
    if (avail < base + sizeof(digit)) {
        return "an int runs past the end of its entry";
    }
    uintptr_t tag = op->long_value.lv_tag;
    size_t nd = tag >> LONG_NON_SIZE_BITS;
    unsigned sign = tag & LONG_SIGN_MASK;
    if ((tag & ((1 << LONG_NON_SIZE_BITS) - 1) & ~LONG_SIGN_MASK) != 0
        || sign == LONG_SIGN_MASK || (sign == LONG_SIGN_ZERO) != (nd == 0)) {
        return "an int has a malformed tag";
    }
    if (nd > (avail - base) / sizeof(digit)) {
        return "an int runs past the end of its entry";
    }
    shape->size = base + (nd ? nd : 1) * sizeof(digit);
    const digit *d = op->long_value.ob_digit;
    for (size_t i = 0; i < nd; i++) {
        if (d[i] >= PyLong_BASE) {
            return "an int has a malformed digit";
        }
    }
    if (nd != 0 && d[nd - 1] == 0) {
        return "an int is not normalised";
    }
    return NULL;
}

const char *
pycds_layout_check(PyObject *op, PyTypeObject *tp, size_t avail,
                   struct pycds_shape *shape)
{
    shape->fields = NULL;
    shape->nfields = shape->items = shape->nitems = 0;
    shape->links = 0;
    if (tp == &PyUnicode_Type) {
        return check_str(op, avail, shape);
    }
    if (tp == &PyTuple_Type) {
        size_t base = offsetof(PyTupleObject, ob_item);
        if (avail < base || Py_SIZE(op) < 0
            || (size_t)Py_SIZE(op) > (avail - base) / sizeof(PyObject *)) {
            return "a tuple runs past the end of its entry";
        }
        shape->size = base + Py_SIZE(op) * sizeof(PyObject *);
        shape->items = base;
        shape->nitems = Py_SIZE(op);
        return NULL;
    }
    if (tp == &PyCode_Type) {
        return check_code((PyCodeObject *)op, avail, shape);
    }
    if (tp == &PyBytes_Type) {
        size_t base = offsetof(PyBytesObject, ob_sval);
        PyBytesObject *b = (PyBytesObject *)op;
        if (avail <= base || Py_SIZE(op) < 0
            || (size_t)Py_SIZE(op) >= avail - base) {
            return "a bytes object runs past the end of its entry";
        }
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
        if (b->ob_shash != -1 || b->ob_sval[Py_SIZE(op)] != 0) {
#pragma GCC diagnostic pop
            return "a bytes object has a malformed header";
        }
        shape->size = base + Py_SIZE(op) + 1;
        return NULL;
    }
    if (tp == &PyLong_Type) {
        return check_long((PyLongObject *)op, avail, shape);
    }
    if (tp == &PyFloat_Type) {
        shape->size = sizeof(PyFloatObject);
    }
    else if (tp == &PyComplex_Type) {
        shape->size = sizeof(PyComplexObject);
    }
    else {
        return "an object's type has no layout";
    }
    return shape->size > avail ? "an object runs past the end of its entry"
                               : NULL;
}

#endif
