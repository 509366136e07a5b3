/* The meta-path finder of SHARE.
 *
 * A name the archive does not hold costs one hash lookup here and nothing
 * else.  A name it holds goes to pycds._share.resolve, which decides, the
 * way normal import would, whether the archived module is the one normal
 * import would find (shadowing, package paths, source validation) and
 * builds its spec; the counts and reasons for pycds.stats() are kept here. */
#include "pycds/pycds.h"

#include <stdio.h>

typedef struct {
    PyObject_HEAD
    PyObject *archive;        /* pycds._pycds.Archive */
    PyObject *resolve;        /* resolve(finder, name, path, entry) */
    Py_ssize_t served, missed, stale, refused;
    PyObject *reasons;        /* name -> why it was not served */
    PyObject *not_archived;   /* the reason for a miss */
    int verbose;
} FinderObject;


static void
finder_dealloc(FinderObject *self)
{
    Py_XDECREF(self->archive);
    Py_XDECREF(self->resolve);
    Py_XDECREF(self->reasons);
    Py_XDECREF(self->not_archived);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
finder_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"archive", "resolve", "verbose", NULL};
    PyObject *archive, *resolve;
    int verbose = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|i:Finder", kwlist,
                                     &archive, &resolve, &verbose)) {
        return NULL;
    }
    if (pycds_archive_of(archive) == NULL) {
        return NULL;
    }
    FinderObject *self = (FinderObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->archive = Py_NewRef(archive);
    self->resolve = Py_NewRef(resolve);
    self->verbose = verbose;
    self->reasons = PyDict_New();
    self->not_archived = PyUnicode_FromString("not in the archive");
    if (self->reasons == NULL || self->not_archived == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *
entry_info(struct pycds_archive *ar, Py_ssize_t i)
{
    const struct pycds_index *ix = &ar->index;
    const struct pycds_entry *e = &ix->entries[i];
    return Py_BuildValue(
        "(ns#Os#s#LKKI)", i,
        pycds_index_str(ix, e->origin), (Py_ssize_t)e->origin.len,
        (e->flags & PYCDS_ENTRY_PACKAGE) ? Py_True : Py_False,
        pycds_index_str(ix, e->locations), (Py_ssize_t)e->locations.len,
        pycds_index_str(ix, e->cached), (Py_ssize_t)e->cached.len,
        (long long)e->source_mtime_ns,
        (unsigned long long)e->source_size,
        (unsigned long long)e->source_xxh3,
        ar->map.header.validation);
}

/* PYCDSVERBOSE=1 reports what was not served (stale, refused); 2 also
 * every hit and miss. */
static int
record(FinderObject *self, PyObject *name, Py_ssize_t *counter,
       const char *what, PyObject *why, int level)
{
    (*counter)++;
    if (why != NULL && PyDict_SetItem(self->reasons, name, why) < 0) {
        return -1;
    }
    if (self->verbose >= level) {
        fprintf(stderr, "pycds: %s %s%s%s\n", what, PyUnicode_AsUTF8(name),
                why ? ": " : "", why ? PyUnicode_AsUTF8(why) : "");
    }
    return 0;
}

static PyObject *
finder_find_spec(FinderObject *self, PyObject *args)
{
    PyObject *name, *path = Py_None, *target = Py_None;
    if (!PyArg_ParseTuple(args, "U|OO:find_spec", &name, &path, &target)) {
        return NULL;
    }
    struct pycds_archive *ar = pycds_archive_of(self->archive);
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(name, &len);
    if (s == NULL) {
        return NULL;
    }
    Py_ssize_t i = pycds_index_find(&ar->index, s, len);
    if (i < 0) {
        if (record(self, name, &self->missed, "missed", self->not_archived,
                   2) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *info = entry_info(ar, i);
    if (info == NULL) {
        return NULL;
    }
    /* resolve returns a spec, or (kind, why) with kind 'stale' or
     * 'refused' when normal import must handle the module. */
    PyObject *r = PyObject_CallFunctionObjArgs(self->resolve, (PyObject *)self,
                                               name, path, info, NULL);
    Py_DECREF(info);
    if (r == NULL) {
        return NULL;
    }
    if (PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 2) {
        PyObject *kind = PyTuple_GET_ITEM(r, 0);
        PyObject *why = PyTuple_GET_ITEM(r, 1);
        int stale = PyUnicode_CompareWithASCIIString(kind, "stale") == 0;
        int rc = record(self, name, stale ? &self->stale : &self->refused,
                        stale ? "stale" : "refused", why, 1);
        Py_DECREF(r);
        if (rc < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (record(self, name, &self->served, "served", NULL, 2) < 0) {
        Py_DECREF(r);
        return NULL;
    }
    return r;
}

static PyObject *
finder_code(FinderObject *self, PyObject *index)
{
    Py_ssize_t i = PyLong_AsSsize_t(index);
    if (i == -1 && PyErr_Occurred()) {
        return NULL;
    }
    struct pycds_archive *ar = pycds_archive_of(self->archive);
    if (i < 0 || i >= ar->index.nentries) {
        PyErr_SetString(PyExc_IndexError, "no such entry");
        return NULL;
    }
    return Py_XNewRef(pycds_archive_entry_code(ar, i));
}

static PyObject *
finder_stats(FinderObject *self, PyObject *unused)
{
    PyObject *reasons = PyDict_Copy(self->reasons);
    if (reasons == NULL) {
        return NULL;
    }
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:N}", "served", self->served,
                         "missed", self->missed, "stale", self->stale,
                         "refused", self->refused, "reasons", reasons);
}

static PyObject *
finder_invalidate_caches(FinderObject *self, PyObject *unused)
{
    PyObject *r = PyObject_CallMethod(self->resolve, "invalidate_caches",
                                      NULL);
    if (r == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return r;
}

static PyMethodDef finder_methods[] = {
    {"find_spec", (PyCFunction)finder_find_spec, METH_VARARGS,
     "find_spec(name, path=None, target=None) -> spec or None"},
    {"code", (PyCFunction)finder_code, METH_O,
     "code(entry) -> the entry's code object (relocated on first use)"},
    {"stats", (PyCFunction)finder_stats, METH_NOARGS,
     "stats() -> counts of served, missed, stale, refused and reasons"},
    {"invalidate_caches", (PyCFunction)finder_invalidate_caches,
     METH_NOARGS, "forget cached directory listings"},
    {NULL},
};

PyTypeObject pycds_FinderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pycds._pycds.Finder",
    .tp_basicsize = sizeof(FinderObject),
    .tp_dealloc = (destructor)finder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Finder(archive, resolve, verbose=0): meta-path finder",
    .tp_methods = finder_methods,
    .tp_new = finder_new,
};
