/* pick.h — what the scheduler plugins share: filling an iteration's plan
 * from a priority order within the budgets, preempting resident sequences
 * of lower priority when blocks run short. Private to plugins/scheduler
 * (compiled into each plugin); not part of the SDK. */
#ifndef FS_SCHED_PICK_H
#define FS_SCHED_PICK_H

#include <stddef.h>

#include "fastserve/scheduler.h"

/* How a sequence that does not fit affects the ones after it. */
enum {
    PICK_SKIP = 0,        /* later sequences may still run (priority queues: a short job behind a long one) */
    PICK_HOLD_STARTS = 1, /* no sequence that is not resident starts after it (first come, first served) */
};

/* Fills `plan` from seqs taken in `order` (n indexes, highest priority
 * first). Each sequence runs when the iteration has room for it (max_seqs,
 * the tokens left: a prompt chunk may be cut to them) and its blocks_next
 * fit the free blocks, after preempting, if needed, resident sequences that
 * come later in the order, the last first. `mark` is n bytes of scratch. */
void sched_pick(fs_sched_seq *const *seqs, size_t n, const size_t *order, const fs_sched_budget *b, int policy,
                unsigned char *mark, fs_sched_plan *plan);

#endif
