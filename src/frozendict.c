/* pycds.FrozenDict: the read-only mapping a dict becomes in a data
 * archive (docs/DATA.md).
 *
 * Its table does not depend on the process: a dict's hashes of str and
 * bytes keys change with PYTHONHASHSEED, so a table laid out by DUMP
 * would be wrong in every other process.  A FrozenDict hashes its keys
 * with its own key hash (pycds_key_hash, seed-independent), stored at
 * DUMP next to the keys, and its whole state is three objects an archive
 * already carries: a tuple of keys (insertion order), a tuple of values
 * and a bytes table.  In a data image it lies in the mapping like any
 * tuple; only its ob_type is fixed per process (PYCDS_FIXUP_FROZENDICT),
 * and a lookup writes nothing: the pages stay shared.
 *
 * The table: uint64_t hashes[n] (the key hash of each key, in order),
 * then uint32_t buckets[nbuckets] (a power of two >= 2n, none when n is
 * 0), each 0 (empty) or 1 + a key's index; open addressing, linear
 * probing from hash & (nbuckets - 1). */
#include "pycds/pycds.h"

#include <math.h>
#include <string.h>

/* Key hash tags: keys of different kinds rarely collide. */
#define TAG_NONE 0x6e6f6e65ULL
#define TAG_NUMBER 0x6e756d62ULL
#define TAG_TUPLE 0x7475706cULL
#define TAG_FROZENSET 0x66736574ULL
#define TAG_FROZENDICT 0x66646963ULL
#define TAG_NAN 0x6e616e21ULL

/* splitmix64's finaliser: spreads a Python hash over 64 bits. */
static inline uint64_t
mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t
hash_bytes(uint8_t tag, const void *data, size_t size)
{
    const void *parts[] = {&tag, data};
    size_t sizes[] = {1, size};
    return pycds_xxh3_parts(parts, sizes, 2);
}

/* Python's numeric hash (docs: "Hashing of numeric types") does not
 * depend on the hash seed and is equal for equal numbers of any type
 * (1 == 1.0 == True == 1+0j, and Fraction(1), Decimal(1)); a NaN, equal
 * to nothing, hashes by identity in CPython, here to one value. */
static int
number_hash(PyObject *key, PyTypeObject *base, uint64_t *h)
{
    if (base == &PyFloat_Type && isnan(PyFloat_AS_DOUBLE(key))) {
        *h = mix(TAG_NAN);
        return 0;
    }
    if (base == &PyComplex_Type) {
        Py_complex c = PyComplex_AsCComplex(key);
        if (isnan(c.real) || isnan(c.imag)) {
            *h = mix(TAG_NAN);
            return 0;
        }
    }
    Py_hash_t x = base ? base->tp_hash(key) : PyObject_Hash(key);
    if (x == -1 && PyErr_Occurred()) {
        return -1;
    }
    *h = mix((uint64_t)x + TAG_NUMBER);
    return 0;
}

static int frozendict_key_hash(PyObject *fd, uint64_t *h);

static int
key_hash_items(PyObject *seq, int ordered, uint64_t *h)
{
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    uint64_t acc = ordered ? TAG_TUPLE : TAG_FROZENSET, x;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (pycds_key_hash(PyTuple_GET_ITEM(seq, i), &x) < 0) {
            return -1;
        }
        /* A tuple's order counts, a frozenset's does not. */
        acc = ordered ? (acc ^ x) * 0x9E3779B97F4A7C15ULL + (acc >> 29)
                      : acc + mix(x);
    }
    *h = mix(acc + (uint64_t)n);
    return 0;
}

int
pycds_key_hash(PyObject *key, uint64_t *h)
{
    if (key == Py_None) {
        *h = mix(TAG_NONE);
        return 0;
    }
    if (PyUnicode_Check(key)) {
        /* Every str has its canonical kind (the narrowest that holds its
         * characters): equal strings have equal kind and data. */
        *h = hash_bytes((uint8_t)PyUnicode_KIND(key), PyUnicode_DATA(key),
                        PyUnicode_GET_LENGTH(key) * PyUnicode_KIND(key));
        return 0;
    }
    if (PyBytes_Check(key)) {
        *h = hash_bytes('b', PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key));
        return 0;
    }
    if (PyLong_Check(key)) {
        return number_hash(key, &PyLong_Type, h);
    }
    if (PyFloat_Check(key)) {
        return number_hash(key, &PyFloat_Type, h);
    }
    if (PyComplex_Check(key)) {
        return number_hash(key, &PyComplex_Type, h);
    }
    if (PyTuple_Check(key) || PyFrozenSet_Check(key)) {
        PyObject *items = PyTuple_Check(key) ? Py_NewRef(key)
                                             : PySequence_Tuple(key);
        if (items == NULL) {
            return -1;
        }
        int rc = -1;
        if (Py_EnterRecursiveCall(" in pycds key hash") == 0) {
            rc = key_hash_items(items, PyTuple_Check(key), h);
            Py_LeaveRecursiveCall();
        }
        Py_DECREF(items);
        return rc;
    }
    if (PyObject_TypeCheck(key, &pycds_FrozenDictType)) {
        int rc = -1;
        if (Py_EnterRecursiveCall(" in pycds key hash") == 0) {
            rc = frozendict_key_hash(key, h);
            Py_LeaveRecursiveCall();
        }
        return rc;
    }
    /* Anything else (unhashable ones raise TypeError here, as a dict
     * does): its own hash, taken as a number's, so that a Fraction or a
     * Decimal finds an equal int or float key.  No archived key is of
     * such a type. */
    return number_hash(key, NULL, h);
}

/* ---- the table -------------------------------------------------------- */

#define FD(op) ((pycds_FrozenDictObject *)(op))

/* The parts of a table of n keys, its size checked; 0, or -1 if the
 * table is malformed.  A damaged image must not make a lookup read
 * outside its table, nor loop. */
static int
table_parts(PyObject *fd, Py_ssize_t *n, const uint64_t **hashes,
            const uint32_t **buckets, size_t *mask)
{
    PyObject *keys = FD(fd)->keys, *values = FD(fd)->values;
    PyObject *table = FD(fd)->table;
    *n = PyTuple_GET_SIZE(keys);
    size_t size = PyBytes_GET_SIZE(table);
    size_t nb = *n ? (size - 8 * (size_t)*n) / 4 : 0;
    if (PyTuple_GET_SIZE(values) != *n || (*n && size < 8 * (size_t)*n)
        || (*n == 0 && size != 0) || (nb & (nb - 1)) != 0
        || nb < 2 * (size_t)*n || 8 * (size_t)*n + 4 * nb != size) {
        return -1;
    }
    *hashes = (const uint64_t *)PyBytes_AS_STRING(table);
    *buckets = (const uint32_t *)(*hashes + *n);
    *mask = nb - 1;
    return 0;
}

const char *
pycds_frozendict_check(PyObject *fd)
{
    Py_ssize_t n;
    const uint64_t *hashes;
    const uint32_t *buckets;
    size_t mask;
    if (!PyTuple_CheckExact(FD(fd)->keys)
        || !PyTuple_CheckExact(FD(fd)->values)
        || !PyBytes_CheckExact(FD(fd)->table)) {
        return "a FrozenDict's fields have the wrong types";
    }
    if (table_parts(fd, &n, &hashes, &buckets, &mask) < 0) {
        return "a FrozenDict's table does not match its keys";
    }
    return NULL;
}

/* Index of key in fd, -1 if absent, -2 on error. */
static Py_ssize_t
lookup(PyObject *fd, PyObject *key)
{
    Py_ssize_t n;
    const uint64_t *hashes;
    const uint32_t *buckets;
    size_t mask;
    uint64_t h;
    if (pycds_key_hash(key, &h) < 0) {
        return -2;
    }
    if (table_parts(fd, &n, &hashes, &buckets, &mask) < 0) {
        PyErr_SetString(pycds_ArchiveError, "a FrozenDict's table is "
                        "malformed");
        return -2;
    }
    for (size_t i = h & mask, probes = 0; n && probes <= mask;
         i = (i + 1) & mask, probes++) {
        uint32_t b = buckets[i];
        if (b == 0) {
            break;
        }
        if ((Py_ssize_t)(b - 1) >= n || hashes[b - 1] != h) {
            continue;
        }
        /* Borrowed: the keys tuple cannot change, and the caller holds
         * fd.  Not taking a reference writes nothing to the key (a 3.11
         * image's page stays shared). */
        PyObject *k = PyTuple_GET_ITEM(FD(fd)->keys, b - 1);
        if (k == key) {
            return b - 1;
        }
        int eq = PyObject_RichCompareBool(k, key, Py_EQ);
        if (eq != 0) {
            return eq < 0 ? -2 : (Py_ssize_t)(b - 1);
        }
    }
    return -1;
}

static int
frozendict_key_hash(PyObject *fd, uint64_t *h)
{
    Py_ssize_t n = PyTuple_GET_SIZE(FD(fd)->keys);
    uint64_t acc = TAG_FROZENDICT, k, v;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (pycds_key_hash(PyTuple_GET_ITEM(FD(fd)->keys, i), &k) < 0
            || pycds_key_hash(PyTuple_GET_ITEM(FD(fd)->values, i), &v) < 0) {
            return -1;
        }
        acc += mix(k * 0x9E3779B97F4A7C15ULL + v);
    }
    *h = mix(acc + (uint64_t)n);
    return 0;
}

/* A FrozenDict of keys and values (tuples of the same length, the keys
 * distinct), its table built. */
static PyObject *
frozendict_build(PyTypeObject *type, PyObject *keys, PyObject *values)
{
    Py_ssize_t n = PyTuple_GET_SIZE(keys);
    size_t nb = 0;
    if (n > (Py_ssize_t)(UINT32_MAX / 4)) {
        PyErr_SetString(PyExc_OverflowError, "too many keys for a "
                        "FrozenDict");
        return NULL;
    }
    if (n) {
        for (nb = 8; nb < 2 * (size_t)n; nb *= 2) {
        }
    }
    PyObject *table = PyBytes_FromStringAndSize(NULL, 8 * n + 4 * nb);
    if (table == NULL) {
        return NULL;
    }
    uint64_t *hashes = (uint64_t *)PyBytes_AS_STRING(table);
    uint32_t *buckets = (uint32_t *)(hashes + n);
    memset(buckets, 0, 4 * nb);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (pycds_key_hash(PyTuple_GET_ITEM(keys, i), &hashes[i]) < 0) {
            Py_DECREF(table);
            return NULL;
        }
        size_t b = hashes[i] & (nb - 1);
        while (buckets[b] != 0) {
            b = (b + 1) & (nb - 1);
        }
        buckets[b] = (uint32_t)(i + 1);
    }
    pycds_FrozenDictObject *fd = PyObject_GC_New(pycds_FrozenDictObject,
                                                 type);
    if (fd == NULL) {
        Py_DECREF(table);
        return NULL;
    }
    fd->keys = Py_NewRef(keys);
    fd->values = Py_NewRef(values);
    fd->table = table;
    PyObject_GC_Track(fd);
    return (PyObject *)fd;
}

PyObject *
pycds_frozendict_from_items(PyObject *keys, PyObject *values)
{
    return frozendict_build(&pycds_FrozenDictType, keys, values);
}

/* ---- the type --------------------------------------------------------- */

static PyObject *
frozendict_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* Whatever dict() takes, in the order dict() keeps. */
    PyObject *d = PyObject_Call((PyObject *)&PyDict_Type, args, kwds);
    if (d == NULL) {
        return NULL;
    }
    PyObject *keys = PySequence_Tuple(d), *values = NULL, *fd = NULL;
    PyObject *vlist = keys ? PyDict_Values(d) : NULL;
    if (vlist != NULL) {
        values = PyList_AsTuple(vlist);
    }
    if (values != NULL) {
        fd = frozendict_build(type, keys, values);
    }
    Py_XDECREF(keys);
    Py_XDECREF(vlist);
    Py_XDECREF(values);
    Py_DECREF(d);
    return fd;
}

static void
frozendict_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    Py_XDECREF(FD(self)->keys);
    Py_XDECREF(FD(self)->values);
    Py_XDECREF(FD(self)->table);
    PyObject_GC_Del(self);
}

static int
frozendict_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(FD(self)->keys);
    Py_VISIT(FD(self)->values);
    Py_VISIT(FD(self)->table);
    return 0;
}

static Py_ssize_t
frozendict_len(PyObject *self)
{
    return PyTuple_GET_SIZE(FD(self)->keys);
}

static PyObject *
frozendict_getitem(PyObject *self, PyObject *key)
{
    Py_ssize_t i = lookup(self, key);
    if (i < 0) {
        if (i == -1) {
            PyErr_SetObject(PyExc_KeyError, key);
        }
        return NULL;
    }
    return Py_NewRef(PyTuple_GET_ITEM(FD(self)->values, i));
}

static int
frozendict_contains(PyObject *self, PyObject *key)
{
    Py_ssize_t i = lookup(self, key);
    return i == -2 ? -1 : i >= 0;
}

static PyObject *
frozendict_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get expected 1 or 2 arguments, got "
                     "%zd", nargs);
        return NULL;
    }
    Py_ssize_t i = lookup(self, args[0]);
    if (i == -2) {
        return NULL;
    }
    if (i == -1) {
        return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    }
    return Py_NewRef(PyTuple_GET_ITEM(FD(self)->values, i));
}

static PyObject *
frozendict_iter(PyObject *self)
{
    return PyObject_GetIter(FD(self)->keys);
}

/* keys(), values(), items(): the views collections.abc.Mapping gives. */
static PyObject *
view(PyObject *self, const char *name)
{
    PyObject *abc = PyImport_ImportModule("collections.abc");
    if (abc == NULL) {
        return NULL;
    }
    PyObject *v = PyObject_CallMethod(abc, name, "O", self);
    Py_DECREF(abc);
    return v;
}

static PyObject *
frozendict_keys(PyObject *self, PyObject *unused)
{
    return view(self, "KeysView");
}

static PyObject *
frozendict_values(PyObject *self, PyObject *unused)
{
    return view(self, "ValuesView");
}

static PyObject *
frozendict_items(PyObject *self, PyObject *unused)
{
    return view(self, "ItemsView");
}

/* A dict with the same items (in order). */
static PyObject *
as_dict(PyObject *self)
{
    PyObject *d = PyDict_New();
    Py_ssize_t n = PyTuple_GET_SIZE(FD(self)->keys);
    for (Py_ssize_t i = 0; d != NULL && i < n; i++) {
        if (PyDict_SetItem(d, PyTuple_GET_ITEM(FD(self)->keys, i),
                           PyTuple_GET_ITEM(FD(self)->values, i)) < 0) {
            Py_CLEAR(d);
        }
    }
    return d;
}

/* Pickles (and copies) as the dict it was made from. */
static PyObject *
frozendict_reduce(PyObject *self, PyObject *unused)
{
    PyObject *d = as_dict(self);
    if (d == NULL) {
        return NULL;
    }
    return Py_BuildValue("O(N)", (PyObject *)&PyDict_Type, d);
}

static PyObject *
frozendict_repr(PyObject *self)
{
    PyObject *d = as_dict(self);
    if (d == NULL) {
        return NULL;
    }
    PyObject *r = PyUnicode_FromFormat("FrozenDict(%R)", d);
    Py_DECREF(d);
    return r;
}

/* Equal to a dict or a FrozenDict with equal items, in any order, as
 * dicts compare. */
static PyObject *
frozendict_richcompare(PyObject *self, PyObject *other, int op)
{
    int is_fd = PyObject_TypeCheck(other, &pycds_FrozenDictType);
    if ((op != Py_EQ && op != Py_NE) || !(is_fd || PyDict_Check(other))) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(FD(self)->keys);
    int equal = PyObject_Size(other) == n;
    for (Py_ssize_t i = 0; equal && i < n; i++) {
        PyObject *key = PyTuple_GET_ITEM(FD(self)->keys, i);
        PyObject *theirs;
        if (is_fd) {
            Py_ssize_t j = lookup(other, key);
            if (j == -2) {
                return NULL;
            }
            theirs = j < 0 ? NULL
                           : Py_NewRef(PyTuple_GET_ITEM(FD(other)->values, j));
        }
        else {
            theirs = Py_XNewRef(PyDict_GetItemWithError(other, key));
            if (theirs == NULL && PyErr_Occurred()) {
                return NULL;
            }
        }
        if (theirs == NULL) {
            equal = 0;
            break;
        }
        equal = PyObject_RichCompareBool(PyTuple_GET_ITEM(FD(self)->values,
                                                          i), theirs, Py_EQ);
        Py_DECREF(theirs);
        if (equal < 0) {
            return NULL;
        }
    }
    return PyBool_FromLong(equal == (op == Py_EQ));
}

/* Hashable when its values are: the key hash, which equal FrozenDicts
 * share whatever their order. */
static Py_hash_t
frozendict_hash(PyObject *self)
{
    uint64_t h;
    if (frozendict_key_hash(self, &h) < 0) {
        return -1;
    }
    Py_hash_t x = (Py_hash_t)h;
    return x == -1 ? -2 : x;
}

static PyMappingMethods frozendict_as_mapping = {
    .mp_length = frozendict_len,
    .mp_subscript = frozendict_getitem,
};

static PySequenceMethods frozendict_as_sequence = {
    .sq_contains = frozendict_contains,
};

static PyMethodDef frozendict_methods[] = {
    {"get", (PyCFunction)(void (*)(void))frozendict_get, METH_FASTCALL,
     "get(key, default=None)"},
    {"keys", frozendict_keys, METH_NOARGS, "a KeysView"},
    {"values", frozendict_values, METH_NOARGS, "a ValuesView"},
    {"items", frozendict_items, METH_NOARGS, "an ItemsView"},
    {"__reduce__", frozendict_reduce, METH_NOARGS, "pickles as a dict"},
    {NULL},
};

PyTypeObject pycds_FrozenDictType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pycds.FrozenDict",
    .tp_basicsize = sizeof(pycds_FrozenDictObject),
    .tp_dealloc = frozendict_dealloc,
    .tp_repr = frozendict_repr,
    .tp_as_sequence = &frozendict_as_sequence,
    .tp_as_mapping = &frozendict_as_mapping,
    .tp_hash = frozendict_hash,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
                | Py_TPFLAGS_MAPPING,
    .tp_doc = "FrozenDict(mapping_or_items=(), /, **kwargs): a read-only "
              "mapping in insertion order whose table does not depend on "
              "the hash seed; what a dict becomes in a data archive",
    .tp_traverse = frozendict_traverse,
    .tp_richcompare = frozendict_richcompare,
    .tp_iter = frozendict_iter,
    .tp_methods = frozendict_methods,
    .tp_new = frozendict_new,
};
