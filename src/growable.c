/* The one growable array of every writer (heap_write.c's heap and tables,
 * the index, RELR lists, the prelinked image's areas and tables). */
#include "pycds/pycds.h"

#include <stdlib.h>
#include <string.h>

int
pycds_grow(void **buf, size_t *cap, size_t need, size_t item)
{
    if (need <= *cap) {
        return 0;
    }
    size_t cap2 = *cap ? *cap : 1024;
    while (cap2 < need) {
        cap2 *= 2;
    }
    void *p = realloc(*buf, cap2 * item);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset((char *)p + *cap * item, 0, (cap2 - *cap) * item);
    *buf = p;
    *cap = cap2;
    return 0;
}
