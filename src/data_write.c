/* pycds.dump_data: Python data into a data archive (docs/DATA.md).
 *
 * The object is frozen first (list -> tuple, set -> frozenset, dict ->
 * FrozenDict), every object of it checked to be one an archive carries,
 * so that a refusal names where the object sits (obj['users'][3]) and
 * nothing is written.  The frozen tree is then written as a code archive
 * is, by the same writers: one entry, PYCDS_ENTRY_DATA, whose root is a
 * 1-tuple holding the data (so that None or a small int can be the data),
 * then the archive again with its prelinked image. */
#include "pycds/pycds.h"

#include <string.h>

/* Where the object being frozen sits: a chain up to the root, on the C
 * stack, formatted only for a refusal. */
enum step { AT_INDEX, AT_VALUE, AT_KEY, AT_ELEMENT };
struct where {
    const struct where *up;
    enum step step;
    PyObject *key;            /* AT_VALUE: obj[key] */
    Py_ssize_t index;         /* AT_INDEX: obj[index]; AT_KEY: the index-th
                               * key, obj.keys()[index]; AT_ELEMENT: an
                               * element of a set, obj{...} */
    unsigned depth;           /* containers around it */
};
#define WHERE(up, step, key, index) \
    {(up), (step), (key), (index), (up) ? (up)->depth + 1 : 1}

struct freezer {
    const char *path;
    /* id(original) -> (frozen, height) for the containers frozen so far:
     * an object met twice is frozen once (the archive keeps the sharing),
     * and a container met again while it is being frozen is a cycle
     * (None in the memo until it is done). */
    PyObject *memo;
};

static int
append_where(PyObject *parts, const struct where *w)
{
    if (w == NULL) {
        PyObject *s = PyUnicode_FromString("obj");
        int rc = s ? PyList_Append(parts, s) : -1;
        Py_XDECREF(s);
        return rc;
    }
    if (append_where(parts, w->up) < 0) {
        return -1;
    }
    PyObject *s = w->step == AT_VALUE
                      ? PyUnicode_FromFormat("[%.200R]", w->key)
                  : w->step == AT_INDEX
                      ? PyUnicode_FromFormat("[%zd]", w->index)
                  : w->step == AT_KEY
                      ? PyUnicode_FromFormat(".keys()[%zd]", w->index)
                  : PyUnicode_FromString("{...}");
    int rc = s ? PyList_Append(parts, s) : -1;
    Py_XDECREF(s);
    return rc;
}

/* ArchiveError (unarchivable) about op at w; -1. */
static int
refuse_at(struct freezer *f, const struct where *w, PyObject *op,
          const char *why)
{
    PyObject *parts = PyList_New(0), *empty = PyUnicode_New(0, 0);
    PyObject *text = NULL;
    if (parts != NULL && empty != NULL && append_where(parts, w) == 0) {
        /* A deep one shows its first and last steps: the message must
         * fit a refusal's. */
        Py_ssize_t n = PyList_GET_SIZE(parts);
        PyObject *skipped = n > 12 ? PyUnicode_FromFormat(
            "...%zd more...", n - 10) : NULL;
        if (n <= 12 || (skipped != NULL
                        && PyList_SetSlice(parts, 4, n - 6, NULL) == 0
                        && PyList_Insert(parts, 4, skipped) == 0)) {
            text = PyUnicode_Join(empty, parts);
        }
        Py_XDECREF(skipped);
    }
    Py_XDECREF(parts);
    Py_XDECREF(empty);
    const char *at = text ? PyUnicode_AsUTF8(text) : NULL;
    if (at == NULL) {
        Py_XDECREF(text);
        return -1;
    }
    pycds_refuse_as(PYCDS_REFUSED_UNARCHIVABLE, f->path, NULL,
                    "%s: %s of type '%.100s'", at, why,
                    Py_TYPE(op)->tp_name);
    Py_DECREF(text);
    return -1;
}

static PyObject *freeze(struct freezer *f, PyObject *op,
                        const struct where *w, unsigned *height);

/* The frozen items of seq (a list, tuple or set), as a tuple, with the
 * largest height among them. */
static PyObject *
freeze_items(struct freezer *f, PyObject *seq, int indexed,
             const struct where *w, unsigned *height)
{
    PyObject *items = PySequence_Tuple(seq);
    if (items == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    PyObject *out = PyTuple_New(n);
    *height = 0;
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        struct where here = WHERE(w, indexed ? AT_INDEX : AT_ELEMENT, NULL,
                                  i);
        unsigned h;
        PyObject *x = freeze(f, PyTuple_GET_ITEM(items, i), &here, &h);
        if (x == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, i, x);
        *height = h > *height ? h : *height;
    }
    Py_DECREF(items);
    return out;
}

static PyObject *
freeze_dict(struct freezer *f, PyObject *d, const struct where *w,
            unsigned *height)
{
    Py_ssize_t n = PyDict_GET_SIZE(d), pos = 0, i = 0;
    PyObject *keys = PyTuple_New(n), *values = PyTuple_New(n), *k, *v;
    PyObject *fd = NULL;
    unsigned kh = 0, vh = 0, h;
    if (keys == NULL || values == NULL) {
        goto done;
    }
    while (PyDict_Next(d, &pos, &k, &v)) {
        if (i == n) {
            PyErr_SetString(PyExc_RuntimeError, "dict changed size during "
                            "dump_data");
            goto done;
        }
        struct where at_key = WHERE(w, AT_KEY, NULL, i);
        struct where at_value = WHERE(w, AT_VALUE, k, i);
        PyObject *fk = freeze(f, k, &at_key, &h);
        if (fk == NULL) {
            goto done;
        }
        PyTuple_SET_ITEM(keys, i, fk);
        kh = h > kh ? h : kh;
        PyObject *fv = freeze(f, v, &at_value, &h);
        if (fv == NULL) {
            goto done;
        }
        PyTuple_SET_ITEM(values, i, fv);
        vh = h > vh ? h : vh;
        i++;
    }
    if (i != n) {
        PyErr_SetString(PyExc_RuntimeError, "dict changed size during "
                        "dump_data");
        goto done;
    }
    /* The FrozenDict, then its keys and values tuples, then theirs. */
    *height = 2 + (kh > vh ? kh : vh);
    fd = pycds_frozendict_from_items(keys, values);
done:
    Py_XDECREF(keys);
    Py_XDECREF(values);
    return fd;
}

/* A FrozenDict's keys are frozen already; its values may be anything. */
static PyObject *
freeze_frozendict(struct freezer *f, PyObject *fd, const struct where *w,
                  unsigned *height)
{
    PyObject *d = PyDict_New();
    pycds_FrozenDictObject *x = (pycds_FrozenDictObject *)fd;
    for (Py_ssize_t i = 0; d != NULL && i < PyTuple_GET_SIZE(x->keys); i++) {
        if (PyDict_SetItem(d, PyTuple_GET_ITEM(x->keys, i),
                           PyTuple_GET_ITEM(x->values, i)) < 0) {
            Py_CLEAR(d);
        }
    }
    PyObject *out = d ? freeze_dict(f, d, w, height) : NULL;
    Py_XDECREF(d);
    return out;
}

static int
is_scalar(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    return op == Py_None || tp == &PyBool_Type || tp == &PyLong_Type
           || tp == &PyFloat_Type || tp == &PyComplex_Type
           || tp == &PyUnicode_Type || tp == &PyBytes_Type;
}

static PyObject *
freeze_container(struct freezer *f, PyObject *op, const struct where *w,
                 unsigned *height)
{
    PyTypeObject *tp = Py_TYPE(op);
    if (tp == &PyTuple_Type || tp == &PyList_Type) {
        PyObject *t = freeze_items(f, op, 1, w, height);
        ++*height;
        return t;
    }
    if (tp == &PyFrozenSet_Type || tp == &PySet_Type) {
        /* Archived as a tuple of its elements, built at load, in the
         * order of their marshal bytes, which a FrozenDict has none of. */
        PyObject *t = freeze_items(f, op, 0, w, height);
        PyObject *fs = t ? PyFrozenSet_New(t) : NULL;
        PyObject *sorted = fs ? pycds_sorted_elements(fs) : NULL;
        Py_XDECREF(t);
        if (sorted == NULL && fs != NULL
            && PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            refuse_at(f, w, op, "a FrozenDict cannot be archived in a set: "
                      "object");
        }
        if (sorted == NULL) {
            Py_CLEAR(fs);
        }
        Py_XDECREF(sorted);
        ++*height;
        return fs;
    }
    if (tp == &PyDict_Type) {
        return freeze_dict(f, op, w, height);
    }
    if (tp == &pycds_FrozenDictType) {
        return freeze_frozendict(f, op, w, height);
    }
    refuse_at(f, w, op, "cannot archive object");
    return NULL;
}

static PyObject *
freeze(struct freezer *f, PyObject *op, const struct where *w,
       unsigned *height)
{
    if (is_scalar(op)) {
        if (PyUnicode_Check(op) && pycds_layout_size(op) < 0) {
            refuse_at(f, w, op, "cannot archive a non-compact str");
            return NULL;
        }
        *height = 1;
        return Py_NewRef(op);
    }
    PyObject *id = PyLong_FromVoidPtr(op);
    if (id == NULL) {
        return NULL;
    }
    PyObject *seen = PyDict_GetItemWithError(f->memo, id), *out = NULL;
    if (seen != NULL) {
        if (seen == Py_None) {
            refuse_at(f, w, op, "a reference cycle through an object");
        }
        else {
            out = Py_NewRef(PyTuple_GET_ITEM(seen, 0));
            *height = (unsigned)PyLong_AsUnsignedLong(
                PyTuple_GET_ITEM(seen, 1));
        }
        goto done;
    }
    if (PyErr_Occurred() || PyDict_SetItem(f->memo, id, Py_None) < 0) {
        goto done;
    }
    /* Each container adds one to the height, and the root's 1-tuple one
     * more: refused on the way down, before C recursion runs deep. */
    if ((w ? w->depth : 0) + 2 > PYCDS_MAX_NESTING) {
        refuse_at(f, w, op, "nesting too deep: object");
        goto done;
    }
    out = freeze_container(f, op, w, height);
    if (out != NULL && *height + 1 > PYCDS_MAX_NESTING) {
        refuse_at(f, w, op, "nesting too deep: object");
        Py_CLEAR(out);
    }
    if (out != NULL) {
        PyObject *entry = Py_BuildValue("(OI)", out, *height);
        if (entry == NULL || PyDict_SetItem(f->memo, id, entry) < 0) {
            Py_CLEAR(out);
        }
        Py_XDECREF(entry);
    }
done:
    Py_DECREF(id);
    return out;
}

int
pycds_dump_data(const char *path, PyObject *obj)
{
    struct freezer f = {path, PyDict_New()};
    PyObject *frozen = NULL, *entries = NULL;
    unsigned height;
    int rc = -1;
    if (f.memo == NULL) {
        return -1;
    }
    /* The memo holds ids of obj's objects: obj keeps them alive. */
    frozen = freeze(&f, obj, NULL, &height);
    Py_CLEAR(f.memo);
    if (frozen == NULL) {
        goto done;
    }
    entries = Py_BuildValue("[(s(O)sI)]", PYCDS_DATA_ENTRY_NAME, frozen, "",
                            (unsigned)PYCDS_ENTRY_DATA);
    if (entries == NULL
        || pycds_dump(path, entries, PYCDS_VALIDATE_UNCHECKED) < 0) {
        goto done;
    }
    /* Without hashes: the image serves every hash seed. */
    rc = pycds_prelink(path, path, 0, 0, NULL, NULL, NULL, NULL, NULL);
done:
    Py_XDECREF(frozen);
    Py_XDECREF(entries);
    return rc;
}
