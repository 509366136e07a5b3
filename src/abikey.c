/* The ABI key: which interpreter build an archive belongs to. */
#include "pycds/pycds.h"

#include <link.h>
#include <string.h>

struct build_id_search {
    uintptr_t address;        /* an address inside the object we want */
    struct pycds_abi_key *key;
    int found;
    struct pycds_runtime_image *image;  /* where that object is loaded */
};

static int
note_build_id(struct dl_phdr_info *info, const ElfW(Phdr) *ph,
              struct pycds_abi_key *key)
{
    const char *p = (const char *)(info->dlpi_addr + ph->p_vaddr);
    const char *end = p + ph->p_memsz;
    while (p + sizeof(ElfW(Nhdr)) <= end) {
        const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)p;
        const char *name = p + sizeof(*nh);
        const char *desc = name + ((nh->n_namesz + 3) & ~3u);
        const char *next = desc + ((nh->n_descsz + 3) & ~3u);
        if (next > end) {
            break;
        }
        if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4
            && memcmp(name, "GNU", 4) == 0
            && nh->n_descsz <= sizeof(key->build_id)) {
            key->build_id_len = nh->n_descsz;
            memcpy(key->build_id, desc, nh->n_descsz);
            return 1;
        }
        p = next;
    }
    return 0;
}

static int
find_build_id(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct build_id_search *s = arg;
    int contains = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && s->address >= start
            && s->address < start + ph->p_memsz) {
            contains = 1;
        }
    }
    if (!contains) {
        return 0;
    }
    s->image->base = info->dlpi_addr;
    s->image->lo = UINTPTR_MAX;
    s->image->hi = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD) {
            s->image->lo = start < s->image->lo ? start : s->image->lo;
            if (start + ph->p_memsz > s->image->hi) {
                s->image->hi = start + ph->p_memsz;
            }
        }
    }
    for (int i = 0; i < info->dlpi_phnum && !s->found; i++) {
        if (info->dlpi_phdr[i].p_type == PT_NOTE) {
            s->found = note_build_id(info, &info->dlpi_phdr[i], s->key);
        }
    }
    return 1;
}

static int
current_optimize(int32_t *level)
{
    PyObject *flags = PySys_GetObject("flags");  /* borrowed */
    if (flags == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "sys.flags is missing");
        return -1;
    }
    PyObject *v = PyObject_GetAttrString(flags, "optimize");
    if (v == NULL) {
        return -1;
    }
    long n = PyLong_AsLong(v);
    Py_DECREF(v);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    *level = (int32_t)n;
    return 0;
}

int
pycds_abi_key_current(struct pycds_abi_key *key)
{
    memset(key, 0, sizeof(*key));
    key->hexversion = (uint32_t)Py_Version;
    key->pyc_magic = (uint32_t)PyImport_GetMagicNumber();
    key->pointer_size = sizeof(void *);
    if (current_optimize(&key->optimize) < 0) {
        return -1;
    }
    /* The object that defines the type objects is the one whose layout the
     * archive depends on: libpython, or the executable when linked
     * statically. */
    struct pycds_runtime_image image;
    struct build_id_search s = {(uintptr_t)&PyCode_Type, key, 0, &image};
    dl_iterate_phdr(find_build_id, &s);
    return 0;
}

void
pycds_runtime_image(struct pycds_runtime_image *image)
{
    struct pycds_abi_key key;
    struct build_id_search s = {(uintptr_t)&PyCode_Type, &key, 0, image};
    memset(image, 0, sizeof(*image));
    dl_iterate_phdr(find_build_id, &s);
}

const char *
pycds_abi_key_mismatch(const struct pycds_abi_key *a,
                       const struct pycds_abi_key *b)
{
    if (a->hexversion != b->hexversion) {
        return "made by another Python version (sys.hexversion differs)";
    }
    if (a->pyc_magic != b->pyc_magic) {
        return "made for another bytecode version (pyc magic differs)";
    }
    if (a->pointer_size != b->pointer_size) {
        return "made for another pointer size";
    }
    if (a->build_id_len != b->build_id_len
        || memcmp(a->build_id, b->build_id, a->build_id_len) != 0) {
        return "made by another build of this Python version "
               "(GNU build-id differs)";
    }
    if (a->optimize != b->optimize) {
        return "made at another optimisation level (sys.flags.optimize "
               "differs)";
    }
    return NULL;
}

/* "3.12.1", "3.13.0rc2": a hexversion as sys.version_info spells it. */
static void
format_version(uint32_t hexversion, char *buf, size_t size)
{
    static const char *const levels[16] = {[0xA] = "a", [0xB] = "b",
                                           [0xC] = "rc"};
    unsigned int level = (hexversion >> 4) & 0xF;
    int n = snprintf(buf, size, "%u.%u.%u", (unsigned int)(hexversion >> 24),
                     (unsigned int)(hexversion >> 16) & 0xFF,
                     (unsigned int)(hexversion >> 8) & 0xFF);
    if (level != 0xF && n > 0 && (size_t)n < size) {
        snprintf(buf + n, size - n, "%s%u",
                 levels[level] ? levels[level] : "?", hexversion & 0xF);
    }
}

const char *
pycds_abi_key_refusal(const struct pycds_abi_key *archive,
                      const struct pycds_abi_key *current,
                      char *buf, size_t size)
{
    const char *why = pycds_abi_key_mismatch(archive, current);
    char made[32], running[32];
    if (why == NULL) {
        return NULL;
    }
    format_version(archive->hexversion, made, sizeof(made));
    format_version(current->hexversion, running, sizeof(running));
    /* A user fixes a version mismatch by choosing the interpreter: say
     * which one made the archive and which one reads it. */
    if (archive->hexversion != current->hexversion) {
        snprintf(buf, size, "made by Python %s, this is Python %s", made,
                 running);
    }
    else if (archive->optimize == current->optimize) {
        snprintf(buf, size, "%s (both Python %s)", why, running);
    }
    else {
        snprintf(buf, size, "made at optimisation level %d, this "
                 "interpreter runs at %d (sys.flags.optimize)",
                 (int)archive->optimize, (int)current->optimize);
    }
    return buf;
}

PyObject *
pycds_abi_key_as_dict(const struct pycds_abi_key *key)
{
    char hex[2 * sizeof(key->build_id) + 1];
    uint32_t n = key->build_id_len;
    if (n > sizeof(key->build_id)) {
        n = sizeof(key->build_id);
    }
    for (uint32_t i = 0; i < n; i++) {
        static const char digits[] = "0123456789abcdef";
        hex[2 * i] = digits[key->build_id[i] >> 4];
        hex[2 * i + 1] = digits[key->build_id[i] & 15];
    }
    hex[2 * n] = '\0';
    return Py_BuildValue("{s:k,s:k,s:i,s:k,s:s}",
                         "hexversion", (unsigned long)key->hexversion,
                         "pyc_magic", (unsigned long)key->pyc_magic,
                         "optimize", (int)key->optimize,
                         "pointer_size", (unsigned long)key->pointer_size,
                         "build_id", hex);
}

PyObject *
pycds_abi_tag(void)
{
    struct pycds_abi_key key;
    if (pycds_abi_key_current(&key) < 0) {
        return NULL;
    }
    char tag[64];
    unsigned long v = key.hexversion;
    int n = snprintf(tag, sizeof(tag), "%lu.%lu.%lu", v >> 24,
                     (v >> 16) & 0xFF, (v >> 8) & 0xFF);
    /* The build-id's first four bytes tell builds apart well enough for a
     * file name; the archive's key holds all of it. */
    for (uint32_t i = 0; i < key.build_id_len && i < 4; i++) {
        n += snprintf(tag + n, sizeof(tag) - n, "%s%02x", i ? "" : "-",
                      key.build_id[i]);
    }
    if (key.optimize) {
        snprintf(tag + n, sizeof(tag) - n, "-O%d", (int)key.optimize);
    }
    return PyUnicode_FromString(tag);
}
