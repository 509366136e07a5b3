/* Writes the prelinked image of an archive: DUMP does it with the
 * archive, `pycds-dump prelink` and a PRELINK run do it again.
 *
 * format.h defines the file and docs/FORMAT.md ("Prelinked image") says
 * why it is the way it is; prelink_map.c maps it.  An image holds copies
 * of the objects this process relocated from the archive, laid out at
 * their preferred addresses with their final internal pointers.  Its
 * pointers into libpython (types, None, small ints, the interpreter's
 * static strings) hold offsets from libpython's load address and are
 * listed per entry (the runtime table), so that a process adds its own
 * load address to them (none for a non-PIE executable); the slots that
 * point to interned strings or to frozensets, and the ob_type of a data
 * archive's FrozenDicts, are listed with what they need (the fix-up
 * table).  The same archive gives the same image bytes
 * in every process, but for a PRELINK run's predictions. */
#include "pycds/pycds.h"
#include "pycds/relr.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>

/* The versions of an image's code objects (3.13 keeps one in each):
 * CODE_VERSIONS_BASE + slot * 2^22 + n, unique among the images of a
 * process and far above the interpreter's own counter. */
#define CODE_VERSIONS_BASE 0x80000000u
#define CODE_VERSIONS_MASK ((1u << 22) - 1)

#define TAG_FROZENSET 1     /* a memoised address that stands for one */

struct buffer {
    char *data;
    size_t len, cap;
};

struct prelinker {
    struct pycds_archive *ar;
    int served;               /* ar is the archive this process served from */
    struct pycds_runtime_image rt;
    int hashes;
    /* Whether slots hold this process's addresses of the strings
     * interned before: right in processes started as this one was, with
     * address randomisation off; else they hold the image's copies. */
    int predict;
    uint64_t base[PYCDS_NAREAS];
    struct buffer area[PYCDS_NAREAS];
    struct buffer entries;    /* struct pycds_prelink_entry */
    struct buffer fixups;     /* struct pycds_prelink_fixup */
    struct pycds_relr runtime;   /* the runtime table */
    struct buffer runtime_slots; /* the entry's runtime slots, uint64_t */
    PyObject *strings;        /* id(str) -> its address, for all entries */
    PyObject *preinterned;    /* the strings interned before (a set) */
    /* Entry name -> set of the words of its objects a traced run wrote
     * (_trace.written_words: "firstlineno:qualname" of code that ran, "#"
     * and the XXH3 of a str constant hashed), or NULL; written_here: the
     * entry's set (borrowed), or NULL. */
    PyObject *written, *written_here;
    uint32_t code_version;    /* the next code object's */
    uint8_t interned_chars[32];  /* as in the header */
    uint64_t strings_eager;   /* as in the header */
    PyObject *memo;           /* id(object) -> address, the entry's */
    PyObject *once;           /* ids of the entry's run-once objects */
    const char *entry;        /* its name, for messages */
    char entry_name[512];     /* an entry's (truncated), for entry */
    /* Per entry: whether it is one every process of the image uses (a
     * PRELINK run used it, or it is named in first: the program's trace,
     * or the modules the interpreter imports as it starts):
     * placed first, its strings interned as the image is mapped. */
    unsigned char *used;
};

static void *
buffer_grow(struct buffer *b, size_t n)
{
    if (pycds_grow((void **)&b->data, &b->cap, b->len + n, 1) < 0) {
        return NULL;
    }
    void *p = b->data + b->len;
    memset(p, 0, n);
    b->len += n;
    return p;
}

static int
in_runtime(const struct prelinker *pl, const void *p)
{
    return (uintptr_t)p >= pl->rt.lo && (uintptr_t)p < pl->rt.hi;
}

/* Notes that the slot at address slot points into libpython. */
static int
runtime_slot(struct prelinker *pl, uint64_t slot)
{
    uint64_t *p = buffer_grow(&pl->runtime_slots, sizeof(*p));
    if (p == NULL) {
        return -1;
    }
    *p = slot;
    return 0;
}

static int
refuse(struct prelinker *pl, PyObject *op, const char *why)
{
    return pycds_refuse_as(PYCDS_REFUSED_UNARCHIVABLE, NULL, pl->entry,
                           "entry '%s': %s (object of type '%.100s')",
                           pl->entry, why, Py_TYPE(op)->tp_name);
}

/* Whether set holds op's id. */
static int
has_id(PyObject *set, PyObject *op)
{
    PyObject *id = PyLong_FromVoidPtr(op);
    int has = id ? PySet_Contains(set, id) : -1;
    Py_XDECREF(id);
    return has;
}

/* Whether the process had op interned before it used the archive. */
static int
interned_before(struct prelinker *pl, PyObject *op)
{
    return PySet_Contains(pl->preinterned, op);
}

/* An interned str: where it is not the interpreter's own, it goes to the
 * strings area, one copy per value for all entries. */
static int
is_interned_str(PyObject *op)
{
    return PyUnicode_CheckExact(op) && PyUnicode_CHECK_INTERNED(op);
}

static int image_emit(struct prelinker *pl, PyObject *op, uint64_t *addr);

static int
image_emit_child(void *ctx, PyObject *target, size_t slot, const char *field,
           Py_ssize_t index)
{
    uint64_t addr;
    (void)slot, (void)field, (void)index;
    return target ? image_emit(ctx, target, &addr) : 0;
}

struct fill_ctx {
    struct prelinker *pl;
    int area;
    uint64_t object;          /* the object's offset in its area */
};

/* Second visit: the children are placed; write their addresses into the
 * slots and note the slots that need a fix-up at load. */
static int
fill_child(void *ctx, PyObject *target, size_t slot, const char *field,
           Py_ssize_t index)
{
    struct fill_ctx *fc = ctx;
    struct prelinker *pl = fc->pl;
    uint64_t addr;
    (void)field, (void)index;
    if (target == NULL) {
        return 0;
    }
    if (image_emit(pl, target, &addr) < 0) {
        return -1;
    }
    uint64_t where = fc->object + slot;
    uint64_t what = 0;
    if (addr & TAG_FROZENSET) {
        addr &= ~(uint64_t)TAG_FROZENSET;
        what = addr | PYCDS_FIXUP_FROZENSET;
    }
    else if (addr - pl->base[PYCDS_AREA_STRINGS]
             < pl->area[PYCDS_AREA_STRINGS].len) {
        /* addr is the image's copy, the key to look the interned string
         * up by.  The slot holds the likely answer: the string this
         * process had interned before it made the image, if it had (the
         * interpreter interns the same names at the same addresses at
         * every start with address randomisation off), else the copy. */
        what = addr | PYCDS_FIXUP_INTERN;
        int before = pl->predict ? interned_before(pl, target) : 0;
        if (before < 0) {
            return -1;
        }
        if (before) {
            addr = (uintptr_t)target;
        }
    }
    else if (in_runtime(pl, (void *)(uintptr_t)addr)) {
        if (runtime_slot(pl, pl->base[fc->area] + where) < 0) {
            return -1;
        }
        addr -= pl->rt.base;
    }
    memcpy(pl->area[fc->area].data + where, &addr, sizeof(addr));
    if (what != 0) {
        struct pycds_prelink_fixup *f = buffer_grow(&pl->fixups, sizeof(*f));
        if (f == NULL) {
            return -1;
        }
        f->slot = pl->base[fc->area] + where;
        f->what = what;
    }
    return 0;
}

/* Pads the strings area so that the header of str op, of size bytes,
 * the part of it a process writes (type, hash, state, cached UTF-8),
 * does not straddle two chunks: the mapper checks a chunk's checksum the
 * first time one of its strings is used, and that must find the bytes of
 * the file even when a string that ends in it was interned before. */
static size_t
string_head(PyObject *op, Py_ssize_t size)
{
    size_t head = PyUnicode_IS_ASCII(op) ? sizeof(PyASCIIObject)
                                         : sizeof(PyCompactUnicodeObject);
    return head < (size_t)size ? head : (size_t)size;
}

static int
pad_string(struct prelinker *pl, PyObject *op, Py_ssize_t size)
{
    struct buffer *b = &pl->area[PYCDS_AREA_STRINGS];
    size_t head = string_head(op, size);
    size_t room = PYCDS_PRELINK_CHUNK - b->len % PYCDS_PRELINK_CHUNK;
    if (room >= head) {
        return 0;
    }
    return buffer_grow(b, room) == NULL ? -1 : 0;
}

/* Copies op, whose children are placed, into area; its address in
 * *addr. */
static int
image_place(struct prelinker *pl, PyObject *op, int area, uint64_t *addr)
{
    Py_ssize_t size = pycds_layout_size(op);
    if (size < 0) {
        return refuse(pl, op, "cannot be prelinked");
    }
    /* A data archive's FrozenDicts have pycds' own type: fixed up. */
    int own_type = Py_IS_TYPE(op, &pycds_FrozenDictType);
    if (!own_type && !in_runtime(pl, Py_TYPE(op))) {
        return refuse(pl, op, "its type is not libpython's");
    }
    size_t gc = PyObject_IS_GC(op) ? pycds_layout_gc_header_size : 0;
    size_t n = (gc + size + PYCDS_OBJECT_ALIGN - 1)
               & ~(size_t)(PYCDS_OBJECT_ALIGN - 1);
    struct buffer *b = &pl->area[area];
    if (area == PYCDS_AREA_STRINGS && pad_string(pl, op, size) < 0) {
        return -1;
    }
    if (b->len + n > PYCDS_PRELINK_AREA_MAX) {
        return refuse(pl, op, "the image would be too large");
    }
    char *start = buffer_grow(b, n);
    if (start == NULL) {
        return -1;
    }
    uint64_t object = (uint64_t)(start - b->data) + gc;
    assert(area != PYCDS_AREA_STRINGS
           || object / PYCDS_PRELINK_CHUNK
              == (object + string_head(op, size) - 1) / PYCDS_PRELINK_CHUNK);
    PyObject *img = (PyObject *)(b->data + object);
    if (pycds_layout_write(op, (char *)img) < 0) {
        return -1;
    }
    img->ob_refcnt = pycds_layout_image_refcnt;
    uint64_t type_slot = pl->base[area] + object + offsetof(PyObject, ob_type);
    if (own_type) {
        /* NULL in the file, the process's type once fixed up. */
        struct pycds_prelink_fixup *f = buffer_grow(&pl->fixups, sizeof(*f));
        if (f == NULL) {
            return -1;
        }
        f->slot = type_slot;
        f->what = PYCDS_FIXUP_FROZENDICT;
    }
    else {
        /* An offset from libpython's load address, as every runtime
         * slot: the file does not depend on where this process has it. */
        img->ob_type = (PyTypeObject *)((uintptr_t)Py_TYPE(op)
                                        - pl->rt.base);
        /* A string's ob_type is fixed as it is interned (prelink_map.c). */
        if (area != PYCDS_AREA_STRINGS && runtime_slot(pl, type_slot) < 0) {
            return -1;
        }
    }
    if (PyCode_Check(op) && (++pl->code_version & CODE_VERSIONS_MASK) == 0) {
        return refuse(pl, op, "too many code objects");
    }
    if (pycds_layout_prelink(op, img, area == PYCDS_AREA_STRINGS,
                             pl->hashes, pl->code_version) < 0) {
        return -1;
    }
    struct fill_ctx fc = {pl, area, object};
    if (pycds_layout_visit(op, fill_child, &fc) < 0) {
        return -1;
    }
    *addr = pl->base[area] + object;
    return 0;
}

/* Whether a pointer to target is a slot a process may have to write at
 * load: a frozenset, built then, or a string that processes intern
 * before they use the image, somewhere else in each. */
static int
is_fixed(struct prelinker *pl, PyObject *target)
{
    if (PyFrozenSet_CheckExact(target)) {
        return 1;
    }
    if (!is_interned_str(target) || in_runtime(pl, target)) {
        return 0;
    }
    return interned_before(pl, target);
}

struct fixed_search {
    struct prelinker *pl;
    int found;
};

static int
find_fixed(void *ctx, PyObject *target, size_t slot, const char *field,
           Py_ssize_t index)
{
    struct fixed_search *fs = ctx;
    (void)slot, (void)field, (void)index;
    int fixed = target && !fs->found ? is_fixed(fs->pl, target) : 0;
    if (fixed > 0) {
        fs->found = 1;
    }
    return fixed < 0 ? -1 : 0;
}

/* Whether code ran: its bytecode is no longer what a code object that
 * never ran holds (adaptive counters, specialised instructions).  Code
 * that ran while the image was made runs again in the processes that use
 * it, and writes its pages there: it is kept apart. */
static int
code_ran(PyObject *code)
{
    PyObject *fresh = PyObject_CallMethod(code, "replace", NULL);
    if (fresh == NULL) {
        return -1;
    }
    int ran = Py_SIZE(fresh) != Py_SIZE(code)
              || memcmp(((PyCodeObject *)fresh)->co_code_adaptive,
                        ((PyCodeObject *)code)->co_code_adaptive,
                        Py_SIZE(code) * PyCode_Type.tp_itemsize) != 0;
    Py_DECREF(fresh);
    return ran;
}

/* Whether code ran in a traced run of the program (the trace's
 * "firstlineno:qualname" words of the entry's code that ran). */
static int
code_ran_in_trace(struct prelinker *pl, PyObject *code)
{
    PyCodeObject *co = (PyCodeObject *)code;
    PyObject *key = PyUnicode_FromFormat("%d:%U", co->co_firstlineno,
                                         co->co_qualname);
    int ran = key ? PySet_Contains(pl->written_here, key) : -1;
    Py_XDECREF(key);
    return ran;
}

PyObject *
pycds_hashed_word(PyObject *s)
{
    PyObject *utf8 = PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass");
    if (utf8 == NULL) {
        return NULL;
    }
    char word[20];
    snprintf(word, sizeof(word), "#%016llx", (unsigned long long)pycds_xxh3(
                 PyBytes_AS_STRING(utf8), PyBytes_GET_SIZE(utf8)));
    Py_DECREF(utf8);
    return PyUnicode_FromString(word);
}

/* Whether a traced run computed the hash of str constant op (its word in
 * the trace).  Hashing writes the str; a dict key of a module's, a
 * regular expression, a codec's name is hashed as it is first used, each
 * on a page of its own otherwise. */
static int
str_hashed_in_trace(struct prelinker *pl, PyObject *op)
{
    PyObject *key = pycds_hashed_word(op);
    int hashed = key ? PySet_Contains(pl->written_here, key) : -1;
    Py_XDECREF(key);
    return hashed;
}

/* Adds op's id to set: 1, or 0 if it was there already, -1 on error. */
static int
add_id(PyObject *set, PyObject *op)
{
    PyObject *id = PyLong_FromVoidPtr(op);
    int had = id ? PySet_Contains(set, id) : -1;
    if (had == 0 && PySet_Add(set, id) < 0) {
        had = -1;
    }
    Py_XDECREF(id);
    return had < 0 ? -1 : !had;
}

/* Whether op is an object of the entry's own (not a runtime object, not
 * an interned string: those are shared with other entries). */
static int
own_object(PyObject *op)
{
    char buf[32];
    return pycds_runtime_name(op, buf, sizeof(buf)) == NULL
           && !is_interned_str(op);
}

/* Whether op can be run-once: the code of a module or class body (no
 * CO_NEWLOCALS: it runs in a namespace, not a frame of its own), or a
 * tuple or bytes, which the mapper copies with it. */
static int
may_run_once(PyObject *op)
{
    if (PyCode_Check(op)) {
        return !(((PyCodeObject *)op)->co_flags & CO_NEWLOCALS);
    }
    return PyTuple_CheckExact(op) || PyBytes_CheckExact(op);
}

struct once_walk {
    PyObject *once;           /* ids: run-once candidates */
    PyObject *shared;         /* the objects the others refer to */
    PyObject *seen;           /* ids visited below shared */
};

/* First pass: what run-once code refers to through run-once candidates
 * only; the objects it meets that cannot be run-once are noted. */
static int
collect_once(void *ctx, PyObject *target, size_t slot, const char *field,
             Py_ssize_t index)
{
    struct once_walk *w = ctx;
    (void)slot, (void)field, (void)index;
    if (target == NULL || !own_object(target)) {
        return 0;
    }
    if (!may_run_once(target)) {
        return PyList_Append(w->shared, target);
    }
    int added = add_id(w->once, target);
    return added <= 0 ? added : pycds_layout_visit(target, collect_once, w);
}

/* Second pass: whatever the others refer to, directly or not, is not
 * run-once (a function's constants, a frozenset's elements). */
static int
drop_shared(void *ctx, PyObject *target, size_t slot, const char *field,
            Py_ssize_t index)
{
    struct once_walk *w = ctx;
    (void)slot, (void)field, (void)index;
    if (target == NULL || !own_object(target)) {
        return 0;
    }
    int added = add_id(w->seen, target);
    if (added <= 0) {
        return added;
    }
    PyObject *id = PyLong_FromVoidPtr(target);
    if (id == NULL || PySet_Discard(w->once, id) < 0) {
        Py_XDECREF(id);
        return -1;
    }
    Py_DECREF(id);
    if (!PyFrozenSet_CheckExact(target)) {
        return pycds_layout_visit(target, drop_shared, w);
    }
    PyObject *elems = pycds_sorted_elements(target);
    int rc = elems ? pycds_layout_visit(elems, drop_shared, w) : -1;
    Py_XDECREF(elems);
    return rc;
}

/* The ids of the run-once objects below root, an entry's code: run-once
 * code and the tuples and bytes that only run-once code refers to.  They
 * go to their own area, which a process only reads, to copy them to its
 * heap: normal import frees a body's code once it ran. */
static PyObject *
run_once_ids(PyObject *root)
{
    if (!PyCode_Check(root)) {
        /* A data entry's 1-tuple: nothing of it runs, all of it is used
         * where it lies. */
        return PySet_New(NULL);
    }
    struct once_walk w = {PySet_New(NULL), PyList_New(0), PySet_New(NULL)};
    PyObject *once = NULL;
    if (w.once == NULL || w.shared == NULL || w.seen == NULL
        || collect_once(&w, root, 0, NULL, -1) < 0) {
        goto done;
    }
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(w.shared); k++) {
        if (drop_shared(&w, PyList_GET_ITEM(w.shared, k), 0, NULL, -1) < 0) {
            goto done;
        }
    }
    once = Py_NewRef(w.once);

done:
    Py_XDECREF(w.once);
    Py_XDECREF(w.shared);
    Py_XDECREF(w.seen);
    return once;
}

/* Whether op has a slot a process may have to fix up. */
static int
has_fixed_slot(struct prelinker *pl, PyObject *op)
{
    struct fixed_search fs = {pl, 0};
    if (pycds_layout_visit(op, find_fixed, &fs) < 0) {
        return -1;
    }
    return fs.found;
}

/* The area op goes to. */
static int
area_of(struct prelinker *pl, PyObject *op)
{
    int once = has_id(pl->once, op);
    if (once != 0) {
        return once < 0 ? -1 : PYCDS_AREA_ONCE;
    }
    if (PyCode_Check(op)) {
        /* Code a process writes: code that runs, and code with a name
         * it had interned before.  Only code this process served can
         * have run here: an archive opened afresh relocates new code. */
        int hot = pl->served ? code_ran(op) : 0;
        if (hot == 0 && pl->written_here != NULL) {
            hot = code_ran_in_trace(pl, op);
        }
        if (hot == 0) {
            hot = has_fixed_slot(pl, op);
        }
        return hot < 0 ? -1 : hot ? PYCDS_AREA_HOT_CODE : PYCDS_AREA_CODE;
    }
    if (Py_IS_TYPE(op, &pycds_FrozenDictType)) {
        return PYCDS_AREA_FIXED;    /* its ob_type */
    }
    if (PyUnicode_CheckExact(op) && pl->written_here != NULL) {
        /* Written by its first use, like a slot fixed up. */
        int hashed = str_hashed_in_trace(pl, op);
        if (hashed != 0) {
            return hashed < 0 ? -1 : PYCDS_AREA_FIXED;
        }
    }
    int fixed = has_fixed_slot(pl, op);
    return fixed < 0 ? -1 : fixed ? PYCDS_AREA_FIXED : PYCDS_AREA_DATA;
}

static int
emit_string(struct prelinker *pl, PyObject *op, uint64_t *addr)
{
    int found = pycds_memo_get(pl->strings, op, addr);
    if (found != 0) {
        return found < 0 ? -1 : 0;
    }
    if (image_place(pl, op, PYCDS_AREA_STRINGS, addr) < 0) {
        return -1;
    }
    return pycds_memo_set(pl->strings, op, *addr);
}

/* A frozenset is built at load from a tuple of its elements, as SHARE
 * builds one from an archive, in the same order (the order of insertion
 * decides the order of iteration). */
static int
image_emit_frozenset(struct prelinker *pl, PyObject *fs, uint64_t *addr)
{
    PyObject *elems = pycds_sorted_elements(fs);
    if (elems == NULL) {
        return -1;
    }
    int rc = pycds_layout_visit(elems, image_emit_child, pl);
    if (rc == 0) {
        rc = image_place(pl, elems, PYCDS_AREA_DATA, addr);
    }
    Py_DECREF(elems);
    *addr |= TAG_FROZENSET;
    return rc;
}

/* The address op will have in the image, placing it (and what it points
 * to) first if need be. */
static int
image_emit(struct prelinker *pl, PyObject *op, uint64_t *addr)
{
    char buf[32];
    if (pycds_runtime_name(op, buf, sizeof(buf)) != NULL) {
        if (!in_runtime(pl, op)) {
            return refuse(pl, op, "a runtime singleton outside libpython");
        }
        if (is_interned_str(op) && PyUnicode_GET_LENGTH(op) == 1) {
            Py_UCS4 c = PyUnicode_READ_CHAR(op, 0);
            if (c < 256) {
                pl->interned_chars[c / 8] |= (uint8_t)(1 << (c % 8));
            }
        }
        *addr = (uintptr_t)op;
        return 0;
    }
    if (is_interned_str(op)) {
        if (in_runtime(pl, op)) {
            /* One of the interpreter's static strings: where it is in
             * every process with libpython at the same place. */
            *addr = (uintptr_t)op;
            return 0;
        }
        return emit_string(pl, op, addr);
    }
    int found = pycds_memo_get(pl->memo, op, addr);
    if (found != 0) {
        return found < 0 ? -1 : 0;
    }
    int rc;
    if (PyFrozenSet_CheckExact(op)) {
        rc = image_emit_frozenset(pl, op, addr);
    }
    else {
        /* Relocated objects nest at most PYCDS_MAX_NESTING deep: the
         * recursion is bounded. */
        rc = pycds_layout_visit(op, image_emit_child, pl);
        int area = rc == 0 ? area_of(pl, op) : -1;
        rc = area < 0 ? -1 : image_place(pl, op, area, addr);
    }
    return rc < 0 ? -1 : pycds_memo_set(pl->memo, op, *addr);
}

PyObject *
pycds_interned_strings(void)
{
    /* The dict's keys are the strings themselves; no dict on 3.11. */
    return PySet_New(pycds_interned_dict());
}

/* Orders runtime slots, or fix-ups by their slot (its first field). */
static int
compare_slots(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Appends the entry's runtime slots, sorted, to the runtime table. */
static int
encode_runtime(struct prelinker *pl, struct pycds_prelink_entry *pe)
{
    uint64_t *slots = (uint64_t *)pl->runtime_slots.data;
    size_t n = pl->runtime_slots.len / sizeof(uint64_t);
    qsort(slots, n, sizeof(*slots), compare_slots);
    pe->runtime_start = pl->runtime.n;
    if (pycds_relr_encode(&pl->runtime, slots, n) < 0) {
        return -1;
    }
    pe->nruntime = pl->runtime.n - pe->runtime_start;
    pl->runtime_slots.len = 0;
    return 0;
}

/* Strings that two or more entries use go first in the strings area, the
 * most shared first; a string one entry uses stays with it.  A process
 * writes every page it interns a string from (the string's hash), and
 * the strings it uses are then on fewer pages: `perf stat -e page-faults`
 * under the `create --all` archive of pyenv 3.11.7 (10,851 modules),
 * `-c pass` 2565 -> 2295, `import boto3` 6623 -> 6149.  Placing by more
 * than two entries (4, 8, 32) did less. */
#define SHARED_STRING_MIN_ENTRIES 2

struct string_count {
    struct prelinker *pl;
    PyObject *counts;         /* str -> entries that use it */
    PyObject *seen;           /* id(object) -> 0, for one entry */
};

static int count_strings(struct string_count *sc, PyObject *op);

static int
count_child(void *ctx, PyObject *target, size_t slot, const char *field,
            Py_ssize_t index)
{
    (void)slot, (void)field, (void)index;
    return target ? count_strings(ctx, target) : 0;
}

/* Counts the strings of op that image_emit would put in the strings
 * area, once per entry. */
static int
count_strings(struct string_count *sc, PyObject *op)
{
    char buf[32];
    uint64_t dummy;
    if (pycds_runtime_name(op, buf, sizeof(buf)) != NULL
        || in_runtime(sc->pl, op)) {
        return 0;
    }
    int seen = pycds_memo_get(sc->seen, op, &dummy);
    if (seen != 0) {
        return seen < 0 ? -1 : 0;
    }
    if (pycds_memo_set(sc->seen, op, 0) < 0) {
        return -1;
    }
    if (is_interned_str(op)) {
        PyObject *n = PyDict_GetItemWithError(sc->counts, op);
        if (n == NULL && PyErr_Occurred()) {
            return -1;
        }
        n = PyLong_FromSsize_t(n ? PyLong_AsSsize_t(n) + 1 : 1);
        int rc = n ? PyDict_SetItem(sc->counts, op, n) : -1;
        Py_XDECREF(n);
        return rc;
    }
    if (PyFrozenSet_CheckExact(op)) {
        PyObject *elems = pycds_sorted_elements(op);
        int rc = elems ? pycds_layout_visit(elems, count_child, sc) : -1;
        Py_XDECREF(elems);
        return rc;
    }
    return pycds_layout_visit(op, count_child, sc);
}

struct shared_string {
    Py_ssize_t entries, order;
    PyObject *str;            /* borrowed from the counts dict */
};

static int
compare_shared(const void *a, const void *b)
{
    const struct shared_string *x = a, *y = b;
    if (x->entries != y->entries) {
        return x->entries > y->entries ? -1 : 1;
    }
    return x->order < y->order ? -1 : x->order > y->order;
}

/* A dict of the strings the entries whose pl->used is `used` put in the
 * strings area -> how many of them use each (in the order first met). */
static PyObject *
count_entries_strings(struct prelinker *pl, int used)
{
    struct string_count sc = {pl, PyDict_New(), NULL};
    if (sc.counts == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < pl->ar->index.nentries; i++) {
        if (pl->used[i] != used) {
            continue;
        }
        const struct pycds_entry *e = pycds_archive_entry(pl->ar, i);
        PyObject *code = e ? pycds_archive_entry_code(pl->ar, i) : NULL;
        if (code == NULL) {
            /* prelink_entry leaves it out, or fails, the same way */
            PyObject *why = pycds_take_refusal();
            Py_XDECREF(why);
            if (why == NULL) {
                Py_DECREF(sc.counts);
                return NULL;
            }
            continue;
        }
        sc.seen = PyDict_New();
        int counted = sc.seen ? count_strings(&sc, code) : -1;
        Py_CLEAR(sc.seen);
        Py_DECREF(code);
        if (counted < 0) {
            Py_DECREF(sc.counts);
            return NULL;
        }
    }
    return sc.counts;
}

/* Places the strings that at least SHARED_STRING_MIN_ENTRIES of the
 * entries whose pl->used is `used` share, the most shared first. */
static int
place_shared_strings(struct prelinker *pl, int used)
{
    PyObject *counts = count_entries_strings(pl, used);
    struct shared_string *shared = NULL;
    Py_ssize_t nshared = 0, pos = 0, order = 0;
    PyObject *str, *n;
    int rc = -1;
    if (counts == NULL) {
        return -1;
    }
    shared = PyMem_Calloc(PyDict_GET_SIZE(counts) + 1, sizeof(*shared));
    if (shared == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    while (PyDict_Next(counts, &pos, &str, &n)) {
        Py_ssize_t entries = PyLong_AsSsize_t(n);
        if (entries >= SHARED_STRING_MIN_ENTRIES) {
            shared[nshared++] = (struct shared_string){entries, order, str};
        }
        order++;
    }
    qsort(shared, nshared, sizeof(*shared), compare_shared);
    pl->entry = "(strings shared by entries)";
    for (Py_ssize_t k = 0; k < nshared; k++) {
        uint64_t addr;
        if (emit_string(pl, shared[k].str, &addr) < 0) {
            goto done;
        }
    }
    rc = 0;

done:
    PyMem_Free(shared);
    Py_DECREF(counts);
    return rc;
}

/* Places first the strings of the entries every process uses that the
 * processes have interned before they use the image.  The mapper only
 * looks them up (the process's own string serves), which does not write
 * them: together, their pages stay the page cache's.  Non-PIE 3.13.0,
 * the stdlib mix of `make bench-pages`: 1,390 strings, about 20 pages a
 * process. */
static int
place_preinterned_strings(struct prelinker *pl)
{
    PyObject *counts = count_entries_strings(pl, 1);
    PyObject *str, *n;
    Py_ssize_t pos = 0;
    if (counts == NULL) {
        return -1;
    }
    pl->entry = "(strings interned before)";
    while (PyDict_Next(counts, &pos, &str, &n)) {
        uint64_t addr;
        int before = interned_before(pl, str);
        if (before < 0 || (before && emit_string(pl, str, &addr) < 0)) {
            Py_DECREF(counts);
            return -1;
        }
    }
    Py_DECREF(counts);
    return 0;
}

/* Entry e's name as a str (a new reference); NULL without an exception
 * for a name that is not UTF-8, no module's (not one a trace or the
 * interpreter's start names), NULL with one on error. */
static PyObject *
entry_module_name(struct prelinker *pl, const struct pycds_entry *e)
{
    PyObject *name = PyUnicode_DecodeUTF8(
        pycds_index_str(&pl->ar->index, e->name), e->name.len, NULL);
    if (name == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
    }
    return name;
}

/* Sets pl->written_here to the words of entry e's objects a traced run
 * wrote, if any. */
static int
entry_written(struct prelinker *pl, const struct pycds_entry *e)
{
    pl->written_here = NULL;
    if (pl->written == NULL) {
        return 0;
    }
    PyObject *name = entry_module_name(pl, e);
    if (name == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    PyObject *words = PyDict_GetItemWithError(pl->written, name);
    Py_DECREF(name);
    if (words != NULL && !PyAnySet_Check(words)) {
        PyErr_SetString(PyExc_TypeError, "written must map names to sets");
        return -1;
    }
    pl->written_here = words;
    return words == NULL && PyErr_Occurred() ? -1 : 0;
}

/* Copies entry i, relocated by this process, into the image; an entry
 * the archive cannot serve is left out (root 0). */
static int
prelink_entry(struct prelinker *pl, Py_ssize_t i)
{
    size_t pe_off = i * sizeof(struct pycds_prelink_entry);
    struct pycds_prelink_entry *pe;
    const struct pycds_entry *e = pycds_archive_entry(pl->ar, i);
    PyObject *top = e ? pycds_archive_entry_root(pl->ar, i) : NULL;
    if (top == NULL) {
        PyObject *why = pycds_take_refusal();
        Py_XDECREF(why);
        return why ? 0 : -1;
    }
    /* The index's strings are not NUL-terminated. */
    snprintf(pl->entry_name, sizeof(pl->entry_name), "%.*s",
             (int)e->name.len, pycds_index_str(&pl->ar->index, e->name));
    pl->entry = pl->entry_name;
    if (entry_written(pl, e) < 0) {
        Py_DECREF(top);
        return -1;
    }
    uint64_t start[PYCDS_NAREAS];
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        start[k] = pl->area[k].len;
    }
    uint64_t fixup_start = pl->fixups.len / sizeof(struct pycds_prelink_fixup);
    uint64_t root;
    pl->runtime_slots.len = 0;
    pl->memo = PyDict_New();
    pl->once = pl->memo ? run_once_ids(top) : NULL;
    int rc = pl->once ? image_emit(pl, top, &root) : -1;
    Py_CLEAR(pl->memo);
    Py_CLEAR(pl->once);
    Py_DECREF(top);
    if (rc < 0) {
        return -1;
    }
    pe = (struct pycds_prelink_entry *)(pl->entries.data + pe_off);
    pe->root = root;
    uintptr_t delta[PYCDS_NAREAS];
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        /* The strings area is shared by all entries: no span there. */
        uint64_t from = k == PYCDS_AREA_STRINGS ? pl->area[k].len : start[k];
        pe->spans[k].start = pl->base[k] + from;
        pe->spans[k].end = pl->base[k] + pl->area[k].len;
        delta[k] = (uintptr_t)pl->area[k].data - pl->base[k];
    }
    pe->fixup_start = fixup_start;
    pe->nfixups = pl->fixups.len / sizeof(struct pycds_prelink_fixup)
                  - fixup_start;
    /* In slot order, as the runtime slots: the mapper checks each against
     * the span the one before was in first.  (No fix-ups at all: no
     * buffer, and qsort must not see its NULL.) */
    if (pe->nfixups > 1) {
        qsort((struct pycds_prelink_fixup *)pl->fixups.data + fixup_start,
              pe->nfixups, sizeof(struct pycds_prelink_fixup), compare_slots);
    }
    if (encode_runtime(pl, pe) < 0) {
        return -1;
    }
    pe->xxh3 = pycds_prelink_entry_xxh3(
        pe, delta, (const struct pycds_prelink_fixup *)pl->fixups.data,
        pl->runtime.words);
    return 0;
}

/* Writes the archive pl->ar again to out_path, with pl's image. */
static int
write_image(struct prelinker *pl, const char *out_path)
{
    struct pycds_prelink_header header = {0}, *h = &header;
    memcpy(h->magic, PYCDS_PRELINK_MAGIC, sizeof(h->magic));
    h->version = PYCDS_PRELINK_VERSION;
    if (pycds_abi_key_current(&h->key) < 0) {
        return -1;
    }
    h->archive_xxh3 = pl->ar->map.header.header_xxh3;
    memcpy(h->interned_chars, pl->interned_chars, sizeof(h->interned_chars));
    if (pl->hashes) {
        h->flags |= PYCDS_PRELINK_HASHES;
        pycds_hash_secret(h->hash_secret, sizeof(h->hash_secret));
    }
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        /* Whole pages, as they are mapped and checked. */
        size_t pad = pycds_prelink_page_round(pl->area[k].len)
                     - pl->area[k].len;
        if (pad && buffer_grow(&pl->area[k], pad) == NULL) {
            return -1;
        }
    }
    const struct buffer *strings = &pl->area[PYCDS_AREA_STRINGS];
    size_t nchunks = pycds_prelink_nchunks(strings->len);
    uint64_t *chunks = calloc(nchunks + 1, sizeof(uint64_t));
    if (chunks == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t c = 0; c < nchunks; c++) {
        chunks[c] = pycds_prelink_chunk_xxh3(strings->data, strings->len, c);
    }
    h->chunks_xxh3 = pycds_xxh3(chunks, nchunks * sizeof(uint64_t));
    h->strings_eager = pl->strings_eager;
    h->nentries = pl->entries.len / sizeof(struct pycds_prelink_entry);
    h->nfixups = pl->fixups.len / sizeof(struct pycds_prelink_fixup);
    h->nruntime = pl->runtime.n;
    h->areas[PYCDS_AREA_STRINGS].size = strings->len;
    uint64_t off = pycds_prelink_areas_offset(h);
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        h->areas[k].address = pl->base[k];
        h->areas[k].size = pl->area[k].len;
        h->areas[k].file_offset = off;
        off += h->areas[k].size;
    }
    h->header_xxh3 = pycds_xxh3(h, offsetof(struct pycds_prelink_header,
                                            header_xxh3));
    /* The archive again, its sections as they are, the image last. */
    const void *tables[] = {h, pl->entries.data, pl->fixups.data,
                            pl->runtime.words, chunks};
    size_t sizes[] = {sizeof(*h), pl->entries.len, pl->fixups.len,
                      pl->runtime.n * sizeof(uint64_t),
                      nchunks * sizeof(uint64_t)};
    struct pycds_blob blobs[5 + PYCDS_NAREAS];
    uint64_t at = 0;
    for (int k = 0; k < 5; k++) {
        blobs[k] = (struct pycds_blob){tables[k], sizes[k], at};
        at += sizes[k];
    }
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        blobs[5 + k] = (struct pycds_blob){pl->area[k].data, pl->area[k].len,
                                           h->areas[k].file_offset};
    }
    struct pycds_image img;
    pycds_container_sections(&pl->ar->map, &img);
    img.prelinked = blobs;
    img.nprelinked = 5 + PYCDS_NAREAS;
    img.prelinked_size = off;
    int rc = pycds_container_write(out_path, &img);
    free(chunks);
    return rc;
}

/* Which entries every process of the image uses: those the PRELINK run
 * that made served used, else those named in first (a trace's modules,
 * or those the interpreter imports as it starts), else all. */
static int
mark_used(struct prelinker *pl, struct pycds_archive *served,
          PyObject *first)
{
    Py_ssize_t n = pl->ar->index.nentries;
    if ((pl->used = calloc(n + 1, 1)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const struct pycds_entry *e = pycds_archive_entry(pl->ar, i);
        int used = 1;
        if (e == NULL) {
            /* damaged: prelink_entry leaves it out */
            PyObject *why = pycds_take_refusal();
            Py_XDECREF(why);
            if (why == NULL) {
                return -1;
            }
        }
        else if (served != NULL) {
            used = pycds_archive_entry_used(served, i);
        }
        else if (first != NULL) {
            PyObject *name = entry_module_name(pl, e);
            used = name ? PySequence_Contains(first, name)
                        : PyErr_Occurred() ? -1 : 0;
            Py_XDECREF(name);
        }
        if (used < 0) {
            return -1;
        }
        pl->used[i] = (unsigned char)used;
    }
    return 0;
}

/* The slot the archive's checksum picks, or the next one that no image of
 * avoid takes: two layers used together each want their own addresses,
 * and a layer whose are taken is relocated (docs/FORMAT.md, "Addresses"). */
static int
choose_slot(uint64_t archive_xxh3, PyObject *avoid, uint64_t *slot)
{
    *slot = archive_xxh3 % PYCDS_PRELINK_NSLOTS;
    for (int k = 0; avoid != NULL && k < PYCDS_PRELINK_NSLOTS; k++) {
        uint64_t s = (*slot + k) % PYCDS_PRELINK_NSLOTS;
        PyObject *n = PyLong_FromUnsignedLongLong(s);
        int taken = n ? PySet_Contains(avoid, n) : -1;
        Py_XDECREF(n);
        if (taken < 0) {
            return -1;
        }
        if (!taken) {
            *slot = s;
            break;
        }
    }
    return 0;
}

int
pycds_prelink(const char *archive_path, const char *out_path, int hashes,
              int trust_any, PyObject *preinterned,
              struct pycds_archive *served, PyObject *first,
              PyObject *written, PyObject *avoid)
{
    int rc = -1;
    struct prelinker pl = {.served = served != NULL, .hashes = hashes,
                           .written = written};
    int persona = personality(0xffffffff);
    pycds_runtime_image(&pl.rt);
    pl.predict = persona >= 0 && (persona & ADDR_NO_RANDOMIZE);
    pl.ar = served ? served
                   : pycds_archive_open(archive_path,
                                        trust_any ? PYCDS_OPEN_ANY_OWNER : 0);
    if (pl.ar == NULL) {
        return -1;
    }
    uint64_t slot;
    if (choose_slot(pl.ar->map.header.header_xxh3, avoid, &slot) < 0) {
        goto done;
    }
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        pl.base[k] = PYCDS_PRELINK_SLOTS_START
                     + slot * PYCDS_PRELINK_SLOT_SIZE
                     + k * PYCDS_PRELINK_AREA_MAX;
    }
    pl.code_version = CODE_VERSIONS_BASE + (uint32_t)slot *
                      (CODE_VERSIONS_MASK + 1);
    pl.strings = PyDict_New();
    pl.preinterned = preinterned ? Py_NewRef(preinterned)
                                 : pycds_interned_strings();
    if (pl.strings == NULL || pl.preinterned == NULL) {
        goto done;
    }
    Py_ssize_t n = pl.ar->index.nentries;
    if (buffer_grow(&pl.entries, n * sizeof(struct pycds_prelink_entry))
        == NULL || mark_used(&pl, served, first) < 0) {
        goto done;
    }
    /* First the entries every process uses: their objects together, their
     * strings first in the strings area, interned as the image is mapped.
     * When nothing says which entries a program uses, none is eager: each
     * string is interned with the first entry that uses it. */
    int eager = served != NULL || first != NULL;
    if (eager && place_preinterned_strings(&pl) < 0) {
        goto done;
    }
    for (int used = 1; used >= 0; used--) {
        /* The strings of the entries used are interned eagerly, wherever
         * they are: the others are placed by how shared. */
        if (used != eager && place_shared_strings(&pl, used) < 0) {
            goto done;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            if (pl.used[i] == used && prelink_entry(&pl, i) < 0) {
                goto done;
            }
        }
        if (used && eager) {
            pl.strings_eager = pl.area[PYCDS_AREA_STRINGS].len;
        }
    }
    rc = write_image(&pl, out_path);

done:
    Py_XDECREF(pl.strings);
    Py_XDECREF(pl.preinterned);
    for (int k = 0; k < PYCDS_NAREAS; k++) {
        free(pl.area[k].data);
    }
    free(pl.entries.data);
    free(pl.fixups.data);
    free(pl.runtime.words);
    free(pl.runtime_slots.data);
    free(pl.used);
    /* The relocated objects stay: they are interned, never freed. */
    if (served == NULL) {
        pycds_archive_free(pl.ar);
    }
    return rc;
}

