/* Would normal import find the archived file?  The search-path side of
 * SHARE (docs/IMPORT.md): the path entry finders PathFinder would use
 * (sys.path_hooks, sys.path_importer_cache), directory listings, read once
 * per process, and the shadowing rules of FileFinder. */
#include "pycds/pycds.h"

#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

/* A listing: (names, subdirectories), sets.  A path that is not a
 * directory maps to None.  Whether a directory holds a module file x is
 * a lookup of x and each suffix importlib loads (holds_file), not of a
 * set of stems made as the directory is read: most names of a listing are
 * never asked about, and their stems cost a process memory and time
 * (pyenv 3.13.0, the stdlib mix of bench-pages, 22 directories). */
enum { NAMES, DIRS, NLISTING };

static int
is_dir(int dirfd, struct dirent *d)
{
    if (d->d_type != DT_UNKNOWN && d->d_type != DT_LNK) {
        return d->d_type == DT_DIR;
    }
    struct stat st;
    return fstatat(dirfd, d->d_name, &st, 0) == 0 && S_ISDIR(st.st_mode);
}

static PyObject *
read_listing(struct pycds_searchpath *sp, PyObject *directory)
{
    PyObject *bytes = NULL, *sets[NLISTING] = {NULL}, *result = NULL;
    DIR *dir = NULL;
    if (!PyUnicode_FSConverter(directory, &bytes)) {
        return NULL;
    }
    dir = opendir(PyBytes_AS_STRING(bytes));
    if (dir == NULL && errno == ENOTDIR) {
        Py_DECREF(bytes);
        Py_RETURN_NONE;
    }
    for (int i = 0; i < NLISTING; i++) {
        if ((sets[i] = PySet_New(NULL)) == NULL) {
            goto done;
        }
        /* Names only, which make no cycle: every collection would walk
         * them (the stdlib's listing is hundreds), as it does not the
         * image's constants; callgrind, import boto3: set_traverse
         * +1.2 M instructions. */
        PyObject_GC_UnTrack(sets[i]);
    }
    struct dirent *d;
    while (dir != NULL && (d = readdir(dir)) != NULL) {
        if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0) {
            continue;
        }
        PyObject *name = PyUnicode_DecodeFSDefault(d->d_name);
        int rc = name ? PySet_Add(sets[NAMES], name) : -1;
        if (rc == 0 && is_dir(dirfd(dir), d)) {
            rc = PySet_Add(sets[DIRS], name);
        }
        Py_XDECREF(name);
        if (rc < 0) {
            goto done;
        }
    }
    result = PyTuple_New(NLISTING);
    if (result != NULL) {
        for (int i = 0; i < NLISTING; i++) {
            PyTuple_SET_ITEM(result, i, sets[i]);
            sets[i] = NULL;
        }
    }
done:
    if (dir != NULL) {
        closedir(dir);
    }
    for (int i = 0; i < NLISTING; i++) {
        Py_XDECREF(sets[i]);
    }
    Py_DECREF(bytes);
    return result;
}

/* Borrowed: the listing of directory, read on first use. */
static PyObject *
listing(struct pycds_searchpath *sp, PyObject *directory)
{
    PyObject *l = PyDict_GetItemWithError(sp->listings, directory);
    if (l != NULL || PyErr_Occurred()) {
        return l;
    }
    l = read_listing(sp, directory);
    if (l == NULL || PyDict_SetItem(sp->listings, directory, l) < 0) {
        Py_XDECREF(l);
        return NULL;
    }
    Py_DECREF(l);
    return l;
}

static int
contains(PyObject *listing, int which, PyObject *name)
{
    return PySet_Contains(PyTuple_GET_ITEM(listing, which), name);
}

/* Whether the directory of listing holds a file stem + one of suffixes. */
static int
holds_file(PyObject *listing, PyObject *stem, PyObject *suffixes)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(suffixes); i++) {
        PyObject *name = PyUnicode_Concat(stem, PyTuple_GET_ITEM(suffixes,
                                                                 i));
        int r = name ? contains(listing, NAMES, name) : -1;
        Py_XDECREF(name);
        if (r != 0) {
            return r;
        }
    }
    return 0;
}

/* A search path entry as FileFinder sees it: '' is the current directory,
 * relative entries are relative to it.  Absolute, clean entries (the
 * usual case) are taken as they are.  Entries PathFinder skips (not str)
 * give None. */
static PyObject *
absolute(struct pycds_searchpath *sp, PyObject *entry)
{
    if (!PyUnicode_Check(entry)) {
        Py_RETURN_NONE;
    }
    {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(entry, &n);
        if (s == NULL) {
            return NULL;
        }
        if (n > 1 && s[0] == '/' && s[n - 1] != '/' && !strstr(s, "//")
            && !strstr(s, "/./") && !strstr(s, "/../")
            && !(n >= 2 && strcmp(s + n - 2, "/.") == 0)
            && !(n >= 3 && strcmp(s + n - 3, "/..") == 0)) {
            return Py_NewRef(entry);
        }
        if (n == 0) {
            entry = sp->dot;
        }
    }
    return PyObject_CallOneArg(sp->abspath, entry);
}

/* The (directory, key) pairs of entries: the key is what PathFinder
 * looks the entry's finder up by in sys.path_importer_cache, the entry
 * itself, '' made the current directory. */
static PyObject *
absolute_all(struct pycds_searchpath *sp, PyObject *entries)
{
    PyObject *list = PyList_New(0), *it = PyObject_GetIter(entries), *e;
    if (list == NULL || it == NULL) {
        goto error;
    }
    while ((e = PyIter_Next(it)) != NULL) {
        PyObject *a = absolute(sp, e);
        if (a == Py_None) {
            Py_DECREF(e);
            Py_DECREF(a);
            continue;
        }
        PyObject *pair = NULL;
        if (a != NULL) {
            pair = PyTuple_Pack(2, a, PyUnicode_GET_LENGTH(e) ? e : a);
        }
        Py_DECREF(e);
        Py_XDECREF(a);
        if (pair == NULL || PyList_Append(list, pair) < 0) {
            Py_XDECREF(pair);
            goto error;
        }
        Py_DECREF(pair);
    }
    if (PyErr_Occurred()) {
        goto error;
    }
    Py_DECREF(it);
    return list;
error:
    Py_XDECREF(it);
    Py_XDECREF(list);
    return NULL;
}

/* New reference to the directories normal import would search. */
static PyObject *
search_dirs(struct pycds_searchpath *sp, PyObject *path)
{
    if (path != Py_None) {
        return absolute_all(sp, path);
    }
    PyObject *sys_path = PySys_GetObject("path");  /* borrowed */
    if (sys_path == NULL || !PyList_Check(sys_path)) {
        return PyList_New(0);
    }
    PyObject *key = PyList_AsTuple(sys_path);
    if (key == NULL) {
        return NULL;
    }
    int same = sp->path_key ? PyObject_RichCompareBool(key, sp->path_key,
                                                       Py_EQ) : 0;
    if (same < 0) {
        Py_DECREF(key);
        return NULL;
    }
    if (!same) {
        PyObject *dirs = absolute_all(sp, key);
        if (dirs == NULL) {
            Py_DECREF(key);
            return NULL;
        }
        Py_XSETREF(sp->path_key, key);
        Py_XSETREF(sp->path_dirs, dirs);
    }
    else {
        Py_DECREF(key);
    }
    return Py_NewRef(sp->path_dirs);
}

/* Whether directory d holds a regular package named tail: a directory
 * with an __init__ module.  A directory without one is at most a portion
 * of a namespace package, which loses to a module found later. */
static int
holds_package(struct pycds_searchpath *sp, PyObject *d, PyObject *listing_d,
              PyObject *tail)
{
    int r = contains(listing_d, DIRS, tail);
    if (r <= 0) {
        return r;
    }
    PyObject *sub = PyUnicode_FromFormat("%U/%U", d, tail);
    PyObject *l = sub ? listing(sp, sub) : NULL;
    Py_XDECREF(sub);
    if (l == NULL) {
        return -1;
    }
    return l == Py_None ? 0 : holds_file(l, sp->init, sp->suffixes);
}

/* How PathFinder searches a search path entry. */
enum { OTHER_FINDER, FILE_FINDER, NO_FINDER };

/* How PathFinder searches the entry cached under key: with a FileFinder
 * of the default path hook, as the archive assumes, not at all (None), or
 * with another finder; -1 on error.  The finder is got as PathFinder gets
 * it: from sys.path_importer_cache, else from sys.path_hooks, in order,
 * into the cache; so a program's hooks are called when and as normal
 * import would call them.  A FileFinder is checked once (the loaders it
 * was made with), then known by identity. */
static int
entry_finder(struct pycds_searchpath *sp, PyObject *cache, PyObject *key)
{
    PyObject *finder = PyDict_GetItemWithError(cache, key);
    if (finder != NULL) {
        Py_INCREF(finder);
    }
    else if (PyErr_Occurred()
             || (finder = PyObject_CallOneArg(sp->importer_cache,
                                              key)) == NULL) {
        return -1;
    }
    int r = finder == Py_None ? NO_FINDER
            : (PyObject *)Py_TYPE(finder) == sp->file_finder ? FILE_FINDER
            : OTHER_FINDER;
    if (r == FILE_FINDER) {
        PyObject *known = PyDict_GetItemWithError(sp->finders, key);
        if (known == NULL && PyErr_Occurred()) {
            r = -1;
        }
        else if (known != finder) {
            PyObject *loaders = PyObject_GetAttrString(finder, "_loaders");
            int same = loaders ? PyObject_RichCompareBool(
                loaders, sp->file_loaders, Py_EQ) : -1;
            Py_XDECREF(loaders);
            if (same < 0
                || (same && PyDict_SetItem(sp->finders, key, finder) < 0)) {
                r = -1;
            }
            else if (!same) {
                r = OTHER_FINDER;
            }
        }
    }
    Py_DECREF(finder);
    return r;
}

/* The rules of docs/IMPORT.md, "SHARE", steps 1 and 2. */
static const char *
check(struct pycds_searchpath *sp, PyObject *cache, PyObject *dirs,
      PyObject *home, PyObject *tail, PyObject *base, int package)
{
    Py_ssize_t i, n = PyList_GET_SIZE(dirs);
    for (i = 0; i < n; i++) {
        PyObject *d = PyTuple_GET_ITEM(PyList_GET_ITEM(dirs, i), 0);
        PyObject *key = PyTuple_GET_ITEM(PyList_GET_ITEM(dirs, i), 1);
        int r = entry_finder(sp, cache, key);
        if (r < 0) {
            return NULL;
        }
        int at_home = PyUnicode_Compare(d, home) == 0;
        if (r == OTHER_FINDER) {
            return "a search path entry up to its own has another finder "
                   "(sys.path_hooks, sys.path_importer_cache)";
        }
        if (r == NO_FINDER && at_home) {
            return "its directory is gone or no path hook takes it";
        }
        if (at_home) {
            break;
        }
        if (r == NO_FINDER) {
            continue;   /* PathFinder skips it */
        }
        PyObject *l = listing(sp, d);
        if (l == NULL) {
            return NULL;
        }
        if (l == Py_None) {
            return "a search path entry before it is not a directory";
        }
        r = holds_file(l, tail, sp->suffixes);
        if (r == 0) {
            r = holds_package(sp, d, l, tail);
        }
        if (r != 0) {
            return r < 0 ? NULL : "shadowed by a search path entry before it";
        }
    }
    if (i == n) {
        return "its directory is not on the search path";
    }
    PyObject *own = listing(sp, home);
    if (own == NULL) {
        return NULL;
    }
    if (own == Py_None) {
        return "its directory is gone";
    }
    if (package) {
        PyObject *pkgdir = PyUnicode_FromFormat("%U/%U", home, tail);
        PyObject *l = pkgdir ? listing(sp, pkgdir) : NULL;
        Py_XDECREF(pkgdir);
        if (l == NULL) {
            return NULL;
        }
        if (l == Py_None) {
            return "the package directory is gone";
        }
        int r = holds_file(l, sp->init, sp->ext_suffixes);
        if (r != 0) {
            return r < 0 ? NULL : "an extension __init__ shadows the package";
        }
        return contains(l, NAMES, base) == 1 ? "" : "the source is gone";
    }
    int r = holds_file(own, tail, sp->ext_suffixes);
    if (r != 0) {
        return r < 0 ? NULL : "an extension module shadows the source";
    }
    r = holds_package(sp, home, own, tail);
    if (r != 0) {
        return r < 0 ? NULL : "a package directory shadows the module";
    }
    return contains(own, NAMES, base) == 1 ? "" : "the source is gone";
}

PyObject *
pycds_searchpath_shadowed(struct pycds_searchpath *sp, PyObject *name,
                          PyObject *path, PyObject *origin, int package)
{
    PyObject *tail = NULL, *home = NULL, *base = NULL, *dirs = NULL;
    PyObject *result = NULL, *cache = NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(name);
    Py_ssize_t dot = PyUnicode_FindChar(name, '.', 0, n, -1);
    Py_ssize_t slash = PyUnicode_FindChar(origin, '/', 0,
                                          PyUnicode_GET_LENGTH(origin), -1);
    if (dot == -2 || slash < 0) {
        return slash < 0 ? PyUnicode_FromString("origin is not a path")
                         : NULL;
    }
    tail = PyUnicode_Substring(name, dot + 1, n);
    base = PyUnicode_Substring(origin, slash + 1,
                               PyUnicode_GET_LENGTH(origin));
    home = PyUnicode_Substring(origin, 0, slash);
    if (tail == NULL || base == NULL || home == NULL) {
        goto done;
    }
    if (package) {
        /* origin is HOME/tail/__init__.py: search for HOME */
        Py_ssize_t s2 = PyUnicode_FindChar(home, '/', 0,
                                           PyUnicode_GET_LENGTH(home), -1);
        if (s2 < 0) {
            result = PyUnicode_FromString("origin is not a path");
            goto done;
        }
        Py_SETREF(home, PyUnicode_Substring(home, 0, s2 ? s2 : 1));
        if (home == NULL) {
            goto done;
        }
    }
    /* Held: a path hook pycds calls may replace it. */
    cache = Py_XNewRef(PySys_GetObject("path_importer_cache"));
    if (cache == NULL || !PyDict_Check(cache)) {
        result = PyUnicode_FromString("sys.path_importer_cache is not a dict");
        goto done;
    }
    dirs = search_dirs(sp, path);
    if (dirs == NULL) {
        goto done;
    }
    const char *why = check(sp, cache, dirs, home, tail, base, package);
    if (why == NULL) {
        goto done;
    }
    result = *why ? PyUnicode_FromString(why) : Py_NewRef(Py_None);
done:
    Py_XDECREF(tail);
    Py_XDECREF(base);
    Py_XDECREF(home);
    Py_XDECREF(dirs);
    Py_XDECREF(cache);
    return result;
}

/* The _loaders of a FileFinder the default path hook makes:
 * FileFinder(path, *_get_supported_file_loaders()). */
static PyObject *
default_file_loaders(PyObject *ext, PyObject *file_finder)
{
    PyObject *args = NULL, *finder = NULL, *loaders = NULL;
    PyObject *root = PyUnicode_FromString("/");
    PyObject *details = root ? PyObject_CallMethod(
        ext, "_get_supported_file_loaders", NULL) : NULL;
    if (details != NULL && PyList_Check(details)
        && PyList_Insert(details, 0, root) == 0) {
        args = PyList_AsTuple(details);
    }
    finder = args ? PyObject_Call(file_finder, args, NULL) : NULL;
    loaders = finder ? PyObject_GetAttrString(finder, "_loaders") : NULL;
    if (details != NULL && !PyList_Check(details)) {
        PyErr_SetString(PyExc_TypeError,
                        "_get_supported_file_loaders() is not a list");
    }
    Py_XDECREF(root);
    Py_XDECREF(details);
    Py_XDECREF(args);
    Py_XDECREF(finder);
    return loaders;
}

int
pycds_searchpath_init(struct pycds_searchpath *sp)
{
    memset(sp, 0, sizeof(*sp));
    PyObject *ext = PyImport_ImportModule("_frozen_importlib_external");
    PyObject *ospath = PyImport_ImportModule("posixpath");
    if (ext == NULL || ospath == NULL) {
        goto error;
    }
    PyObject *e = PyObject_GetAttrString(ext, "EXTENSION_SUFFIXES");
    PyObject *s = PyObject_GetAttrString(ext, "SOURCE_SUFFIXES");
    PyObject *b = PyObject_GetAttrString(ext, "BYTECODE_SUFFIXES");
    if (e && s && b) {
        sp->ext_suffixes = PySequence_Tuple(e);
        PyObject *all = PySequence_Concat(e, s);
        if (all != NULL) {
            Py_SETREF(all, PySequence_InPlaceConcat(all, b));
        }
        sp->suffixes = all ? PySequence_Tuple(all) : NULL;
        Py_XDECREF(all);
    }
    Py_XDECREF(e);
    Py_XDECREF(s);
    Py_XDECREF(b);
    sp->abspath = PyObject_GetAttrString(ospath, "abspath");
    sp->listings = PyDict_New();
    sp->finders = PyDict_New();
    sp->file_finder = PyObject_GetAttrString(ext, "FileFinder");
    PyObject *path_finder = PyObject_GetAttrString(ext, "PathFinder");
    if (path_finder != NULL) {
        sp->importer_cache = PyObject_GetAttrString(path_finder,
                                                    "_path_importer_cache");
        Py_DECREF(path_finder);
    }
    sp->file_loaders = default_file_loaders(ext, sp->file_finder);
    sp->dot = PyUnicode_FromString(".");
    sp->init = PyUnicode_FromString("__init__");
    Py_DECREF(ext);
    Py_DECREF(ospath);
    if (sp->ext_suffixes == NULL || sp->suffixes == NULL
        || sp->abspath == NULL || sp->listings == NULL || sp->dot == NULL
        || sp->init == NULL || sp->finders == NULL || sp->file_finder == NULL
        || sp->importer_cache == NULL || sp->file_loaders == NULL) {
        pycds_searchpath_fini(sp);
        return -1;
    }
    return 0;
error:
    Py_XDECREF(ext);
    Py_XDECREF(ospath);
    return -1;
}

void
pycds_searchpath_invalidate(struct pycds_searchpath *sp)
{
    PyDict_Clear(sp->listings);
    PyDict_Clear(sp->finders);
    Py_CLEAR(sp->path_key);
    Py_CLEAR(sp->path_dirs);
}

void
pycds_searchpath_fini(struct pycds_searchpath *sp)
{
    Py_CLEAR(sp->listings);
    Py_CLEAR(sp->path_key);
    Py_CLEAR(sp->path_dirs);
    Py_CLEAR(sp->finders);
    Py_CLEAR(sp->importer_cache);
    Py_CLEAR(sp->file_finder);
    Py_CLEAR(sp->file_loaders);
    Py_CLEAR(sp->abspath);
    Py_CLEAR(sp->suffixes);
    Py_CLEAR(sp->ext_suffixes);
    Py_CLEAR(sp->dot);
    Py_CLEAR(sp->init);
}
