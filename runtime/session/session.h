/* session.h — a graph turned into live objects: every section validated,
 * the plugins loaded and checked, the model built with one attention
 * instance per layer, the parallel strategy created.
 *
 * fs_session_open does all the checking that can happen before any work, so
 * a bad graph fails there (exit status 2) and never half-way through a run. */
#ifndef FS_SESSION_H
#define FS_SESSION_H

#include <limits.h>

#include "fastserve/comm.h"
#include "fastserve/parallel.h"
#include "core/graph.h"
#include "core/host.h"
#include "model/model.h"
#include "core/plugin_loader.h"
#include "dist/shard.h"
#include "io/data.h"

typedef struct fs_plugin_instance {
    const fs_plugin *plugin;
    fs_config *config;
    fs_param_spec *spec; /* runtime keys + plugin keys */
    fs_plugin_ctx ctx;
    void *self;
} fs_plugin_instance;

typedef struct fs_session {
    fs_graph *graph;
    fs_host host;
    fs_plugin_registry registry;
    fs_config *model_cfg, *data_cfg, *train_cfg, *gen_cfg, *run_cfg;
    const fs_config *distill_cfg; /* = distill.config */
    const fs_config *serve_cfg;   /* = scheduler.config: [serve], the engine's and the scheduler's keys */
    fs_model_config mcfg;
    fs_model *model;
    fs_plugin_instance *layers; /* (n_layer) attention instances (selves owned by the model) */
    fs_plugin_instance parallel;
    fs_plugin_instance distill; /* config only: distill mode creates it */
    fs_plugin_instance scheduler; /* config only: the serving engine creates it ([serve] scheduler) */
    fs_comm *comm;              /* the process's (world.h); not owned */
    fs_parallel_topology topo;  /* this rank's place, from the strategy */
    fs_shard_map shard;         /* its part of the model (shard.h) */
    int local;                  /* a whole replica in this process (a teacher): its strategy sees one rank */
    fs_comm local_comm;         /* the self communicator it gets */
    struct fs_tokenizer *tokenizer; /* [model] tokenizer, opened by fs_session_tokenizer */
    fs_device device;               /* the CPU model's device: the CPU (session/device.h) */
    struct {                        /* [run] device and [backend] as asked (session/device.h) */
        int automatic;              /* device = auto */
        fs_device device;           /* cpu or cuda:N (under mpirun: the local rank's GPU) */
        fs_config *config;          /* [backend] */
    } backend;
} fs_session;

/* Takes ownership of g (also on failure). Collective when several ranks
 * run: every rank opens the same graph (see world.h for how failures are
 * agreed and reported). */
int fs_session_open(fs_session **out, fs_graph *g, fs_error *err);
/* The same for a model every rank holds whole and uses on its own rows (a
 * distillation teacher): its [parallel] strategy runs on a world of one,
 * whatever mpirun started. Still collective: the ranks agree on errors. */
int fs_session_open_local(fs_session **out, fs_graph *g, fs_error *err);
void fs_session_close(fs_session *s); /* accepts NULL */

/* Resolves a section against a schema plus a plugin's keys; `sections` in
 * priority order; the schema's first key names the plugin. Used for
 * [attention], [layer.*], [parallel], [distill] and [serve]. */
int fs_session_plugin_config(fs_session *s, fs_plugin_instance *inst, int kind, const char *const *sections,
                             size_t n_sections, const fs_param_spec *core, size_t n_core, fs_error *err);

/* The sections layer `layer` of graph g takes its attention keys from, in
 * priority order: [layer.N] sections, ranges holding it (narrowest first),
 * then "attention"; names point into g. At most cap; 0 when out of memory. */
size_t fs_session_layer_sections(const fs_graph *g, size_t layer, const char **secs, size_t cap, fs_error *err);

/* FS_ERR_INVALID, saying how to run `mode` instead, when this rank holds
 * only a tensor or pipeline shard: generation and eval run in one process
 * (the checkpoint holds the whole model). */
int fs_session_require_whole(const fs_session *s, const char *mode, fs_error *err);

/* [generate] kv_dtype as the attention plugins' fs_attention_config takes
 * it: FS_DTYPE_F32 or FS_DTYPE_BF16. */
int32_t fs_session_kv_dtype(const fs_session *s);

/* The [model] tokenizer, opened on first use (its file is read then, so
 * --mode train-tokenizer can run before it exists) and checked against
 * [model] vocab_size. */
int fs_session_tokenizer(fs_session *s, struct fs_tokenizer **out, fs_error *err);

/* [data] key (train, val) of a session, with its tokenizer and [data]
 * cache; at least min_tokens tokens. */
int fs_session_dataset(fs_session *s, const char *key, size_t min_tokens, fs_dataset *d, fs_error *err);

/* "<out>/model.safetensors" from [run] out. */
void fs_session_checkpoint_path(const fs_session *s, char *buf, size_t cap);

#endif
