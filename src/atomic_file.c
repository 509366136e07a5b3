/* Writing a file so that readers see the old one or the whole new one,
 * never a part: a temporary file in the same directory, flushed, renamed
 * over the old one, the directory flushed.  Archives and prelinked images
 * are written this way.
 *
 * The writer holds an flock on its temporary file from creation to
 * rename.  A writer that dies (kill -9, a crash, a power cut) loses it
 * with its last descriptor, so the next write to the same path removes
 * every temporary file of that path whose lock it can take: the lock
 * tells a dead writer from a live one whatever became of its pid. */
#include "pycds/pycds.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define TEMP_SUFFIX ".tmpXXXXXX"

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

/* Whether name is base followed by a temporary file's suffix. */
static int
is_temp_of(const char *name, const char *base)
{
    size_t n = strlen(base), suffix = strlen(TEMP_SUFFIX);
    return strncmp(name, base, n) == 0 && strlen(name) == n + suffix
           && strncmp(name + n, TEMP_SUFFIX, 4) == 0;
}

/* Removes name (in dfd) if it is a regular file of ours whose writer is
 * gone: its flock is free and the name still holds the file locked. */
static void
remove_if_abandoned(int dfd, const char *name)
{
    struct stat st, now;
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK
                                   | O_CLOEXEC);
    if (fd < 0) {
        return;
    }
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)
        && st.st_uid == geteuid() && flock(fd, LOCK_EX | LOCK_NB) == 0
        && fstatat(dfd, name, &now, AT_SYMLINK_NOFOLLOW) == 0
        && now.st_dev == st.st_dev && now.st_ino == st.st_ino) {
        unlinkat(dfd, name, 0);
    }
    close(fd);
}

/* Removes the temporary files that dead writers of path left: a writer
 * killed mid-write leaves up to a whole archive.  Best effort: a
 * directory that cannot be listed leaves them. */
static void
remove_abandoned_temps(const char *path, const char *dir)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    DIR *d = opendir(dir);
    if (d == NULL) {
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (is_temp_of(e->d_name, base)) {
            remove_if_abandoned(dirfd(d), e->d_name);
        }
    }
    closedir(d);
}

/* Creates and locks a temporary file for path (its name into tmp).  A
 * writer cleaning up may take the lock between the creation and ours and
 * remove the file: then it has no link left and we start again. */
static int
create_locked_temp(const char *path, char *tmp)
{
    for (int attempt = 0; attempt < 10; attempt++) {
        sprintf(tmp, "%s" TEMP_SUFFIX, path);
        int fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0) {
            return -1;
        }
        struct stat st;
        if (flock(fd, LOCK_EX) < 0 || fstat(fd, &st) < 0) {
            int err = errno;
            close(fd);
            unlink(tmp);
            errno = err;
            return -1;
        }
        if (st.st_nlink > 0) {
            return fd;
        }
        close(fd);
    }
    errno = EAGAIN;
    return -1;
}

int
pycds_write_atomic(const char *path, int (*fill)(int fd, void *arg),
                   void *arg)
{
    char *tmp = malloc(strlen(path) + sizeof(TEMP_SUFFIX)),
         *dir = dir_of(path);
    int fd = -1;
    if (tmp == NULL || dir == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    remove_abandoned_temps(path, dir);
    fd = create_locked_temp(path, tmp);
    if (fd < 0) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
        goto error;
    }
    /* mkstemp creates 0600; the file is read by every process that
     * imports from it, like a .pyc.  Never writable by group or others
     * whatever the umask: an archive is code, and SHARE refuses one that
     * others may write (container.c, pycds_untrusted).  A stricter umask
     * is kept. */
    mode_t mask = umask(0);
    umask(mask);
    errno = 0;
    if (fchmod(fd, 0644 & ~mask) < 0 || fill(fd, arg) < 0) {
        goto write_error;
    }
    if (fsync(fd) < 0) {
        goto write_error;
    }
    /* Renamed while still locked: a cleaner must not take a finished
     * temporary file for an abandoned one. */
    if (rename(tmp, path) < 0) {
        goto write_error;
    }
    close(fd);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(tmp);
    free(dir);
    return 0;

write_error:
    /* Named after the file the caller asked for: the temporary file's
     * name means nothing to a user, and it is gone after this. */
    if (!PyErr_Occurred()) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    }
    close(fd);
    unlink(tmp);
error:
    free(tmp);
    free(dir);
    return -1;
}
