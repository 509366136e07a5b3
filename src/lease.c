/* Keeping a process alive when someone rewrites, in place, an archive it
 * uses in place (cp over it, rsync --inplace, truncate, dd conv=notrunc).
 *
 * Truncating or writing a file changes or drops the pages of every
 * process that maps it, even the private copies a process wrote its
 * fix-ups to (truncation zaps those too): the process would fault
 * (SIGBUS) or run bytes that changed under it.  So a process that maps a
 * prelinked image in place takes a read lease on the archive
 * (F_SETLEASE).  Before anyone opens the file for writing or truncates
 * it, the kernel sends every holder the lease signal and waits for each
 * to give its lease up (at most /proc/sys/fs/lease-break-time seconds).
 * On that signal a holder moves every page of the file it uses into
 * anonymous memory, then unlocks: the writer proceeds and nothing it does
 * reaches the process, which goes on with the archive as it was.  Until
 * then the pages stay the page cache's, shared between processes.
 *
 * The signal is handled by a Python-level handler (_pycds.lease_break,
 * registered with the signal module), so the pages move in the main
 * thread between two bytecodes: no thread is
 * then writing to them (every write to an image's objects, reference
 * counts, caches, fix-ups, is made holding the GIL).
 *
 * Where no lease can be had (not the file's owner and no CAP_LEASE, the
 * file open for writing somewhere, no handler for the signal) the pages
 * are moved into anonymous memory as they are first used, before they
 * are checked: an entry's spans on its first use, a chunk of strings
 * before its checksum (pycds_lease_pin_image), the tables as the archive
 * reads them (pycds_container_pin).  What was moved is the process's
 * own; what the file holds after a rewrite fails the check that the file
 * is unchanged, or a checksum, and is refused.  (Copying the whole image
 * at once cost a process the size of the image: 297 MiB for an archive of
 * a whole site-packages.)  A lease is not needed where nobody can write
 * the file (a read-only mount) or where the user says nobody will
 * (PYCDSIMMUTABLE=1). */
#include "pycds/pycds.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* One image mapped in place, for the life of the process: its areas stay
 * mapped after its archive is closed, since their objects may be
 * referenced from anywhere. */
struct guard {
    int fd;                   /* its own open file, the lease's; -1: none */
    struct pycds_mapped *map; /* NULL once the archive is closed */
    /* The file's bytes the areas are mapped from, not pinned with the
     * rest of the archive's mapping. */
    uint64_t areas_start, areas_end;
    void *area[PYCDS_NAREAS];
    size_t area_size[PYCDS_NAREAS];
    const char *state;        /* static: how the areas are kept safe */
    /* Without a lease: per area, a bit per page moved into anonymous
     * memory as it was first used (NULL: leased, shared or all moved). */
    unsigned char *moved[PYCDS_NAREAS];
    struct guard *next;
};

static struct guard *guards;
static int lease_signal;      /* 0: no handler, leases cannot be taken */
static int immutable;         /* the user says: never rewritten in place */

static const char LEASED[] = "leased";
const char pycds_lease_not_owner[] =
    "copied: no lease (the file is another user's)";

int
pycds_make_anonymous(void *start, size_t len)
{
    /* MADV_POPULATE_READ (Linux 5.14) fails with EFAULT where the file
     * was truncated, where the copy would raise SIGBUS; older kernels
     * leave that window open. */
    if (madvise(start, len, MADV_POPULATE_READ) != 0 && errno != EINVAL) {
        return -1;
    }
    void *copy = mmap(NULL, len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (copy == MAP_FAILED) {
        return -1;
    }
    memcpy(copy, start, len);
    if (mremap(copy, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, start)
        == MAP_FAILED) {
        int err = errno;
        munmap(copy, len);
        errno = err;
        return -1;
    }
    return 0;
}

/* os.register_at_fork(after_in_child=after_fork): a forked child takes
 * leases of its own. */
static int
register_after_fork(PyObject *after_fork)
{
    PyObject *posix = PyImport_ImportModule("posix");
    PyObject *reg = posix ? PyObject_GetAttrString(posix,
                                                   "register_at_fork") : NULL;
    PyObject *args = reg ? PyTuple_New(0) : NULL;
    PyObject *kwargs = args ? Py_BuildValue("{s:O}", "after_in_child",
                                            after_fork) : NULL;
    PyObject *r = kwargs ? PyObject_Call(reg, args, kwargs) : NULL;
    Py_XDECREF(posix);
    Py_XDECREF(reg);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static void
lease_setup(int signum, int files_immutable)
{
    /* A subinterpreter cannot handle signals (it passes 0): the main
     * interpreter's handler, set up before, still serves the process. */
    if (signum != 0) {
        lease_signal = signum;
    }
    immutable = files_immutable;
}

int
pycds_lease_handle_signal(PyObject *handler, PyObject *after_fork,
                          int files_immutable)
{
    static int set_up;
    if (set_up) {
        return 0;
    }
    set_up = 1;
    /* A real-time signal: queued, and not one a program or library uses
     * by default (glibc keeps those below SIGRTMIN for itself). */
    int signum = SIGRTMIN + 4, rc = -1;
    PyObject *sig = PyImport_ImportModule("_signal");
    PyObject *current = NULL, *dfl = NULL, *set = NULL;
    if (sig == NULL
        || (current = PyObject_CallMethod(sig, "getsignal", "i",
                                          signum)) == NULL
        || (dfl = PyObject_GetAttrString(sig, "SIG_DFL")) == NULL) {
        goto done;
    }
    /* A program's own handler for the signal stays; the images are then
     * copied as used, not shared. */
    int own = PyObject_RichCompareBool(current, dfl, Py_NE);
    if (own < 0) {
        goto done;
    }
    if (own) {
        signum = 0;
    }
    else if ((set = PyObject_CallMethod(sig, "signal", "iO", signum,
                                        handler)) == NULL) {
        /* Not the main thread of the main interpreter. */
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
            goto done;
        }
        PyErr_Clear();
        signum = 0;
    }
    if (signum != 0 && register_after_fork(after_fork) < 0) {
        goto done;
    }
    lease_setup(signum, files_immutable);
    rc = 0;
done:
    Py_XDECREF(sig);
    Py_XDECREF(current);
    Py_XDECREF(dfl);
    Py_XDECREF(set);
    return rc;
}

/* Moves g's areas into anonymous memory, and of the rest of its
 * archive's mapping the image's tables, or all of it (whole), and gives
 * its lease up; state says why.  -1 with OSError or ArchiveError set if
 * a copy failed (the lease is kept then: the writer waits for the kernel
 * to break it). */
static int
detach(struct guard *g, const char *state, int whole)
{
    if (g->map != NULL) {
        g->map->stable = 0;     /* what follows pins */
    }
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        if (g->area_size[k] != 0
            && pycds_make_anonymous(g->area[k], g->area_size[k]) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        g->area_size[k] = 0;
        free(g->moved[k]);
        g->moved[k] = NULL;
    }
    struct pycds_mapped *m = g->map;
    if (m != NULL) {
        uint64_t start = whole ? 0 : m->prelinked_offset;
        if (pycds_container_pin(m, m->base + start,
                                g->areas_start - start) < 0
            || (whole && pycds_container_pin(m, m->base + g->areas_end,
                                             m->size - g->areas_end) < 0)) {
            return -1;
        }
    }
    if (g->fd >= 0) {
        close(g->fd);       /* gives the lease up */
        g->fd = -1;
    }
    g->state = state;
    return 0;
}

/* A lease on a new open file of m's file (the same inode, whatever its
 * name is now): 0, or a static reason. */
static const char *
take_lease(struct guard *g, int fd)
{
    char proc[64];
    if (lease_signal == 0) {
        return "copied: the lease signal has no handler of pycds";
    }
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    g->fd = open(proc, O_RDONLY | O_CLOEXEC);
    if (g->fd < 0) {
        return "copied: cannot open the file again for its lease";
    }
    if (fcntl(g->fd, F_SETSIG, lease_signal) < 0
        || fcntl(g->fd, F_SETLEASE, F_RDLCK) < 0) {
        int err = errno;
        close(g->fd);
        g->fd = -1;
        if (err == EACCES || err == EPERM) {
            return pycds_lease_not_owner;
        }
        if (err == EAGAIN) {
            return "copied: no lease (the file is open for writing)";
        }
        return "copied: no lease on this file system";
    }
    return NULL;
}

/* How the image of m needs no lease, or NULL. */
static const char *
needs_no_lease(const struct pycds_mapped *m)
{
    struct statvfs vfs;
    if (immutable) {
        return "shared: PYCDSIMMUTABLE=1";
    }
    if (fstatvfs(m->fd, &vfs) == 0 && (vfs.f_flag & ST_RDONLY)) {
        return "shared: read-only file system";
    }
    return NULL;
}

/* No lease: g's pages are moved into anonymous memory as they are first
 * used (pycds_lease_pin_image); why says why there is no lease. */
static int
move_as_used(struct guard *g, const char *why)
{
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        size_t pages = g->area_size[k] / PYCDS_PRELINK_PAGE;
        if ((g->moved[k] = calloc(pages / 8 + 1, 1)) == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    g->state = why;
    return 0;
}

int
pycds_lease_guard(struct pycds_mapped *m,
                  const struct pycds_prelink_header *h)
{
    struct guard *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    g->fd = -1;
    g->map = m;
    g->areas_start = m->prelinked_offset + pycds_prelink_areas_offset(h);
    g->areas_end = m->prelinked_offset + m->prelinked_size;
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        g->area[k] = (void *)(uintptr_t)h->areas[k].address;
        g->area_size[k] = h->areas[k].size;
    }
    g->next = guards;
    guards = g;
    if ((g->state = needs_no_lease(m)) != NULL) {
        m->stable = 1;
        return 0;
    }
    const char *why = take_lease(g, m->fd);
    if (why == NULL) {
        /* The file may have changed between the mapping and the lease. */
        if (pycds_container_unchanged(m, g->fd)) {
            g->state = LEASED;
            /* From here a writer waits until the lease is given up, and
             * the pages are moved first (detach): the index's pages need
             * no copy as lookups read them. */
            m->stable = 1;
            return 0;
        }
        why = "copied: the file changed as it was mapped";
        return detach(g, why, 0);
    }
    return move_as_used(g, why);
}

const char *
pycds_lease_pin_image(const struct pycds_mapped *m, uint64_t start,
                      uint64_t end)
{
    struct guard *g = guards;
    while (g != NULL && g->map != m) {
        g = g->next;
    }
    if (g == NULL || g->moved[0] == NULL || start >= end) {
        return NULL;
    }
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        uint64_t lo = (uintptr_t)g->area[k], size = g->area_size[k];
        if (start < lo || end > lo + size) {
            continue;
        }
        uint64_t first = (start - lo) / PYCDS_PRELINK_PAGE;
        uint64_t last = (end - 1 - lo) / PYCDS_PRELINK_PAGE;
        unsigned char *moved = g->moved[k];
        while (first <= last && (moved[first / 8] >> (first % 8) & 1)) {
            first++;
        }
        if (first > last) {
            return NULL;
        }
        /* A page moved after a rewrite would hold the new bytes: what is
         * moved is what was mapped, or nothing is. */
        if (!pycds_container_unchanged(m, m->fd)) {
            return "the file was rewritten in place since it was mapped "
                   "(replace archives by rename)";
        }
        if (pycds_make_anonymous(
                (char *)(uintptr_t)lo + first * PYCDS_PRELINK_PAGE,
                (last + 1 - first) * PYCDS_PRELINK_PAGE) < 0) {
            return "its pages cannot be copied (the file was truncated?)";
        }
        for (uint64_t p = first; p <= last; p++) {
            moved[p / 8] |= (unsigned char)(1 << (p % 8));
        }
        return NULL;
    }
    return "a range lies outside the image's areas";
}

void
pycds_lease_forget(const struct pycds_mapped *m)
{
    for (struct guard *g = guards; g != NULL; g = g->next) {
        if (g->map == m) {
            g->map = NULL;
        }
    }
}

const char *
pycds_lease_state(const struct pycds_mapped *m)
{
    for (struct guard *g = guards; g != NULL; g = g->next) {
        if (g->map == m) {
            return g->state;
        }
    }
    return NULL;
}

int
pycds_lease_release_broken(void)
{
    int result = 0;
    for (struct guard *g = guards; g != NULL; g = g->next) {
        /* A lease being broken reads as the type it is broken to. */
        if (g->fd >= 0 && fcntl(g->fd, F_GETLEASE) != F_RDLCK
            && detach(g, "copied: the file was opened for writing", 1) < 0) {
            result = -1;
        }
    }
    return result;
}

int
pycds_lease_after_fork(void)
{
    int result = 0;
    for (struct guard *g = guards; g != NULL; g = g->next) {
        if (g->fd < 0) {
            continue;
        }
        /* The parent's lease is on the open file the child shares: its
         * break would signal only the parent. */
        int inherited = g->fd;
        const char *why = take_lease(g, inherited);
        close(inherited);
        if (why != NULL && detach(g, why, 1) < 0) {
            result = -1;
        }
    }
    return result;
}
