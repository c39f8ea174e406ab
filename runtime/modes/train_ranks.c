/* train_ranks.c — see train_ranks.h. */
#include "modes/train_ranks.h"

#include <stdio.h>
#include <stdlib.h>

#include "dist/comm_coll.h"

struct fs_train_ranks {
    fs_backend_handle *b;
    fs_device_gpt *m;
    fs_comm *host;
    int ranks;
    fs_comm *coll;          /* owned: the backend's collectives, or NULL */
    fs_comm *sum;           /* what sums the buffers in place: coll, or host on a host-memory backend; NULL: staged */
    float *staged;          /* (n_params) floats when sum is NULL */
    fs_comm_request **reqs; /* the step's buckets in flight */
    size_t n_reqs, cap_reqs;
    char describe[128];
};

/* How to sum, by where the backend's memory is (train_ranks.h). */
static int choose_sum(fs_train_ranks *r, fs_error *err) {
    const char *how;
    if (r->b->vt->flags & FS_BACKEND_COLLECTIVES) {
        int rc = fs_comm_coll_create(&r->coll, r->b, r->host, err);
        if (rc) return rc;
        r->sum = r->coll;
        how = "per layer during backward";
    } else if (r->b->device.type == FS_DEVICE_CPU) {
        r->sum = r->host;
        how = "per layer during backward";
    } else {
        r->staged = malloc(fs_device_gpt_n_params(r->m) * sizeof(float));
        if (!r->staged) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
        how = "through host memory after backward";
    }
    snprintf(r->describe, sizeof r->describe, "gradients averaged over %d ranks by %s, %s", r->ranks,
             r->sum ? r->sum->engine : r->host->engine, how);
    return FS_OK;
}

int fs_train_ranks_open(fs_train_ranks **out, fs_backend_handle *b, fs_device_gpt *m, fs_comm *host, fs_error *err) {
    *out = NULL;
    int ranks = host->size(host, NULL);
    if (ranks == 1) return FS_OK;
    fs_train_ranks *r = calloc(1, sizeof *r);
    if (!r) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    *r = (fs_train_ranks){.b = b, .m = m, .host = host, .ranks = ranks};
    /* a bucket per layer, ln_f (and an untied head), the embeddings */
    r->cap_reqs = fs_device_gpt_n_tensors(m) + 2;
    r->reqs = calloc(r->cap_reqs, sizeof *r->reqs);
    int rc = r->reqs ? choose_sum(r, err) : fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    if (rc) {
        fs_train_ranks_close(r);
        return rc;
    }
    *out = r;
    return FS_OK;
}

/* Completes every bucket in flight; the first failure is the result. */
static int wait_all(fs_train_ranks *r, fs_error *err) {
    int rc = FS_OK;
    fs_error ignored = {0};
    for (size_t i = 0; i < r->n_reqs; i++) {
        int w = r->sum->wait(r->sum, r->reqs[i], rc ? &ignored : err);
        if (!rc) rc = w;
    }
    r->n_reqs = 0;
    return rc;
}

void fs_train_ranks_close(fs_train_ranks *r) {
    if (!r) return;
    if (r->n_reqs) {
        fs_error ignored = {0};
        wait_all(r, &ignored);
    }
    fs_device_gpt_on_grads_ready(r->m, NULL, NULL);
    fs_comm_coll_destroy(r->coll);
    free(r->staged);
    free(r->reqs);
    free(r);
}

const char *fs_train_ranks_describe(const fs_train_ranks *r) { return r->describe; }

static fs_tensor f32_vector(const fs_train_ranks *r, float *data, size_t n) {
    return (fs_tensor){.data = data, .dtype = FS_DTYPE_F32, .device = r->b->device, .ndim = 1, .shape = {n}};
}

/* fs_device_gpt_grads_ready_fn: one bucket's all-reduce started. MPI moves
 * a non-blocking collective only inside MPI calls, so the earlier buckets
 * are tested here too (as the data strategy does). */
static int bucket_ready(void *arg, size_t lo, size_t hi, fs_error *err) {
    fs_train_ranks *r = arg;
    if (r->n_reqs == r->cap_reqs)
        return fs_error_set(err, FS_ERR_RUNTIME, "data parallelism: more than %zu gradient buckets", r->cap_reqs);
    int has_test = FS_HAS_MEMBER(r->sum, r->sum->struct_size, fs_comm, test) && r->sum->test;
    for (size_t i = 0; has_test && i < r->n_reqs; i++) {
        int done, rc = r->sum->test(r->sum, r->reqs[i], &done, err);
        if (rc) return rc;
    }
    fs_tensor t = f32_vector(r, fs_device_gpt_device_grads(r->m) + lo, hi - lo);
    int rc = r->sum->all_reduce_start(r->sum, NULL, &t, FS_REDUCE_SUM, &r->reqs[r->n_reqs], err);
    if (!rc) r->n_reqs++;
    return rc;
}

void fs_train_ranks_arm(fs_train_ranks *r, int last) {
    if (!r) return;
    fs_device_gpt_on_grads_ready(r->m, last && r->sum ? bucket_ready : NULL, r);
}

/* The buckets done, the plugins' own tensors summed, every buffer scaled
 * by 1 / ranks on the device. */
static int finish_in_place(fs_train_ranks *r, fs_error *err) {
    int rc = wait_all(r, err);
    float inv = 1.0f / (float)r->ranks;
    for (size_t i = 0; i < fs_device_gpt_n_grad_buffers(r->m) && !rc; i++) {
        size_t n;
        float *g = fs_device_gpt_grad_buffer(r->m, i, &n);
        fs_tensor t = f32_vector(r, g, n);
        if (i > 0) rc = r->sum->all_reduce(r->sum, NULL, &t, FS_REDUCE_SUM, err);
        if (!rc) rc = r->b->vt->scale(r->b->self, NULL, g, inv, n, err);
    }
    return rc;
}

/* Down to a host buffer, summed there, back up. */
static int finish_staged(fs_train_ranks *r, fs_error *err) {
    size_t n = fs_device_gpt_n_params(r->m);
    fs_tensor t = {.data = r->staged, .dtype = FS_DTYPE_F32, .device = {FS_DEVICE_CPU, 0}, .ndim = 1, .shape = {n}};
    int rc = fs_device_gpt_get_grads(r->m, r->staged, err);
    if (!rc) rc = r->host->all_reduce(r->host, NULL, &t, FS_REDUCE_SUM, err);
    if (rc) return rc;
    float inv = 1.0f / (float)r->ranks;
    for (size_t i = 0; i < n; i++) r->staged[i] *= inv;
    return fs_device_gpt_set_grads(r->m, r->staged, err);
}

int fs_train_ranks_finish(fs_train_ranks *r, fs_error *err) {
    if (!r) return FS_OK;
    fs_device_gpt_on_grads_ready(r->m, NULL, NULL);
    return r->sum ? finish_in_place(r, err) : finish_staged(r, err);
}
