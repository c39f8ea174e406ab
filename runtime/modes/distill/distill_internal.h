/* distill_internal.h — the pieces of the distill mode, shared by its files
 * and its tests; nothing else calls them.
 *
 *   distill.c          the mode: one student learning from one teacher, in
 *                      the distill plugin's phases, through the training loop
 *   distill_chain.c    [distill.stage.N] chains: each stage's student
 *                      teaches the next; resume; the table of stages
 *   student_init.c     [distill] init: copy teacher layers into the student
 *   distill_augment.c  [distill] augment: teacher-generated sequences and
 *                      top-K token replacement
 *   distill_cache.c    window-keyed record files on disk: the generated
 *                      sequences and [distill] teacher_cache (top-k logits)
 *
 * Everything is keyed to a training window (T + 1 tokens), so a rerun, a
 * resumed run or another student drawing the same window finds its records. */
#ifndef FS_DISTILL_INTERNAL_H
#define FS_DISTILL_INTERNAL_H

#include <limits.h>
#include <stdint.h>

#include "session/checkpoint.h"
#include "fastserve/distill.h"
#include "modes/modes.h"
#include "session/session.h"

/* ---- hashing ---- */

uint64_t fs_hash_bytes(uint64_t h, const void *data, size_t n);
uint64_t fs_hash_tokens(uint64_t h, const int32_t *tokens, size_t n);
uint64_t fs_hash_u64(uint64_t h, uint64_t x);
/* A model's identity: its shape and every weight. */
uint64_t fs_model_identity(const fs_model *m);

/* ---- record files (distill_cache.c) ---- */

/* A file of fixed-size records, each keyed by 64 bits; the header names
 * the kind and an identity (teacher weights and settings), and a file
 * written for another identity is started afresh with a warning. A torn
 * last record (a killed run) is dropped. */
typedef struct fs_dcache fs_dcache;

int fs_dcache_open(fs_dcache **out, const char *path, uint32_t kind, uint64_t ident, size_t record_bytes,
                   fs_error *err);
void fs_dcache_close(fs_dcache *c); /* accepts NULL */
/* 1 and the record in `rec` when present, 0 when not, < 0 on a read error. */
int fs_dcache_get(fs_dcache *c, uint64_t key, void *rec, fs_error *err);
int fs_dcache_put(fs_dcache *c, uint64_t key, const void *rec, fs_error *err);
int fs_dcache_has(const fs_dcache *c, uint64_t key);
size_t fs_dcache_count(const fs_dcache *c);
const char *fs_dcache_path(const fs_dcache *c);

#define FS_DCACHE_GENERATE 1u
#define FS_DCACHE_TOPK 2u

/* The top-k teacher logits of every position ([distill] teacher_cache). */
typedef struct fs_topk_cache {
    fs_dcache *file;
    size_t k, T, V;
    size_t hits, misses;
    void *rec;       /* one record */
    int32_t *rows;   /* miss rows gathered for the teacher */
    size_t rows_cap; /* in rows */
} fs_topk_cache;

int fs_topk_cache_open(fs_topk_cache *c, const char *path, size_t k, size_t T, const fs_model *teacher,
                       fs_error *err);
void fs_topk_cache_close(fs_topk_cache *c);
/* Teacher logits (n, T, V) for the n input rows: from the file where it has
 * them, else a teacher forward whose top-k are stored. Either way the row
 * holds the top-k logits and -1e30 elsewhere, so a softmax at any
 * temperature is the renormalised top-k distribution. */
int fs_topk_cache_logits(fs_topk_cache *c, fs_model *teacher, const int32_t *inputs, size_t n, float *logits,
                         fs_error *err);
/* Indices of the k largest of x[0..V) (ties: lower index), largest first. */
void fs_topk(const float *x, size_t V, size_t k, int32_t *idx);

/* ---- student initialisation (student_init.c) ---- */

typedef enum { FS_INIT_RANDOM = 0, FS_INIT_EVERY_OTHER = 1, FS_INIT_LAYERS = 2 } fs_init_kind;

typedef struct fs_student_init {
    int kind;               /* fs_init_kind */
    size_t n;               /* student layers */
    int64_t layers[256];    /* teacher layer copied into student layer i */
} fs_student_init;

/* Parses [distill] init for a student of Ls layers and a teacher of Lt and
 * checks that the weights can be copied (equal widths, a teacher layer for
 * every student layer); `where` locates the key in messages. */
int fs_student_init_plan(fs_student_init *in, const char *value, const char *where, const fs_model *student,
                         const fs_model *teacher, fs_error *err);
/* Copies embeddings, final LayerNorm and the chosen layers. */
void fs_student_init_apply(const fs_student_init *in, fs_model *student, const fs_model *teacher);

/* ---- augmentation (distill_augment.c) ---- */

typedef enum { FS_AUG_NONE = 0, FS_AUG_GENERATE = 1, FS_AUG_REPLACE = 2 } fs_augment_kind;

typedef struct fs_augment {
    int kind;           /* fs_augment_kind */
    size_t R;           /* generate: sequences per real one */
    double p;           /* replace: probability per token */
    size_t K;           /* replace: the teacher's top K */
    size_t prompt;      /* generate: real tokens that prompt the teacher */
    double temperature; /* generate: the teacher's sampling temperature */
    char cache_path[PATH_MAX];
    fs_dcache *cache;
    size_t generated, reused, replaced, tokens_seen;
    int32_t *buf; /* scratch */
    size_t buf_cap;
} fs_augment;

/* Parses [distill] augment ("none", "generate:R", "replace:P,K") and its
 * companion keys from dc. */
int fs_augment_plan(fs_augment *a, const fs_config *dc, const fs_model *teacher, const char *teacher_ckpt,
                    size_t T, fs_error *err);
int fs_augment_open(fs_augment *a, const fs_model *teacher, size_t T, fs_error *err);
void fs_augment_close(fs_augment *a);
/* Rows a batch of B real windows becomes. */
size_t fs_augment_rows(const fs_augment *a, size_t B);
/* In place on (B, T) inputs/targets; with generate, rows B .. B + B R are
 * written after them (the arrays hold fs_augment_rows(a, B) rows). */
int fs_augment_batch(fs_augment *a, fs_model *teacher, int32_t *inputs, int32_t *targets, size_t B, size_t T,
                     fs_error *err);

/* ---- one student, one teacher (distill.c) ---- */

#define FS_DISTILL_MAX_PHASES 8

/* Everything checked before training: the plugin created (it validates its
 * own keys against both models), the attention hooks it needs, the
 * student's initialisation, augmentation and the teacher cache. */
typedef struct fs_distill_plan {
    fs_session *student; /* not owned */
    fs_session *teacher; /* not owned; weights loaded before fs_distill_execute */
    char teacher_ckpt[PATH_MAX];
    const fs_config *dc; /* [distill] keys of this run (runtime's and plugin's) */
    const fs_plugin *plugin;
    const fs_distill_vtable *vt;
    void *self;          /* the instance on `student` */
    fs_plugin_ctx ctx;
    size_t param_first, param_count; /* its registered parameters in student->host */
    size_t n_phases;
    const char *phase_names[FS_DISTILL_MAX_PHASES];
    uint64_t phase_steps[FS_DISTILL_MAX_PHASES];
    fs_student_init init;
    char init_text[128];
    fs_augment aug;
    char teacher_cache[PATH_MAX];
    size_t teacher_cache_k;
} fs_distill_plan;

fs_distill_config fs_distill_config_of(const fs_model *student, const fs_model *teacher);

int fs_distill_plan_make(fs_distill_plan *p, fs_session *student, const fs_config *dc, const fs_plugin *plugin,
                         fs_session *teacher, const char *teacher_ckpt, fs_error *err);
void fs_distill_plan_release(fs_distill_plan *p);

/* Trains the student (every phase). `resume`: continue from the phases'
 * checkpoints where they exist (a finished phase is skipped). *done is set
 * when the last phase finished; a run stopped by [run] stop_after is not done.
 * The student session's model holds the final weights when done. */
int fs_distill_execute(fs_distill_plan *p, const fs_run_options *o, int resume, int *done, int *config_error,
                       fs_error *err);

/* The step stored in a checkpoint's metadata; 0 when the file is missing,
 * -1 when it cannot be read. */
int64_t fs_checkpoint_step(const char *path);

/* One value a derived graph sets (fs_graph_put). */
typedef struct fs_graph_change {
    const char *section, *key, *value;
} fs_graph_change;

/* A session for a graph derived from `base` entry by entry: the sections
 * keep() accepts (NULL: all), then `changes` applied; messages name base's
 * file and lines for what it copied and `name` for the changes. */
int fs_session_derive(fs_session **out, const fs_graph *base, const char *name, int (*keep)(const char *section),
                      const fs_graph_change *changes, size_t n_changes, fs_error *err);

/* ---- chains (distill_chain.c) ---- */

int fs_graph_has_stages(const fs_graph *g);
int fs_distill_chain(fs_session *s, const fs_run_options *o, int *config_error, fs_error *err);

#endif
