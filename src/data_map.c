/* pycds.load_data: the data of a data archive, in place (docs/DATA.md).
 *
 * A data archive is read as a code archive is: opened (header, key,
 * trust rule), its one entry served from the prelinked image where it
 * fits (mapped at its preferred address, its tables checked, fixed up),
 * else relocated from the archive with every object checked.  Nothing of
 * it is freed: the objects may be referenced from anywhere, and the
 * process keeps the file's objects per file, so that loading it again,
 * from any interpreter, hands out the same objects rather than a second
 * copy (the image's addresses are taken by the first). */
#include "pycds/pycds.h"

#include <stdlib.h>

/* The data loaded so far: a file (as it was mapped), whether from its
 * image, and its root 1-tuple (a reference owned here).  Process-wide,
 * like the mappings; never shrinks. */
struct loaded {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    int prelinked;
    PyObject *root;
};
static struct loaded *loaded;
static size_t nloaded, loaded_cap;

static int
same_file(const struct loaded *l, const struct stat *st, int prelinked)
{
    return l->dev == st->st_dev && l->ino == st->st_ino
           && l->size == st->st_size
           && l->mtime.tv_sec == st->st_mtim.tv_sec
           && l->mtime.tv_nsec == st->st_mtim.tv_nsec
           && l->prelinked == prelinked;
}

static PyObject *
find_loaded(const struct stat *st, int prelinked)
{
    for (size_t i = 0; i < nloaded; i++) {
        if (same_file(&loaded[i], st, prelinked)) {
            return loaded[i].root;
        }
    }
    return NULL;
}

static int
remember(const struct stat *st, int prelinked, PyObject *root)
{
    if (pycds_grow((void **)&loaded, &loaded_cap, nloaded + 1,
                   sizeof(*loaded)) < 0) {
        return -1;
    }
    loaded[nloaded++] = (struct loaded){st->st_dev, st->st_ino, st->st_size,
                                        st->st_mtim, prelinked, root};
    return 0;
}

/* A new reference to the root 1-tuple of the archive at path, opened
 * now. */
static PyObject *
open_root(const char *path, int flags, struct stat *st)
{
    struct pycds_archive *ar = pycds_archive_open(path, flags);
    PyObject *root = NULL;
    if (ar == NULL) {
        return NULL;
    }
    *st = ar->map.st;
    const struct pycds_entry *e = ar->index.nentries == 1
                                  ? pycds_archive_entry(ar, 0) : NULL;
    if (e != NULL && !(e->flags & PYCDS_ENTRY_DATA)) {
        pycds_refuse(path, "not a data archive: it holds code "
                     "(pycds.load_code reads it)");
    }
    else if (e == NULL && !PyErr_Occurred()) {
        pycds_refuse(path, "not a data archive: %u entries",
                     (unsigned)ar->index.nentries);
    }
    else if (e != NULL) {
        root = pycds_archive_entry_root(ar, 0);
    }
    /* The image's areas and the relocated objects stay. */
    pycds_archive_free(ar);
    return root;
}

PyObject *
pycds_load_data(const char *path, int flags)
{
    struct stat st;
    PyObject *root = NULL;
    int prelinked = (flags & PYCDS_OPEN_PRELINKED) != 0;
    /* A file already loaded, unchanged: its objects, not a copy (however
     * it was checked then), under the trust rule of this call.  What
     * stat() finds is what open would map unless the file is replaced in
     * between: then it is opened, as a new file. */
    if (stat(path, &st) == 0 && (root = find_loaded(&st, prelinked))) {
        const char *why = pycds_untrusted(&st, flags);
        if (why != NULL) {
            pycds_refuse_as(PYCDS_REFUSED_UNTRUSTED, path, NULL, "%s", why);
            return NULL;
        }
    }
    if (root == NULL) {
        root = open_root(path, flags, &st);
        if (root == NULL) {
            return NULL;
        }
        if (remember(&st, prelinked, root) < 0) {
            Py_DECREF(root);
            return NULL;
        }
    }
    return Py_NewRef(PyTuple_GET_ITEM(root, 0));
}
