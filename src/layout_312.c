/* How CPython 3.12 lays out the objects an archive holds, and what must be
 * reset in them.  See docs/CPYTHON.md and docs/VERSIONS.md. */
#include "layout.h"

#if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030D0000

/* Immortal: the low 32 bits all ones.  INCREF/DECREF skip the object, so
 * its pages are never written by reference counting. */
const Py_ssize_t pycds_layout_image_refcnt = _Py_IMMORTAL_REFCNT;

/* PyGC_Head: two words; all zero means untracked. */
const size_t pycds_layout_gc_header_size = 2 * sizeof(uintptr_t);

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
    /* Nothing to do: see co_version in pycds_layout_write_code. */
    (void)code;
    return 0;
}

void
pycds_layout_prelink_code(PyCodeObject *img, uint32_t code_version)
{
    (void)img, (void)code_version;     /* as pycds_layout_ready_code */
}

/* ---- SHARE's checks (pycds_layout_check, pycds_layout_check_links) ---- */

int
pycds_layout_more_caches_reset(PyCodeObject *co)
{
    (void)co;           /* 3.12 has no other cache in a code object */
    return 1;
}

#endif
