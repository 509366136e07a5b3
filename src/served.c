/* The archived code of the modules SHARE serves, by loader.
 *
 * A served module's loader is importlib's own SourceFileLoader (or
 * SourcelessFileLoader) with the __dict__ normal import gives it, name and
 * path, so that it compares equal to the loader of a normal import
 * (FileLoader.__eq__ compares type and __dict__, and ModuleSpec.__eq__
 * compares loaders).  Its code is therefore kept here, keyed by the
 * loader's identity, and the get_code pycds puts on those two classes
 * (pycds/__init__.py) hands it out.  A weak reference to the loader
 * removes the entry when the loader goes: an address is reused only after
 * that. */
#include "pycds/pycds.h"

/* id(loader) -> (weak reference to loader, code).  Process-wide, like the
 * module's types: only the main interpreter serves (pycds._boot). */
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
    if (PyTuple_GET_ITEM(entry, 0) == ref
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
pycds_served_add(PyObject *loader, PyObject *code)
{
    PyObject *key = NULL, *callback = NULL, *ref = NULL, *entry = NULL;
    int rc = -1;
    if (served == NULL && (served = PyDict_New()) == NULL) {
        return -1;
    }
    key = PyLong_FromVoidPtr(loader);
    callback = key ? PyCFunction_New(&forget_def, key) : NULL;
    ref = callback ? PyWeakref_NewRef(loader, callback) : NULL;
    entry = ref ? PyTuple_Pack(2, ref, code) : NULL;
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
    return Py_NewRef(PyTuple_GET_ITEM(entry, 1));
}
