/* ArchiveError, pycds's one exception, and how the C code raises it and
 * takes it back.
 *
 * Like ImportError(name=, path=), an ArchiveError carries what callers
 * branch on as attributes: path (the archive), entry (the module, or
 * None) and kind (one of the PYCDS_REFUSED_* strings, docs/API.md).  Its
 * message is for people: rewording it changes no decision. */
#include "pycds/pycds.h"

#include <stdarg.h>
#include <stdio.h>

PyObject *pycds_ArchiveError;

int
pycds_refusal_init(void)
{
    /* Process-wide, like the static types: a legacy subinterpreter of
     * 3.11, which can load the module again, gets the same class, so that
     * errors raised here are the ones caught there. */
    if (pycds_ArchiveError != NULL) {
        return 0;
    }
    PyObject *dict = Py_BuildValue("{s:O,s:O,s:s}", "path", Py_None,
                                   "entry", Py_None,
                                   "kind", PYCDS_REFUSED_UNUSABLE);
    if (dict == NULL) {
        return -1;
    }
    pycds_ArchiveError = PyErr_NewExceptionWithDoc(
        "pycds.ArchiveError",
        "An archive was refused: it is missing, corrupt, foreign or cannot "
        "hold what it was given.  path: the archive (or None); entry: the "
        "module concerned (or None); kind: what kind of refusal.", NULL,
        dict);
    Py_DECREF(dict);
    return pycds_ArchiveError == NULL ? -1 : 0;
}

/* Sets attribute name of exc to value (a new reference, NULL: failed
 * already). */
static int
set_attribute(PyObject *exc, const char *name, PyObject *value)
{
    int rc = value == NULL ? -1 : PyObject_SetAttrString(exc, name, value);
    Py_XDECREF(value);
    return rc;
}

int
pycds_refuse_as(const char *kind, const char *path, const char *entry,
                const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* "PATH: what": every refusal of a file says which. */
    PyObject *exc = path ? PyObject_CallFunction(pycds_ArchiveError, "N",
                                                 PyUnicode_FromFormat(
                                                     "%s: %s", path, msg))
                         : PyObject_CallFunction(pycds_ArchiveError, "s",
                                                 msg);
    if (exc == NULL) {
        return -1;
    }
    if (set_attribute(exc, "path", path ? PyUnicode_DecodeFSDefault(path)
                                        : Py_NewRef(Py_None)) == 0
        && set_attribute(exc, "entry", entry ? PyUnicode_FromString(entry)
                                             : Py_NewRef(Py_None)) == 0
        && set_attribute(exc, "kind", PyUnicode_FromString(kind)) == 0) {
        PyErr_SetObject(pycds_ArchiveError, exc);
    }
    Py_DECREF(exc);
    return -1;
}

void
pycds_warn_once(int *warned, const char *fmt, ...)
{
    if (warned != NULL && *warned) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    fputs("pycds: warning: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (warned != NULL) {
        *warned = 1;
    }
}

PyObject *
pycds_take_refusal(void)
{
    if (!PyErr_ExceptionMatches(pycds_ArchiveError)) {
        return NULL;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *why = PyObject_Str(value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return why;
}
