/* XXH3-64, the one hash of pycds (checksums, the index's name hash).
 *
 * libxxhash is compiled in from its header (XXH_INLINE_ALL, a mode the
 * library documents) rather than linked: loading one more shared library
 * costs every process that imports pycds about 0.1 ms, more than all the
 * hashing SHARE does for a small program.  This is the only file that
 * includes it. */
#include "pycds/pycds.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

uint64_t
pycds_xxh3(const void *data, size_t size)
{
    return XXH3_64bits(data, size);
}

uint64_t
pycds_xxh3_parts(const void *const *parts, const size_t *sizes, size_t n)
{
    XXH3_state_t st;
    XXH3_INITSTATE(&st);
    XXH3_64bits_reset(&st);
    for (size_t k = 0; k < n; k++) {
        XXH3_64bits_update(&st, parts[k], sizes[k]);
    }
    return XXH3_64bits_digest(&st);
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
