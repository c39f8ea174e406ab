/* crash.h — what fsrun says when plugin code crashes it.
 *
 * Every call into a plugin (its entry function and the descriptor it
 * returns, each vtable member, and parallel_for bodies it hands the host,
 * on whichever worker thread runs them) is made inside a call record; each
 * thread keeps its innermost one. A fatal signal (SIGSEGV, SIGBUS, SIGFPE,
 * SIGILL, SIGABRT) then prints one line before the process dies:
 *
 *   fsrun: Segmentation fault in attention plugin 'dense' (layer 3) during forward: ...
 *
 * with write(2) alone (no stdio, no allocation: async-signal-safe), and the
 * signal's own action follows (SA_RESETHAND and a re-raise; a sanitizer's
 * handler installed before is restored first), so core dumps and the exit
 * status are what they would have been. A crash outside any plugin call
 * says so. */
#ifndef FS_CRASH_H
#define FS_CRASH_H

/* One call into a plugin. The strings must outlive the call (the plugin's
 * descriptor, literals). */
typedef struct fs_call {
    const char *kind;   /* "attention", "parallel", "distill", "scheduler"; NULL for the entry (not known yet) */
    const char *plugin; /* its name, or its file before the descriptor is read */
    const char *call;   /* the vtable member ("forward"), or "fs_plugin_entry" */
    int layer;          /* the attention layer, or -1 */
} fs_call;

/* Installs the handler (and an alternate signal stack, so a plugin that
 * overflows the main thread's stack is still named). Call early in main. */
void fs_crash_install(void);

/* The calling thread's innermost call, NULL outside plugins. */
const fs_call *fs_crash_current(void);
/* Makes c the calling thread's call (a worker running a body for c's
 * thread); returns what it replaces. */
const fs_call *fs_crash_set(const fs_call *c);

/* FS_PLUGIN_CALL(kind, plugin, call, layer, statement): the statement (a
 * call through a plugin's vtable) runs inside the record. */
#define FS_PLUGIN_CALL(kind, plugin, call, layer, statement)                                                    \
    do {                                                                                                      \
        const fs_call fs_call_record_ = {(kind), (plugin), (call), (layer)};                                  \
        const fs_call *fs_call_outer_ = fs_crash_set(&fs_call_record_);                                       \
        statement;                                                                                            \
        fs_crash_set(fs_call_outer_);                                                                         \
    } while (0)

#endif
