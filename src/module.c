/* The _pycds extension module: the Python face of the C layer. */
#include "pycds/pycds.h"



/* ---- Archive: an open archive, entries by name ------------------------ */

typedef struct {
    PyObject_HEAD
    struct pycds_archive *ar;
    PyObject *path;
} ArchiveObject;

static void
archive_dealloc(ArchiveObject *self)
{
    pycds_archive_free(self->ar);
    Py_XDECREF(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
archive_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *path;
    int trust_any = 0, prelinked = 0;
    static char *kwlist[] = {"path", "trust_any", "prelinked", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|pp:Archive", kwlist,
                                     PyUnicode_FSConverter, &path,
                                     &trust_any, &prelinked)) {
        return NULL;
    }
    ArchiveObject *self = (ArchiveObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(path);
        return NULL;
    }
    self->path = path;
    self->ar = pycds_archive_open(
        PyBytes_AS_STRING(path), (trust_any ? PYCDS_OPEN_ANY_OWNER : 0)
                                 | (prelinked ? PYCDS_OPEN_PRELINKED : 0));
    if (self->ar == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static Py_ssize_t
archive_find(ArchiveObject *self, PyObject *name)
{
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(name, &len);
    if (s == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            return -2;
        }
        PyErr_Clear();  /* such a name cannot be in an archive */
        return -1;
    }
    return pycds_index_find(&self->ar->index, s, len);
}

static PyObject *
archive_get(ArchiveObject *self, PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_SetObject(PyExc_KeyError, name);
        return NULL;
    }
    Py_ssize_t i = archive_find(self, name);
    if (i == -2) {
        return NULL;
    }
    if (i < 0) {
        PyErr_SetObject(PyExc_KeyError, name);
        return NULL;
    }
    return pycds_archive_entry_code(self->ar, i);
}

static int
archive_contains(ArchiveObject *self, PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        return 0;
    }
    Py_ssize_t i = archive_find(self, name);
    return i == -2 ? -1 : i >= 0;
}

static Py_ssize_t
archive_len(ArchiveObject *self)
{
    return self->ar->index.nentries;
}

static PyObject *
archive_names(ArchiveObject *self, PyObject *unused)
{
    const struct pycds_index *ix = &self->ar->index;
    PyObject *list = PyList_New(ix->nentries);
    if (list == NULL) {
        return NULL;
    }
    for (uint32_t i = 0; i < ix->nentries; i++) {
        const struct pycds_entry *e = pycds_archive_entry(self->ar, i);
        PyObject *s = e == NULL ? NULL : PyUnicode_DecodeUTF8(
            pycds_index_str(ix, e->name), e->name.len, "surrogateescape");
        if (s == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, s);
    }
    return list;
}

static PyObject *
archive_prelinked(ArchiveObject *self, PyObject *unused)
{
    return pycds_prelinked_stats(self->ar);
}

static PyObject *
archive_image_outdated(ArchiveObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->ar->prelinked_outdated);
}

static PyMethodDef archive_methods[] = {
    {"image_outdated", (PyCFunction)archive_image_outdated, METH_NOARGS,
     "image_outdated() -> whether the prelinked image is unused for a "
     "fault of the file's that writing the archive again mends (damaged, "
     "made by another version of pycds or of the archive)"},
    {"prelinked", (PyCFunction)archive_prelinked, METH_NOARGS,
     "prelinked() -> dict of the prelinked image in use; else why none is "
     "(str), or None if none was found or asked for"},
    {"get", (PyCFunction)archive_get, METH_O,
     "get(name) -> code object; KeyError if absent, ArchiveError if the "
     "entry cannot be loaded"},
    {"names", (PyCFunction)archive_names, METH_NOARGS,
     "names() -> list of entry names, in archive order"},
    {NULL},
};

static PySequenceMethods archive_as_sequence = {
    .sq_length = (lenfunc)archive_len,
    .sq_contains = (objobjproc)archive_contains,
};

PyTypeObject pycds_ArchiveType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_pycds.Archive",
    .tp_basicsize = sizeof(ArchiveObject),
    .tp_dealloc = (destructor)archive_dealloc,
    .tp_as_sequence = &archive_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Archive(path, trust_any=False, prelinked=False): a mapped "
              "pycds archive; trust_any accepts a file others could have "
              "written; prelinked serves from its prelinked image where it "
              "fits",
    .tp_methods = archive_methods,
    .tp_new = archive_new,
};

struct pycds_archive *
pycds_archive_of(PyObject *archive)
{
    if (!PyObject_TypeCheck(archive, &pycds_ArchiveType)) {
        PyErr_SetString(PyExc_TypeError, "expected a _pycds.Archive");
        return NULL;
    }
    return ((ArchiveObject *)archive)->ar;
}

/* ---- functions -------------------------------------------------------- */

static PyObject *
mod_dump(PyObject *module, PyObject *args)
{
    PyObject *path, *entries;
    unsigned int validation = PYCDS_VALIDATE_TIMESTAMP;
    if (!PyArg_ParseTuple(args, "O&O|I:dump", PyUnicode_FSConverter, &path,
                          &entries, &validation)) {
        return NULL;
    }
    if (validation > PYCDS_VALIDATE_UNCHECKED) {
        Py_DECREF(path);
        PyErr_SetString(PyExc_ValueError, "unknown validation mode");
        return NULL;
    }
    int rc = pycds_dump(PyBytes_AS_STRING(path), entries, validation);
    Py_DECREF(path);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
mod_prelink(PyObject *module, PyObject *args, PyObject *kwds)
{
    PyObject *archive, *out, *preinterned = Py_None, *served = Py_None;
    PyObject *first = Py_None, *written = Py_None, *avoid = Py_None;
    int hashes = 0, trust_any = 0;
    static char *kwlist[] = {"archive", "out", "hashes", "trust_any",
                             "preinterned", "served", "first", "written",
                             "avoid", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&O&|ppOOOOO:prelink",
                                     kwlist, PyUnicode_FSConverter, &archive,
                                     PyUnicode_FSConverter, &out, &hashes,
                                     &trust_any, &preinterned, &served,
                                     &first, &written, &avoid)) {
        return NULL;
    }
    struct pycds_archive *served_ar = NULL;
    int rc = -1;
    if (served != Py_None && (served_ar = pycds_archive_of(served)) == NULL) {
        goto done;
    }
    if (written != Py_None && !PyDict_Check(written)) {
        PyErr_SetString(PyExc_TypeError, "written must be a dict");
        goto done;
    }
    if (avoid != Py_None && !PyFrozenSet_Check(avoid)) {
        PyErr_SetString(PyExc_TypeError, "avoid must be a frozenset of "
                        "slots");
        goto done;
    }
    if (preinterned != Py_None && !PyAnySet_Check(preinterned)) {
        PyErr_SetString(PyExc_TypeError, "preinterned must be a set from "
                        "interned_strings()");
        goto done;
    }
    rc = pycds_prelink(PyBytes_AS_STRING(archive), PyBytes_AS_STRING(out),
                       hashes, trust_any,
                       preinterned == Py_None ? NULL : preinterned,
                       served_ar, first == Py_None ? NULL : first,
                       written == Py_None ? NULL : written,
                       avoid == Py_None ? NULL : avoid);

done:
    Py_DECREF(archive);
    Py_DECREF(out);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
mod_image_slot(PyObject *module, PyObject *arg)
{
    PyObject *path;
    struct pycds_mapped m;
    if (!PyUnicode_FSConverter(arg, &path)) {
        return NULL;
    }
    int rc = pycds_container_open(&m, PyBytes_AS_STRING(path),
                                  PYCDS_OPEN_ANY_KEY | PYCDS_OPEN_ANY_OWNER);
    Py_DECREF(path);
    if (rc < 0) {
        return NULL;
    }
    long slot = pycds_prelinked_slot(&m);
    pycds_container_close(&m);
    return slot < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(slot);
}

static PyObject *
mod_dump_data(PyObject *module, PyObject *args)
{
    PyObject *path, *obj;
    if (!PyArg_ParseTuple(args, "O&O:dump_data", PyUnicode_FSConverter, &path,
                          &obj)) {
        return NULL;
    }
    int rc = pycds_dump_data(PyBytes_AS_STRING(path), obj);
    Py_DECREF(path);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
mod_load_data(PyObject *module, PyObject *args, PyObject *kwds)
{
    PyObject *path;
    int trust_any = 0, prelinked = 1, verify = 0;
    static char *kwlist[] = {"path", "trust_any", "prelinked", "verify",
                             NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|ppp:load_data", kwlist,
                                     PyUnicode_FSConverter, &path,
                                     &trust_any, &prelinked, &verify)) {
        return NULL;
    }
    PyObject *data = pycds_load_data(
        PyBytes_AS_STRING(path), (trust_any ? PYCDS_OPEN_ANY_OWNER : 0)
                                 | (prelinked ? PYCDS_OPEN_PRELINKED : 0)
                                 | (verify ? 0 : PYCDS_OPEN_UNHASHED));
    Py_DECREF(path);
    return data;
}

static PyObject *
mod_interned_strings(PyObject *module, PyObject *unused)
{
    return pycds_interned_strings();
}

static PyObject *
path_call(PyObject *arg, PyObject *(*fn)(const char *))
{
    PyObject *path;
    if (!PyUnicode_FSConverter(arg, &path)) {
        return NULL;
    }
    PyObject *result = fn(PyBytes_AS_STRING(path));
    Py_DECREF(path);
    return result;
}

static PyObject *
mod_verify(PyObject *module, PyObject *arg)
{
    return path_call(arg, pycds_verify);
}

static PyObject *
mod_inspect(PyObject *module, PyObject *args, PyObject *kwds)
{
    PyObject *path;
    int trust_any = 0;
    static char *kwlist[] = {"path", "trust_any", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|p:inspect", kwlist,
                                     PyUnicode_FSConverter, &path,
                                     &trust_any)) {
        return NULL;
    }
    PyObject *result = pycds_inspect(PyBytes_AS_STRING(path), trust_any);
    Py_DECREF(path);
    return result;
}

static PyObject *
why_not_replaceable(const char *path)
{
    const char *why;
    if (pycds_container_replaceable(path, &why) < 0) {
        return NULL;
    }
    return why ? PyUnicode_FromString(why) : Py_NewRef(Py_None);
}

static PyObject *
mod_not_replaceable(PyObject *module, PyObject *arg)
{
    return path_call(arg, why_not_replaceable);
}

static PyObject *
mod_xxh3(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    uint64_t h = pycds_xxh3(view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(h);
}

static PyObject *
mod_hashed_word(PyObject *module, PyObject *s)
{
    /* An interned string is hashed as it is interned: only the others
     * tell whether a program hashed them. */
    if (!PyUnicode_CheckExact(s) || PyUnicode_CHECK_INTERNED(s)
        || ((PyASCIIObject *)s)->hash == -1) {
        Py_RETURN_NONE;
    }
    return pycds_hashed_word(s);
}

static PyObject *
mod_abi_key(PyObject *module, PyObject *unused)
{
    struct pycds_abi_key key;
    if (pycds_abi_key_current(&key) < 0) {
        return NULL;
    }
    return pycds_abi_key_as_dict(&key);
}

static PyObject *
mod_set_up_leases(PyObject *module, PyObject *arg)
{
    int immutable = PyObject_IsTrue(arg);
    PyObject *handler = PyObject_GetAttrString(module, "lease_break");
    PyObject *after_fork = handler ? PyObject_GetAttrString(
                                         module, "lease_after_fork") : NULL;
    int rc = immutable < 0 || after_fork == NULL
             ? -1 : pycds_lease_handle_signal(handler, after_fork, immutable);
    Py_XDECREF(handler);
    Py_XDECREF(after_fork);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
mod_lease_break(PyObject *module, PyObject *args)
{
    /* Called between any two bytecodes of whatever code was running: it
     * never raises into it. */
    if (pycds_lease_release_broken() < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        PySys_FormatStderr("pycds: warning: cannot move an archive's pages "
                           "before it is rewritten: %S\n", value);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
    Py_RETURN_NONE;
}

static PyObject *
mod_lease_after_fork(PyObject *module, PyObject *unused)
{
    return pycds_lease_after_fork() < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
mod_served_code(PyObject *module, PyObject *loader)
{
    return pycds_served_code(loader);
}

static PyObject *
mod_serve_code(PyObject *module, PyObject *loader_type)
{
    if (pycds_serve_code(loader_type) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
mod_abi_tag(PyObject *module, PyObject *unused)
{
    return pycds_abi_tag();
}

static PyObject *
str_or_bytes(PyObject *arg, PyObject *(*fn)(PyObject *))
{
    if (!PyUnicode_Check(arg) && !PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "expected str or bytes");
        return NULL;
    }
    return fn(arg);
}

static PyObject *
mod_expand_abi(PyObject *module, PyObject *path)
{
    return str_or_bytes(path, pycds_expand_abi);
}

static PyObject *
mod_split_layers(PyObject *module, PyObject *text)
{
    return str_or_bytes(text, pycds_split_layers);
}

static PyObject *
mod_finder_over(PyObject *module, PyObject *args)
{
    PyObject *archive;
    int validation = -1, verbose = 0;
    if (!PyArg_ParseTuple(args, "O!|ii:finder_over", &pycds_ArchiveType,
                          &archive, &validation, &verbose)) {
        return NULL;
    }
    return pycds_finder_over(archive, validation, verbose);
}

static PyObject *
mod_open_finder(PyObject *module, PyObject *args)
{
    PyObject *path;
    int validation, verbose, trust_any, warn, prelinked;
    if (!PyArg_ParseTuple(args, "Oiippp:open_finder", &path, &validation,
                          &verbose, &trust_any, &warn, &prelinked)) {
        return NULL;
    }
    return pycds_open_finder(path, validation, verbose, trust_any, warn,
                             prelinked);
}

static PyObject *
mod_install(PyObject *module, PyObject *args)
{
    PyObject *finders, *paths;
    if (!PyArg_ParseTuple(args, "OO:install", &finders, &paths)) {
        return NULL;
    }
    return pycds_install(finders, paths) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
mod_share_layers(PyObject *module, PyObject *args)
{
    PyObject *paths;
    int validation, verbose, trust_any, prelinked;
    if (!PyArg_ParseTuple(args, "O!iipp:share_layers", &PyList_Type, &paths,
                          &validation, &verbose, &trust_any, &prelinked)) {
        return NULL;
    }
    int rc = pycds_share_layers(paths, validation, verbose, trust_any,
                                prelinked);
    return rc < 0 ? NULL : PyBool_FromLong(rc);
}

static PyObject *
mod_installed(PyObject *module, PyObject *unused)
{
    return pycds_installed();
}

static PyObject *
mod_activate(PyObject *module, PyObject *unused)
{
    return pycds_activate(module);
}

static PyMethodDef module_methods[] = {
    {"prelink", (PyCFunction)(void (*)(void))mod_prelink,
     METH_VARARGS | METH_KEYWORDS,
     "prelink(archive, out, hashes=False, trust_any=False, "
     "preinterned=None, served=None, first=None, written=None, "
     "avoid=None): write "
     "archive again to out with a new prelinked image; hashes: store "
     "str/bytes hashes (PYTHONHASHSEED is set); preinterned: "
     "interned_strings() as it was when the program started using "
     "archives (default: now); "
     "served: the Archive of that file this process served from; first: "
     "the names of the modules every process uses; written: module name "
     "-> set of the words of its objects traced runs wrote "
     "('firstlineno:qualname' of code that ran, '#' and the XXH3 of a "
     "str constant hashed); avoid: a frozenset of the slots the images "
     "of the archive's other layers take"},
    {"image_slot", mod_image_slot, METH_O,
     "image_slot(path) -> the slot the prelinked image of the archive at "
     "path takes, whatever its key and owner; None where it has no "
     "image.  Raises ArchiveError where it is no readable archive"},
    {"dump_data", mod_dump_data, METH_VARARGS,
     "dump_data(path, obj): write obj, frozen, to a data archive "
     "atomically"},
    {"load_data", (PyCFunction)(void (*)(void))mod_load_data,
     METH_VARARGS | METH_KEYWORDS,
     "load_data(path, trust_any=False, prelinked=True, verify=False) -> "
     "the data of a data archive, in place from its image where it fits "
     "(prelinked; verify: hash its bytes first), else relocated with "
     "every object checked"},
    {"interned_strings", mod_interned_strings, METH_NOARGS,
     "interned_strings() -> set of the interned strings (empty on 3.11)"},
    {"dump", mod_dump, METH_VARARGS,
     "dump(path, entries, validation=0): write an archive atomically"},
    {"verify", mod_verify, METH_O,
     "verify(path) -> list of problems (empty when sound)"},
    {"inspect", (PyCFunction)(void (*)(void))mod_inspect,
     METH_VARARGS | METH_KEYWORDS,
     "inspect(path, trust_any=False) -> dict describing the archive; "
     "'usable' by this interpreter under SHARE's trust rule unless "
     "trust_any"},
    {"not_replaceable", mod_not_replaceable, METH_O,
     "not_replaceable(path) -> None if an archive may be written at path "
     "(nothing, an empty file or a pycds archive is there), else why not"},
    {"xxh3", mod_xxh3, METH_O,
     "xxh3(bytes) -> XXH3-64 of the bytes, as archives record sources"},
    {"hashed_word", mod_hashed_word, METH_O,
     "hashed_word(s) -> the trace's word of s if it is a str not interned "
     "whose hash was computed (a constant the run hashed), else None"},
    {"serve_code", mod_serve_code, METH_O,
     "serve_code(loader_type): give SourceFileLoader or "
     "SourcelessFileLoader the get_code that hands out archived code"},
    {"served_code", mod_served_code, METH_O,
     "served_code(loader) -> the archived code object loader hands out, "
     "or None if it is not the loader of a module served from an archive"},
    {"abi_key", mod_abi_key, METH_NOARGS,
     "abi_key() -> this interpreter's ABI key"},
    {"set_up_leases", mod_set_up_leases, METH_O,
     "set_up_leases(immutable): once per process, before an image is "
     "mapped: lease_break for the signal a lease break sends (unless the "
     "program handles it: images are then copied as used) and "
     "lease_after_fork for forked children; immutable: archives are never "
     "rewritten in place, no lease needed"},
    {"lease_break", mod_lease_break, METH_VARARGS,
     "lease_break(signum, frame): the lease signal's handler: moves the "
     "pages of every archive being opened for writing into private memory "
     "and gives its lease up, saying on stderr why it could not instead "
     "of raising"},
    {"abi_tag", mod_abi_tag, METH_NOARGS,
     "abi_tag() -> this interpreter build's short name"},
    {"expand_abi", mod_expand_abi, METH_O,
     "expand_abi(path) -> path (str or bytes) with {abi} replaced by "
     "abi_tag()"},
    {"split_layers", mod_split_layers, METH_O,
     "split_layers(text) -> the archive paths in text (str or bytes), "
     "separated by ':', empty ones left out, {abi} expanded"},
    {"finder_over", mod_finder_over, METH_VARARGS,
     "finder_over(archive, validation=-1, verbose=0) -> a Finder over an "
     "Archive with importlib's loaders"},
    {"open_finder", mod_open_finder, METH_VARARGS,
     "open_finder(path, validation, verbose, trust_any, warn, prelinked) "
     "-> a Finder over the archive at path, or why it cannot be opened "
     "(str, said on stderr if warn)"},
    {"install", mod_install, METH_VARARGS,
     "install(finders, paths): put finders (over the archives at paths) "
     "into sys.meta_path before PathFinder, in place of those before"},
    {"share_layers", mod_share_layers, METH_VARARGS,
     "share_layers(paths, validation, verbose, trust_any, prelinked) -> "
     "whether a finder over any of the archives at paths is installed "
     "(each that cannot be used said on stderr and left out)"},
    {"installed", mod_installed, METH_NOARGS,
     "installed() -> (finders, paths) installed"},
    {"activate", mod_activate, METH_NOARGS,
     "activate(): activation from the environment (the .pth calls it): "
     "SHARE in its common case here, anything else by pycds._boot"},
    {"lease_after_fork", mod_lease_after_fork, METH_NOARGS,
     "lease_after_fork(): in a forked child, leases of its own"},
    {NULL},
};

/* A tuple of the NULL-terminated words. */
static int
add_words(PyObject *m, const char *name, const char *const *words)
{
    Py_ssize_t n = 0;
    while (words[n] != NULL) {
        n++;
    }
    PyObject *t = PyTuple_New(n);
    for (Py_ssize_t i = 0; t != NULL && i < n; i++) {
        PyObject *w = PyUnicode_FromString(words[i]);
        if (w == NULL) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, i, w);
    }
    int rc = t == NULL ? -1 : PyModule_AddObjectRef(m, name, t);
    Py_XDECREF(t);
    return rc;
}

static int
module_exec(PyObject *m)
{
    if (pycds_refusal_init() < 0
        || PyModule_AddObjectRef(m, "ArchiveError", pycds_ArchiveError) < 0
        || PyType_Ready(&pycds_ArchiveType) < 0
        || PyModule_AddObjectRef(m, "Archive",
                                 (PyObject *)&pycds_ArchiveType) < 0
        || PyType_Ready(&pycds_FrozenDictType) < 0
        || PyModule_AddObjectRef(m, "FrozenDict",
                                 (PyObject *)&pycds_FrozenDictType) < 0
        || PyType_Ready(&pycds_FinderType) < 0
        || PyModule_AddObjectRef(m, "Finder",
                                 (PyObject *)&pycds_FinderType) < 0
        || PyModule_AddStringConstant(m, "LEASE_NOT_OWNER",
                                      pycds_lease_not_owner) < 0
        || PyModule_AddIntConstant(m, "FORMAT_VERSION",
                                   PYCDS_FORMAT_VERSION) < 0
        || add_words(m, "YES_WORDS", pycds_yes_words) < 0
        || add_words(m, "NO_WORDS", pycds_no_words) < 0
        || add_words(m, "VALIDATION_MODES", pycds_validation_names) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef pycds_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_pycds",
    .m_doc = "pycds: code objects served from a mapped heap image",
    .m_size = 0,
    .m_methods = module_methods,
    .m_slots = module_slots,
};

PyMODINIT_FUNC
PyInit__pycds(void)
{
    return PyModuleDef_Init(&pycds_module);
}
