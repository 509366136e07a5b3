/* What pycds needs of CPython that only its internal headers reach, for
 * the prelinked image (prelink_map.c, prelink_write.c).  This file alone is built as core
 * code. */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <string.h>

#if PY_VERSION_HEX >= 0x030D0000
#include "internal/pycore_pyhash.h"   /* _Py_HashSecret moved here */
#endif
#if PY_VERSION_HEX >= 0x030C0000
#include "internal/pycore_interp.h"
#endif

/* Declared in pycds.h, which cannot be included as core code. */
PyObject *pycds_interned_dict(void);
void pycds_hash_secret(unsigned char *out, size_t size);
Py_hash_t pycds_str_hash_unstored(PyObject *s);

PyObject *
pycds_interned_dict(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    /* Per interpreter on 3.12 and 3.13 (docs/VERSIONS.md).  The image's
     * strings are marked interned already, so that their pages are not
     * written, which makes PyUnicode_InternInPlace pass over them: they
     * are put in this dict directly. */
    return PyInterpreterState_Get()->cached_objects.interned_strings;
#else
    return NULL;      /* 3.11 keeps it in a static of unicodeobject.c */
#endif
}

void
pycds_hash_secret(unsigned char *out, size_t size)
{
    /* What str and bytes hashes depend on (PYTHONHASHSEED). */
    memset(out, 0, size);
    memcpy(out, &_Py_HashSecret,
           size < sizeof(_Py_HashSecret) ? size : sizeof(_Py_HashSecret));
}

Py_hash_t
pycds_str_hash_unstored(PyObject *s)
{
    /* What str's own hash computes (unicode_hash), left out of s. */
    Py_hash_t h = ((PyASCIIObject *)s)->hash;
    if (h != -1) {
        return h;
    }
    return _Py_HashBytes(PyUnicode_DATA(s),
                         PyUnicode_GET_LENGTH(s) * PyUnicode_KIND(s));
}
