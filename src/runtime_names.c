/* The names by which an archive refers to objects of the running
 * interpreter: the static types of archived objects and the singletons
 * whose identity CPython relies on.  DUMP names them here and SHARE
 * resolves the same names here; the list is documented in format.h. */
#include "pycds/pycds.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct named_object {
    const char *name;
    PyObject *object;
};

/* Exported data symbols of libpython, under their own names: first the
 * types of archived objects (only ever an ob_type, never a constant: marshal
 * cannot carry a type either), then the singletons. */
#define NTYPES 7
static const struct named_object exported[] = {
    {"PyCode_Type", (PyObject *)&PyCode_Type},
    {"PyUnicode_Type", (PyObject *)&PyUnicode_Type},
    {"PyBytes_Type", (PyObject *)&PyBytes_Type},
    {"PyLong_Type", (PyObject *)&PyLong_Type},
    {"PyFloat_Type", (PyObject *)&PyFloat_Type},
    {"PyComplex_Type", (PyObject *)&PyComplex_Type},
    {"PyTuple_Type", (PyObject *)&PyTuple_Type},
    {"_Py_NoneStruct", Py_None},
    {"_Py_TrueStruct", Py_True},
    {"_Py_FalseStruct", Py_False},
    {"_Py_EllipsisObject", Py_Ellipsis},
};
#define NEXPORTED (sizeof(exported) / sizeof(exported[0]))

#define SMALL_INT_MIN (-5)
#define SMALL_INT_MAX 256

/* The type of data archives' mappings: pycds' own, not libpython's
 * (prelinked images fix it up: PYCDS_FIXUP_FROZENDICT). */
#define FROZENDICT_SYMBOL "pycds.FrozenDict"

const char *
pycds_type_symbol(PyTypeObject *tp)
{
    if (tp == &pycds_FrozenDictType) {
        return FROZENDICT_SYMBOL;
    }
    for (size_t i = 0; i < NTYPES; i++) {
        if (exported[i].object == (PyObject *)tp) {
            return exported[i].name;
        }
    }
    return NULL;
}

const char *
pycds_runtime_name(PyObject *op, char *buf, size_t size)
{
    for (size_t i = NTYPES; i < NEXPORTED; i++) {
        if (exported[i].object == op) {
            return exported[i].name;
        }
    }
    PyTypeObject *tp = Py_TYPE(op);
    if (tp == &PyLong_Type) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(op, &overflow);
        if (!overflow && v >= SMALL_INT_MIN && v <= SMALL_INT_MAX) {
            snprintf(buf, size, "pycds.int.%ld", v);
            return buf;
        }
        PyErr_Clear();
        return NULL;
    }
    if (tp == &PyUnicode_Type && PyUnicode_IS_READY(op)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(op);
        if (n == 0) {
            return "pycds.str.empty";
        }
        if (n == 1 && PyUnicode_READ_CHAR(op, 0) < 256) {
            snprintf(buf, size, "pycds.%s.%u",
                     PyUnicode_CHECK_INTERNED(op) ? "ichar" : "char",
                     (unsigned)PyUnicode_READ_CHAR(op, 0));
            return buf;
        }
        return NULL;
    }
    if (tp == &PyBytes_Type) {
        if (PyBytes_GET_SIZE(op) == 0) {
            return "pycds.bytes.empty";
        }
        if (PyBytes_GET_SIZE(op) == 1) {
            snprintf(buf, size, "pycds.byte.%u",
                     (unsigned char)PyBytes_AS_STRING(op)[0]);
            return buf;
        }
        return NULL;
    }
    if (tp == &PyTuple_Type && PyTuple_GET_SIZE(op) == 0) {
        return "pycds.tuple.empty";
    }
    return NULL;
}

/* The decimal argument after prefix in name, within [lo, hi]; -1 when
 * name is not prefix followed by such a number. */
static int
name_argument(const char *name, const char *prefix, long lo, long hi,
              long *value)
{
    size_t n = strlen(prefix);
    if (strncmp(name, prefix, n) != 0 || name[n] == '\0') {
        return -1;
    }
    char *end;
    long v = strtol(name + n, &end, 10);
    if (*end != '\0' || v < lo || v > hi) {
        return -1;
    }
    *value = v;
    return 0;
}

/* Runtime singletons are immortal or kept alive by the runtime itself, so
 * the references made here are borrowed. */
static PyObject *
borrow(PyObject *op)
{
    if (op != NULL) {
        Py_DECREF(op);
    }
    return op;
}

PyObject *
pycds_runtime_resolve(const char *name)
{
    long v;
    for (size_t i = 0; i < NEXPORTED; i++) {
        if (strcmp(exported[i].name, name) == 0) {
            return exported[i].object;
        }
    }
    if (name_argument(name, "pycds.int.", SMALL_INT_MIN, SMALL_INT_MAX,
                      &v) == 0) {
        return borrow(PyLong_FromLong(v));
    }
    if (name_argument(name, "pycds.char.", 0, 255, &v) == 0) {
        return borrow(PyUnicode_FromOrdinal((int)v));
    }
    if (name_argument(name, "pycds.ichar.", 0, 255, &v) == 0) {
        PyObject *s = PyUnicode_FromOrdinal((int)v);
        if (s == NULL || pycds_layout_intern(&s) < 0) {
            Py_XDECREF(s);
            return NULL;
        }
        /* A mortal interned string (3.11) dies with its last reference:
         * this one is never released. */
        pycds_layout_keep(s);
        return s;
    }
    if (name_argument(name, "pycds.byte.", 0, 255, &v) == 0) {
        char c = (char)v;
        return borrow(PyBytes_FromStringAndSize(&c, 1));
    }
    if (strcmp(name, "pycds.str.empty") == 0) {
        return borrow(PyUnicode_New(0, 0));
    }
    if (strcmp(name, "pycds.bytes.empty") == 0) {
        return borrow(PyBytes_FromStringAndSize(NULL, 0));
    }
    if (strcmp(name, "pycds.tuple.empty") == 0) {
        return borrow(PyTuple_New(0));
    }
    if (strcmp(name, FROZENDICT_SYMBOL) == 0) {
        return (PyObject *)&pycds_FrozenDictType;
    }
    return NULL;
}
