/* XXH3-64, the one hash of pycds (checksums, the index's name hash).
 *
 * libxxhash is compiled in from its header (xxh3_body.h) rather than
 * linked: loading one more shared library costs every process that
 * imports pycds about 0.1 ms, more than all the hashing SHARE does for a
 * small program.  Its AVX2 code (hash_avx2.c) serves where the processor
 * has AVX2; measured on 14 MiB (an import boto3's worth of entries): 14.5
 * M instructions and 3.6 ms with SSE2, 4.7 M and 1.2 ms with AVX2.  This
 * and hash_avx2.c are the only files that include it. */
#include "pycds/pycds.h"

#define XXH3_BODY_ISA sse2
#define XXH3_BODY_LINKAGE static
#include "xxh3_body.h"

/* hash_avx2.c */
uint64_t xxh3_one_avx2(const void *data, size_t size);
uint64_t xxh3_parts_avx2(const void *const *parts, const size_t *sizes,
                         size_t n);

static int
have_avx2(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") != 0;
    }
    return known;
}

uint64_t
pycds_xxh3(const void *data, size_t size)
{
    return have_avx2() ? xxh3_one_avx2(data, size)
                       : xxh3_one_sse2(data, size);
}

uint64_t
pycds_xxh3_parts(const void *const *parts, const size_t *sizes, size_t n)
{
    return have_avx2() ? xxh3_parts_avx2(parts, sizes, n)
                       : xxh3_parts_sse2(parts, sizes, n);
}

uint64_t
pycds_part_xxh3(const char *heap, size_t heap_size, const uint64_t *relr,
                size_t nrelr, const Elf64_Sym *syms, size_t nsyms)
{
    const void *parts[] = {heap, relr, syms};
    size_t sizes[] = {heap_size, nrelr * sizeof(uint64_t),
                      nsyms * sizeof(Elf64_Sym)};
    return pycds_xxh3_parts(parts, sizes, 3);
}
