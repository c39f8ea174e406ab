/* bench_memory.c — training memory against depth, reversible on and off.
 *
 *   build/bench/bench_memory [T=1024] [C=256] [B=4] [attention=dense] [ff_chunk=0]
 *
 * For n_layer = 2, 4, 8, 16, with standard and reversible residuals, runs
 * one training step (forward, loss, backward, AdamW) in a child process and
 * prints the activation storage the model used (activations, backward
 * scratch, the attention plugins' saved buffers) and the child's peak RSS,
 * then the growth from 2 to 16 layers. Parameters, gradients and AdamW
 * moments grow with depth in every configuration (16 bytes a parameter) and
 * are shown apart. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model/optim.h"
#include "session/session.h"

typedef struct result {
    size_t act_bytes, param_bytes;
    long peak_kib;
    int ok;
} result;

static int run_one(size_t L, int reversible, size_t T, size_t C, size_t B, const char *attn, size_t ff_chunk,
                   result *out) {
    char ini[1024];
    snprintf(ini, sizeof ini,
             "[model]\nn_layer = %zu\nn_head = %zu\nn_embd = %zu\nmax_seq = %zu\nreversible = %s\nff_chunk = %zu\n"
             "[attention]\nplugin = %s\n",
             L, C / 64 ? C / 64 : 1, C, T, reversible ? "true" : "false", ff_chunk, attn);
    fs_graph *g;
    fs_session *s;
    fs_error err = {0};
    if (fs_graph_load_string(&g, "bench_memory.ini", ini, &err) || fs_session_open(&s, g, &err)) {
        fprintf(stderr, "bench_memory: %s\n", err.message);
        return 1;
    }
    fs_model *m = s->model;
    fs_model_init_weights(m, 1);
    fs_optimizer opt;
    fs_adamw_config ac = {1e-3, 0.9, 0.95, 1e-8, 0.1};
    fs_optimizer_init(&opt, &ac);
    for (size_t i = 0; i < fs_model_block(m)->n_views; i++)
        fs_optimizer_add(&opt, fs_model_block(m)->params + fs_model_block(m)->views[i].offset, fs_model_block(m)->grads + fs_model_block(m)->views[i].offset, fs_model_block(m)->views[i].numel,
                         fs_model_block(m)->views[i].weight_decay, &err);
    if (fs_optimizer_ready(&opt, &err)) return 1;
    int32_t *tok = malloc(B * (T + 1) * sizeof(int32_t));
    for (size_t i = 0; i < B * (T + 1); i++) tok[i] = (int32_t)((i * 2654435761u) % 256);
    int rc = fs_model_forward(m, tok, B, T, &err);
    if (!rc) {
        fs_model_loss(m, tok + 1, 1.0f);
        rc = fs_model_backward(m, NULL, &err);
    }
    if (rc) {
        fprintf(stderr, "bench_memory: %s\n", err.message);
        return 1;
    }
    fs_optimizer_step(&opt, 1e-3);
    out->act_bytes = fs_model_activation_bytes(m);
    out->param_bytes = fs_model_block(m)->n * 4 * sizeof(float); /* params, grads, two moments */
    out->ok = 1;
    free(tok);
    fs_optimizer_release(&opt);
    fs_session_close(s);
    return 0;
}

/* One configuration in a child, so each peak RSS is its own. */
static result measure(size_t L, int reversible, size_t T, size_t C, size_t B, const char *attn, size_t ff_chunk) {
    result r = {0};
    int fd[2];
    if (pipe(fd)) return r;
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        result c = {0};
        run_one(L, reversible, T, C, B, attn, ff_chunk, &c);
        if (write(fd[1], &c, sizeof c) != (ssize_t)sizeof c) _exit(1);
        _exit(0);
    }
    close(fd[1]);
    if (read(fd[0], &r, sizeof r) != (ssize_t)sizeof r) r.ok = 0;
    close(fd[0]);
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) == pid) r.peak_kib = ru.ru_maxrss;
    return r;
}

int main(int argc, char **argv) {
    size_t T = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
    size_t C = argc > 2 ? strtoul(argv[2], NULL, 10) : 256;
    size_t B = argc > 3 ? strtoul(argv[3], NULL, 10) : 4;
    const char *attn = argc > 4 ? argv[4] : "dense";
    size_t ff_chunk = argc > 5 ? strtoul(argv[5], NULL, 10) : 0;
    static const size_t depths[] = {2, 4, 8, 16};
    printf("training memory vs depth: T=%zu C=%zu B=%zu attention=%s ff_chunk=%zu (MiB)\n", T, C, B, attn, ff_chunk);
    printf("%-10s %6s %14s %14s %12s\n", "residual", "layers", "activations", "params+opt", "peak RSS");
    for (int rev = 0; rev <= 1; rev++) {
        double first = 0, last = 0;
        for (size_t i = 0; i < 4; i++) {
            result r = measure(depths[i], rev, T, C, B, attn, ff_chunk);
            if (!r.ok) {
                printf("%-10s %6zu   failed\n", rev ? "reversible" : "standard", depths[i]);
                continue;
            }
            double act = (double)r.act_bytes / 1048576.0;
            if (i == 0) first = act;
            last = act;
            printf("%-10s %6zu %14.1f %14.1f %12.1f\n", rev ? "reversible" : "standard", depths[i], act,
                   (double)r.param_bytes / 1048576.0, (double)r.peak_kib / 1024.0);
        }
        if (first > 0)
            printf("%-10s activation memory 16 layers / 2 layers = %.3fx (growth %+.1f%%)\n",
                   rev ? "reversible" : "standard", last / first, 100.0 * (last / first - 1.0));
    }
    return 0;
}
