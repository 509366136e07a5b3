/* The object layouts of CPython 3.12 and 3.13 where they agree: ints with
 * lv_tag, strings without wstr, immortal images, the frame's specials.
 *
 * layout_312.c and layout_313.c (one of which is compiled non-empty for a
 * given interpreter) define what differs: interning, the code objects'
 * load-time state and the caches only 3.13 has, among them the hooks this
 * file calls (layout.h). */
#include "layout.h"

#if PY_VERSION_HEX >= 0x030C0000

/* pycore_long.h: lv_tag = ndigits << _PyLong_NON_SIZE_BITS | sign. */
#define LONG_NON_SIZE_BITS 3
/* pycore_long.h: the sign in lv_tag's low bits */
#define LONG_SIGN_MASK 3
#define LONG_SIGN_ZERO 1
#define LONG_SIGN_NEGATIVE 2

static Py_ssize_t
long_ndigits(PyObject *op)
{
    return (Py_ssize_t)(((PyLongObject *)op)->long_value.lv_tag
                        >> LONG_NON_SIZE_BITS);
}

int
pycds_layout_write_code(PyCodeObject *co, PyCodeObject *img)
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
     * at load (pycds_layout_ready_code) or at prelink
     * (pycds_layout_prelink_code). */
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

Py_ssize_t
pycds_layout_long_size(PyObject *op)
{
    /* Zero has no digit in use but one allocated, as _PyLong_New
     * allocates it. */
    Py_ssize_t nd = long_ndigits(op);
    return offsetof(PyLongObject, long_value.ob_digit)
           + (nd ? nd : 1) * sizeof(digit);
}

void
pycds_layout_write_long(PyObject *op, PyLongObject *img)
{
    /* lv_tag holds only the digit count and the sign (3.13 reserves a
     * bit for immortality, unused). */
    Py_ssize_t nd = long_ndigits(op);
    img->long_value.lv_tag = ((PyLongObject *)op)->long_value.lv_tag;
    memcpy(img->long_value.ob_digit, ((PyLongObject *)op)->long_value.ob_digit,
           (nd ? nd : 1) * sizeof(digit));
}

Py_ssize_t
pycds_layout_str_size(PyObject *op)
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

void
pycds_layout_keep(PyObject *op)
{
    /* Immortal, like the archived objects that point to it.  A GC object
     * (a frozenset) moves to the permanent generation at the next
     * collection. */
    Py_SET_REFCNT(op, _Py_IMMORTAL_REFCNT);
}

PyObject *
pycds_layout_intern_image(PyObject *interned, PyObject *s,
                          int page_written)
{
    /* The image's strings are marked interned already (below), so that
     * their pages are not written, which makes PyUnicode_InternInPlace
     * pass over them: they are put in the interned dict directly.  The
     * dict holds s now if it held no equal string: s is immortal, the
     * references it takes write nothing.
     *
     * Where s's page is not written otherwise (a non-PIE interpreter),
     * looked up first by a hash not stored in s: a string the process
     * interned before is only looked up, and its page (the writer puts
     * such strings together) is not written.  Where it is, one lookup
     * (PyDict_SetDefault's) instead of two: callgrind, pyenv 3.12.1,
     * the stdlib mix of bench-pages, -1.1 M instructions. */
    Py_hash_t h = pycds_str_hash_unstored(s);
    PyObject *t = NULL;
    if (!page_written) {
        t = _PyDict_GetItem_KnownHash(interned, s, h);
    }
    if (t == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        /* s becomes the interned string, whose hash every dict it is a
         * key of reads: stored now, it is not computed again below (an
         * image made with hashes holds it already, on a page not to be
         * written). */
        if (((PyASCIIObject *)s)->hash == -1) {
            ((PyASCIIObject *)s)->hash = h;
        }
        t = PyDict_SetDefault(interned, s, s);
        if (t == NULL || t == s) {
            return t;
        }
    }
    /* An equal string interned before: slots of the image will point to
     * it for good, as an archive's do.  3.13 interns mortal strings too
     * (sys.intern, the names of a C module): make it immortal the way an
     * archive's names are interned, with a reference that is never
     * released. */
    Py_INCREF(t);
    return pycds_layout_intern(&t) < 0 ? NULL : t;
}

/* Defined by the including file: the code object's load-time state.
 * img's ob_type is an offset from libpython's load address
 * (prelink_write.c): no macro that checks its type may see it. */

int
pycds_layout_prelink(PyObject *op, PyObject *img, int interned, int hashes,
                     uint32_t code_version)
{
    if (PyCode_Check(op)) {
        pycds_layout_prelink_code((PyCodeObject *)img, code_version);
    }
    else if (PyUnicode_CheckExact(op)) {
        if (interned) {
            /* What interning an immortal string makes of it (see
             * pycds_layout_intern): at load the image's string only has
             * to be put in the interned dict, its page is not written. */
            ((PyASCIIObject *)img)->state.interned =
                SSTATE_INTERNED_IMMORTAL_STATIC;
        }
        if (hashes) {
            Py_hash_t h = PyObject_Hash(op);
            if (h == -1) {
                return -1;
            }
            ((PyASCIIObject *)img)->hash = h;
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
    const char *why = pycds_layout_check_localsplus(co, -1);
    if (why != NULL) {
        return why;
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
    return pycds_layout_check_str_chars(op, avail, head, shape);
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

const char *
pycds_layout_check_code(PyCodeObject *co, size_t avail, struct pycds_shape *shape)
{
    const char *why = pycds_layout_check_code_shape(co, avail, shape);
    if (why != NULL) {
        return why;
    }
    /* Caches the runtime fills in itself, and what they hang on; an
     * instrumentation version other than 0 would claim monitoring data
     * the code object does not have. */
    if (co->co_weakreflist != NULL || co->_co_cached != NULL
        || co->_co_monitoring != NULL || co->_co_instrumentation_version != 0
        || co->co_extra != NULL || !pycds_layout_more_caches_reset(co)) {
        return "a code object's caches are not reset";
    }
    return NULL;
}

#endif
