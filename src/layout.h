/* What the per-version layout files (layout_311.c, layout_312.c,
 * layout_313.c) share with layout.c and with each other. */
#ifndef PYCDS_LAYOUT_H
#define PYCDS_LAYOUT_H

#include "pycds/pycds.h"

#define ROUND8(n) (((n) + 7) & ~(size_t)7)

/* pycore_code.h: the kinds of co_localspluskinds */
#define FAST_LOCAL 0x20
#define FAST_CELL 0x40
#define FAST_FREE 0x80
/* Bounds no compiled code comes near; they keep frame sizes (computed in
 * int, then in bytes) far from overflow. */
#define MAX_STACKSIZE (1 << 26)
#define MAX_NLOCALSPLUS (1 << 24)

/* Each version's checks of its own object headers (pycds_layout_check
 * dispatches to them): NULL if op, whose type is already checked, fits in
 * avail bytes and is well formed, with its pointer fields in shape. */
const char *pycds_layout_check_str(PyObject *op, size_t avail,
                                   struct pycds_shape *shape);
const char *pycds_layout_check_code(PyCodeObject *co, size_t avail,
                                    struct pycds_shape *shape);
const char *pycds_layout_check_long(PyLongObject *op, size_t avail,
                                    struct pycds_shape *shape);

/* The largest character of n of the given kind at data; for kind 1 only
 * whether it is above 0x7f is exact (0x80 stands for any such), which is
 * all check_str asks. */
static inline Py_UCS4
pycds_max_char(unsigned kind, const void *data, Py_ssize_t n)
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

static inline int
pycds_tuple_of_str(PyObject *t)
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

#endif /* PYCDS_LAYOUT_H */
