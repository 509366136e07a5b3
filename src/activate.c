/* Activation from the environment, its common case: PYCDSMODE=SHARE with
 * PYCDSARCHIVE, and every other PYCDS variable unset or holding one of its
 * plain words (docs/IMPORT.md, "Activation").  Done here, the .pth line
 * imports this extension and no module of the pycds package: each costs
 * a process about 0.4 ms at start, which is what a process that uses
 * nothing an archive serves (python -c pass) pays for pycds.  Anything
 * else (another mode, PYCDSVERBOSE, PYCDSCHECK, a value that means
 * nothing) is left to pycds._boot, imported from here, which reads the
 * environment in full and says what is wrong with it: so this file
 * recognises words, it never warns about them. */
#include "pycds/pycds.h"

#include <stdlib.h>
#include <string.h>

/* The words of a yes/no variable, in lower case (pycds._env reads the
 * same lists, _pycds.YES_WORDS and NO_WORDS). */
const char *const pycds_yes_words[] = {"1", "yes", "true", "on", NULL};
const char *const pycds_no_words[] = {"0", "no", "false", "off", "", NULL};

/* The word in variable name: its value without the white space around
 * it, in lower case, into buf; -1 if it is longer than any word or not
 * ASCII (then no word matches). */
static int
env_word(const char *name, char *buf, size_t size)
{
    const char *v = getenv(name);
    v = v ? v : "";
    while (*v == ' ' || (*v >= '\t' && *v <= '\r')) {
        v++;
    }
    size_t n = strlen(v);
    while (n > 0 && (v[n - 1] == ' ' || (v[n - 1] >= '\t'
                                          && v[n - 1] <= '\r'))) {
        n--;
    }
    if (n >= size) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c >= 0x80) {
            return -1;
        }
        buf[i] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    buf[n] = '\0';
    return 0;
}

static int
in_words(const char *word, const char *const *words)
{
    for (; *words != NULL; words++) {
        if (strcmp(word, *words) == 0) {
            return 1;
        }
    }
    return 0;
}

/* 1 yes, 0 no (unset is no), -1 neither; also_yes: one more yes word. */
static int
yes_no(const char *name, const char *also_yes)
{
    char w[16];
    if (env_word(name, w, sizeof(w)) < 0) {
        return -1;
    }
    if (in_words(w, pycds_yes_words)
        || (also_yes != NULL && strcmp(w, also_yes) == 0)) {
        return 1;
    }
    return in_words(w, pycds_no_words) ? 0 : -1;
}

/* The PYCDSVALIDATION override: -1 unset, a PYCDS_VALIDATE_* value, or
 * -2 for anything else. */
static int
validation_override(void)
{
    char w[16];
    if (env_word("PYCDSVALIDATION", w, sizeof(w)) < 0) {
        return -2;
    }
    if (w[0] == '\0') {
        return -1;
    }
    for (int i = 0; pycds_validation_names[i] != NULL; i++) {
        if (strcmp(w, pycds_validation_names[i]) == 0) {
            return i;
        }
    }
    return -2;
}

static int
str_equals(PyObject *s, const char *ascii)
{
    return PyUnicode_Check(s) && PyUnicode_CompareWithASCIIString(s, ascii)
                                 == 0;
}

/* Whether this process is pycds-dump or python -m pycds: 1, 0, or -1 with
 * an exception. */
static int
is_pycds_tool(void)
{
    /* At .pth time sys.argv[0] is the script, or still "-m" for -m. */
    PyObject *argv = PySys_GetObject("argv");   /* borrowed */
    PyObject *first = argv && PyList_Check(argv) && PyList_GET_SIZE(argv)
                      ? PyList_GET_ITEM(argv, 0) : NULL;
    if (first == NULL || !PyUnicode_Check(first)) {
        return 0;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(first);
    Py_ssize_t slash = PyUnicode_FindChar(first, '/', 0, n, -1);
    if (slash == -2) {
        return -1;
    }
    PyObject *base = PyUnicode_Substring(first, slash + 1, n);
    if (base == NULL) {
        return -1;
    }
    int tool = str_equals(base, "pycds-dump");
    Py_DECREF(base);
    if (tool || !str_equals(first, "-m")) {
        return tool;
    }
    /* The module -m runs: the word after the first option that is -m, or
     * the rest of the first that starts with it. */
    PyObject *orig = PySys_GetObject("orig_argv");   /* borrowed */
    Py_ssize_t size = orig && PyList_Check(orig) ? PyList_GET_SIZE(orig) : 0;
    for (Py_ssize_t i = 1; i < size; i++) {
        PyObject *option = PyList_GET_ITEM(orig, i);
        if (str_equals(option, "-m")) {
            return i + 1 < size && str_equals(PyList_GET_ITEM(orig, i + 1),
                                              "pycds");
        }
        if (PyUnicode_Check(option) && PyUnicode_GET_LENGTH(option) > 2
            && PyUnicode_READ_CHAR(option, 0) == '-'
            && PyUnicode_READ_CHAR(option, 1) == 'm') {
            return str_equals(option, "-mpycds");
        }
    }
    return 0;
}

/* SHARE in its common case: 1 done, 0 not the common case, -1 with an
 * exception. */
static int
share_common_case(PyObject *module)
{
    char mode[16];
    if (env_word("PYCDSMODE", mode, sizeof(mode)) < 0
        || strcmp(mode, "share") != 0) {
        return 0;
    }
    int trust_any = yes_no("PYCDSTRUST", "any");
    int immutable = yes_no("PYCDSIMMUTABLE", NULL);
    int validation = validation_override();
    const char *archive = getenv("PYCDSARCHIVE");
    if (yes_no("PYCDSVERBOSE", NULL) != 0
        || yes_no("PYCDSCHECK", NULL) != 0 || trust_any < 0
        || immutable < 0 || validation == -2 || archive == NULL
        || archive[0] == '\0') {
        return 0;
    }
    PyObject *text = PyUnicode_DecodeFSDefault(archive);
    PyObject *paths = text ? pycds_split_layers(text) : NULL;
    Py_XDECREF(text);
    if (paths == NULL) {
        return -1;
    }
    /* No path at all (":"): pycds._boot says so. */
    int done = PyList_GET_SIZE(paths) > 0;
    if (done) {
        PyObject *set_up = PyObject_CallMethod(
            module, "set_up_leases", "O", immutable ? Py_True : Py_False);
        Py_XDECREF(set_up);
        if (set_up == NULL || pycds_share_layers(paths, validation, 0,
                                                 trust_any, 1) < 0) {
            done = -1;
        }
    }
    Py_DECREF(paths);
    return done;
}

PyObject *
pycds_activate(PyObject *module)
{
    /* Once: site reads a venv's site-packages twice where lib64 is a link
     * to lib, and the .pth with it.  An archive serves the main
     * interpreter only (archived code objects are not shared with
     * subinterpreters, which import normally).  pycds-dump and python -m
     * pycds are tools about archives, which must not themselves trace,
     * dump, share or rewrite them: `PYCDSMODE=AUTO pycds-dump status`
     * says what AUTO would do without doing it. */
    static int activated;
    if (activated || PyInterpreterState_Get() != PyInterpreterState_Main()) {
        Py_RETURN_NONE;
    }
    int tool = is_pycds_tool();
    int done = tool ? tool : share_common_case(module);
    if (done < 0) {
        return NULL;
    }
    if (done == 0) {
        /* It activates as it is imported. */
        PyObject *boot = PyImport_ImportModule("pycds._boot");
        if (boot == NULL) {
            return NULL;
        }
        Py_DECREF(boot);
    }
    activated = 1;
    Py_RETURN_NONE;
}
