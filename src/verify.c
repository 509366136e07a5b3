/* Whole-archive checks and descriptions, for `pycds-dump verify|info`.
 * Unlike SHARE these read every byte, and they do not need the archive to
 * belong to this interpreter. */
#include "pycds/pycds.h"

#include <string.h>

static int
add_problem(PyObject *problems, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PyObject *s = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (s == NULL) {
        return -1;
    }
    int rc = PyList_Append(problems, s);
    Py_DECREF(s);
    return rc;
}

/* Moves the pending ArchiveError into problems; other errors stay. */
static int
take_refusal(PyObject *problems)
{
    PyObject *msg = pycds_take_refusal();
    if (msg == NULL) {
        return -1;
    }
    int rc = PyList_Append(problems, msg);
    Py_DECREF(msg);
    return rc;
}

static int
check_section(PyObject *problems, const char *name, const void *data,
              const struct pycds_section_sum *sum)
{
    if (pycds_xxh3(data, sum->size) != sum->xxh3) {
        return add_problem(problems, "section %s: checksum mismatch", name);
    }
    return 0;
}

PyObject *
pycds_verify(const char *path)
{
    struct pycds_archive *ar;
    PyObject *problems = PyList_New(0);
    if (problems == NULL) {
        return NULL;
    }
    ar = pycds_archive_open(path, PYCDS_OPEN_ANY_KEY | PYCDS_OPEN_ANY_OWNER);
    if (ar == NULL) {
        if (take_refusal(problems) < 0) {
            Py_DECREF(problems);
            return NULL;
        }
        return problems;
    }
    struct pycds_mapped *m = &ar->map;
    if (check_section(problems, PYCDS_SECTION_HEAP, m->heap,
                      &m->header.heap) < 0
        || check_section(problems, PYCDS_SECTION_RELR, m->relr,
                         &m->header.relr) < 0
        || check_section(problems, ".symtab", m->syms,
                         &m->header.symtab) < 0
        || check_section(problems, PYCDS_SECTION_INDEX, m->index,
                         &m->header.index) < 0) {
        goto error;
    }
    for (uint32_t i = 0; i < ar->index.nentries; i++) {
        if ((pycds_archive_entry(ar, i) == NULL
             || pycds_archive_check_entry(m, &ar->index, i) < 0)
            && take_refusal(problems) < 0) {
            goto error;
        }
    }
    const char *why = m->prelinked_size ? pycds_prelinked_verify(m) : NULL;
    if (why != NULL && add_problem(problems, "section %s: %s",
                                   PYCDS_SECTION_PRELINKED, why) < 0) {
        goto error;
    }
    pycds_archive_free(ar);
    return problems;

error:
    pycds_archive_free(ar);
    Py_DECREF(problems);
    return NULL;
}

static const char *const kind_names[PYCDS_NKINDS] = {
    [PYCDS_KIND_CODE] = "code",
    [PYCDS_KIND_STR] = "str",
    [PYCDS_KIND_BYTES] = "bytes",
    [PYCDS_KIND_INT] = "int",
    [PYCDS_KIND_FLOAT] = "float",
    [PYCDS_KIND_COMPLEX] = "complex",
    [PYCDS_KIND_TUPLE] = "tuple",
    [PYCDS_KIND_FROZENSET] = "frozenset",
    [PYCDS_KIND_GC_HEADER] = "gc_header",
};

static PyObject *
describe_entry(const struct pycds_index *ix, const struct pycds_entry *e)
{
    /* A damaged record may hold bytes that are not UTF-8: shown with
     * surrogates, as Archive.names() shows them. */
    PyObject *name = PyUnicode_DecodeUTF8(pycds_index_str(ix, e->name),
                                          e->name.len, "surrogateescape");
    PyObject *origin = PyUnicode_DecodeUTF8(pycds_index_str(ix, e->origin),
                                            e->origin.len, "surrogateescape");
    if (name == NULL || origin == NULL) {
        Py_XDECREF(name);
        Py_XDECREF(origin);
        return NULL;
    }
    return Py_BuildValue(
        "{s:N,s:K,s:K,s:N,s:O,s:O,s:L,s:K,s:K}",
        "name", name,
        "heap_bytes", (unsigned long long)(e->heap_end - e->heap_start),
        "relocations", (unsigned long long)e->nslots,
        "origin", origin,
        "package", (e->flags & PYCDS_ENTRY_PACKAGE) ? Py_True : Py_False,
        "data", (e->flags & PYCDS_ENTRY_DATA) ? Py_True : Py_False,
        "source_mtime_ns", (long long)e->source_mtime_ns,
        "source_size", (unsigned long long)e->source_size,
        "source_xxh3", (unsigned long long)e->source_xxh3);
}

static int
set_item(PyObject *d, const char *key, PyObject *v)
{
    if (v == NULL) {
        return -1;
    }
    int rc = PyDict_SetItemString(d, key, v);
    Py_DECREF(v);
    return rc;
}

/* Why this interpreter cannot use the archive, as SHARE would say, or
 * NULL: its ABI key, then the trust rule. */
static PyObject *
unusable_reason(const struct pycds_mapped *m,
                const struct pycds_abi_key *current, int trust_any)
{
    char text[160];
    const char *why = pycds_abi_key_refusal(&m->header.key, current, text,
                                            sizeof(text));
    if (why != NULL) {
        return PyUnicode_FromString(why);
    }
    why = pycds_untrusted(&m->st, trust_any ? PYCDS_OPEN_ANY_OWNER : 0);
    if (why != NULL) {
        return PyUnicode_FromFormat("not trusted: %s", why);
    }
    return Py_NewRef(Py_None);
}

PyObject *
pycds_inspect(const char *path, int trust_any)
{
    struct pycds_abi_key current;
    struct pycds_archive *ar = pycds_archive_open(path, PYCDS_OPEN_ANY_KEY | PYCDS_OPEN_ANY_OWNER);
    if (ar == NULL) {
        return NULL;
    }
    const struct pycds_header *h = &ar->map.header;
    PyObject *d = PyDict_New(), *kinds = PyDict_New();
    PyObject *entries = PyList_New(0);
    if (d == NULL || kinds == NULL || entries == NULL
        || pycds_abi_key_current(&current) < 0) {
        goto error;
    }
    PyObject *why = unusable_reason(&ar->map, &current, trust_any);
    int usable = why == Py_None;
    if (set_item(d, "reason", why) < 0) {
        goto error;
    }
    for (int k = 0; k < PYCDS_NKINDS; k++) {
        if (set_item(kinds, kind_names[k],
                     PyLong_FromUnsignedLongLong(h->kind_bytes[k])) < 0) {
            goto error;
        }
    }
    size_t nslots = 0;
    int data = 0;
    for (uint32_t i = 0; i < ar->index.nentries; i++) {
        const struct pycds_entry *entry = pycds_archive_entry(ar, i);
        if (entry == NULL) {
            goto error;
        }
        nslots += entry->nslots;
        data |= (entry->flags & PYCDS_ENTRY_DATA) != 0;
        PyObject *e = describe_entry(&ar->index, entry);
        if (e == NULL || PyList_Append(entries, e) < 0) {
            Py_XDECREF(e);
            goto error;
        }
        Py_DECREF(e);
    }
    static const char *const validations[] = {
        "timestamp", "checked-hash", "unchecked"};
    if (set_item(d, "path", PyUnicode_DecodeFSDefault(path)) < 0
        || set_item(d, "file_bytes", PyLong_FromSize_t(ar->map.size)) < 0
        || set_item(d, "format_version",
                    PyLong_FromLong(h->format_version)) < 0
        || set_item(d, "contents", PyUnicode_FromString(
                        data ? "data" : "code")) < 0
        || set_item(d, "validation", PyUnicode_FromString(
                        h->validation < 3 ? validations[h->validation]
                                          : "unknown")) < 0
        || set_item(d, "key", pycds_abi_key_as_dict(&h->key)) < 0
        || set_item(d, "usable", PyBool_FromLong(usable)) < 0
        || set_item(d, "heap_bytes", PyLong_FromUnsignedLongLong(
                        h->heap.size)) < 0
        || set_item(d, "prelinked_bytes", PyLong_FromUnsignedLongLong(
                        ar->map.prelinked_size)) < 0
        || set_item(d, "relocations", PyLong_FromSize_t(nslots)) < 0
        || set_item(d, "symbols", PyLong_FromSize_t(ar->map.nsyms)) < 0
        || PyDict_SetItemString(d, "bytes_by_type", kinds) < 0
        || PyDict_SetItemString(d, "entries", entries) < 0) {
        goto error;
    }
    Py_DECREF(kinds);
    Py_DECREF(entries);
    pycds_archive_free(ar);
    return d;

error:
    Py_XDECREF(d);
    Py_XDECREF(kinds);
    Py_XDECREF(entries);
    pycds_archive_free(ar);
    return NULL;
}
