/* hf_config.h — config.json, Hugging Face's description of a model
 * (GPT2Config), beside the weights.
 *
 * Written into a run directory when the model computes exactly what
 * GPT2LMHeadModel computes (dense causal attention in every layer, not
 * reversible), so from_pretrained(run_dir) works; for any other model a
 * config.json would make transformers compute something else, so none is
 * written (and a stale one is removed). Read beside weights being loaded:
 * its shape and its choices (activation, LayerNorm epsilon, tying) are
 * checked against the graph, each mismatch naming the [model] key to set. */
#ifndef FS_HF_CONFIG_H
#define FS_HF_CONFIG_H

#include "session/session.h"

/* NULL when session s's model is GPT2LMHeadModel's computation, else why not. */
const char *fs_hf_incompatibility(const fs_session *s);

/* Writes DIR/config.json for s (eos_id: the tokenizer's end-of-text token,
 * or -1), or removes it when the model is not GPT-2's. */
int fs_hf_config_write(const char *dir, const fs_session *s, int eos_id, fs_error *err);

/* Checks DIR/config.json, when there is one, against the graph. */
int fs_hf_config_check(const char *dir, const fs_session *s, fs_error *err);

#endif
