/* schema.c — the runtime's graph keys (see schema.h). */
#include "core/schema.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const fs_param_spec model_keys[] = {
    {"vocab_size", FS_PARAM_INT, "256", 2, 16777216, NULL,
     "vocabulary size (rows of wte): at least the tokenizer's (byte: 256; bpe: its vocabulary)"},
    {"n_layer", FS_PARAM_INT, "4", 1, 256, NULL, "number of transformer blocks"},
    {"n_head", FS_PARAM_INT, "4", 1, 256, NULL, "attention heads per block (n_embd must be a multiple)"},
    {"n_embd", FS_PARAM_INT, "256", 8, 65536, NULL, "model width C"},
    {"max_seq", FS_PARAM_INT, "256", 2, 1048576, NULL, "context length T (learned positions)"},
    {"tokenizer", FS_PARAM_STRING, "byte", 0, 0, NULL,
     "byte (token = byte) or bpe:PATH (GPT-2 byte-level BPE: a tokenizer.json, a directory with one or with "
     "vocab.json + merges.txt; --mode train-tokenizer learns one)"},
    {"tie_word_embeddings", FS_PARAM_BOOL, "true", 0, 0, NULL,
     "the LM head is the token embedding wte (GPT-2); false: its own lm_head.weight (V, C)"},
    {"init", FS_PARAM_STRING, "", 0, 0, NULL,
     "start training or distillation from these weights: a .safetensors file or a Hugging Face model directory "
     "(sharded, bare GPT2Model names, F16/BF16 all read); never written"},
    {"reversible", FS_PARAM_BOOL, "false", 0, 0, NULL,
     "reversible residual layers (Reformer): backward rebuilds each layer's input, so activation memory "
     "does not grow with n_layer"},
    {"ff_chunk", FS_PARAM_INT, "0", 0, FS_PARAM_UNBOUNDED, NULL,
     "apply the MLP this many tokens at a time (0 = all at once): its 4C-wide activation is never whole"},
};

static const fs_param_spec attention_keys[] = {
    {"plugin", FS_PARAM_STRING, "dense", 0, 0, NULL, "attention plugin name (fsrun --list-plugins) or a path"},
    {"causal", FS_PARAM_BOOL, "true", 0, 0, NULL, "causal mask (a language model needs true)"},
};

/* [backend]: the compute backend of [run] device (core/plugin_kinds.c's
 * row); the backend plugin's own keys go here too. */
static const fs_param_spec backend_keys[] = {
    {"plugin", FS_PARAM_STRING, "auto", 0, 0, NULL,
     "compute backend plugin: auto (cuda for [run] device = cuda; on the CPU the runtime's own kernels), or a "
     "plugin name or path: the model trains through its ops (cpu: the runtime's kernels behind the vtable)"},
};

static const fs_param_spec parallel_keys[] = {
    {"plugin", FS_PARAM_STRING, "single", 0, 0, NULL, "parallel strategy plugin"},
};

/* [distill] keys a [distill.stage.N] section may set too */
#define DISTILL_SHARED_KEYS                                                                                   \
    {"init", FS_PARAM_STRING, "random", 0, 0, NULL,                                                          \
     "student start: random, teacher-every-other-layer, or teacher-layers = A,B,... (needs equal widths)"},  \
    {"augment", FS_PARAM_STRING, "none", 0, 0, NULL,                                                         \
     "none, generate:R (R teacher-sampled sequences per real one, cached) or replace:P,K (teacher's top K)"},\
    {"augment_prompt", FS_PARAM_INT, "32", 1, FS_PARAM_UNBOUNDED, NULL,                                      \
     "augment = generate: real tokens prompting the teacher"},                                               \
    {"augment_temperature", FS_PARAM_FLOAT, "1.0", 0, 100, NULL,                                             \
     "augment = generate: the teacher's sampling temperature (0 = greedy)"},                                  \
    {"augment_cache", FS_PARAM_STRING, "", 0, 0, NULL,                                                       \
     "augment = generate: the cache file (default: beside the teacher's checkpoint)"},                        \
    {"teacher_cache", FS_PARAM_STRING, "", 0, 0, NULL,                                                       \
     "file of the teacher's top-k logits per position, reused by students (loss sees top-k renormalised)"},  \
    {"teacher_cache_k", FS_PARAM_INT, "32", 1, 4096, NULL, "logits per position that teacher_cache keeps"}

static const fs_param_spec distill_keys[] = {
    {"plugin", FS_PARAM_STRING, "soft_kd", 0, 0, NULL, "distillation loss plugin"},
    {"teacher", FS_PARAM_STRING, "", 0, 0, NULL, "the teacher's graph file (required in distill mode)"},
    {"teacher_checkpoint", FS_PARAM_STRING, "", 0, 0, NULL,
     "the teacher's checkpoint (default: model.safetensors in the teacher's [run] out)"},
    DISTILL_SHARED_KEYS,
};

/* [distill.stage.N]: one stage of a chain. Its student is the graph's
 * [model] with these changes, its teacher the previous stage's student;
 * keys it does not set come from [distill]. */
static const fs_param_spec distill_stage_keys[] = {
    {"plugin", FS_PARAM_STRING, "soft_kd", 0, 0, NULL, "distillation loss plugin (default: [distill] plugin)"},
    {"n_layer", FS_PARAM_INT, "0", 0, 256, NULL, "the stage student's layers (0 = [model] n_layer)"},
    {"n_head", FS_PARAM_INT, "0", 0, 256, NULL, "its attention heads (0 = [model] n_head)"},
    {"n_embd", FS_PARAM_INT, "0", 0, 65536, NULL, "its width (0 = [model] n_embd)"},
    {"steps", FS_PARAM_INT, "0", 0, FS_PARAM_UNBOUNDED, NULL, "its optimizer steps (0 = [train] steps)"},
    {"out", FS_PARAM_STRING, "", 0, 0, NULL, "its directory (default: <[run] out>/stage<N>)"},
    {"stop_after", FS_PARAM_INT, "0", 0, FS_PARAM_UNBOUNDED, NULL,
     "end the invocation after this step of the stage (0 = never)"},
    DISTILL_SHARED_KEYS,
};

static const fs_param_spec data_keys[] = {
    {"train", FS_PARAM_STRING, "", 0, 0, NULL, "training text file (required to train)"},
    {"val", FS_PARAM_STRING, "", 0, 0, NULL, "held-out text file for validation and eval"},
    {"cache", FS_PARAM_BOOL, "true", 0, 0, NULL,
     "keep a BPE tokenizer's tokens of each file in FILE.bpe-<id>.tokens beside it (memory-mapped next time)"},
};

static const fs_param_spec train_keys[] = {
    {"steps", FS_PARAM_INT, "100", 1, FS_PARAM_UNBOUNDED, NULL, "optimizer steps"},
    {"batch", FS_PARAM_INT, "8", 1, 65536, NULL, "sequences per micro-batch"},
    {"grad_accum", FS_PARAM_INT, "1", 1, 65536, NULL, "micro-batches per optimizer step"},
    {"lr", FS_PARAM_FLOAT, "3e-4", 0, 10, NULL, "peak learning rate"},
    {"min_lr_ratio", FS_PARAM_FLOAT, "0.1", 0, 1, NULL, "final lr as a fraction of lr (cosine decay)"},
    {"warmup", FS_PARAM_INT, "10", 0, FS_PARAM_UNBOUNDED, NULL, "linear warm-up steps"},
    {"weight_decay", FS_PARAM_FLOAT, "0.1", 0, 10, NULL, "AdamW decoupled weight decay (matrices only)"},
    {"beta1", FS_PARAM_FLOAT, "0.9", 0, 0.999999, NULL, "AdamW beta1"},
    {"beta2", FS_PARAM_FLOAT, "0.95", 0, 0.999999, NULL, "AdamW beta2"},
    {"eps", FS_PARAM_FLOAT, "1e-8", 1e-30, 1, NULL, "AdamW epsilon"},
    {"grad_clip", FS_PARAM_FLOAT, "1.0", 0, 1e9, NULL, "clip the global gradient norm to this (0 = off)"},
    {"on_nonfinite", FS_PARAM_ENUM, "stop", 0, 0, "stop|skip",
     "a step whose loss or gradient norm is NaN or Inf: stop (exit 1; nothing of that step is written) or skip "
     "it (no update, as mixed-precision loss scalers do)"},
    {"max_skipped", FS_PARAM_INT, "5", 1, FS_PARAM_UNBOUNDED, NULL,
     "on_nonfinite = skip: stop after this many skipped steps in a row"},
    {"val_every", FS_PARAM_INT, "50", 0, FS_PARAM_UNBOUNDED, NULL,
     "validation loss every N steps (0 = only at the end)"},
    {"val_batches", FS_PARAM_INT, "8", 1, FS_PARAM_UNBOUNDED, NULL, "batches of the val file per validation"},
    {"checkpoint_every", FS_PARAM_INT, "0", 0, FS_PARAM_UNBOUNDED, NULL,
     "also checkpoint every N steps (0 = only at the end)"},
    {"seed", FS_PARAM_INT, "1337", 0, FS_PARAM_UNBOUNDED, NULL, "seed of initialisation and batch sampling"},
    {"resume", FS_PARAM_BOOL, "false", 0, 0, NULL, "continue from the checkpoint in [run] out"},
    {"precision", FS_PARAM_ENUM, "fp32", 0, 0, "fp32|tf32|bf16",
     "arithmetic of training on a compute backend: fp32; tf32 (tensor-core GEMMs of f32 operands, f32 where the "
     "device has none); bf16 (bf16 activations and GEMMs, f32 master weights and AdamW state, f32 checkpoints). "
     "The CPU's own kernels compute fp32 (and tf32 as fp32)"},
};

static const fs_param_spec generate_keys[] = {
    {"max_tokens", FS_PARAM_INT, "200", 0, FS_PARAM_UNBOUNDED, NULL,
     "tokens to generate (a sample after training too; 0 = none)"},
    {"temperature", FS_PARAM_FLOAT, "0.8", 0, 100, NULL, "sampling temperature (0 = greedy)"},
    {"top_k", FS_PARAM_INT, "0", 0, FS_PARAM_UNBOUNDED, NULL, "sample from the k most likely tokens (0 = all)"},
    {"top_p", FS_PARAM_FLOAT, "1.0", 0, 1, NULL, "nucleus sampling: smallest set with this probability mass"},
    {"seed", FS_PARAM_INT, "42", 0, FS_PARAM_UNBOUNDED, NULL, "sampling seed"},
    {"prompt", FS_PARAM_STRING, "", 0, 0, NULL, "text to continue (--prompt overrides)"},
    {"weights", FS_PARAM_ENUM, "f32", 0, 0, "f32|bf16|q8",
     "format decoding and serving read the projections in, a copy made once: f32 (the trained weights packed in "
     "column panels, 4 bytes a weight), bf16 (half the bytes), q8 (Q8_0: int8 in blocks of 32 with an fp16 scale, "
     "1.06 bytes a weight; widths must be multiples of 32); training stays f32"},
    {"kv_dtype", FS_PARAM_ENUM, "f32", 0, 0, "f32|bf16",
     "how decoding and serving keep keys and values in the paged KV cache: f32, or bf16 (each rounded once when "
     "stored: half the bytes, so twice the tokens in [serve] kv_cache_mb and half the memory a decode step's "
     "attention reads); the attention plugin must offer it"},
};

static const fs_param_spec run_keys[] = {
    {"out", FS_PARAM_STRING, "runs/default", 0, 0, NULL, "directory for model.safetensors and metrics.jsonl"},
    {"threads", FS_PARAM_INT, "0", 0, 4096, NULL,
     "threads (0 = adaptive: all cores while they are free, fewer while other processes keep some busy; under "
     "mpirun at most the cores / the ranks on this machine); BLAS uses the same cores"},
    /* the names of modes/modes.c's table, in its order (core does not
     * reach up into modes; tests/unit/test_modes.c holds them equal) */
    {"mode", FS_PARAM_ENUM, "train", 0, 0, "train|distill|generate|eval|tokenize|train-tokenizer|serve",
     "what to do (--mode overrides)"},
    {"overwrite", FS_PARAM_BOOL, "false", 0, 0, NULL,
     "let a fresh run replace the checkpoint of another run in [run] out (and train-tokenizer an existing file)"},
    {"stop_after", FS_PARAM_INT, "0", 0, FS_PARAM_UNBOUNDED, NULL,
     "end this invocation after this step, checkpointed (the schedule still spans [train] steps)"},
    {"progress", FS_PARAM_ENUM, "auto", 0, 0, "auto|on|off", "progress line: auto = only on a terminal"},
    {"log_every", FS_PARAM_INT, "10", 1, FS_PARAM_UNBOUNDED, NULL,
     "plain progress lines every N steps when not a terminal"},
    {"device", FS_PARAM_STRING, "auto", 0, 0, NULL,
     "compute device: auto (a GPU where there is one and the mode can use it: train; else the CPU), cpu, cuda "
     "or cuda:N (the N-th visible CUDA device); CUDA where there is none is an error"},
};

/* [serve]: the engine's keys, then the HTTP front end's; the scheduler
 * plugin's own keys are resolved with it (like [parallel]'s). */
static const fs_param_spec serve_keys[] = {
    {"scheduler", FS_PARAM_STRING, "mlfq", 0, 0, NULL,
     "scheduler plugin: fcfs (run to completion in arrival order) or mlfq (FastServe's skip-join MLFQ)"},
    {"kv_block", FS_PARAM_INT, "16", 1, 4096, NULL, "tokens per KV cache block"},
    {"kv_cache_mb", FS_PARAM_INT, "256", 1, FS_PARAM_UNBOUNDED, NULL, "KV block pool, all layers, in MiB"},
    {"swap_mb", FS_PARAM_INT, "512", 0, FS_PARAM_UNBOUNDED, NULL,
     "host swap pool for preempted sequences' blocks, in MiB (0 = recompute instead)"},
    {"prefill_chunk", FS_PARAM_INT, "256", 1, FS_PARAM_UNBOUNDED, NULL,
     "prompt tokens a sequence adds per iteration (chunked prefill)"},
    {"max_batch_tokens", FS_PARAM_INT, "0", 0, FS_PARAM_UNBOUNDED, NULL,
     "tokens one iteration computes over all sequences (0 = automatic)"},
    {"prefix_sharing", FS_PARAM_BOOL, "true", 0, 0, NULL,
     "share full prompt blocks of equal content between requests (a common system prompt is computed once)"},
    {"max_running", FS_PARAM_INT, "32", 1, 4096, NULL, "sequences in the running batch"},
    {"max_queue", FS_PARAM_INT, "256", 1, FS_PARAM_UNBOUNDED, NULL,
     "waiting requests before new ones get 429 Too Many Requests"},
    {"host", FS_PARAM_STRING, "127.0.0.1", 0, 0, NULL, "address to listen on"},
    {"port", FS_PARAM_INT, "8080", 0, 65535, NULL, "TCP port (0 = any free one, printed at start)"},
    {"api_key", FS_PARAM_STRING, "", 0, 0, NULL, "when set, requests need Authorization: Bearer KEY"},
    {"max_body_kb", FS_PARAM_INT, "1024", 1, FS_PARAM_UNBOUNDED, NULL, "largest request body (413 above)"},
    {"max_tokens_limit", FS_PARAM_INT, "4096", 1, FS_PARAM_UNBOUNDED, NULL, "largest max_tokens a request may ask"},
    {"request_timeout_s", FS_PARAM_FLOAT, "600", 0, FS_PARAM_UNBOUNDED, NULL,
     "a request running longer is cancelled (0 = never)"},
    {"shutdown_grace_s", FS_PARAM_FLOAT, "30", 0, FS_PARAM_UNBOUNDED, NULL,
     "on SIGTERM/SIGINT: how long running requests may finish"},
};

const fs_section_schema fs_schema_model = {"model", model_keys, N(model_keys)};
const fs_section_schema fs_schema_attention = {"attention", attention_keys, N(attention_keys)};
const fs_section_schema fs_schema_parallel = {"parallel", parallel_keys, N(parallel_keys)};
const fs_section_schema fs_schema_distill = {"distill", distill_keys, N(distill_keys)};
const fs_section_schema fs_schema_distill_stage = {"distill.stage.N", distill_stage_keys, N(distill_stage_keys)};
const fs_section_schema fs_schema_data = {"data", data_keys, N(data_keys)};
const fs_section_schema fs_schema_train = {"train", train_keys, N(train_keys)};
const fs_section_schema fs_schema_generate = {"generate", generate_keys, N(generate_keys)};
const fs_section_schema fs_schema_run = {"run", run_keys, N(run_keys)};
const fs_section_schema fs_schema_serve = {"serve", serve_keys, N(serve_keys)};
const fs_section_schema fs_schema_backend = {"backend", backend_keys, N(backend_keys)};

const fs_section_schema *const fs_schemas[] = {&fs_schema_model,     &fs_schema_attention, &fs_schema_parallel,
                                               &fs_schema_distill,   &fs_schema_distill_stage,
                                               &fs_schema_data,      &fs_schema_train,     &fs_schema_generate,
                                               &fs_schema_run,       &fs_schema_serve,     NULL};
