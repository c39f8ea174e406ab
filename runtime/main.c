/* main.c — the fsrun command line.
 *
 *   fsrun GRAPH.ini [--set section.key=value ...] [--mode M] [--prompt TEXT]
 *                   [--checkpoint FILE] [--resume]
 *   fsrun --describe PLUGIN | --list-plugins | --version | --help
 *   fsrun --plan GRAPH.ini --ranks N [--memory-per-rank BYTES] [--json]  (plan.h)
 *
 * Exit status: 0 success, 1 a failure during the work (I/O, a corrupt
 * checkpoint, numerical trouble), 2 a usage or configuration error found
 * before any work started.
 *
 * Under mpirun (mpirun -np N fsrun GRAPH.ini ...) every rank runs this same
 * program on the same graph; only rank 0 writes to stdout and files. See
 * world.h for how a failure on one rank or on all of them ends the job. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/blas.h"
#include "core/crash.h"
#include "dist/comm_mpi.h"
#include "core/graph.h"
#include "core/host.h"
#include "modes/modes.h"
#include "dist/plan.h"
#include "core/plugin_loader.h"
#include "core/schema.h"
#include "session/session.h"
#include "dist/world.h"

static void usage(FILE *f) {
    char modes[128];
    fs_mode_names(modes, sizeof modes, "|");
    fprintf(f, "usage: fsrun GRAPH.ini [--set section.key=value ...] [--mode %s]\n", modes);
    fputs("             [--prompt TEXT] [--checkpoint FILE] [--resume]\n"
          "       fsrun --describe PLUGIN    keys of a plugin\n"
          "       fsrun --list-plugins       plugins on the plugin path\n"
          "       fsrun --help-graph         every key of the runtime's graph sections\n"
          "       fsrun --plan GRAPH.ini --ranks N [--memory-per-rank BYTES] [--json]\n"
          "                                  (data, tensor, pipeline) splits of N ranks: memory, traffic, bubble\n"
          "       fsrun --version\n"
          "\n"
          "Trains, distills, generates with or evaluates the GPT described by GRAPH.ini.\n"
          "Results go to stdout (the last line is JSON), progress to stderr, files to [run] out.\n"
          "Plugins are searched in FS_PLUGIN_PATH, then beside fsrun, then the install directory.\n"
          "Several processes or machines: mpirun -np N fsrun GRAPH.ini --set parallel.plugin=data\n"
          "(or tensor, pipeline; [parallel] keys: fsrun --describe data).\n"
          "\n"
          "Modes (--mode, or [run] mode in the graph):\n",
          f);
    for (size_t i = 0; i < fs_n_modes; i++) fprintf(f, "  %-10s %s\n", fs_modes[i].name, fs_modes[i].help);
}

static const char *type_name(int t) {
    switch (t) {
    case FS_PARAM_INT: return "int";
    case FS_PARAM_FLOAT: return "float";
    case FS_PARAM_BOOL: return "bool";
    case FS_PARAM_STRING: return "string";
    case FS_PARAM_ENUM: return "enum";
    case FS_PARAM_INT_LIST: return "int list";
    default: return "?";
    }
}

static void print_spec(const fs_param_spec *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char range[96];
        if (p[i].type == FS_PARAM_ENUM)
            snprintf(range, sizeof range, "one of %s", p[i].choices);
        else
            fs_param_range_text(range, sizeof range, &p[i]);
        printf("  %-20s %-8s default %-14s %-18s %s\n", p[i].name, type_name(p[i].type),
               p[i].default_value ? (*p[i].default_value ? p[i].default_value : "\"\"") : "(required)", range,
               p[i].help ? p[i].help : "");
    }
}

/* Prints one plugin file's descriptor and keys (with the runtime's own keys
 * of its kind's section). Returns 0, or 1 when it does not load. */
static int describe_file(const char *path) {
    fs_plugin *p;
    fs_error err = {0};
    if (fs_plugin_open(&p, path, 0, &err)) {
        fprintf(stderr, "fsrun: %s\n", err.message);
        return 1;
    }
    const fs_plugin_descriptor *d = p->desc;
    const fs_plugin_kind_info *kind = fs_plugin_kind_info_of(d->kind); /* the loader checked it */
    printf("%s plugin '%s' version %s (ABI %u.%u)\n  %s\n  file: %s\n", kind->name, d->name,
           d->version ? d->version : "?", FS_ABI_VERSION_MAJOR_OF(d->abi_version),
           FS_ABI_VERSION_MINOR_OF(d->abi_version), d->summary ? d->summary : "", p->path);
    printf("keys in %s (with the runtime's own):\n", kind->sections);
    print_spec(kind->schema->spec, kind->schema->n);
    print_spec(d->params, d->n_params);
    fs_plugin_close(p);
    return 0;
}

/* --describe NAME: every kind's plugin of that name; a NAME with a '/' is
 * a file, of whatever kind it declares. */
static int describe(const char *name) {
    if (strchr(name, '/')) return describe_file(name);
    int found = 0;
    for (size_t k = 0; k < fs_n_plugin_kinds; k++) {
        char path[4096];
        if (fs_plugin_find(path, sizeof path, fs_plugin_kinds[k].kind, name, NULL)) continue;
        if (describe_file(path)) return 1;
        found = 1;
    }
    if (!found) {
        fprintf(stderr, "fsrun: --describe %s: no plugin of that name (fsrun --list-plugins shows them)\n", name);
        return 2;
    }
    return 0;
}

static void list_one(void *arg, const char *path, const fs_plugin *p, const fs_error *err) {
    (void)arg;
    if (p)
        printf("%-10s %-12s %-8s %s\n", fs_plugin_kind_name(p->desc->kind), p->desc->name,
               p->desc->version ? p->desc->version : "?", path);
    else
        printf("%-10s %-12s %-8s %s\n", "broken", "-", "-", err->message);
}

/* Ends this rank: reports err (see world.h for who prints), ends the whole
 * job when a rank fails alone during the work, stops MPI. Returns the exit
 * status. */
static int finish(int code, const fs_error *err) {
    if (code && err) {
        fflush(stdout);
        fs_world_report(err);
        if (fs_world_in_work() && !fs_world_failed_code()) fs_world_abort(code);
    }
    fs_world_stop();
    return code;
}

/* ---- the command line ---- */

/* What the command line asks for. */
typedef struct cli {
    int (*action)(const struct cli *c); /* run_graph unless an option names another */
    int argc;
    char **argv;
    const char *graph_path;
    const char *mode;     /* --mode NAME, or NULL for [run] mode */
    const char *describe; /* --describe NAME */
    fs_run_options run;
    const char **sets; /* the --set assignments, in order */
    size_t n_sets;
} cli;

static int print_help(const cli *c) {
    usage(stdout);
    return 0;
}

static int print_version(const cli *c) {
    printf("fsrun %s (plugin ABI %u.%u)\nBLAS: OpenBLAS %s; %s\n%s\nCUDA: %s\nMPI: %s%s\n", FS_VERSION, FS_ABI_MAJOR,
           FS_ABI_MINOR, fs_blas_corename(), fs_blas_coretype_note(), fs_threads_wait_note(),
           FS_WITH_CUDA ? "the cuda backend and the attention plugins' CUDA kernels built"
                        : "not found at build time (CPU only)",
           fs_comm_mpi_version(), fs_comm_mpi_available() ? " (mpirun -np N fsrun GRAPH.ini ...)" : "");
    return 0;
}

static int list_plugins(const cli *c) {
    printf("%-10s %-12s %-8s %s\n", "kind", "name", "version", "file");
    fs_plugin_scan(list_one, NULL);
    return 0;
}

static int help_graph(const cli *c) {
    for (size_t s = 0; fs_schemas[s]; s++) {
        printf("[%s]\n", fs_schemas[s]->section);
        print_spec(fs_schemas[s]->spec, fs_schemas[s]->n);
    }
    printf("[layer.N] / [layer.A-B]: any [attention] key, for those layers\n");
    return 0;
}

static int describe_plugin(const cli *c) { return describe(c->describe); }

/* fs_plan_main parses every argument itself. */
static int plan(const cli *c) { return fs_plan_main(c->argc, c->argv); }

static int run_graph(const cli *c);

/* What an option does: an action (the first one given is done, the rest of
 * the line unread), or a field of the run it fills. */
typedef enum opt_field { OPT_ACTION, OPT_SET, OPT_MODE, OPT_PROMPT, OPT_CHECKPOINT, OPT_RESUME } opt_field;

typedef struct cli_option {
    const char *name;
    int value;     /* takes the next argument */
    int eq_value;  /* also --name=VALUE (--plan=GRAPH as --plan GRAPH) */
    opt_field field;
    int (*action)(const cli *c);
} cli_option;

static const cli_option options[] = {
    {"--help", 0, 0, OPT_ACTION, print_help},
    {"-h", 0, 0, OPT_ACTION, print_help},
    {"--version", 0, 0, OPT_ACTION, print_version},
    {"--list-plugins", 0, 0, OPT_ACTION, list_plugins},
    {"--help-graph", 0, 0, OPT_ACTION, help_graph},
    {"--describe", 1, 0, OPT_ACTION, describe_plugin},
    {"--plan", 0, 1, OPT_ACTION, plan},
    {"--set", 1, 1, OPT_SET, NULL},
    {"--mode", 1, 0, OPT_MODE, NULL},
    {"--prompt", 1, 0, OPT_PROMPT, NULL},
    {"--checkpoint", 1, 0, OPT_CHECKPOINT, NULL},
    {"--resume", 0, 0, OPT_RESUME, NULL},
};

/* The option `arg` names, with *eq pointing at its "=VALUE" text if any. */
static const cli_option *find_option(const char *arg, const char **eq) {
    *eq = NULL;
    for (size_t i = 0; i < sizeof options / sizeof options[0]; i++) {
        const cli_option *o = &options[i];
        size_t n = strlen(o->name);
        if (strncmp(arg, o->name, n) != 0) continue;
        if (!arg[n]) return o;
        if (arg[n] == '=' && o->eq_value) {
            *eq = arg + n + 1;
            return o;
        }
    }
    return NULL;
}

/* Puts an option's value (NULL for an option without one) where it goes. */
static void take_value(cli *c, const cli_option *o, const char *v) {
    switch (o->field) {
    case OPT_SET: c->sets[c->n_sets++] = v; break;
    case OPT_MODE: c->mode = v; break;
    case OPT_PROMPT: c->run.prompt = v; break;
    case OPT_CHECKPOINT: c->run.checkpoint = v; break;
    case OPT_RESUME: c->run.resume = 1; break;
    case OPT_ACTION: c->describe = v; break;
    }
}

/* Reads the command line into c. Returns 0, or the exit status of a usage
 * error (printed). c->sets is the caller's to free. */
static int cli_parse(cli *c, int argc, char **argv) {
    memset(c, 0, sizeof *c);
    c->action = run_graph;
    c->argc = argc;
    c->argv = argv;
    if (!(c->sets = calloc((size_t)argc, sizeof *c->sets))) return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *eq;
        const cli_option *o = find_option(a, &eq);
        if (o) {
            const char *v = eq;
            if (o->value && !v) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "fsrun: %s needs a value (fsrun --help)\n", a);
                    return 2;
                }
                v = argv[++i];
            }
            take_value(c, o, o->value ? v : NULL);
            if (o->action) {
                c->action = o->action;
                return 0;
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "fsrun: unknown option '%s' (fsrun --help lists them)\n", a);
            return 2;
        } else if (!c->graph_path) {
            c->graph_path = a;
        } else {
            fprintf(stderr, "fsrun: more than one graph file ('%s' and '%s')\n", c->graph_path, a);
            return 2;
        }
    }
    if (!c->graph_path) {
        usage(stderr);
        return 2;
    }
    return 0;
}

/* ---- fsrun GRAPH.ini ---- */

/* Results are rank 0's to print; the other ranks say only what goes wrong. */
static void quiet_other_ranks(void) {
    if (fs_world_size() > 1 && fs_world_rank() != 0) {
        if (!freopen("/dev/null", "w", stdout)) fclose(stdout);
        fs_log_set_level(FS_LOG_WARN);
    }
}

/* The graph with the --set assignments applied, and the --mode named. */
static int load_graph(const cli *c, fs_graph **g, const fs_mode **mode, fs_error *err) {
    int rc = fs_graph_load(g, c->graph_path, err);
    for (size_t i = 0; i < c->n_sets && !rc; i++) rc = fs_graph_set(*g, c->sets[i], err);
    if (!rc && c->mode && !(*mode = fs_mode_find(c->mode))) {
        char names[128];
        fs_mode_names(names, sizeof names, ", ");
        rc = fs_error_set(err, FS_ERR_INVALID, "--mode %s: must be one of %s", c->mode, names);
    }
    return rc;
}

/* [run] mode's (its schema checked the name against the mode names). */
static const fs_mode *run_mode_of(const fs_session *s, fs_error *err) {
    const fs_mode *m = fs_mode_find(fs_config_string(s->run_cfg, "mode"));
    if (!m)
        fs_error_set(err, FS_ERR_INVALID, "%s: no such mode (fsrun --help lists them)",
                     fs_config_where(s->run_cfg, "mode"));
    return m;
}

/* Runs the mode on the open session and closes it; returns the exit status. */
static int run_mode(fs_session *s, const fs_mode *mode, const fs_run_options *o) {
    fs_error err = {0};
    fs_threads_share(fs_world_local_size());
    fs_threads_set((int)fs_config_int(s->run_cfg, "threads"));
    int config_error = 1;
    int rc = fs_mode_check_device(mode, s, &err);
    if (!rc) {
        config_error = 0;
        rc = mode->run(s, o, &config_error, &err);
    }
    fflush(stdout);
    int code = config_error ? 2 : 1;
    if (!fs_world_in_work() && !fs_world_failed_code()) {
        /* no collective ran (generate, eval, or train failing before its
         * work): every rank got here, so they agree, and an error that all
         * of them found is printed once */
        rc = fs_world_agree(rc, code, &code, &err);
    } else if (rc && fs_world_failed_code()) {
        code = fs_world_failed_code();
    }
    fs_session_close(s);
    return rc ? finish(code, &err) : finish(0, NULL);
}

/* Every rank: the graph, the session, the mode. A configuration error any
 * rank finds before the work is agreed on, so all exit 2 together. */
static int run_graph(const cli *c) {
    fs_error err = {0};
    if (fs_world_start(&err)) {
        fprintf(stderr, "fsrun: %s\n", err.message);
        return 2;
    }
    quiet_other_ranks();
    fs_graph *g = NULL;
    const fs_mode *mode = NULL;
    int rc = load_graph(c, &g, &mode, &err), code = 2;
    if (fs_world_agree(rc, 2, &code, &err)) {
        fs_graph_destroy(g);
        return finish(code, &err);
    }
    fs_session *s;
    if (fs_session_open(&s, g, &err)) {
        code = fs_world_failed_code();
        return finish(code ? code : err.status == FS_ERR_NOMEM ? 1 : 2, &err);
    }
    if (!mode && !(mode = run_mode_of(s, &err))) {
        fs_session_close(s);
        return finish(2, &err);
    }
    return run_mode(s, mode, &c->run);
}

/* The mode the command line and the graph ask for, read before anything
 * runs: OpenMP's wait policy depends on it and is fixed when the process
 * starts (fs_blas_fix_coretype). NULL for an informational option or a
 * graph that does not load (the run itself then says why). */
static const fs_mode *peek_mode(const cli *c) {
    if (c->action != run_graph) return NULL;
    fs_graph *g = NULL;
    const fs_mode *mode = NULL;
    fs_error ignored = {0};
    if (!load_graph(c, &g, &mode, &ignored) && !mode) {
        const fs_graph_entry *e = fs_graph_find(g, "run", "mode");
        mode = fs_mode_find(e ? e->value : fs_modes[0].name);
    }
    fs_graph_destroy(g);
    return mode;
}

int main(int argc, char **argv) {
    fs_crash_install(); /* a plugin that crashes is named (crash.h) */
    cli c;
    int rc = cli_parse(&c, argc, argv);
    if (!rc) {
        const fs_mode *mode = peek_mode(&c);
        fs_blas_fix_coretype(argv, mode ? mode->spincount : NULL); /* may re-execute fsrun */
    }
    if (!rc) rc = c.action(&c);
    free(c.sets);
    return rc;
}
