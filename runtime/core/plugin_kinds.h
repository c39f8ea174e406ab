/* plugin_kinds.h — what the runtime knows about each kind of plugin, in one
 * table: the kind's name (in file names, sections and messages), the least
 * vtable it accepts and the members it calls without checking, the
 * runtime's own keys of the kind's section and how --describe names that
 * section.
 *
 * Adding a kind (a scheduler, a compute backend): its vtable header in
 * sdk/include/fastserve/ with its fs_plugin_kind value in plugin.h, and one
 * row in plugin_kinds.c (its required-members check beside the row). The
 * loader's checks, the search, --list-plugins and --describe follow from
 * the row; the code that uses the kind's plugins is the kind's own. */
#ifndef FS_PLUGIN_KINDS_H
#define FS_PLUGIN_KINDS_H

#include <stddef.h>

#include "core/schema.h"
#include "fastserve/plugin.h"

typedef struct fs_plugin_kind_info {
    int kind;         /* fs_plugin_kind */
    const char *name; /* "attention": fsplugin_attention_<plugin>.so and [attention] */
    /* Bytes of vtable through the last member the host calls unchecked:
     * a plugin built against an older SDK with less is refused. */
    size_t min_vtable_size;
    /* The first member `vtable` leaves NULL that the host calls unchecked,
     * or that its flags promise (its name, for the message), or NULL when
     * none is missing. vtable_size: the bytes the plugin's vtable has (a
     * member past it is absent, FS_HAS_MEMBER). */
    const char *(*missing_member)(const void *vtable, size_t vtable_size);
    /* The runtime's own keys of the kind's section, the key naming the
     * plugin first ("plugin"; [serve]'s "scheduler"): its default is the
     * plugin a graph gets when it names none. */
    const fs_section_schema *schema;
    /* Where those keys and the plugin's go, as --describe says it. */
    const char *sections;
} fs_plugin_kind_info;

extern const fs_plugin_kind_info fs_plugin_kinds[];
extern const size_t fs_n_plugin_kinds;

/* The row of `kind`, or NULL for a kind this runtime does not know. */
const fs_plugin_kind_info *fs_plugin_kind_info_of(int kind);

const char *fs_plugin_kind_name(int kind); /* "attention", ...; "unknown" outside the table */
int fs_plugin_kind_from_name(const char *name); /* 0 for no such kind */
size_t fs_plugin_min_vtable_size(int kind);    /* 0 for an unknown kind */

/* "attention, parallel, distill, scheduler or backend": every kind's name, for messages. */
void fs_plugin_kind_names(char *buf, size_t cap);

#endif
