/* The layers SHARE serves from (docs/IMPORT.md, "Layers"): the archive
 * paths a setting names, a finder over each archive, and the finders put
 * into sys.meta_path.  One implementation for both ways in: the
 * environment's common case (activate.c) and pycds.share, pycds-dump and
 * AUTO (pycds/_layers.py). */
#include "pycds/pycds.h"

/* The finders in sys.meta_path and the paths of their archives (lists),
 * in order; NULL until the first install. */
static PyObject *finders_in_use, *paths_in_use;

/* The names of the validation modes, in the order of the PYCDS_VALIDATE_*
 * values an archive records. */
const char *const pycds_validation_names[] = {"timestamp", "checked-hash",
                                              "unchecked", NULL};

PyObject *
pycds_expand_abi(PyObject *path)
{
    int is_bytes = PyBytes_Check(path);
    PyObject *key = is_bytes ? PyBytes_FromString("{abi}")
                             : PyUnicode_FromString("{abi}");
    PyObject *tag = NULL, *result = NULL;
    if (key == NULL) {
        return NULL;
    }
    int has = PySequence_Contains(path, key);
    if (has <= 0) {
        result = has < 0 ? NULL : Py_NewRef(path);
        goto done;
    }
    tag = pycds_abi_tag();
    if (tag != NULL && is_bytes) {
        Py_SETREF(tag, PyUnicode_EncodeFSDefault(tag));
    }
    if (tag != NULL) {
        result = PyObject_CallMethod(path, "replace", "OO", key, tag);
    }
done:
    Py_DECREF(key);
    Py_XDECREF(tag);
    return result;
}

PyObject *
pycds_split_layers(PyObject *text)
{
    PyObject *sep = PyBytes_Check(text) ? PyBytes_FromString(":")
                                        : PyUnicode_FromString(":");
    PyObject *parts = sep ? PyObject_CallMethod(text, "split", "O", sep)
                          : NULL;
    PyObject *paths = parts ? PyList_New(0) : NULL;
    Py_XDECREF(sep);
    if (paths == NULL) {
        Py_XDECREF(parts);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(parts); i++) {
        PyObject *part = PyList_GET_ITEM(parts, i);
        if (PyObject_Length(part) == 0) {
            continue;
        }
        PyObject *path = pycds_expand_abi(part);
        if (path == NULL || PyList_Append(paths, path) < 0) {
            Py_XDECREF(path);
            Py_CLEAR(paths);
            break;
        }
        Py_DECREF(path);
    }
    Py_DECREF(parts);
    return paths;
}

/* New references to importlib's loaders of .py and .pyc files, the ones
 * a served module gets (docs/IMPORT.md, SHARE), and to ModuleSpec.
 * importlib.machinery holds the same objects; importing it would cost
 * every process a module. */
static int
importlib_types(PyObject **loaders, PyObject **spec_type)
{
    PyObject *external = PyImport_ImportModule("_frozen_importlib_external");
    PyObject *bootstrap = external ? PyImport_ImportModule(
                                         "_frozen_importlib") : NULL;
    PyObject *source = NULL, *sourceless = NULL;
    *loaders = *spec_type = NULL;
    if (bootstrap != NULL) {
        source = PyObject_GetAttrString(external, "SourceFileLoader");
        sourceless = source ? PyObject_GetAttrString(
                                  external, "SourcelessFileLoader") : NULL;
        *spec_type = sourceless ? PyObject_GetAttrString(bootstrap,
                                                         "ModuleSpec")
                                : NULL;
    }
    if (*spec_type != NULL) {
        *loaders = PyTuple_Pack(2, source, sourceless);
        if (*loaders == NULL) {
            Py_CLEAR(*spec_type);
        }
    }
    Py_XDECREF(external);
    Py_XDECREF(bootstrap);
    Py_XDECREF(source);
    Py_XDECREF(sourceless);
    return *loaders == NULL ? -1 : 0;
}

PyObject *
pycds_finder_over(PyObject *archive, int validation, int verbose)
{
    PyObject *loaders, *spec_type;
    if (importlib_types(&loaders, &spec_type) < 0) {
        return NULL;
    }
    PyObject *finder = PyObject_CallFunction((PyObject *)&pycds_FinderType,
                                             "OOOii", archive, loaders,
                                             spec_type, validation, verbose);
    Py_DECREF(loaders);
    Py_DECREF(spec_type);
    return finder;
}

/* Says why the archive at path cannot be used (an ArchiveError or an
 * OSError, taken): once on stderr if warn, and as the result. */
static PyObject *
not_opened(int warn)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *why = value ? PyObject_Str(value) : NULL;
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (why != NULL && warn) {
        PySys_FormatStderr("pycds: warning: %U; importing normally\n", why);
    }
    return why;
}

PyObject *
pycds_open_finder(PyObject *path, int validation, int verbose,
                  int trust_any, int warn, int prelinked)
{
    PyObject *archive = PyObject_CallFunction(
        (PyObject *)&pycds_ArchiveType, "Oii", path, trust_any, prelinked);
    if (archive == NULL) {
        if (PyErr_ExceptionMatches(pycds_ArchiveError)
            || PyErr_ExceptionMatches(PyExc_OSError)) {
            return not_opened(warn);
        }
        return NULL;
    }
    if (verbose) {
        PyObject *why = PyObject_CallMethod(archive, "prelinked", NULL);
        if (why == NULL) {
            Py_DECREF(archive);
            return NULL;
        }
        if (PyUnicode_Check(why)) {
            PySys_FormatStderr("pycds: %S: prelinked image not used: %U\n",
                               path, why);
        }
        Py_DECREF(why);
    }
    PyObject *finder = pycds_finder_over(archive, validation, verbose);
    Py_DECREF(archive);
    return finder;
}

/* Where normal import puts the finders of archives: just before
 * PathFinder, after the builtin and frozen importers. */
static Py_ssize_t
path_finder_index(PyObject *meta)
{
    Py_ssize_t n = PyList_GET_SIZE(meta);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyObject_GetAttrString(PyList_GET_ITEM(meta, i),
                                                "__name__");
        if (name == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
                return -1;
            }
            PyErr_Clear();
            continue;
        }
        int found = PyUnicode_Check(name)
                    && PyUnicode_CompareWithASCIIString(name,
                                                        "PathFinder") == 0;
        Py_DECREF(name);
        if (found) {
            return i;
        }
    }
    return n;
}

/* Takes the finders installed before out of meta, those still there. */
static int
remove_finders_in_use(PyObject *meta)
{
    Py_ssize_t n = finders_in_use ? PyList_GET_SIZE(finders_in_use) : 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t i = PySequence_Index(meta, PyList_GET_ITEM(finders_in_use,
                                                              k));
        if (i < 0) {
            if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
                return -1;
            }
            PyErr_Clear();
        }
        else if (PySequence_DelItem(meta, i) < 0) {
            return -1;
        }
    }
    return 0;
}

int
pycds_install(PyObject *finders, PyObject *paths)
{
    PyObject *loaders, *spec_type, *meta = NULL;
    PyObject *new_finders = NULL, *new_paths = NULL;
    if (importlib_types(&loaders, &spec_type) < 0) {
        return -1;
    }
    int rc = pycds_serve_code(PyTuple_GET_ITEM(loaders, 0)) < 0
             || pycds_serve_code(PyTuple_GET_ITEM(loaders, 1)) < 0 ? -1 : 0;
    Py_DECREF(loaders);
    Py_DECREF(spec_type);
    if (rc < 0) {
        return -1;
    }
    /* Held: a finder's __name__ could be anything. */
    meta = Py_XNewRef(PySys_GetObject("meta_path"));
    if (meta == NULL || !PyList_Check(meta)) {
        PyErr_SetString(PyExc_RuntimeError, "sys.meta_path is not a list");
        goto error;
    }
    new_finders = PySequence_List(finders);
    new_paths = new_finders ? PySequence_List(paths) : NULL;
    if (new_paths == NULL || remove_finders_in_use(meta) < 0) {
        goto error;
    }
    Py_ssize_t where = path_finder_index(meta);
    if (where < 0 || PyList_SetSlice(meta, where, where, new_finders) < 0) {
        goto error;
    }
    Py_DECREF(meta);
    Py_XSETREF(finders_in_use, new_finders);
    Py_XSETREF(paths_in_use, new_paths);
    return 0;
error:
    Py_XDECREF(meta);
    Py_XDECREF(new_finders);
    Py_XDECREF(new_paths);
    return -1;
}

int
pycds_share_layers(PyObject *paths, int validation, int verbose,
                   int trust_any, int prelinked)
{
    PyObject *finders = PyList_New(0);
    PyObject *used = finders ? PyList_New(0) : NULL;
    int rc = -1;
    if (used == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(paths); i++) {
        PyObject *path = PyList_GET_ITEM(paths, i);
        PyObject *f = pycds_open_finder(path, validation, verbose, trust_any,
                                        1, prelinked);
        if (f == NULL) {
            goto done;
        }
        int err = !PyUnicode_Check(f) && (PyList_Append(finders, f) < 0
                                          || PyList_Append(used, path) < 0);
        Py_DECREF(f);
        if (err) {
            goto done;
        }
    }
    rc = PyList_GET_SIZE(finders) == 0 ? 0
         : pycds_install(finders, used) < 0 ? -1 : 1;
done:
    Py_XDECREF(finders);
    Py_XDECREF(used);
    return rc;
}

PyObject *
pycds_installed(void)
{
    if (finders_in_use == NULL) {
        return Py_BuildValue("([][])");
    }
    PyObject *finders = PyList_GetSlice(finders_in_use, 0, PY_SSIZE_T_MAX);
    PyObject *paths = PyList_GetSlice(paths_in_use, 0, PY_SSIZE_T_MAX);
    if (finders == NULL || paths == NULL) {
        Py_XDECREF(finders);
        Py_XDECREF(paths);
        return NULL;
    }
    return Py_BuildValue("(NN)", finders, paths);
}
