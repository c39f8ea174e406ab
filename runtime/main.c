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
    fputs("usage: fsrun GRAPH.ini [--set section.key=value ...] [--mode train|distill|generate|eval]\n"
          "             [--prompt TEXT] [--checkpoint FILE] [--resume]\n"
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
          "(or tensor, pipeline; [parallel] keys: fsrun --describe data).\n",
          f);
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

int main(int argc, char **argv) {
    fs_blas_fix_coretype(argv);
    const char *graph_path = NULL, *mode = NULL;
    fs_run_options opts = {0};
    const char **sets = calloc((size_t)argc, sizeof *sets);
    size_t n_sets = 0;
    int rc = 0;
    if (!sets) return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_next = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            goto done;
        } else if (!strcmp(a, "--version")) {
            printf("fsrun %s (plugin ABI %u.%u)\nBLAS: OpenBLAS %s; %s\nCUDA: %s\nMPI: %s%s\n", FS_VERSION,
                   FS_ABI_MAJOR, FS_ABI_MINOR, fs_blas_corename(), fs_blas_coretype_note(),
                   FS_WITH_CUDA ? "toolkit found at build time (no CUDA kernels yet)" : "not found at build time",
                   fs_comm_mpi_version(), fs_comm_mpi_available() ? " (mpirun -np N fsrun GRAPH.ini ...)" : "");
            goto done;
        } else if (!strcmp(a, "--list-plugins")) {
            printf("%-10s %-12s %-8s %s\n", "kind", "name", "version", "file");
            fs_plugin_scan(list_one, NULL);
            goto done;
        } else if (!strcmp(a, "--help-graph")) {
            for (size_t s = 0; fs_schemas[s]; s++) {
                printf("[%s]\n", fs_schemas[s]->section);
                print_spec(fs_schemas[s]->spec, fs_schemas[s]->n);
            }
            printf("[layer.N] / [layer.A-B]: any [attention] key, for those layers\n");
            goto done;
        } else if (!strcmp(a, "--describe")) {
            if (!has_next) goto missing;
            rc = describe(argv[i + 1]);
            goto done;
        } else if (!strcmp(a, "--plan") || !strncmp(a, "--plan=", 7)) {
            rc = fs_plan_main(argc, argv); /* parses every argument itself */
            goto done;
        } else if (!strcmp(a, "--set")) {
            if (!has_next) goto missing;
            sets[n_sets++] = argv[++i];
        } else if (!strncmp(a, "--set=", 6)) {
            sets[n_sets++] = a + 6;
        } else if (!strcmp(a, "--mode")) {
            if (!has_next) goto missing;
            mode = argv[++i];
        } else if (!strcmp(a, "--prompt")) {
            if (!has_next) goto missing;
            opts.prompt = argv[++i];
        } else if (!strcmp(a, "--checkpoint")) {
            if (!has_next) goto missing;
            opts.checkpoint = argv[++i];
        } else if (!strcmp(a, "--resume")) {
            opts.resume = 1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "fsrun: unknown option '%s' (fsrun --help lists them)\n", a);
            rc = 2;
            goto done;
        } else if (!graph_path) {
            graph_path = a;
        } else {
            fprintf(stderr, "fsrun: more than one graph file ('%s' and '%s')\n", graph_path, a);
            rc = 2;
            goto done;
        }
        continue;
    missing:
        fprintf(stderr, "fsrun: %s needs a value (fsrun --help)\n", a);
        rc = 2;
        goto done;
    }
    if (!graph_path) {
        usage(stderr);
        rc = 2;
        goto done;
    }
    fs_error err = {0};
    if (fs_world_start(&err)) {
        fprintf(stderr, "fsrun: %s\n", err.message);
        rc = 2;
        goto done;
    }
    if (fs_world_size() > 1 && fs_world_rank() != 0) {
        /* results are rank 0's to print; the other ranks say only what goes wrong */
        if (!freopen("/dev/null", "w", stdout)) fclose(stdout);
        fs_log_set_level(FS_LOG_WARN);
    }
    fs_graph *g = NULL;
    rc = fs_graph_load(&g, graph_path, &err);
    for (size_t i = 0; i < n_sets && !rc; i++) rc = fs_graph_set(g, sets[i], &err);
    free(sets);
    sets = NULL;
    if (!rc && mode) {
        static const char *modes[] = {"train", "distill", "generate", "eval"};
        int ok = 0;
        for (int i = 0; i < 4; i++) ok |= !strcmp(mode, modes[i]);
        if (!ok)
            rc = fs_error_set(&err, FS_ERR_INVALID, "--mode %s: must be one of train, distill, generate, eval", mode);
    }
    int code = 2;
    if (fs_world_agree(rc, 2, &code, &err)) {
        fs_graph_destroy(g);
        return finish(code, &err);
    }
    fs_session *s;
    if (fs_session_open(&s, g, &err)) {
        code = fs_world_failed_code();
        return finish(code ? code : err.status == FS_ERR_NOMEM ? 1 : 2, &err);
    }
    fs_threads_share(fs_world_local_size());
    fs_threads_set((int)fs_config_int(s->run_cfg, "threads"));
    if (!mode) mode = fs_config_string(s->run_cfg, "mode");
    int config_error = 0;
    if (!strcmp(mode, "train"))
        rc = fs_mode_train(s, &opts, &config_error, &err);
    else if (!strcmp(mode, "distill"))
        rc = fs_mode_distill(s, &opts, &config_error, &err);
    else if (!strcmp(mode, "generate"))
        rc = fs_mode_generate(s, &opts, &config_error, &err);
    else
        rc = fs_mode_eval(s, &opts, &config_error, &err);
    fflush(stdout);
    code = config_error ? 2 : 1;
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
done:
    free(sets);
    return rc;
}
