"""Opening the files pycds keeps beside a list or an archive (locks, the
TRACE journal, the list it merges into) in a directory other users may
write: never through a symbolic link, never blocking on a FIFO, and only
a regular file (docs/IMPORT.md, "Where lists and archives may live")."""
import errno
import os
import stat


class NotRegularFile(OSError):
    """Something else than a regular file is at the path: another user
    may have planted it there."""

    def __str__(self):
        return "%s: %s" % (self.filename, self.strerror)


def _refuse(path, mode):
    if stat.S_ISLNK(mode):
        what = "a symbolic link"
    elif stat.S_ISFIFO(mode):
        what = "a FIFO"
    elif stat.S_ISDIR(mode):
        what = "a directory"
    else:
        what = "a device or socket"
    return NotRegularFile(errno.EINVAL, "%s, not a regular file; refused"
                          % what, path)


def open_regular(path, flags, mode=0o666):
    """``os.open(path, flags, mode)`` that refuses a symbolic link as the
    last component and anything but a regular file; the descriptor is
    close-on-exec.  Raises NotRegularFile, or OSError."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, mode)
    except OSError as e:
        # ELOOP (a link), ENXIO (a FIFO without reader), EACCES (the
        # kernel's fs.protected_* rules): say what is there.
        try:
            st = os.lstat(path)
        except OSError:
            raise e from None
        if stat.S_ISREG(st.st_mode):
            raise
        raise _refuse(path, st.st_mode) from None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _refuse(path, st.st_mode)
    return fd


def open_lock(path):
    """The lock file at ``path`` (created if missing), open for ``flock``."""
    return open(open_regular(path, os.O_RDONLY | os.O_CREAT), "rb",
                buffering=0)
