/* The meta-path finder of SHARE.
 *
 * A name the archive does not hold costs one hash lookup here and nothing
 * else.  For a name it holds, the finder decides, the way normal import
 * would, whether the archived module is the one normal import would find
 * (searchpath.c: shadowing, package paths; validate.c: changed sources),
 * relocates it and builds its spec with importlib's own ModuleSpec and
 * loader (the code it hands out is kept apart: served.c).  It also keeps the
 * counts and reasons of pycds.stats(). */
#include "pycds/pycds.h"

#include <stdio.h>
#include <structmember.h>

/* What became of a lookup; its name is the key of stats() that counts
 * it and, when not served, the module's kind there. */
enum outcome { SERVED, MISSED, STALE, REFUSED, NOUTCOMES };
static const char *const outcome_names[NOUTCOMES] = {
    "served", "missed", "stale", "refused"};

typedef struct {
    PyObject_HEAD
    PyObject *archive;        /* _pycds.Archive */
    PyObject *loaders;        /* (SourceFileLoader, SourcelessFileLoader) */
    PyObject *spec_type;      /* importlib's ModuleSpec */
    int validation;           /* enum pycds_validation, or -1: the archive's */
    int verbose;
    int warned;               /* a corrupt entry was reported */
    struct pycds_searchpath searchpath;
    Py_ssize_t counts[NOUTCOMES];
    PyObject *outcomes[NOUTCOMES];  /* their names, made once */
    PyObject *reasons;        /* name -> why it was not served */
    PyObject *kinds;          /* name -> its outcome when not served: what
                               * callers branch on, not the wording */
    PyObject *not_archived;   /* the reason for a miss */
    PyObject *pyc_suffix;     /* ".pyc": a sourceless module's origin */
    PyObject *spec_kwnames;   /* ("origin", "is_package") */
    PyObject *set_fileattr;   /* attribute names of a spec, made once */
    PyObject *search_locations;
} FinderObject;

static void
finder_dealloc(FinderObject *self)
{
    Py_XDECREF(self->archive);
    Py_XDECREF(self->loaders);
    Py_XDECREF(self->spec_type);
    pycds_searchpath_fini(&self->searchpath);
    Py_XDECREF(self->reasons);
    Py_XDECREF(self->kinds);
    for (int o = 0; o < NOUTCOMES; o++) {
        Py_XDECREF(self->outcomes[o]);
    }
    Py_XDECREF(self->not_archived);
    Py_XDECREF(self->pyc_suffix);
    Py_XDECREF(self->spec_kwnames);
    Py_XDECREF(self->set_fileattr);
    Py_XDECREF(self->search_locations);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
finder_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"archive", "loaders", "spec_type", "validation",
                             "verbose", NULL};
    PyObject *archive, *loaders, *spec_type;
    int validation = -1, verbose = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O|ii:Finder", kwlist,
                                     &archive, &PyTuple_Type, &loaders,
                                     &spec_type, &validation, &verbose)) {
        return NULL;
    }
    if (pycds_archive_of(archive) == NULL) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(loaders) != 2
        || validation < -1 || validation > PYCDS_VALIDATE_UNCHECKED) {
        PyErr_SetString(PyExc_ValueError, "bad loaders or validation");
        return NULL;
    }
    FinderObject *self = (FinderObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->archive = Py_NewRef(archive);
    self->loaders = Py_NewRef(loaders);
    self->spec_type = Py_NewRef(spec_type);
    self->validation = validation;
    self->verbose = verbose;
    for (int o = 0; o < NOUTCOMES; o++) {
        self->outcomes[o] = PyUnicode_InternFromString(outcome_names[o]);
        if (self->outcomes[o] == NULL) {
            Py_DECREF(self);
            return NULL;
        }
    }
    self->reasons = PyDict_New();
    self->kinds = PyDict_New();
    self->not_archived = PyUnicode_FromString("not in the archive");
    self->pyc_suffix = PyUnicode_FromString(".pyc");
    /* Interned, as the names of __init__'s parameters are: matched by
     * identity. */
    self->spec_kwnames = Py_BuildValue(
        "(NN)", PyUnicode_InternFromString("origin"),
        PyUnicode_InternFromString("is_package"));
    self->set_fileattr = PyUnicode_InternFromString("_set_fileattr");
    self->search_locations =
        PyUnicode_InternFromString("submodule_search_locations");
    if (self->reasons == NULL || self->kinds == NULL
        || self->not_archived == NULL
        || self->pyc_suffix == NULL || self->spec_kwnames == NULL
        || self->set_fileattr == NULL || self->search_locations == NULL
        || pycds_searchpath_init(&self->searchpath) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* PYCDSVERBOSE=1 reports what was not served (stale, refused); 2 also
 * every hit and miss. */
static int
record(FinderObject *self, PyObject *name, enum outcome o, PyObject *why,
       int level)
{
    self->counts[o]++;
    if (why != NULL
        && (PyDict_SetItem(self->kinds, name, self->outcomes[o]) < 0
            || PyDict_SetItem(self->reasons, name, why) < 0)) {
        return -1;
    }
    if (self->verbose >= level) {
        fprintf(stderr, "pycds: %s %s%s%s\n", outcome_names[o],
                PyUnicode_AsUTF8(name),
                why ? ": " : "", why ? PyUnicode_AsUTF8(why) : "");
    }
    return 0;
}

/* Records a module normal import must handle; steals why. */
static PyObject *
decline(FinderObject *self, PyObject *name, int stale, PyObject *why)
{
    int rc = record(self, name, stale ? STALE : REFUSED, why, 1);
    Py_DECREF(why);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The package's search locations: the directory of its __init__. */
static int
set_locations(FinderObject *self, PyObject *spec, PyObject *origin)
{
    Py_ssize_t slash = PyUnicode_FindChar(origin, '/', 0,
                                          PyUnicode_GET_LENGTH(origin), -1);
    PyObject *dir = PyUnicode_Substring(origin, 0, slash > 0 ? slash : 1);
    PyObject *locations = dir ? PyList_New(1) : NULL;
    if (locations == NULL) {
        Py_XDECREF(dir);
        return -1;
    }
    PyList_SET_ITEM(locations, 0, dir);
    int rc = PyObject_SetAttr(spec, self->search_locations, locations);
    Py_DECREF(locations);
    return rc;
}

/* The module's spec, as importlib's spec_from_file_location makes it. */
static PyObject *
make_spec(FinderObject *self, PyObject *name, PyObject *origin,
          PyObject *code, Py_ssize_t i, int package)
{
    int sourceless = PyUnicode_Tailmatch(
        origin, self->pyc_suffix, 0, PyUnicode_GET_LENGTH(origin), 1) == 1;
    PyObject *loader_type = PyTuple_GET_ITEM(self->loaders, sourceless);
    /* importlib's own loader, exactly as normal import makes it: its
     * type and __dict__ are what programs compare. */
    PyObject *loader_args[] = {name, origin};
    PyObject *loader = PyObject_Vectorcall(loader_type, loader_args, 2, NULL);
    if (loader == NULL
        || pycds_served_add(loader, code, self->archive, i) < 0) {
        Py_XDECREF(loader);
        return NULL;
    }
    PyObject *spec_args[] = {name, loader, origin,
                             package ? Py_True : Py_False};
    PyObject *spec = PyObject_Vectorcall(self->spec_type, spec_args, 2,
                                         self->spec_kwnames);
    Py_DECREF(loader);
    if (spec == NULL
        || PyObject_SetAttr(spec, self->set_fileattr, Py_True) < 0
        || (package && set_locations(self, spec, origin) < 0)) {
        Py_XDECREF(spec);
        return NULL;
    }
    return spec;
}

/* Records a module of a damaged part of the archive; said once, whatever
 * the verbosity, as when an archive cannot be opened at all. */
static PyObject *
decline_damaged(FinderObject *self, PyObject *name)
{
    PyObject *why = pycds_take_refusal();
    if (why != NULL) {
        pycds_warn_once(&self->warned, "%s; importing such modules normally",
                        PyUnicode_AsUTF8(why));
    }
    return why ? decline(self, name, 0, why) : NULL;
}

static PyObject *
serve(FinderObject *self, struct pycds_archive *ar, Py_ssize_t i,
      PyObject *name, PyObject *path)
{
    const struct pycds_entry *e = pycds_archive_entry(ar, i);
    if (e == NULL) {
        return decline_damaged(self, name);
    }
    int package = (e->flags & PYCDS_ENTRY_PACKAGE) != 0;
    uint32_t mode = self->validation >= 0 ? (uint32_t)self->validation
                                          : ar->map.header.validation;
    PyObject *why = NULL, *code, *spec;
    PyObject *origin = PyUnicode_DecodeFSDefaultAndSize(
        pycds_index_str(&ar->index, e->origin), e->origin.len);
    if (origin == NULL) {
        return NULL;
    }
    why = pycds_searchpath_shadowed(&self->searchpath, name, path, origin,
                                    package);
    if (why != Py_None) {
        Py_DECREF(origin);
        return why ? decline(self, name, 0, why) : NULL;
    }
    Py_DECREF(why);
    why = pycds_source_stale(e, mode, origin);
    if (why != Py_None) {
        Py_DECREF(origin);
        return why ? decline(self, name, 1, why) : NULL;
    }
    Py_DECREF(why);
    code = pycds_archive_entry_code(ar, i);
    if (code == NULL) {
        Py_DECREF(origin);
        return decline_damaged(self, name);
    }
    spec = make_spec(self, name, origin, code, i, package);
    Py_DECREF(origin);
    Py_DECREF(code);
    if (spec != NULL
        && record(self, name, SERVED, NULL, 2) < 0) {
        Py_CLEAR(spec);
    }
    return spec;
}

static PyObject *
finder_find_spec(FinderObject *self, PyObject *args)
{
    PyObject *name, *path = Py_None, *target = Py_None;
    if (!PyArg_ParseTuple(args, "U|OO:find_spec", &name, &path, &target)) {
        return NULL;
    }
    struct pycds_archive *ar = pycds_archive_of(self->archive);
    Py_ssize_t len, i = -1;
    const char *s = PyUnicode_AsUTF8AndSize(name, &len);
    if (s != NULL) {
        i = pycds_index_find(&ar->index, s, len);
    }
    else if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
        /* A name with lone surrogates cannot be in an archive. */
        PyErr_Clear();
    }
    else {
        return NULL;
    }
    if (i < 0) {
        if (record(self, name, MISSED, self->not_archived,
                   2) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return serve(self, ar, i, name, path);
}

static PyObject *
finder_stats(FinderObject *self, PyObject *unused)
{
    PyObject *reasons = PyDict_Copy(self->reasons);
    PyObject *kinds = PyDict_Copy(self->kinds);
    if (reasons == NULL || kinds == NULL) {
        Py_XDECREF(reasons);
        Py_XDECREF(kinds);
        return NULL;
    }
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:N,s:N}",
                         "served", self->counts[SERVED],
                         "missed", self->counts[MISSED],
                         "stale", self->counts[STALE],
                         "refused", self->counts[REFUSED], "reasons", reasons,
                         "kinds", kinds);
}

static PyObject *
finder_invalidate_caches(FinderObject *self, PyObject *unused)
{
    pycds_searchpath_invalidate(&self->searchpath);
    Py_RETURN_NONE;
}

static PyMethodDef finder_methods[] = {
    {"find_spec", (PyCFunction)finder_find_spec, METH_VARARGS,
     "find_spec(name, path=None, target=None) -> spec or None"},
    {"stats", (PyCFunction)finder_stats, METH_NOARGS,
     "stats() -> counts of served, missed, stale, refused; reasons and "
     "kinds of what was not served"},
    {"invalidate_caches", (PyCFunction)finder_invalidate_caches,
     METH_NOARGS, "forget the directory listings read so far"},
    {NULL},
};

static PyMemberDef finder_members[] = {
    {"archive", T_OBJECT_EX, offsetof(FinderObject, archive), READONLY,
     "the _pycds.Archive served from"},
    {NULL},
};

PyTypeObject pycds_FinderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_pycds.Finder",
    .tp_basicsize = sizeof(FinderObject),
    .tp_dealloc = (destructor)finder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Finder(archive, loaders, spec_type, validation=-1, "
              "verbose=0): the meta-path finder of SHARE",
    .tp_methods = finder_methods,
    .tp_members = finder_members,
    .tp_new = finder_new,
};
