/* How CPython 3.13 lays out the objects an archive holds, and what must be
 * reset in them.  See ../shared/CPYTHON-NOTES.md and docs/VERSIONS.md. */
#include "layout.h"

#if PY_VERSION_HEX >= 0x030D0000 && PY_VERSION_HEX < 0x030E0000

#include "layout_3_12plus.h"

/* Immortal: the low 32 bits all ones.  INCREF/DECREF skip the object, so
 * its pages are never written by reference counting. */
const Py_ssize_t pycds_layout_image_refcnt = _Py_IMMORTAL_REFCNT;

/* PyGC_Head: two words; all zero means untracked. */
const size_t pycds_layout_gc_header_size = 2 * sizeof(uintptr_t);

/* Exported by libpython 3.13, declared in an internal header. */
PyAPI_FUNC(void) _PyUnicode_InternImmortal(PyInterpreterState *interp,
                                           PyObject **p);



static int
write_code(PyCodeObject *co, PyCodeObject *img)
{
    /* The bytecode as _PyCode_Quicken leaves it in a code object that has
     * never run: 3.13 quickens at creation, setting each adaptive counter
     * to its warm-up value (a zeroed one, as in co_code, would specialise
     * on first execution) and the branch history of conditional jumps.
     * code.replace() with no change builds that state from co_code
     * (de-optimised, so whatever ran in co does not matter) through the
     * constructor, which is what unmarshalling a .pyc runs too. */
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
    /* Drawn from the interpreter's counter at load: pycds_layout_ready_code. */
    img->co_version = 0;
    /* Instrumentation is per interpreter: 0 and no monitoring data is a
     * code object that was never instrumented, which RESUME brings up to
     * the interpreter's monitoring version on first execution. */
    img->_co_instrumentation_version = 0;
    img->_co_firsttraceable = co->_co_firsttraceable;
    /* co_weakreflist, co_executors, _co_cached, _co_monitoring, co_extra
     * stay NULL */
    memcpy(img->co_code_adaptive, fresh->co_code_adaptive,
           Py_SIZE(co) * PyCode_Type.tp_itemsize);
    Py_DECREF(fresh);
    return 0;
}

static void
write_long(PyObject *op, PyLongObject *img)
{
    /* lv_tag holds only the digit count and the sign on 3.13 (its
     * immortality bit is reserved, unused). */
    Py_ssize_t nd = long_ndigits(op);
    img->long_value.lv_tag = ((PyLongObject *)op)->long_value.lv_tag;
    memcpy(img->long_value.ob_digit, ((PyLongObject *)op)->long_value.ob_digit,
           (nd ? nd : 1) * sizeof(digit));
}

int
pycds_layout_intern(PyObject **p)
{
    /* What code object creation does on 3.13: intern for good, making an
     * equal mortal interned string immortal if there is one. */
    PyObject *s = *p;
    _PyUnicode_InternImmortal(PyInterpreterState_Get(), p);
    if (*p == s && PyUnicode_CHECK_INTERNED(s) == SSTATE_INTERNED_IMMORTAL) {
        /* The archived string became the interned one.  Mark it static,
         * the state 3.12 gives an immortal string it interns: finalisation
         * never makes a static interned string mortal.  3.13.0's release
         * build leaves SSTATE_INTERNED_IMMORTAL strings alone as well (an
         * archive without this marking exits cleanly under -X dev), but
         * CPython's later _PyUnicode_ClearInterned makes them mortal and
         * frees them with the interned dict, which for an archived string
         * would free mapped memory. */
        _PyASCIIObject_CAST(s)->state.interned =
            SSTATE_INTERNED_IMMORTAL_STATIC;
    }
    return 0;
}

int
pycds_layout_ready_code(PyObject *code)
{
    /* MAKE_FUNCTION makes co_version the function's version, which call
     * specialisations key on: with 0 calls to the function are never
     * specialised, and a version another live code object holds could
     * let a specialised call run the wrong code.  Draw the next version
     * from the interpreter's counter, as code creation does; creating a
     * code object is the one exported way to draw one. */
    PyCodeObject *probe = PyCode_NewEmpty("", "", 0);
    if (probe == NULL) {
        return -1;
    }
    ((PyCodeObject *)code)->co_version = probe->co_version;
    Py_DECREF(probe);
    return 0;
}

static void
prelink_code(PyCodeObject *img, uint32_t code_version)
{
    /* A prelinked image's code objects carry their versions in their
     * pages, which are not written at load: prelink.c draws them from a
     * range of the image's own, above any the interpreter's counter
     * reaches (it counts the code objects a process creates, from 1). */
    img->co_version = code_version;
}

/* ---- SHARE's checks (pycds_layout_check, pycds_layout_check_links) ---- */

/* _Py_CODEUNIT is internal on 3.13: two bytes, as tp_itemsize says */
#define CODEUNIT_SIZE 2

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
        || co->co_extra != NULL
        || co->co_executors != NULL) {
        return "a code object's caches are not reset";
    }
    shape->fields = code_fields;
    shape->nfields = sizeof(code_fields) / sizeof(code_fields[0]);
    shape->links = 1;
    return NULL;
}

#endif
