/* The object layout knowledge that is the same for every supported
 * CPython version: which fields of a code object and a tuple are pointers,
 * and the checks of the objects whose layout did not change (tuple,
 * bytes, float, complex).  What differs lives in layout_3XX.c. */
#include "layout.h"

/* The pointer fields of a code object, in increasing order: the same in
 * every supported version. */
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
static const char *const code_field_names[] = {
    "co_consts", "co_names", "co_exceptiontable", "co_localsplusnames",
    "co_localspluskinds", "co_filename", "co_name", "co_qualname",
    "co_linetable",
};
#define NCODE_FIELDS (sizeof(code_fields) / sizeof(code_fields[0]))

/* pycds.FrozenDict's (frozendict.c): pycds' own type, the same layout in
 * every version. */
static const uint16_t frozendict_fields[] = {
    offsetof(pycds_FrozenDictObject, keys),
    offsetof(pycds_FrozenDictObject, values),
    offsetof(pycds_FrozenDictObject, table),
};
static const char *const frozendict_field_names[] = {
    "keys", "values", "table",
};
#define NFROZENDICT_FIELDS 3

static int
visit_fields(PyObject *op, const uint16_t *fields, const char *const *names,
             size_t n, pycds_visit_fn visit, void *ctx)
{
    for (size_t k = 0; k < n; k++) {
        PyObject *target = *(PyObject **)((char *)op + fields[k]);
        if (visit(ctx, target, fields[k], names[k], -1) < 0) {
            return -1;
        }
    }
    return 0;
}

int
pycds_layout_visit(PyObject *op, pycds_visit_fn visit, void *ctx)
{
    if (PyCode_Check(op)) {
        return visit_fields(op, code_fields, code_field_names, NCODE_FIELDS,
                            visit, ctx);
    }
    if (Py_IS_TYPE(op, &pycds_FrozenDictType)) {
        return visit_fields(op, frozendict_fields, frozendict_field_names,
                            NFROZENDICT_FIELDS, visit, ctx);
    }
    if (PyTuple_CheckExact(op)) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(op); i++) {
            size_t slot = offsetof(PyTupleObject, ob_item)
                          + i * sizeof(PyObject *);
            if (visit(ctx, PyTuple_GET_ITEM(op, i), slot, NULL, i) < 0) {
                return -1;
            }
        }
    }
    return 0;
}

Py_ssize_t
pycds_layout_size(PyObject *op)
{
    return pycds_layout_size_as(op, Py_TYPE(op));
}

Py_ssize_t
pycds_layout_size_as(PyObject *op, PyTypeObject *tp)
{
    if (tp == &PyCode_Type) {
        return ROUND8(PyCode_Type.tp_basicsize
                      + Py_SIZE(op) * PyCode_Type.tp_itemsize);
    }
    if (tp == &PyUnicode_Type) {
        return pycds_layout_str_size(op);
    }
    if (tp == &PyBytes_Type) {
        return offsetof(PyBytesObject, ob_sval) + Py_SIZE(op) + 1;
    }
    if (tp == &PyLong_Type) {
        return pycds_layout_long_size(op);
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
    if (tp == &pycds_FrozenDictType) {
        return sizeof(pycds_FrozenDictObject);
    }
    return -1;
}

int
pycds_layout_write(PyObject *op, char *dst)
{
    PyTypeObject *tp = Py_TYPE(op);
    if (tp == &PyCode_Type) {
        return pycds_layout_write_code((PyCodeObject *)op,
                                       (PyCodeObject *)dst);
    }
    if (tp == &PyUnicode_Type) {
        pycds_layout_write_str(op, dst);
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
        pycds_layout_write_long(op, (PyLongObject *)dst);
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
    if (tp == &pycds_FrozenDictType) {
        return 0;               /* nothing but pointers */
    }
    PyErr_Format(PyExc_SystemError, "no layout for %s", tp->tp_name);
    return -1;
}

const char *
pycds_layout_check_code_shape(PyCodeObject *co, size_t avail,
                              struct pycds_shape *shape)
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
    shape->fields = code_fields;
    shape->nfields = NCODE_FIELDS;
    return NULL;
}

const char *
pycds_layout_check_str_chars(PyObject *op, size_t avail, size_t head,
                             struct pycds_shape *shape)
{
    PyASCIIObject *a = (PyASCIIObject *)op;
    unsigned kind = a->state.kind;
    int ascii = a->state.ascii;
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
pycds_layout_check_localsplus(PyCodeObject *co, int nplaincellvars)
{
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
    int nlocals = 0, nplaincells = 0, ncellvars = 0, nfreevars = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (kinds[i] & FAST_LOCAL) {
            nlocals++;
            ncellvars += (kinds[i] & FAST_CELL) != 0;
        }
        else if (kinds[i] & FAST_CELL) {
            ncellvars++;
            nplaincells++;
        }
        else if (kinds[i] & FAST_FREE) {
            nfreevars++;
        }
    }
    if (nlocals != co->co_nlocals
        || (nplaincellvars >= 0 && nplaincells != nplaincellvars)
        || ncellvars != co->co_ncellvars || nfreevars != co->co_nfreevars) {
        return "a code object's variable counts do not match its kinds";
    }
    long args = (long)co->co_argcount + co->co_kwonlyargcount
                + ((co->co_flags & CO_VARARGS) != 0)
                + ((co->co_flags & CO_VARKEYWORDS) != 0);
    if (args > nlocals) {
        return "a code object has more arguments than local variables";
    }
    return NULL;
}

const char *
pycds_layout_check(PyObject *op, PyTypeObject *tp, size_t avail,
                   struct pycds_shape *shape)
{
    shape->fields = NULL;
    shape->nfields = shape->items = shape->nitems = 0;
    if (tp == &PyUnicode_Type) {
        return pycds_layout_check_str(op, avail, shape);
    }
    if (tp == &PyTuple_Type) {
        size_t base = offsetof(PyTupleObject, ob_item);
        if (avail < base || Py_SIZE(op) < 0
            || (size_t)Py_SIZE(op) > (avail - base) / sizeof(PyObject *)) {
            return "a tuple runs past the end of its entry";
        }
        shape->size = base + Py_SIZE(op) * sizeof(PyObject *);
        shape->items = base;
        shape->nitems = Py_SIZE(op);
        return NULL;
    }
    if (tp == &PyCode_Type) {
        return pycds_layout_check_code((PyCodeObject *)op, avail, shape);
    }
    if (tp == &PyBytes_Type) {
        size_t base = offsetof(PyBytesObject, ob_sval);
        PyBytesObject *b = (PyBytesObject *)op;
        if (avail <= base || Py_SIZE(op) < 0
            || (size_t)Py_SIZE(op) >= avail - base) {
            return "a bytes object runs past the end of its entry";
        }
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
        if (b->ob_shash != -1 || b->ob_sval[Py_SIZE(op)] != 0) {
#pragma GCC diagnostic pop
            return "a bytes object has a malformed header";
        }
        shape->size = base + Py_SIZE(op) + 1;
        return NULL;
    }
    if (tp == &PyLong_Type) {
        return pycds_layout_check_long((PyLongObject *)op, avail, shape);
    }
    if (tp == &pycds_FrozenDictType) {
        shape->size = sizeof(pycds_FrozenDictObject);
        shape->fields = frozendict_fields;
        shape->nfields = NFROZENDICT_FIELDS;
    }
    else if (tp == &PyFloat_Type) {
        shape->size = sizeof(PyFloatObject);
    }
    else if (tp == &PyComplex_Type) {
        shape->size = sizeof(PyComplexObject);
    }
    else {
        return "an object's type has no layout";
    }
    return shape->size > avail ? "an object runs past the end of its entry"
                               : NULL;
}
