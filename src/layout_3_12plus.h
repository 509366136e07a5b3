/* The object layouts of CPython 3.12 and 3.13 where they agree: ints with
 * lv_tag, strings without wstr, immortal images, the frame's specials.
 *
 * Included by layout_312.c and layout_313.c (only one of which is compiled
 * non-empty for a given interpreter), which define what differs:
 * interning, the code objects' load-time state and the caches only 3.13
 * has. */
#ifndef PYCDS_LAYOUT_3_12PLUS_H
#define PYCDS_LAYOUT_3_12PLUS_H

/* pycore_long.h: lv_tag = ndigits << _PyLong_NON_SIZE_BITS | sign. */
#define LONG_NON_SIZE_BITS 3
/* pycore_long.h: the sign in lv_tag's low bits */
#define LONG_SIGN_MASK 3
#define LONG_SIGN_ZERO 1
#define LONG_SIGN_NEGATIVE 2

/* Defined by the including file, where 3.12 and 3.13 differ: whether
 * the caches only one of them has are reset in a code object. */
static int more_caches_reset(PyCodeObject *co);

/* _Py_CODEUNIT is internal on 3.13: two bytes, as tp_itemsize says. */
#define CODEUNIT_SIZE 2

static Py_ssize_t
long_ndigits(PyObject *op)
{
    return (Py_ssize_t)(((PyLongObject *)op)->long_value.lv_tag
                        >> LONG_NON_SIZE_BITS);
}

static int
write_code(PyCodeObject *co, PyCodeObject *img)
{
    /* The bytecode as _PyCode_Quicken leaves it in a code object that has
     * never run: both versions quicken at creation, setting each adaptive
     * counter to its warm-up value (a zeroed one, as in co_code, would
     * specialise on first execution); 3.12 also forms superinstructions
     * (LOAD_FAST__LOAD_FAST ...), 3.13 the branch history of conditional
     * jumps.  co_code is not that.  code.replace() with no change builds
     * that state from co_code (de-optimised, so whatever ran in co does
     * not matter) through the constructor, which is what unmarshalling a
     * .pyc runs too. */
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
    /* 0: 3.12 does not derive function versions from it; 3.13 draws one
     * at load (pycds_layout_ready_code) or at prelink (prelink_code). */
    img->co_version = 0;
    /* Instrumentation is per interpreter: 0 and no monitoring data is a
     * code object that was never instrumented, which RESUME brings up to
     * the interpreter's monitoring version on first execution. */
    img->_co_instrumentation_version = 0;
    img->_co_firsttraceable = co->_co_firsttraceable;
    /* co_weakreflist, _co_cached, _co_monitoring, co_extra (and 3.13's
     * co_executors) stay NULL */
    memcpy(img->co_code_adaptive, fresh->co_code_adaptive,
           Py_SIZE(co) * PyCode_Type.tp_itemsize);
    Py_DECREF(fresh);
    return 0;
}

static void
write_long(PyObject *op, PyLongObject *img)
{
    /* lv_tag holds only the digit count and the sign (3.13 reserves a
     * bit for immortality, unused). */
    Py_ssize_t nd = long_ndigits(op);
    img->long_value.lv_tag = ((PyLongObject *)op)->long_value.lv_tag;
    memcpy(img->long_value.ob_digit, ((PyLongObject *)op)->long_value.ob_digit,
           (nd ? nd : 1) * sizeof(digit));
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

void
pycds_layout_keep(PyObject *op)
{
    /* Immortal, like the archived objects that point to it.  A GC object
     * (a frozenset) moves to the permanent generation at the next
     * collection. */
    Py_SET_REFCNT(op, _Py_IMMORTAL_REFCNT);
}

/* Defined by the including file: the code object's load-time state. */
static void prelink_code(PyCodeObject *img, uint32_t code_version);

int
pycds_layout_prelink(PyObject *op, PyObject *img, int interned, int hashes,
                     uint32_t code_version)
{
    if (PyCode_Check(op)) {
        prelink_code((PyCodeObject *)img, code_version);
    }
    else if (PyUnicode_CheckExact(op)) {
        if (interned) {
            /* What interning an immortal string makes of it (see
             * pycds_layout_intern): at load the image's string only has
             * to be put in the interned dict, its page is not written. */
            _PyASCIIObject_CAST(img)->state.interned =
                SSTATE_INTERNED_IMMORTAL_STATIC;
        }
        if (hashes) {
            Py_hash_t h = PyObject_Hash(op);
            if (h == -1) {
                return -1;
            }
            _PyASCIIObject_CAST(img)->hash = h;
        }
    }
    else if (PyBytes_CheckExact(op) && hashes) {
        Py_hash_t h = PyObject_Hash(op);
        if (h == -1) {
            return -1;
        }
        /* Deprecated for users, still the cache bytes_hash fills. */
        _Py_COMP_DIAG_PUSH
        _Py_COMP_DIAG_IGNORE_DEPR_DECLS
        ((PyBytesObject *)img)->ob_shash = h;
        _Py_COMP_DIAG_POP
    }
    return 0;
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
    if (n <= 0 || (size_t)n > (avail - base) / CODEUNIT_SIZE
        || n > INT_MAX / (Py_ssize_t)CODEUNIT_SIZE) {
        return "a code object's bytecode size does not fit its entry";
    }
    shape->size = ROUND8(base + n * CODEUNIT_SIZE);
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
        || co->co_extra != NULL || !more_caches_reset(co)) {
        return "a code object's caches are not reset";
    }
    shape->fields = code_fields;
    shape->nfields = sizeof(code_fields) / sizeof(code_fields[0]);
    shape->links = 1;
    return NULL;
}

#endif /* PYCDS_LAYOUT_3_12PLUS_H */
