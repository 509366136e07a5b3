/* libFuzzer target: the archive reader and relocator (SHARE's side).
 *
 * Each input is written to a memfd, read by pycds-dump's verify and info
 * (pycds_verify, pycds_inspect: they read any archive), and opened as an
 * archive the way SHARE opens one (pycds_archive_open); then every entry
 * is checked (pycds_archive_entry), looked up by name and
 * relocated (pycds_archive_entry_code), and each code object that comes out
 * is handed to a few CPython operations that read its whole object graph
 * (hash, repr of its constants, its names as UTF-8); the data of a data
 * archive's entry (pycds_archive_entry_root) is walked, each FrozenDict
 * looked up by each of its keys, and hashed and printed whole.  Refusals
 * (ArchiveError) are the expected outcome of almost every input; a crash,
 * a sanitizer report or any exception other than ArchiveError/MemoryError
 * is a bug.
 *
 * The build defines FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, under which
 * checksum mismatches are accepted (include/pycds/pycds.h): the inputs are
 * crafted files that recompute their checksums.  CPython (pyenv 3.11.7's
 * libpython) is embedded and initialised once.  See fuzz/README.md. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "pycds/pycds.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    Py_InitializeEx(0);
    pycds_ArchiveError = PyErr_NewException("pycds.ArchiveError", NULL,
                                            NULL);
    if (pycds_ArchiveError == NULL
        || PyType_Ready(&pycds_FrozenDictType) < 0) {
        PyErr_Print();
        abort();
    }
    return 0;
}

/* Anything but a refusal is a finding. */
static void
expect_refusal(const char *where)
{
    PyObject *exc = PyErr_Occurred();
    if (exc == NULL) {
        return;
    }
    if (PyErr_GivenExceptionMatches(exc, pycds_ArchiveError)
        || PyErr_GivenExceptionMatches(exc, PyExc_MemoryError)) {
        if (getenv("PYCDS_FUZZ_VERBOSE") != NULL) {
            fprintf(stderr, "refused at %s: ", where);
            PyErr_Print();   /* clears it */
        }
        PyErr_Clear();
        return;
    }
    fprintf(stderr, "archive_fuzzer: unexpected exception in %s:\n", where);
    PyErr_Print();
    abort();
}

/* Operations that read every object a code object refers to. */
static void
exercise(PyObject *code)
{
    PyCodeObject *co = (PyCodeObject *)code;
    if (PyObject_Hash(code) == -1) {
        expect_refusal("hash");
    }
    PyObject *r = PyObject_Repr(co->co_consts);
    if (r == NULL) {
        PyErr_Clear();   /* RecursionError and the like: not a crash */
    }
    Py_XDECREF(r);
    PyObject *tuples[] = {co->co_names, co->co_localsplusnames};
    for (size_t t = 0; t < 2; t++) {
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(tuples[t]); k++) {
            if (PyUnicode_AsUTF8(PyTuple_GET_ITEM(tuples[t], k)) == NULL) {
                PyErr_Clear();   /* lone surrogates cannot be encoded */
            }
        }
    }
    if (PyUnicode_AsUTF8(co->co_filename) == NULL
        || PyUnicode_AsUTF8(co->co_qualname) == NULL) {
        PyErr_Clear();
    }
}

/* A data entry's failures that are no bug: a crafted table whose hashes
 * do not match its keys makes a lookup miss (KeyError); printing or
 * hashing nested data may run out of recursion. */
static void
expect_data_error(const char *where)
{
    if (PyErr_ExceptionMatches(PyExc_KeyError)
        || PyErr_ExceptionMatches(PyExc_RecursionError)) {
        PyErr_Clear();
    }
    expect_refusal(where);
}

/* Reads every object of a data entry: relocation bounds the nesting. */
static void
exercise_data(PyObject *op, int depth)
{
    if (depth > PYCDS_MAX_NESTING) {
        fprintf(stderr, "archive_fuzzer: data nested deeper than %d\n",
                PYCDS_MAX_NESTING);
        abort();
    }
    if (PyTuple_CheckExact(op)) {
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(op); k++) {
            exercise_data(PyTuple_GET_ITEM(op, k), depth + 1);
        }
    }
    else if (Py_IS_TYPE(op, &pycds_FrozenDictType)) {
        pycds_FrozenDictObject *fd = (pycds_FrozenDictObject *)op;
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(fd->keys); k++) {
            PyObject *key = PyTuple_GET_ITEM(fd->keys, k);
            PyObject *v = PyObject_GetItem(op, key);
            if (v == NULL) {
                expect_data_error("FrozenDict lookup");
            }
            Py_XDECREF(v);
            exercise_data(key, depth + 1);
            exercise_data(PyTuple_GET_ITEM(fd->values, k), depth + 1);
        }
    }
    else if (PyFrozenSet_CheckExact(op)) {
        PyObject *items = PySequence_Tuple(op);
        if (items == NULL) {
            expect_data_error("frozenset");
            return;
        }
        exercise_data(items, depth);
        Py_DECREF(items);
    }
    else if (PyUnicode_CheckExact(op) && PyUnicode_AsUTF8(op) == NULL) {
        PyErr_Clear();   /* lone surrogates cannot be encoded */
    }
}

static void
exercise_root(PyObject *root)
{
    PyObject *data = PyTuple_GET_ITEM(root, 0);
    exercise_data(data, 1);
    if (PyObject_Hash(data) == -1) {
        expect_data_error("hash");
    }
    PyObject *r = PyObject_Repr(data);
    if (r == NULL) {
        expect_data_error("repr");
    }
    Py_XDECREF(r);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A fresh file per input: archives whose objects were handed out stay
     * mapped, and their file must not change under them. */
    char path[64];
    int memfd = memfd_create("pycds-fuzz", MFD_CLOEXEC);
    if (memfd < 0 || write(memfd, data, size) != (ssize_t)size) {
        perror("memfd");
        abort();
    }
    snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
    /* pycds-dump verify and info read any archive, this one included. */
    PyObject *r = pycds_verify(path);
    if (r == NULL) {
        expect_refusal("verify");
    }
    Py_XDECREF(r);
    r = pycds_inspect(path, 1);
    if (r == NULL) {
        expect_refusal("inspect");
    }
    Py_XDECREF(r);
    struct pycds_archive *ar = pycds_archive_open(path, PYCDS_OPEN_ANY_OWNER);
    close(memfd);
    if (ar == NULL) {
        expect_refusal("open");
        return 0;
    }
    for (uint32_t i = 0; i < ar->index.nentries; i++) {
        /* An entry's fields are read only once its record is checked. */
        const struct pycds_entry *e = pycds_archive_entry(ar, i);
        if (e == NULL) {
            expect_refusal("entry");
            continue;
        }
        Py_ssize_t j = pycds_index_find(&ar->index,
                                        pycds_index_str(&ar->index, e->name),
                                        e->name.len);
        if (j < 0 || j >= (Py_ssize_t)ar->index.nentries) {
            continue;
        }
        /* A data entry's root, a 1-tuple; any other's, a code object. */
        PyObject *root = pycds_archive_entry_root(ar, j);
        if (root == NULL) {
            expect_refusal("relocation");
            continue;
        }
        if (getenv("PYCDS_FUZZ_VERBOSE") != NULL) {
            fprintf(stderr, "relocated entry %u\n", i);
        }
        if (e->flags & PYCDS_ENTRY_DATA) {
            exercise_root(root);
        }
        else {
            exercise(root);
        }
        /* A second request gives the same object without relocating. */
        PyObject *again = pycds_archive_entry_root(ar, j);
        if (again != root) {
            abort();
        }
        Py_DECREF(again);
        Py_DECREF(root);
    }
    /* pycds_archive_free keeps the mapping of an archive whose objects
     * were handed out (they live for good) and with it the descriptor;
     * the fuzzer opens thousands, so the descriptor goes here (a mapping
     * it frees is unmapped all the same). */
    close(ar->map.fd);
    ar->map.fd = -1;
    free(ar->map.path);
    ar->map.path = NULL;
    pycds_archive_free(ar);
    return 0;
}
