/* Source validation at SHARE, the modes of PEP 552 applied to archives:
 * timestamp (one stat: mtime in ns and size), checked-hash (xxh3 of the
 * source), unchecked (trust the archive). */
#include "pycds/pycds.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static PyObject *
hash_changed(const struct pycds_entry *e, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        if (fd >= 0) {
            close(fd);
        }
        return PyUnicode_FromString("the source is unreadable");
    }
    char *buf = malloc(st.st_size ? st.st_size : 1);
    if (buf == NULL) {
        close(fd);
        return PyErr_NoMemory();
    }
    ssize_t got = 0, n;
    while (got < st.st_size
           && ((n = read(fd, buf + got, st.st_size - got)) > 0
               || (n < 0 && errno == EINTR))) {
        got += n > 0 ? n : 0;
    }
    close(fd);
    uint64_t h = pycds_xxh3(buf, got);
    free(buf);
    if (got != st.st_size || h != e->source_xxh3) {
        return PyUnicode_FromString("the source's hash changed");
    }
    Py_RETURN_NONE;
}

PyObject *
pycds_source_stale(const struct pycds_entry *e, uint32_t mode,
                   PyObject *origin)
{
    if (mode == PYCDS_VALIDATE_UNCHECKED || !(e->flags & PYCDS_ENTRY_SOURCE)) {
        Py_RETURN_NONE;
    }
    PyObject *bytes;
    if (!PyUnicode_FSConverter(origin, &bytes)) {
        return NULL;
    }
    const char *path = PyBytes_AS_STRING(bytes);
    PyObject *result;
    if (mode == PYCDS_VALIDATE_CHECKED_HASH) {
        result = hash_changed(e, path);
    }
    else {
        struct stat st;
        if (stat(path, &st) < 0) {
            result = PyUnicode_FromString("the source is gone");
        }
        else if ((int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec
                     != e->source_mtime_ns
                 || (uint64_t)st.st_size != e->source_size) {
            result = PyUnicode_FromString("the source's mtime or size "
                                          "changed");
        }
        else {
            result = Py_NewRef(Py_None);
        }
    }
    Py_DECREF(bytes);
    return result;
}
