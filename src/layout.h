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
/* Bytes of a code unit (_Py_CODEUNIT, internal on 3.13). */
#define CODEUNIT_SIZE 2

/* Each version's sizes and writers of the objects whose layout changed
 * (pycds_layout_size and pycds_layout_write, in layout.c, dispatch to
 * them): a str (-1: not compact), an int, a code object. */
Py_ssize_t pycds_layout_str_size(PyObject *op);
Py_ssize_t pycds_layout_long_size(PyObject *op);
void pycds_layout_write_str(PyObject *op, char *dst);
void pycds_layout_write_long(PyObject *op, PyLongObject *img);
int pycds_layout_write_code(PyCodeObject *co, PyCodeObject *img);

/* What every version checks of a code object (layout.c): its size from
 * its bytecode (8-aligned, in shape with its pointer fields) and counts
 * no compiled code exceeds; after relocation, the types of its fields and
 * the counts derived from its names and kinds, co_nplaincellvars among
 * them unless nplaincellvars is -1 (3.12+ keeps none). */
const char *pycds_layout_check_code_shape(PyCodeObject *co, size_t avail,
                                          struct pycds_shape *shape);
const char *pycds_layout_check_localsplus(PyCodeObject *co,
                                          int nplaincellvars);
/* And of a str whose header the version checked (kind 1, 2 or 4, ascii
 * only with kind 1): its length inside avail after its head bytes of
 * header, its characters terminated and of the narrowest kind. */
const char *pycds_layout_check_str_chars(PyObject *op, size_t avail,
                                         size_t head,
                                         struct pycds_shape *shape);

/* Each version's checks of its own object headers (pycds_layout_check
 * dispatches to them): NULL if op, whose type is already checked, fits in
 * avail bytes and is well formed, with its pointer fields in shape. */
const char *pycds_layout_check_str(PyObject *op, size_t avail,
                                   struct pycds_shape *shape);
const char *pycds_layout_check_code(PyCodeObject *co, size_t avail,
                                    struct pycds_shape *shape);
const char *pycds_layout_check_long(PyLongObject *op, size_t avail,
                                    struct pycds_shape *shape);

/* What layout_312plus.c, shared by 3.12 and 3.13, asks of each of them
 * (layout_312.c, layout_313.c): whether the caches only that version has
 * are reset in a code object; the code object's load-time state in a
 * prelinked image (its version, drawn by the writer). */
int pycds_layout_more_caches_reset(PyCodeObject *co);
void pycds_layout_prelink_code(PyCodeObject *img, uint32_t code_version);

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
