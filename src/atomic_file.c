/* Writing a file so that readers see the old one or the whole new one,
 * never a part: a temporary file in the same directory, flushed, renamed
 * over the old one, the directory flushed.  Archives and prelinked images
 * are written this way. */
#include "pycds/pycds.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The directory part of path, for the temporary file and the fsync. */
static char *
dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        return strdup(".");
    }
    if (slash == path) {
        return strdup("/");
    }
    return strndup(path, slash - path);
}

int
pycds_write_atomic(const char *path, int (*fill)(int fd, void *arg),
                   void *arg)
{
    char *tmp = malloc(strlen(path) + 16), *dir = dir_of(path);
    int fd = -1, created = 0;
    if (tmp == NULL || dir == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    sprintf(tmp, "%s.tmpXXXXXX", path);
    fd = mkstemp(tmp);
    if (fd < 0) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, tmp);
        goto error;
    }
    created = 1;
    /* mkstemp creates 0600; the file is read by every process that
     * imports from it, like a .pyc. */
    mode_t mask = umask(0);
    umask(mask);
    if (fchmod(fd, 0666 & ~mask) < 0 || fill(fd, arg) < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, tmp);
        }
        goto error;
    }
    if (fsync(fd) < 0 || close(fd) < 0) {
        fd = -1;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, tmp);
        goto error;
    }
    fd = -1;
    if (rename(tmp, path) < 0) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
        goto error;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(tmp);
    free(dir);
    return 0;

error:
    if (fd >= 0) {
        close(fd);
    }
    if (created) {
        unlink(tmp);
    }
    free(tmp);
    free(dir);
    return -1;
}
