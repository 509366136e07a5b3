/* XXH3-64 of one buffer and of several, compiled in from libxxhash's
 * header (XXH_INLINE_ALL, a mode the library documents) for the
 * instruction set of the file that includes this: hash.c (the baseline,
 * SSE2) and hash_avx2.c, which name it (XXH3_BODY_ISA) and say the
 * functions' linkage (XXH3_BODY_LINKAGE).  XXH3 gives the same value
 * whatever the vector code. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#define XXH3_BODY_CAT_(a, b) a##b
#define XXH3_BODY_CAT(a, b) XXH3_BODY_CAT_(a, b)

XXH3_BODY_LINKAGE uint64_t
XXH3_BODY_CAT(xxh3_one_, XXH3_BODY_ISA)(const void *data, size_t size)
{
    return XXH3_64bits(data, size);
}

XXH3_BODY_LINKAGE uint64_t
XXH3_BODY_CAT(xxh3_parts_, XXH3_BODY_ISA)(const void *const *parts,
                                          const size_t *sizes, size_t n)
{
    XXH3_state_t st;
    XXH3_INITSTATE(&st);
    XXH3_64bits_reset(&st);
    for (size_t k = 0; k < n; k++) {
        XXH3_64bits_update(&st, parts[k], sizes[k]);
    }
    return XXH3_64bits_digest(&st);
}
