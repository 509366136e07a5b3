/* How CPython 3.11 lays out the objects an archive holds, and what must be
 * reset in them.  See ../shared/CPYTHON-NOTES.md. */
#include "layout.h"

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000

/* pycore_code.h: QUICKENING_INITIAL_WARMUP_VALUE */
#define WARMUP_INITIAL (-8)

/* 3.11 has no immortality: a refcount that no run can bring to zero. */
const Py_ssize_t pycds_layout_image_refcnt = (Py_ssize_t)1 << 60;

/* PyGC_Head: two words; all zero means untracked. */
const size_t pycds_layout_gc_header_size = 2 * sizeof(uintptr_t);

static Py_ssize_t
str_size(PyObject *op)
{
    if (!PyUnicode_IS_READY(op) || !PyUnicode_IS_COMPACT(op)) {
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
        Py_ssize_t nd = Py_ABS(Py_SIZE(op));
        return offsetof(PyLongObject, ob_digit)
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


static int
write_code(PyCodeObject *co, PyCodeObject *img)
{
    /* The bytecode as it was before any quickening or specialisation:
     * co_code de-optimises, and 3.11 quickens lazily after warm-up. */
    PyObject *code = PyCode_GetCode(co);
    if (code == NULL) {
        return -1;
    }
    if (PyBytes_GET_SIZE(code) != Py_SIZE(co) * (Py_ssize_t)sizeof(_Py_CODEUNIT)) {
        Py_DECREF(code);
        PyErr_SetString(PyExc_SystemError, "co_code size mismatch");
        return -1;
    }
    Py_SET_SIZE(img, Py_SIZE(co));
    img->co_flags = co->co_flags;
    img->co_warmup = WARMUP_INITIAL;
    img->_co_linearray_entry_size = 0;
    img->co_argcount = co->co_argcount;
    img->co_posonlyargcount = co->co_posonlyargcount;
    img->co_kwonlyargcount = co->co_kwonlyargcount;
    img->co_stacksize = co->co_stacksize;
    img->co_firstlineno = co->co_firstlineno;
    img->co_nlocalsplus = co->co_nlocalsplus;
    img->co_nlocals = co->co_nlocals;
    img->co_nplaincellvars = co->co_nplaincellvars;
    img->co_ncellvars = co->co_ncellvars;
    img->co_nfreevars = co->co_nfreevars;
    img->_co_firsttraceable = co->_co_firsttraceable;
    /* co_weakreflist, _co_code, _co_linearray, co_extra stay NULL */
    memcpy(img->co_code_adaptive, PyBytes_AS_STRING(code),
           PyBytes_GET_SIZE(code));
    Py_DECREF(code);
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
    img->state.ready = 1;
    img->wstr = NULL;
    char *data = dst + sizeof(PyASCIIObject);
    if (!PyUnicode_IS_ASCII(op)) {
        /* utf8/utf8_length/wstr_length stay 0: a UTF-8 copy is cached
         * lazily by whoever asks for one. */
        data = dst + sizeof(PyCompactUnicodeObject);
    }
    memcpy(data, PyUnicode_DATA(op), (n + 1) * kind);
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
        PyLongObject *img = (PyLongObject *)dst;
        Py_ssize_t nd = Py_ABS(Py_SIZE(op));
        Py_SET_SIZE(img, Py_SIZE(op));
        memcpy(img->ob_digit, ((PyLongObject *)op)->ob_digit,
               (nd ? nd : 1) * sizeof(digit));
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
    /* The interned dict keeps the string; an archived string that becomes
     * the interned one is never freed since its refcount cannot drop to
     * zero. */
    PyUnicode_InternInPlace(p);
    return 0;
}

int
pycds_layout_prelink(PyObject *op, PyObject *img, int interned, int hashes,
                     uint32_t code_version)
{
    (void)op, (void)img, (void)interned, (void)hashes, (void)code_version;
    PyErr_SetString(pycds_ArchiveError, "prelinked images need CPython "
                    "3.12 or later: 3.11 writes the reference count of "
                    "every object it uses, so no page would stay shared");
    return -1;
}

void
pycds_layout_keep(PyObject *op)
{
    /* The caller's reference is never released. */
    (void)op;
}

int
pycds_layout_ready_code(PyObject *code)
{
    /* 3.11 keeps no per-interpreter state in a code object that load time
     * must fill in. */
    (void)code;
    return 0;
}

/* ---- SHARE's checks (pycds_layout_check, pycds_layout_check_links) ---- */


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

const char *
pycds_layout_check_code(PyCodeObject *co, size_t avail, struct pycds_shape *shape)
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
    /* Caches the runtime fills in itself, and what they hang on. */
    if (co->co_weakreflist != NULL || co->_co_code != NULL
        || co->_co_linearray != NULL || co->_co_linearray_entry_size != 0
        || co->co_extra != NULL) {
        return "a code object's caches are not reset";
    }
    shape->fields = code_fields;
    shape->nfields = sizeof(code_fields) / sizeof(code_fields[0]);
    shape->links = 1;
    return NULL;
}

const char *
pycds_layout_check_links(PyObject *op)
{
    PyCodeObject *co = (PyCodeObject *)op;
    if (!PyTuple_CheckExact(co->co_consts) || !pycds_tuple_of_str(co->co_names)
        || !pycds_tuple_of_str(co->co_localsplusnames)
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
    int nlocals = 0, nplaincellvars = 0, ncellvars = 0, nfreevars = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (kinds[i] & FAST_LOCAL) {
            nlocals++;
            ncellvars += (kinds[i] & FAST_CELL) != 0;
        }
        else if (kinds[i] & FAST_CELL) {
            ncellvars++;
            nplaincellvars++;
        }
        else if (kinds[i] & FAST_FREE) {
            nfreevars++;
        }
    }
    if (nlocals != co->co_nlocals || nplaincellvars != co->co_nplaincellvars
        || ncellvars != co->co_ncellvars || nfreevars != co->co_nfreevars) {
        return "a code object's variable counts do not match its kinds";
    }
    long args = (long)co->co_argcount + co->co_kwonlyargcount
                + ((co->co_flags & CO_VARARGS) != 0)
                + ((co->co_flags & CO_VARKEYWORDS) != 0);
    if (args > nlocals) {
        return "a code object has more arguments than local variables";
    }
    return NULL;
}

const char *
pycds_layout_check_str(PyObject *op, size_t avail, struct pycds_shape *shape)
{
    if (avail < sizeof(PyASCIIObject)) {
        return "a str runs past the end of its entry";
    }
    PyASCIIObject *a = (PyASCIIObject *)op;
    unsigned kind = a->state.kind;
    int ascii = a->state.ascii;
    if (a->state.interned != SSTATE_NOT_INTERNED || !a->state.compact
        || !a->state.ready || a->hash != -1 || a->wstr != NULL
        || (kind != 1 && kind != 2 && kind != 4) || (ascii && kind != 1)) {
        return "a str has a malformed header";
    }
    size_t head = sizeof(PyASCIIObject);
    if (!ascii) {
        head = sizeof(PyCompactUnicodeObject);
        PyCompactUnicodeObject *c = (PyCompactUnicodeObject *)op;
        if (avail < head || c->utf8_length != 0 || c->utf8 != NULL
            || c->wstr_length != 0) {
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
    Py_UCS4 max = pycds_max_char(kind, data, n);
    if (PyUnicode_READ(kind, data, n) != 0
        || (ascii ? max > 0x7f
            : kind == 1 ? max < 0x80
            : kind == 2 ? max < 0x100
            : max < 0x10000 || max > 0x10ffff)) {
        return "a str's characters do not match its kind";
    }
    return NULL;
}

const char *
pycds_layout_check_long(PyLongObject *op, size_t avail, struct pycds_shape *shape)
{
    size_t base = offsetof(PyLongObject, ob_digit);
    if (avail < base + sizeof(digit)) {
        return "an int runs past the end of its entry";
    }
    Py_ssize_t size = Py_SIZE(op);
    size_t nd = size < 0 ? -(size_t)size : (size_t)size;
    if (nd > (avail - base) / sizeof(digit)) {
        return "an int runs past the end of its entry";
    }
    shape->size = base + (nd ? nd : 1) * sizeof(digit);
    for (size_t i = 0; i < nd; i++) {
        if (op->ob_digit[i] >= PyLong_BASE) {
            return "an int has a malformed digit";
        }
    }
    if (nd != 0 && op->ob_digit[nd - 1] == 0) {
        return "an int is not normalised";
    }
    return NULL;
}

#endif
