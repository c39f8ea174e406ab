/* graph_check.h — a checkpoint's graph (the INI text fsrun stores in
 * model.safetensors) against the session that loads its weights.
 *
 * Keys split in two, by a table per section (graph_check.c):
 *
 *   - keys that change the function the weights compute: [model]'s shape
 *     and choices (n_layer, n_head, n_embd, vocab_size, tokenizer,
 *     reversible, tie_word_embeddings), and every attention key of every
 *     layer ([attention] and [layer.N]: the plugin and its keys);
 *   - keys that change how the weights are trained or used, not what they
 *     compute ([train], [data], [run], [generate], [parallel], [distill],
 *     [distill.stage.N], [serve], and [model] max_seq, ff_chunk, init).
 *
 * Values are compared as their keys' types (3e-3 is 0.003; an unset key is
 * its default); the tokenizer by what it encodes, a plugin by its file. */
#ifndef FS_GRAPH_CHECK_H
#define FS_GRAPH_CHECK_H

#include "session/session.h"

typedef enum fs_graph_use {
    FS_GRAPH_USE = 0, /* eval, generate, a teacher: a function key that differs is an error */
    FS_GRAPH_RESUME,  /* --resume: the same, and the other changes are said once */
    FS_GRAPH_INIT,    /* [model] init: a new run starts from the weights; function changes are said */
} fs_graph_use;

/* Which keys a call compares: a load checks the layers' attention before
 * the tensors (another plugin's tensors are better named by its key), and
 * [model] and the run's sections after them (a shape's message names the
 * tensor and the key to set). */
enum { FS_GRAPH_LAYERS = 1, FS_GRAPH_MODEL_AND_RUN = 2 };

/* 0, or FS_ERR_INVALID naming the first function key that differs (the
 * checkpoint's value, the graph's line and value, and what to do). `file`
 * names the checkpoint in messages. What is to be said once (the run's
 * changes on resume, another model's on init) is appended to note
 * (cap bytes), for the caller to say when the load succeeds. */
int fs_graph_check(fs_session *s, const fs_graph *stored, const char *file, fs_graph_use use, int parts, char *note,
                   size_t cap, fs_error *err);

#endif
