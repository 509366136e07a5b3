/* The relocation list of a part, in the ELF RELR encoding (the one
 * SHT_RELR / DT_RELR use): an even word is the offset of a slot; an odd
 * word is a bitmap whose bit i (1..63) marks the slot i - 1 words after
 * the previous run, which then moves 63 words on.  One bit per pointer-
 * dense word instead of a 24-byte Elf64_Rela per pointer. */
#include "pycds/pycds.h"
#include "pycds/relr.h"

#include <stdlib.h>

static int
append(struct pycds_relr *r, uint64_t word)
{
    if (pycds_grow((void **)&r->words, &r->cap, r->n + 1,
                   sizeof(uint64_t)) < 0) {
        return -1;
    }
    r->words[r->n++] = word;
    return 0;
}

int
pycds_relr_encode(struct pycds_relr *r, const uint64_t *slots, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (append(r, slots[i]) < 0) {
            return -1;
        }
        uint64_t base = slots[i++] + 8;
        for (;;) {
            uint64_t bitmap = 0;
            while (i < n && slots[i] >= base
                   && slots[i] - base < PYCDS_RELR_RUN_WORDS * 8) {
                bitmap |= (uint64_t)1 << ((slots[i] - base) / 8);
                i++;
            }
            if (bitmap == 0) {
                break;
            }
            if (append(r, (bitmap << 1) | 1) < 0) {
                return -1;
            }
            base += PYCDS_RELR_RUN_WORDS * 8;
        }
    }
    return 0;
}
