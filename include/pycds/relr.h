/* RELR lists of pointer slots (format.h, docs/FORMAT.md): the encoder
 * (relr.c) and the decoder, inline so that SHARE's relocation loop has no
 * call per slot. */
#ifndef PYCDS_RELR_H
#define PYCDS_RELR_H

#include <stddef.h>
#include <stdint.h>

#define PYCDS_RELR_RUN_WORDS 63

struct pycds_relr {
    uint64_t *words;
    size_t n, cap;
};

/* Appends the encoding of slots (increasing offsets) to r; -1 with
 * MemoryError set on failure. */
int pycds_relr_encode(struct pycds_relr *r, const uint64_t *slots, size_t n);

/* The slots the words encode, one at a time (SHARE's relocation walks a
 * part's objects and compares each pointer field with the next slot;
 * DUMP renumbers global symbols with it). */
struct pycds_relr_iter {
    const uint64_t *w, *end;
    uint64_t where;           /* the word after the last run's end */
    uint64_t base;            /* offset of bit 1 of the current bitmap */
    uint64_t bits;            /* its bits not yet returned */
};

#define PYCDS_RELR_END UINT64_MAX
/* Odd, so never equal to a slot. */
#define PYCDS_RELR_MALFORMED (UINT64_MAX - 2)

static inline void
pycds_relr_iter_init(struct pycds_relr_iter *it, const uint64_t *words,
                     size_t n)
{
    it->w = words;
    it->end = words + n;
    it->where = UINT64_MAX;
    it->base = 0;
    it->bits = 0;
}

/* Reads the next word into it->base and it->bits (an offset is a bitmap
 * of one slot): 1, 0 after the last word, or -1, the word left unread,
 * for a bitmap that no offset precedes. */
static inline int
pycds_relr_load(struct pycds_relr_iter *it)
{
    if (it->w == it->end) {
        return 0;
    }
    uint64_t w = *it->w;
    if ((w & 1) == 0) {
        it->base = w;
        it->bits = 1;
        it->where = w + 8;
    }
    else if (it->where == UINT64_MAX) {
        return -1;
    }
    else {
        it->base = it->where;
        it->bits = w >> 1;
        it->where += PYCDS_RELR_RUN_WORDS * 8;
    }
    it->w++;
    return 1;
}

/* The next slot, PYCDS_RELR_END after the last one, or
 * PYCDS_RELR_MALFORMED for a bitmap that no offset precedes. */
static inline uint64_t
pycds_relr_next(struct pycds_relr_iter *it)
{
    while (it->bits == 0) {
        int rc = pycds_relr_load(it);
        if (rc <= 0) {
            it->w = it->end;
            return rc < 0 ? PYCDS_RELR_MALFORMED : PYCDS_RELR_END;
        }
    }
    uint64_t slot = it->base + 8 * (uint64_t)__builtin_ctzll(it->bits);
    it->bits &= it->bits - 1;
    return slot;
}

/* The next slots in one go: those of a bitmap, or a single one, as
 * base + 8 * k for each bit k set in *bits.  1, or 0 after the last, or
 * -1 for a bitmap that no offset precedes. */
static inline int
pycds_relr_next_group(struct pycds_relr_iter *it, uint64_t *base,
                      uint64_t *bits)
{
    while (it->bits == 0) {
        int rc = pycds_relr_load(it);
        if (rc <= 0) {
            it->w = it->end;
            return rc;
        }
    }
    *base = it->base;
    *bits = it->bits;
    it->bits = 0;
    return 1;
}

/* Skips the slots below addr: a whole bitmap at a time where it lies
 * below, so that reaching the end of a long list costs a step per word,
 * not per slot.  The next slot pycds_relr_next returns is the first at or
 * above addr (or END, or MALFORMED as it would have been). */
static inline void
pycds_relr_seek(struct pycds_relr_iter *it, uint64_t addr)
{
    for (;;) {
        uint64_t below = addr > it->base ? (addr - it->base + 7) / 8 : 0;
        it->bits &= below >= 64 ? 0 : ~(uint64_t)0 << below;
        if (it->bits != 0 || pycds_relr_load(it) <= 0) {
            return;
        }
    }
}

#endif /* PYCDS_RELR_H */
