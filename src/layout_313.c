/* How CPython 3.13 lays out the objects an archive holds, and what must be
 * reset in them.  See docs/CPYTHON.md and docs/VERSIONS.md. */
#include "layout.h"

#if PY_VERSION_HEX >= 0x030D0000 && PY_VERSION_HEX < 0x030E0000

/* Immortal: the low 32 bits all ones.  INCREF/DECREF skip the object, so
 * its pages are never written by reference counting. */
const Py_ssize_t pycds_layout_image_refcnt = _Py_IMMORTAL_REFCNT;

/* PyGC_Head: two words; all zero means untracked. */
const size_t pycds_layout_gc_header_size = 2 * sizeof(uintptr_t);

/* Exported by libpython 3.13, declared in an internal header. */
PyAPI_FUNC(void) _PyUnicode_InternImmortal(PyInterpreterState *interp,
                                           PyObject **p);

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

void
pycds_layout_prelink_code(PyCodeObject *img, uint32_t code_version)
{
    /* A prelinked image's code objects carry their versions in their
     * pages, which are not written at load: prelink_write.c draws them from a
     * range of the image's own, above any the interpreter's counter
     * reaches (it counts the code objects a process creates, from 1). */
    img->co_version = code_version;
}

/* ---- SHARE's checks (pycds_layout_check, pycds_layout_check_links) ---- */

int
pycds_layout_more_caches_reset(PyCodeObject *co)
{
    return co->co_executors == NULL;    /* the tier-2 optimiser's */
}

#endif
