/* schema.h — the keys of the runtime's own graph sections.
 *
 * Plugins declare theirs in their descriptors; [attention], [parallel],
 * [distill] and [layer.*] take both the runtime's keys below and the chosen
 * plugin's. Every key has a type, a default (NULL = required), a range and
 * one line of help, which `fsrun --help-graph` prints. */
#ifndef FS_SCHEMA_H
#define FS_SCHEMA_H

#include <stddef.h>

#include "fastserve/plugin.h"

typedef struct fs_section_schema {
    const char *section;
    const fs_param_spec *spec;
    size_t n;
} fs_section_schema;

extern const fs_section_schema fs_schema_model, fs_schema_attention, fs_schema_parallel, fs_schema_distill,
    fs_schema_data, fs_schema_train, fs_schema_generate, fs_schema_run, fs_schema_serve;
/* [distill.stage.N] (a chain's stage): its own keys, then [distill]'s. */
extern const fs_section_schema fs_schema_distill_stage;

/* [backend]: the keys of the backend kind's section. Not in fs_schemas yet:
 * graphs get [backend] and [run] device when the model runs its ops through
 * the backend (ARCHITECTURE.md, "A compute backend"). */
extern const fs_section_schema fs_schema_backend;

/* All of the above, NULL-terminated. */
extern const fs_section_schema *const fs_schemas[];

#endif
