/* pick.c — see pick.h. */
#include "pick.h"

#include <string.h>

enum { MARK_NONE = 0, MARK_RUN = 1, MARK_PREEMPTED = 2 };

/* The resident sequence latest in the order after position `from` that is
 * neither running nor preempted yet, or n. */
static size_t victim_after(fs_sched_seq *const *seqs, size_t n, const size_t *order, size_t from,
                           const unsigned char *mark) {
    for (size_t i = n; i-- > from + 1;) {
        size_t k = order[i];
        if (mark[k] == MARK_NONE && seqs[k]->state == FS_SCHED_RESIDENT && seqs[k]->blocks_freed > 0) return k;
    }
    return n;
}

void sched_pick(fs_sched_seq *const *seqs, size_t n, const size_t *order, const fs_sched_budget *b, int policy,
                unsigned char *mark, fs_sched_plan *plan) {
    memset(mark, MARK_NONE, n);
    plan->n_run = plan->n_preempt = 0;
    size_t free_blocks = b->free_blocks, tokens = b->max_tokens;
    int hold = 0;
    for (size_t i = 0; i < n && plan->n_run < b->max_seqs && tokens > 0; i++) {
        size_t k = order[i];
        fs_sched_seq *s = seqs[k];
        if (mark[k] != MARK_NONE || s->tokens_next == 0) continue;
        if (hold && s->state != FS_SCHED_RESIDENT) continue;
        /* a prompt chunk cut to the tokens left needs no more blocks than the whole chunk */
        size_t need = s->blocks_next;
        while (need > free_blocks) {
            size_t v = victim_after(seqs, n, order, i, mark);
            if (v == n) break;
            mark[v] = MARK_PREEMPTED;
            plan->preempt[plan->n_preempt++] = v;
            free_blocks += seqs[v]->blocks_freed;
        }
        if (need > free_blocks) {
            if (policy == PICK_HOLD_STARTS && s->state != FS_SCHED_RESIDENT) hold = 1;
            continue;
        }
        size_t t = s->tokens_next < tokens ? s->tokens_next : tokens;
        mark[k] = MARK_RUN;
        plan->run[plan->n_run] = k;
        plan->run_tokens[plan->n_run++] = t;
        free_blocks -= need;
        tokens -= t;
    }
}
