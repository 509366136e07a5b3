/* The object layout knowledge that is the same for every supported
 * CPython version: which fields of a code object and a tuple are pointers,
 * and the checks of the objects whose layout did not change (tuple,
 * bytes, float, complex).  What differs lives in layout_3XX.c. */
#include "layout.h"

#define VISIT(field)                                                       \
    do {                                                                   \
        if (visit(ctx, co->field, offsetof(PyCodeObject, field), #field,   \
                  -1) < 0) {                                               \
            return -1;                                                     \
        }                                                                  \
    } while (0)


int
pycds_layout_visit(PyObject *op, pycds_visit_fn visit, void *ctx)
{
    if (PyCode_Check(op)) {
        PyCodeObject *co = (PyCodeObject *)op;
        VISIT(co_consts);
        VISIT(co_names);
        VISIT(co_exceptiontable);
        VISIT(co_localsplusnames);
        VISIT(co_localspluskinds);
        VISIT(co_filename);
        VISIT(co_name);
        VISIT(co_qualname);
        VISIT(co_linetable);
        return 0;
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

#undef VISIT

const char *
pycds_layout_check(PyObject *op, PyTypeObject *tp, size_t avail,
                   struct pycds_shape *shape)
{
    shape->fields = NULL;
    shape->nfields = shape->items = shape->nitems = 0;
    shape->links = 0;
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
    if (tp == &PyFloat_Type) {
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
