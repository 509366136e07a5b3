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
pycds_xxh3_of3(const void *a, size_t na, const void *b, size_t nb,
               const void *c, size_t nc)
{
    XXH3_state_t st;
    XXH3_INITSTATE(&st);
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, a, na);
    XXH3_64bits_update(&st, b, nb);
    XXH3_64bits_update(&st, c, nc);
    return XXH3_64bits_digest(&st);
}

uint64_t
pycds_part_xxh3(const char *heap, size_t heap_size, const uint64_t *relr,
                size_t nrelr, const Elf64_Sym *syms, size_t nsyms)
{
    return pycds_xxh3_of3(heap, heap_size, relr, nrelr * sizeof(uint64_t),
                          syms, nsyms * sizeof(Elf64_Sym));
}
