/* The archived code of the modules SHARE serves, by loader.
 *
 * A served module's loader is importlib's own SourceFileLoader (or
 * SourcelessFileLoader) with the __dict__ normal import gives it, name and
 * path, so that it compares equal to the loader of a normal import
 * (FileLoader.__eq__ compares type and __dict__, and ModuleSpec.__eq__
 * compares loaders).  Its code is therefore kept here, keyed by the
 * loader's identity, and the get_code pycds puts on those two classes
 * hands it out.  A weak reference to the loader removes the entry when
 * the loader goes: an address is reused only after that.
 *
 * The code is kept from the finder's lookup to the first get_code only,
 * then the archive is asked again: code served in place is a copy of the
 * module's run-once objects (prelink_once.c), which the interpreter must
 * free once the body ran, as normal import frees the code it read. */
#include "pycds/pycds.h"

/* id(loader) -> [weak reference to loader, code or None (handed out),
 * archive, entry index].  Process-wide, like the module's types: only the
 * main interpreter serves (pycds._boot). */
static PyObject *served;

static PyObject *
forget(PyObject *key, PyObject *ref)
{
    PyObject *entry = PyDict_GetItemWithError(served, key);
    if (entry == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (PyList_GET_ITEM(entry, 0) == ref
        && PyDict_DelItem(served, key) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef forget_def = {
    "forget", forget, METH_O,
    "drop the archived code of a loader that is gone",
};

int
pycds_served_add(PyObject *loader, PyObject *code, PyObject *archive,
                 Py_ssize_t i)
{
    PyObject *key = NULL, *callback = NULL, *ref = NULL, *entry = NULL;
    int rc = -1;
    if (served == NULL && (served = PyDict_New()) == NULL) {
        return -1;
    }
    key = PyLong_FromVoidPtr(loader);
    callback = key ? PyCFunction_New(&forget_def, key) : NULL;
    ref = callback ? PyWeakref_NewRef(loader, callback) : NULL;
    entry = ref ? Py_BuildValue("[OOOn]", ref, code, archive, i) : NULL;
    if (entry != NULL) {
        rc = PyDict_SetItem(served, key, entry);
    }
    Py_XDECREF(key);
    Py_XDECREF(callback);
    Py_XDECREF(ref);
    Py_XDECREF(entry);
    return rc;
}

PyObject *
pycds_served_code(PyObject *loader)
{
    if (served == NULL) {
        return Py_NewRef(Py_None);
    }
    PyObject *key = PyLong_FromVoidPtr(loader);
    if (key == NULL) {
        return NULL;
    }
    PyObject *entry = PyDict_GetItemWithError(served, key);
    Py_DECREF(key);
    if (entry == NULL) {
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    PyObject *code = PyList_GET_ITEM(entry, 1);
    if (code != Py_None) {
        /* The list's reference, handed over. */
        PyList_SET_ITEM(entry, 1, Py_NewRef(Py_None));
        return code;
    }
    struct pycds_archive *ar = pycds_archive_of(PyList_GET_ITEM(entry, 2));
    Py_ssize_t i = PyLong_AsSsize_t(PyList_GET_ITEM(entry, 3));
    code = ar && i >= 0 ? pycds_archive_entry_code(ar, i) : NULL;
    if (code == NULL) {
        /* A copy it cannot make: importlib's get_code reads the file. */
        PyObject *why = pycds_take_refusal();
        Py_XDECREF(why);
        return why ? Py_NewRef(Py_None) : NULL;
    }
    return code;
}

/* loader class -> the get_code it had before serve_code */
static PyObject *fallbacks;
static PyObject *name_attr;     /* "name" */

/* get_code(fullname) of SourceFileLoader and SourcelessFileLoader: the
 * archived code for a loader pycds made, else the class's own get_code.
 * A C method, so that it adds no frame to the tracebacks importlib
 * trims (an import's SyntaxError shows only the importer's frames). */
static PyObject *
served_get_code(PyObject *loader, PyTypeObject *defining_class,
                PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *code = NULL, *fallback, *stack[2];
    if (nargs == 1 && kwnames == NULL) {
        code = pycds_served_code(loader);
        if (code == NULL) {
            return NULL;
        }
        int same = 1;
        if (code != Py_None && args[0] != Py_None) {
            /* importlib's get_code refuses another module's name */
            PyObject *name = PyObject_GetAttr(loader, name_attr);
            same = name ? PyObject_RichCompareBool(name, args[0], Py_EQ) : -1;
            Py_XDECREF(name);
        }
        if (same < 0) {
            Py_DECREF(code);
            return NULL;
        }
        if (code != Py_None && same) {
            return code;
        }
        Py_CLEAR(code);
    }
    fallback = PyDict_GetItemWithError(fallbacks,
                                       (PyObject *)defining_class);
    if (fallback == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_SystemError, "get_code without fallback");
        }
        return NULL;
    }
    PyObject *result;
    Py_INCREF(fallback);
    if (nargs == 1 && kwnames == NULL) {
        stack[0] = loader;
        stack[1] = args[0];
        result = PyObject_Vectorcall(fallback, stack, 2, NULL);
    }
    else {
        /* Anything else is importlib's to accept or refuse. */
        PyObject *bound = PyMethod_New(fallback, loader);
        result = bound ? PyObject_Vectorcall(bound, args, nargsf, kwnames)
                       : NULL;
        Py_XDECREF(bound);
    }
    Py_DECREF(fallback);
    return result;
}

static PyMethodDef served_get_code_def = {
    "get_code", (PyCFunction)(void (*)(void))served_get_code,
    METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
    "get_code($self, fullname)\n--\n\n"
    "The module's code object: the archived one for a module pycds "
    "serves, else importlib's.",
};

int
pycds_serve_code(PyObject *loader_type)
{
    if (!PyType_Check(loader_type)) {
        PyErr_SetString(PyExc_TypeError, "a loader class is needed");
        return -1;
    }
    if (fallbacks == NULL && (fallbacks = PyDict_New()) == NULL) {
        return -1;
    }
    if (name_attr == NULL
        && (name_attr = PyUnicode_InternFromString("name")) == NULL) {
        return -1;
    }
    int known = PyDict_Contains(fallbacks, loader_type);
    if (known != 0) {
        return known < 0 ? -1 : 0;
    }
    PyObject *fallback = PyObject_GetAttrString(loader_type, "get_code");
    PyObject *descr = fallback ? PyDescr_NewMethod(
        (PyTypeObject *)loader_type, &served_get_code_def) : NULL;
    int rc = -1;
    if (descr != NULL
        && PyDict_SetItem(fallbacks, loader_type, fallback) == 0) {
        rc = PyObject_SetAttrString(loader_type, "get_code", descr);
        if (rc < 0) {
            PyDict_DelItem(fallbacks, loader_type);
        }
    }
    Py_XDECREF(fallback);
    Py_XDECREF(descr);
    return rc;
}
