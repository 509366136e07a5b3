/* How CPython 3.12 lays out the objects an archive holds, and what must be
 * reset in them.  See ../shared/CPYTHON-NOTES.md and docs/VERSIONS.md. */
#include "layout.h"

#if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030D0000

#include "layout_3_12plus.h"

/* Immortal: the low 32 bits all ones.  INCREF/DECREF skip the object, so
 * its pages are never written by reference counting. */
const Py_ssize_t pycds_layout_image_refcnt = _Py_IMMORTAL_REFCNT;

/* PyGC_Head: two words; all zero means untracked. */
const size_t pycds_layout_gc_header_size = 2 * sizeof(uintptr_t);



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
write_long(PyObject *op, PyLongObject *img)
{
    /* lv_tag holds only the digit count and the sign on 3.12. */
    Py_ssize_t nd = long_ndigits(op);
    img->long_value.lv_tag = ((PyLongObject *)op)->long_value.lv_tag;
    memcpy(img->long_value.ob_digit, ((PyLongObject *)op)->long_value.ob_digit,
           (nd ? nd : 1) * sizeof(digit));
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

int
pycds_layout_ready_code(PyObject *code)
{
    /* Nothing to do: see co_version in write_code. */
    (void)code;
    return 0;
}

static void
prelink_code(PyCodeObject *img, uint32_t code_version)
{
    (void)img, (void)code_version;     /* as pycds_layout_ready_code */
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

#endif
