/* Decodes RELR words read from stdin (decimal, one per line, after a
 * first line holding the seek address) three ways with include/pycds/
 * relr.h and prints each slot list on a line: pycds_relr_next; slots of
 * pycds_relr_next_group; pycds_relr_seek to the address, then
 * pycds_relr_next.  MALFORMED and END print as "M" and nothing.  Built
 * and driven by tests/test_relr.py. */
#include "pycds/relr.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

static void
print_next(struct pycds_relr_iter *it)
{
    uint64_t slot;
    while ((slot = pycds_relr_next(it)) != PYCDS_RELR_END) {
        if (slot == PYCDS_RELR_MALFORMED) {
            printf(" M");
            break;
        }
        printf(" %" PRIu64, slot);
    }
    printf("\n");
}

int
main(void)
{
    static uint64_t words[1 << 16];
    uint64_t seek, base, bits;
    size_t n = 0;
    if (scanf("%" SCNu64, &seek) != 1) {
        return 2;
    }
    while (n < sizeof(words) / sizeof(words[0])
           && scanf("%" SCNu64, &words[n]) == 1) {
        n++;
    }
    struct pycds_relr_iter it;
    pycds_relr_iter_init(&it, words, n);
    print_next(&it);
    pycds_relr_iter_init(&it, words, n);
    int more;
    while ((more = pycds_relr_next_group(&it, &base, &bits)) > 0) {
        for (; bits != 0; bits &= bits - 1) {
            printf(" %" PRIu64, base + 8 * (uint64_t)__builtin_ctzll(bits));
        }
    }
    printf(more < 0 ? " M\n" : "\n");
    pycds_relr_iter_init(&it, words, n);
    pycds_relr_seek(&it, seek);
    print_next(&it);
    return 0;
}
