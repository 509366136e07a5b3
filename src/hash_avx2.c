/* XXH3 with AVX2 vector code, for the processors that have it (hash.c
 * asks): a third of the instructions of the SSE2 code, which matters for
 * the checksums SHARE computes over every entry it serves.  The whole
 * file is compiled for AVX2; nothing in it runs on a processor without. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), \
                             apply_to = function)
/* GCC's pragma defines __AVX2__, which xxhash.h asks before it includes
 * the AVX2 intrinsics; clang's does not. */
#include <immintrin.h>
#else
#pragma GCC target("avx2")
#endif
#include <stddef.h>
#include <stdint.h>

#define XXH_VECTOR 2            /* XXH_AVX2 */
#define XXH3_BODY_ISA avx2
#define XXH3_BODY_LINKAGE
uint64_t xxh3_one_avx2(const void *data, size_t size);
uint64_t xxh3_parts_avx2(const void *const *parts, const size_t *sizes,
                         size_t n);
#include "xxh3_body.h"

#if defined(__clang__)
#pragma clang attribute pop
#endif
