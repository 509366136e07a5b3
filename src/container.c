/* The archive's ELF container, written and read in this one place.
 *
 * Writing goes through libelf with a layout of our own (ELF_F_LAYOUT) so
 * that the heap lands on a page boundary and can be mapped as it is; the
 * file appears under its name only when complete (temporary file, fsync,
 * rename).  Reading maps the whole file privately and walks its section
 * table itself, checking every section's place before anything uses it:
 * SHARE needs no more of ELF than that, and a process that links libelf
 * (and the zlib it links) pays for loading both at every start, whether it
 * writes an archive or not (docs/FORMAT.md, "Container").  So libelf
 * is loaded on the first write. */
#include "pycds/pycds.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libelf.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* elfutils' libelf; its soname has been libelf.so.1 since its first
 * release. */
#define LIBELF_SONAME "libelf.so.1"

#define LIBELF_FUNCTIONS(X) \
    X(elf_version) X(elf_errmsg) X(elf_begin) X(elf64_newehdr) \
    X(elf_newscn) X(elf_newdata) X(elf64_getshdr) X(elf_flagelf) \
    X(elf_update) X(elf_end)

/* The functions the writer calls, typed by libelf's own header. */
static struct {
#define LIBELF_FIELD(f) __typeof__(f) *f;
    LIBELF_FUNCTIONS(LIBELF_FIELD)
#undef LIBELF_FIELD
} libelf;

static int
libelf_load(void)
{
    if (libelf.elf_end != NULL) {
        return 0;
    }
    void *lib = dlopen(LIBELF_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        goto dl_error;
    }
#define LIBELF_LOOKUP(f) \
    if ((*(void **)&libelf.f = dlsym(lib, #f)) == NULL) { \
        goto dl_error; \
    }
    LIBELF_FUNCTIONS(LIBELF_LOOKUP)
#undef LIBELF_LOOKUP
    if (libelf.elf_version(EV_CURRENT) == EV_NONE) {
        PyErr_Format(PyExc_RuntimeError, "libelf: %s",
                     libelf.elf_errmsg(-1));
        libelf.elf_end = NULL;
        return -1;
    }
    return 0;

dl_error:
    /* Never unloaded: a later write finds it loaded. */
    PyErr_Format(PyExc_OSError, "cannot write an archive without libelf: %s",
                 dlerror());
    return -1;
}

/* ---- writing ---------------------------------------------------------- */

enum {
    SEC_NOTE = 1, SEC_HEAP, SEC_RELR, SEC_SYMTAB, SEC_STRTAB, SEC_INDEX,
    SEC_SHSTRTAB, SEC_PRELINKED, NSECTIONS
};

static const char shstrtab[] =
    "\0" PYCDS_SECTION_NOTE "\0" PYCDS_SECTION_HEAP "\0" PYCDS_SECTION_RELR
    "\0.symtab\0.strtab\0" PYCDS_SECTION_INDEX "\0.shstrtab\0"
    PYCDS_SECTION_PRELINKED;

static size_t
shstrtab_offset(const char *name)
{
    for (size_t i = 1; i < sizeof(shstrtab);
         i += strlen(shstrtab + i) + 1) {
        if (strcmp(shstrtab + i, name) == 0) {
            return i;
        }
    }
    return 0;
}

struct section_spec {
    const char *name;
    Elf64_Word type;
    Elf64_Xword flags;
    Elf64_Xword align;
    Elf64_Xword entsize;
    Elf64_Word link;
    Elf64_Word info;
    const void *data;
    size_t size;
    /* Instead of data: pieces at their offsets in the section. */
    const struct pycds_blob *blobs;
    size_t nblobs;
};

/* Adds the section's bytes to scn: its data, or each of its pieces. */
static int
add_data(Elf_Scn *scn, const struct section_spec *s)
{
    struct pycds_blob whole = {s->data, s->size, 0};
    const struct pycds_blob *b = s->blobs ? s->blobs : &whole;
    size_t n = s->blobs ? s->nblobs : 1;
    for (size_t k = 0; k < n; k++) {
        Elf_Data *d = libelf.elf_newdata(scn);
        if (d == NULL) {
            return -1;
        }
        d->d_buf = (void *)b[k].data;
        d->d_size = b[k].size;
        d->d_type = ELF_T_BYTE;
        d->d_align = 1;
        d->d_off = b[k].offset;
        d->d_version = EV_CURRENT;
    }
    return 0;
}

static void
sum_section(struct pycds_section_sum *s, const void *data, size_t size)
{
    s->size = size;
    s->xxh3 = pycds_xxh3(data, size);
}

/* The note: Elf64_Nhdr, the name "pycds\0" padded to 4 bytes, then the
 * header as descriptor. */
#define NOTE_NAME_SIZE ((sizeof(PYCDS_NOTE_NAME) + 3) & ~(size_t)3)
#define NOTE_DESC_OFFSET (sizeof(Elf64_Nhdr) + NOTE_NAME_SIZE)
#define NOTE_SIZE (NOTE_DESC_OFFSET + sizeof(struct pycds_header))

static void
build_note(char *note, const struct pycds_image *img,
           const struct pycds_abi_key *key)
{
    Elf64_Nhdr nhdr = {
        .n_namesz = sizeof(PYCDS_NOTE_NAME),
        .n_descsz = sizeof(struct pycds_header),
        .n_type = PYCDS_NOTE_HEADER,
    };
    struct pycds_header hdr, *h = &hdr;
    memset(note, 0, NOTE_SIZE);
    memset(h, 0, sizeof(*h));
    memcpy(note, &nhdr, sizeof(nhdr));
    memcpy(note + sizeof(nhdr), PYCDS_NOTE_NAME, sizeof(PYCDS_NOTE_NAME));
    memcpy(h->magic, PYCDS_MAGIC, sizeof(h->magic));
    h->format_version = PYCDS_FORMAT_VERSION;
    h->validation = img->validation;
    h->key = *key;
    sum_section(&h->heap, img->heap, img->heap_size);
    sum_section(&h->relr, img->relr, img->nrelr * sizeof(uint64_t));
    sum_section(&h->symtab, img->syms, img->nsyms * sizeof(Elf64_Sym));
    sum_section(&h->strtab, img->strtab, img->strtab_size);
    sum_section(&h->index, img->index, img->index_size);
    h->nlocal_syms = img->nlocal_syms;
    h->globals_xxh3 = pycds_xxh3(img->syms + img->nlocal_syms,
                                  (img->nsyms - img->nlocal_syms)
                                  * sizeof(Elf64_Sym));
    memcpy(h->kind_bytes, img->kind_bytes, sizeof(h->kind_bytes));
    h->header_xxh3 = pycds_xxh3(h, offsetof(struct pycds_header,
                                             header_xxh3));
    memcpy(note + NOTE_DESC_OFFSET, h, sizeof(*h));
}

static int
write_elf(int fd, const struct pycds_image *img, const char *note)
{
    struct section_spec specs[NSECTIONS] = {
        [SEC_NOTE] = {PYCDS_SECTION_NOTE, SHT_NOTE, 0, 4, 0, 0, 0,
                      note, NOTE_SIZE},
        [SEC_HEAP] = {PYCDS_SECTION_HEAP, SHT_PROGBITS,
                      SHF_ALLOC | SHF_WRITE, PYCDS_HEAP_ALIGN, 0, 0, 0,
                      img->heap, img->heap_size},
        [SEC_RELR] = {PYCDS_SECTION_RELR, SHT_RELR, 0, 8, sizeof(uint64_t),
                      0, 0, img->relr, img->nrelr * sizeof(uint64_t)},
        [SEC_SYMTAB] = {".symtab", SHT_SYMTAB, 0, 8, sizeof(Elf64_Sym),
                        SEC_STRTAB, (Elf64_Word)img->nlocal_syms,
                        img->syms, img->nsyms * sizeof(Elf64_Sym)},
        [SEC_STRTAB] = {".strtab", SHT_STRTAB, 0, 1, 0, 0, 0,
                        img->strtab, img->strtab_size},
        [SEC_INDEX] = {PYCDS_SECTION_INDEX, SHT_PROGBITS, 0, 8, 0, 0, 0,
                       img->index, img->index_size},
        [SEC_SHSTRTAB] = {".shstrtab", SHT_STRTAB, 0, 1, 0, 0, 0,
                          shstrtab, sizeof(shstrtab)},
        [SEC_PRELINKED] = {PYCDS_SECTION_PRELINKED, SHT_PROGBITS, 0,
                           PYCDS_PRELINK_PAGE, 0, 0, 0, NULL,
                           img->prelinked_size, img->prelinked,
                           img->nprelinked},
    };
    int nsections = img->prelinked_size ? NSECTIONS : SEC_PRELINKED;
    Elf *e = libelf.elf_begin(fd, ELF_C_WRITE, NULL);
    if (e == NULL) {
        goto elf_error;
    }
    Elf64_Ehdr *eh = libelf.elf64_newehdr(e);
    if (eh == NULL) {
        goto elf_error;
    }
    eh->e_ident[EI_DATA] = ELFDATA2LSB;
    eh->e_ident[EI_OSABI] = ELFOSABI_NONE;
    eh->e_type = ET_REL;
    eh->e_machine = EM_X86_64;
    eh->e_version = EV_CURRENT;
    eh->e_shstrndx = SEC_SHSTRTAB;
    eh->e_ehsize = sizeof(Elf64_Ehdr);
    eh->e_shentsize = sizeof(Elf64_Shdr);

    uint64_t offset = sizeof(Elf64_Ehdr);
    for (int i = 1; i < nsections; i++) {
        const struct section_spec *s = &specs[i];
        Elf_Scn *scn = libelf.elf_newscn(e);
        if (scn == NULL || add_data(scn, s) < 0) {
            goto elf_error;
        }
        Elf64_Shdr *sh = libelf.elf64_getshdr(scn);
        if (sh == NULL) {
            goto elf_error;
        }
        offset = (offset + s->align - 1) & ~(uint64_t)(s->align - 1);
        sh->sh_name = (Elf64_Word)shstrtab_offset(s->name);
        sh->sh_type = s->type;
        sh->sh_flags = s->flags;
        sh->sh_offset = offset;
        sh->sh_size = s->size;
        sh->sh_addralign = s->align;
        sh->sh_entsize = s->entsize;
        sh->sh_link = s->link;
        sh->sh_info = s->info;
        offset += s->size;
    }
    eh->e_shoff = (offset + 7) & ~(uint64_t)7;
    libelf.elf_flagelf(e, ELF_C_SET, ELF_F_LAYOUT);
    errno = 0;
    if (libelf.elf_update(e, ELF_C_WRITE) < 0) {
        int err = errno;
        if (err == 0) {
            goto elf_error;
        }
        /* The file could not be written (a full disk, the file size
         * limit): libelf's message does not say why, errno does, and
         * pycds_write_atomic reports it with the file's name. */
        libelf.elf_end(e);
        errno = err;
        return -1;
    }
    libelf.elf_end(e);
    return 0;

elf_error:
    PyErr_Format(PyExc_OSError, "libelf: %s", libelf.elf_errmsg(-1));
    if (e != NULL) {
        libelf.elf_end(e);
    }
    return -1;
}

struct elf_args {
    const struct pycds_image *img;
    const char *note;
};

static int
fill_elf(int fd, void *arg)
{
    struct elf_args *a = arg;
    return write_elf(fd, a->img, a->note);
}

int
pycds_container_write(const char *path, const struct pycds_image *img)
{
    struct pycds_abi_key key;
    if (libelf_load() < 0 || pycds_abi_key_current(&key) < 0) {
        return -1;
    }
    char *note = malloc(NOTE_SIZE);
    if (note == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    build_note(note, img, &key);
    struct elf_args args = {img, note};
    int rc = pycds_write_atomic(path, fill_elf, &args);
    free(note);
    return rc;
}

/* ---- reading ---------------------------------------------------------- */

struct located {
    const char *name;
    Elf64_Word type;
    const Elf64_Shdr *shdr;
};

static int
section_outside(const struct pycds_mapped *m, const Elf64_Shdr *sh)
{
    return sh->sh_offset > m->size || sh->sh_size > m->size - sh->sh_offset;
}

/* The section table as SHARE reads it: the ELF header was checked by
 * pycds_container_open, so e_shoff is 8-aligned and e_shentsize is an
 * Elf64_Shdr's size.  pycds writes fewer sections than the ELF header can
 * count (no extended numbering). */
static int
locate_sections(struct pycds_mapped *m, struct located *want, size_t nwant)
{
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)m->base;
    size_t nsections = eh->e_shnum;
    if (nsections == 0 || nsections >= SHN_LORESERVE
        || eh->e_shoff > m->size
        || nsections > (m->size - eh->e_shoff) / sizeof(Elf64_Shdr)) {
        return pycds_refuse(m->path, "malformed ELF: the section table lies "
                            "outside the file (truncated?)");
    }
    const Elf64_Shdr *table = (const Elf64_Shdr *)(m->base + eh->e_shoff);
    if (eh->e_shstrndx == SHN_UNDEF || eh->e_shstrndx >= nsections
        || table[eh->e_shstrndx].sh_type != SHT_STRTAB
        || section_outside(m, &table[eh->e_shstrndx])) {
        return pycds_refuse(m->path, "malformed section names");
    }
    const char *names = m->base + table[eh->e_shstrndx].sh_offset;
    size_t names_size = table[eh->e_shstrndx].sh_size;
    /* Section 0 is ELF's null section. */
    for (size_t k = 1; k < nsections; k++) {
        const Elf64_Shdr *sh = &table[k];
        if (sh->sh_name >= names_size
            || memchr(names + sh->sh_name, '\0',
                      names_size - sh->sh_name) == NULL) {
            return pycds_refuse(m->path, "malformed section names");
        }
        const char *name = names + sh->sh_name;
        for (size_t i = 0; i < nwant; i++) {
            if (strcmp(name, want[i].name) != 0) {
                continue;
            }
            if (want[i].shdr != NULL) {
                return pycds_refuse(m->path, "section %s appears twice",
                                    name);
            }
            if (sh->sh_type != want[i].type) {
                return pycds_refuse(m->path, "section %s has the wrong "
                                    "type", name);
            }
            if (section_outside(m, sh)) {
                return pycds_refuse(m->path, "section %s lies outside the "
                                    "file (truncated?)", name);
            }
            want[i].shdr = sh;
        }
    }
    return 0;
}

static int
require_sections(struct pycds_mapped *m, const struct located *want,
                 size_t nwant)
{
    for (size_t i = 0; i < nwant; i++) {
        if (want[i].shdr == NULL) {
            return pycds_refuse(m->path, "section %s is missing",
                                want[i].name);
        }
    }
    return 0;
}

static int
check_archive_header(struct pycds_mapped *m, const Elf64_Shdr *sh, int flags)
{
    const char *note = m->base + sh->sh_offset;
    Elf64_Nhdr nhdr;
    if (sh->sh_size != NOTE_SIZE) {
        return pycds_refuse(m->path, "the pycds note has the wrong size");
    }
    memcpy(&nhdr, note, sizeof(nhdr));
    if (nhdr.n_namesz != sizeof(PYCDS_NOTE_NAME)
        || memcmp(note + sizeof(nhdr), PYCDS_NOTE_NAME,
                  sizeof(PYCDS_NOTE_NAME)) != 0
        || nhdr.n_type != PYCDS_NOTE_HEADER
        || nhdr.n_descsz != sizeof(struct pycds_header)) {
        return pycds_refuse(m->path, "the pycds note is malformed");
    }
    struct pycds_header *h = &m->header;
    memcpy(h, note + NOTE_DESC_OFFSET, sizeof(*h));
    if (memcmp(h->magic, PYCDS_MAGIC, sizeof(h->magic)) != 0) {
        return pycds_refuse(m->path, "not a pycds archive (bad magic)");
    }
    if (h->format_version != PYCDS_FORMAT_VERSION) {
        return pycds_refuse_as(PYCDS_REFUSED_FOREIGN, m->path, NULL,
                               "archive format version %u, this "
                            "pycds reads version %d", h->format_version,
                            PYCDS_FORMAT_VERSION);
    }
    if (PYCDS_SUM_DIFFERS(h->header_xxh3,
                          pycds_xxh3(h, offsetof(struct pycds_header,
                                                 header_xxh3)))) {
        return pycds_refuse(m->path, "header checksum mismatch");
    }
    if (!(flags & PYCDS_OPEN_ANY_KEY)) {
        struct pycds_abi_key current;
        if (pycds_abi_key_current(&current) < 0) {
            return -1;
        }
        char text[160];
        const char *why = pycds_abi_key_refusal(&h->key, &current, text,
                                                sizeof(text));
        if (why != NULL) {
            return pycds_refuse_as(PYCDS_REFUSED_FOREIGN, m->path, NULL,
                                   "ABI key mismatch: %s", why);
        }
    }
    return 0;
}

int
pycds_container_unchanged(const struct pycds_mapped *m, int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 && st.st_ino == m->st.st_ino
           && st.st_dev == m->st.st_dev && st.st_size == m->st.st_size
           && st.st_mtim.tv_sec == m->st.st_mtim.tv_sec
           && st.st_mtim.tv_nsec == m->st.st_mtim.tv_nsec;
}

int
pycds_container_pin(struct pycds_mapped *m, const void *p, size_t n)
{
    if (n == 0 || m->stable) {
        return 0;
    }
    long page = sysconf(_SC_PAGESIZE);
    size_t first = ((uintptr_t)p - (uintptr_t)m->base) / page;
    size_t last = ((uintptr_t)p + n - 1 - (uintptr_t)m->base) / page;
    size_t k = first;
    while (k <= last && (m->pinned[k / 8] >> (k % 8) & 1)) {
        k++;
    }
    if (k > last) {
        return 0;   /* private already: nothing the file does reaches it */
    }
    if (!pycds_container_unchanged(m, m->fd)) {
        return pycds_refuse(m->path, "the file was rewritten in place since "
                            "it was mapped (replace archives by rename)");
    }
    /* Copy-on-write pages would not do: truncating a file zaps its pages
     * in every mapping, private copies included (the kernel's
     * unmap_mapping_range with even_cows), and the next touch raises
     * SIGBUS.  So the pages are moved into anonymous memory. */
    uintptr_t start = (uintptr_t)m->base + k * page;
    uintptr_t end = ((uintptr_t)p + n + page - 1) & ~(uintptr_t)(page - 1);
    if (pycds_make_anonymous((void *)start, end - start) < 0) {
        return pycds_refuse(m->path, "cannot copy the file's pages: %s",
                            strerror(errno));
    }
    for (; k <= last; k++) {
        m->pinned[k / 8] |= (unsigned char)(1 << (k % 8));
    }
    return 0;
}

const char *
pycds_untrusted(const struct stat *st, int flags)
{
    if (flags & PYCDS_OPEN_ANY_OWNER) {
        return NULL;
    }
    /* An archive is code, like a .pyc: only its owner (or root) may have
     * written it.  So is a prelinked image. */
    if (st->st_uid != 0 && st->st_uid != geteuid()) {
        return "owned by another user; set PYCDSTRUST=any to use it anyway";
    }
    if (st->st_mode & (S_IWGRP | S_IWOTH)) {
        return "writable by group or others; set PYCDSTRUST=any to use it "
               "anyway";
    }
    return NULL;
}

static int
check_trust(struct pycds_mapped *m, int flags)
{
    const char *why = pycds_untrusted(&m->st, flags);
    if (why != NULL) {
        return pycds_refuse_as(PYCDS_REFUSED_UNTRUSTED, m->path, NULL, "%s",
                               why);
    }
    return 0;
}

static int
check_section_sum(struct pycds_mapped *m, const char *what, const void *data,
          const struct pycds_section_sum *sum)
{
    if (PYCDS_SUM_DIFFERS(sum->xxh3, pycds_xxh3(data, sum->size))) {
        return pycds_refuse(m->path, "%s checksum mismatch", what);
    }
    return 0;
}

static int
place_sections(struct pycds_mapped *m, struct located *s)
{
    const struct pycds_header *h = &m->header;
    const struct {
        const Elf64_Shdr *shdr;
        const struct pycds_section_sum *sum;
    } expect[] = {
        {s[1].shdr, &h->heap}, {s[2].shdr, &h->relr}, {s[3].shdr, &h->symtab},
        {s[4].shdr, &h->strtab}, {s[5].shdr, &h->index},
    };
    for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
        if (expect[i].shdr->sh_size != expect[i].sum->size) {
            return pycds_refuse(m->path, "section %s size differs from the "
                                "header", s[i + 1].name);
        }
        if (expect[i].shdr->sh_offset % 8 != 0) {
            return pycds_refuse(m->path, "section %s is misaligned",
                                s[i + 1].name);
        }
    }
    if (s[1].shdr->sh_offset % PYCDS_HEAP_ALIGN != 0) {
        return pycds_refuse(m->path, "heap is not page-aligned");
    }
    if (h->relr.size % sizeof(uint64_t) != 0
        || h->symtab.size % sizeof(Elf64_Sym) != 0
        || h->nlocal_syms > h->symtab.size / sizeof(Elf64_Sym)
        || h->nlocal_syms == 0) {
        return pycds_refuse(m->path, "relocation or symbol table sizes are "
                            "malformed");
    }
    m->heap = m->base + s[1].shdr->sh_offset;
    m->relr = (const uint64_t *)(m->base + s[2].shdr->sh_offset);
    m->nrelr = h->relr.size / sizeof(uint64_t);
    m->syms = (const Elf64_Sym *)(m->base + s[3].shdr->sh_offset);
    m->nsyms = h->symtab.size / sizeof(Elf64_Sym);
    m->strtab = m->base + s[4].shdr->sh_offset;
    m->strtab_size = h->strtab.size;
    m->index = m->base + s[5].shdr->sh_offset;
    m->index_size = h->index.size;
    if (s[6].shdr != NULL) {
        /* Its own checksums are checked as it is used (prelink_map.c). */
        if (s[6].shdr->sh_offset % PYCDS_PRELINK_PAGE != 0) {
            return pycds_refuse(m->path, "prelinked image is not "
                                "page-aligned");
        }
        m->prelinked = m->base + s[6].shdr->sh_offset;
        m->prelinked_offset = s[6].shdr->sh_offset;
        m->prelinked_size = s[6].shdr->sh_size;
    }
    /* What every relocation trusts, and is small whatever the archive's
     * size, is pinned and checked now.  Index entries are checked when a
     * lookup first finds them, parts when first relocated: opening costs
     * the same for ten modules or ten thousand. */
    const Elf64_Sym *globals = m->syms + h->nlocal_syms;
    size_t globals_size = (m->nsyms - h->nlocal_syms) * sizeof(Elf64_Sym);
    if (pycds_container_pin(m, m->strtab, m->strtab_size) < 0
        || pycds_container_pin(m, globals, globals_size) < 0
        || check_section_sum(m, "string table", m->strtab, &h->strtab) < 0) {
        return -1;
    }
    if (m->strtab_size == 0 || m->strtab[m->strtab_size - 1] != '\0') {
        return pycds_refuse(m->path, "string table is not terminated");
    }
    if (PYCDS_SUM_DIFFERS(h->globals_xxh3,
                          pycds_xxh3(globals, globals_size))) {
        return pycds_refuse(m->path, "global symbols checksum mismatch");
    }
    return 0;
}

int
pycds_container_open(struct pycds_mapped *m, const char *path, int flags)
{
    struct located want[] = {
        {PYCDS_SECTION_NOTE, SHT_NOTE, NULL},
        {PYCDS_SECTION_HEAP, SHT_PROGBITS, NULL},
        {PYCDS_SECTION_RELR, SHT_RELR, NULL},
        {".symtab", SHT_SYMTAB, NULL},
        {".strtab", SHT_STRTAB, NULL},
        {PYCDS_SECTION_INDEX, SHT_PROGBITS, NULL},
        {PYCDS_SECTION_PRELINKED, SHT_PROGBITS, NULL},   /* optional */
    };
    int fd = -1;

    memset(m, 0, sizeof(*m));
    m->fd = -1;
    m->path = strdup(path);
    if (m->path == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    /* O_NONBLOCK: a FIFO in an archive's place must not hang the
     * program until someone writes to it; it is refused below. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        pycds_refuse_as(errno == ENOENT ? PYCDS_REFUSED_MISSING
                                        : PYCDS_REFUSED_UNUSABLE,
                        path, NULL, "cannot open: %s", strerror(errno));
        goto error;
    }
    if (fstat(fd, &m->st) < 0) {
        pycds_refuse(path, "cannot stat: %s", strerror(errno));
        goto error;
    }
    if (!S_ISREG(m->st.st_mode)) {
        pycds_refuse(path, "not a regular file");
        goto error;
    }
    if ((size_t)m->st.st_size < sizeof(Elf64_Ehdr)) {
        pycds_refuse(path, "too short to be an archive (%lld bytes)",
                     (long long)m->st.st_size);
        goto error;
    }
    if (check_trust(m, flags) < 0) {
        goto error;
    }
    m->size = (size_t)m->st.st_size;
    m->base = mmap(NULL, m->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd,
                   0);
    if (m->base == MAP_FAILED) {
        m->base = NULL;
        pycds_refuse(path, "cannot map: %s", strerror(errno));
        goto error;
    }
    m->fd = fd;
    fd = -1;
    m->pinned = calloc(m->size / sysconf(_SC_PAGESIZE) / 8 + 1, 1);
    if (m->pinned == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)m->base;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0
        || eh->e_ident[EI_CLASS] != ELFCLASS64
        || eh->e_ident[EI_DATA] != ELFDATA2LSB
        || eh->e_ident[EI_VERSION] != EV_CURRENT || eh->e_type != ET_REL
        || eh->e_machine != EM_X86_64
        || eh->e_shentsize != sizeof(Elf64_Shdr)
        || eh->e_shoff % 8 != 0) {
        pycds_refuse(path, "not a pycds archive (not an x86-64 ELF64 "
                     "relocatable file)");
        goto error;
    }
    /* The header first: an archive of another format version may lack
     * this version's sections, and its version is the reason to give. */
    size_t nwant = sizeof(want) / sizeof(want[0]);
    if (locate_sections(m, want, nwant) < 0
        || require_sections(m, want, 1) < 0
        || check_archive_header(m, want[0].shdr, flags) < 0
        || require_sections(m, want, nwant - 1) < 0
        || place_sections(m, want) < 0) {
        goto error;
    }
    return 0;

error:
    if (fd >= 0) {
        close(fd);
    }
    pycds_container_close(m);
    return -1;
}

/* An archive of any interpreter and any format version starts with the
 * ELF header and then the pycds note (write_elf lays every one out so),
 * and so does a damaged or truncated one. */
#define RECOGNISED_PREFIX (sizeof(Elf64_Ehdr) + NOTE_DESC_OFFSET \
                           + sizeof(PYCDS_MAGIC) - 1)

static const char *
unrecognised(const unsigned char *head)
{
    Elf64_Ehdr eh;
    Elf64_Nhdr nhdr;
    const unsigned char *note = head + sizeof(Elf64_Ehdr);
    memcpy(&eh, head, sizeof(eh));
    memcpy(&nhdr, note, sizeof(nhdr));
    if (memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0
        || eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_type != ET_REL
        || nhdr.n_namesz != sizeof(PYCDS_NOTE_NAME)
        || memcmp(note + sizeof(nhdr), PYCDS_NOTE_NAME,
                  sizeof(PYCDS_NOTE_NAME)) != 0
        || memcmp(note + NOTE_DESC_OFFSET, PYCDS_MAGIC,
                  sizeof(PYCDS_MAGIC) - 1) != 0) {
        return "not a pycds archive";
    }
    return NULL;
}

int
pycds_container_replaceable(const char *path, const char **why)
{
    unsigned char head[RECOGNISED_PREFIX];
    struct stat st;
    *why = NULL;
    /* Looked at before it is opened: opening a device can have effects. */
    if (stat(path, &st) < 0) {
        if (errno == ENOENT) {
            return 0;
        }
        goto error;
    }
    if (!S_ISREG(st.st_mode)) {
        *why = "not a regular file";
        return 0;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        goto error;
    }
    ssize_t n = -1;
    if (fstat(fd, &st) == 0) {
        n = S_ISREG(st.st_mode) ? pread(fd, head, sizeof(head), 0) : 0;
    }
    int err = errno;
    close(fd);
    if (n < 0) {
        errno = err;
        goto error;
    }
    if (!S_ISREG(st.st_mode)) {
        *why = "not a regular file";
    }
    else if ((size_t)n < sizeof(head)) {
        /* An empty file holds nothing to lose. */
        *why = n ? "not a pycds archive" : NULL;
    }
    else {
        *why = unrecognised(head);
    }
    return 0;

error:
    PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    return -1;
}

void
pycds_container_sections(const struct pycds_mapped *m,
                         struct pycds_image *img)
{
    const struct pycds_header *h = &m->header;
    memset(img, 0, sizeof(*img));
    img->heap = m->heap;
    img->heap_size = h->heap.size;
    img->relr = m->relr;
    img->nrelr = m->nrelr;
    img->syms = m->syms;
    img->nsyms = m->nsyms;
    img->nlocal_syms = h->nlocal_syms;
    img->strtab = m->strtab;
    img->strtab_size = m->strtab_size;
    img->index = m->index;
    img->index_size = m->index_size;
    img->validation = h->validation;
    memcpy(img->kind_bytes, h->kind_bytes, sizeof(img->kind_bytes));
}

void
pycds_container_close(struct pycds_mapped *m)
{
    pycds_lease_forget(m);
    if (m->base != NULL) {
        munmap(m->base, m->size);
    }
    if (m->fd >= 0) {
        close(m->fd);
    }
    free(m->pinned);
    free(m->path);
    memset(m, 0, sizeof(*m));
    m->fd = -1;
}
