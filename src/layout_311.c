/* How CPython 3.11 lays out the objects an archive holds, and what must be
 * reset in them.  See docs/CPYTHON.md and docs/VERSIONS.md. */
#include "layout.h"

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000

/* pycore_code.h: QUICKENING_INITIAL_WARMUP_VALUE */
#define WARMUP_INITIAL (-8)

/* 3.11 has no immortality: a refcount that no run can bring to zero. */
const Py_ssize_t pycds_layout_image_refcnt = (Py_ssize_t)1 << 60;

/* PyGC_Head: two words; all zero means untracked. */
const size_t pycds_layout_gc_header_size = 2 * sizeof(uintptr_t);

Py_ssize_t
pycds_layout_str_size(PyObject *op)
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

int
pycds_layout_write_code(PyCodeObject *co, PyCodeObject *img)
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

void
pycds_layout_write_str(PyObject *op, char *dst)
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

Py_ssize_t
pycds_layout_long_size(PyObject *op)
{
    Py_ssize_t nd = Py_ABS(Py_SIZE(op));
    return offsetof(PyLongObject, ob_digit) + (nd ? nd : 1) * sizeof(digit);
}

void
pycds_layout_write_long(PyObject *op, PyLongObject *img)
{
    Py_ssize_t nd = Py_ABS(Py_SIZE(op));
    Py_SET_SIZE(img, Py_SIZE(op));
    memcpy(img->ob_digit, ((PyLongObject *)op)->ob_digit,
           (nd ? nd : 1) * sizeof(digit));
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
    /* 3.11 writes the reference count of every object it uses, so an
     * image's pages are written anyway: its strings are left as the
     * archive has them, not interned (SHARE interns them as it maps
     * them), and code objects carry no version. */
    (void)interned, (void)code_version;
    if (hashes && (PyUnicode_CheckExact(op) || PyBytes_CheckExact(op))) {
        Py_hash_t h = PyObject_Hash(op);
        if (h == -1) {
            return -1;
        }
        if (PyUnicode_CheckExact(op)) {
            ((PyASCIIObject *)img)->hash = h;
        }
        else {
            /* Deprecated for users, still the cache bytes_hash fills. */
            _Py_COMP_DIAG_PUSH
            _Py_COMP_DIAG_IGNORE_DEPR_DECLS
            ((PyBytesObject *)img)->ob_shash = h;
            _Py_COMP_DIAG_POP
        }
    }
    return 0;
}

PyObject *
pycds_layout_intern_image(PyObject *interned, PyObject *s,
                          int page_written)
{
    /* The interned dict is out of reach on 3.11: intern as anyone does.
     * When s becomes the interned one its refcount drops by the two
     * references the dict does not count, from a count no run brings to
     * zero. */
    (void)interned, (void)page_written;
    Py_INCREF(s);
    PyUnicode_InternInPlace(&s);
    return s;
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


const char *
pycds_layout_check_code(PyCodeObject *co, size_t avail, struct pycds_shape *shape)
{
    const char *why = pycds_layout_check_code_shape(co, avail, shape);
    if (why != NULL) {
        return why;
    }
    /* Caches the runtime fills in itself, and what they hang on. */
    if (co->co_weakreflist != NULL || co->_co_code != NULL
        || co->_co_linearray != NULL || co->_co_linearray_entry_size != 0
        || co->co_extra != NULL) {
        return "a code object's caches are not reset";
    }
    return NULL;
}

const char *
pycds_layout_check_links(PyObject *op)
{
    PyCodeObject *co = (PyCodeObject *)op;
    return pycds_layout_check_localsplus(co, co->co_nplaincellvars);
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
    return pycds_layout_check_str_chars(op, avail, head, shape);
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
