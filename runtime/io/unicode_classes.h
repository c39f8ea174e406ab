/* unicode_classes.h — letters, numbers and white space by code point, for
 * GPT-2's pre-tokenisation pattern (tokenizer_bpe.c). The table is
 * generated (scripts/gen_unicode_classes.py); see there for what each
 * class holds. */
#ifndef FS_UNICODE_CLASSES_H
#define FS_UNICODE_CLASSES_H

#include <stddef.h>
#include <stdint.h>

enum { FS_UC_O = 0, FS_UC_L = 1, FS_UC_N = 2, FS_UC_S = 3 }; /* other, letter, number, space */

typedef struct fs_unicode_range {
    uint32_t lo, hi; /* inclusive */
    uint8_t cls;
} fs_unicode_range;

extern const fs_unicode_range fs_unicode_ranges[];
extern const size_t fs_unicode_n_ranges;
extern const char fs_unicode_version[];

/* FS_UC_* of code point cp. */
int fs_unicode_class(uint32_t cp);

#endif
