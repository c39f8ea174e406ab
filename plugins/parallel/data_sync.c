/* data_sync.c — see data_sync.h. */
#include "data_sync.h"

#include <stdint.h>
#include <string.h>
#include <time.h>

struct fs_sync_bucket {
    fs_range r;
    fs_comm_request *req;
    double t0;
    int done; /* seen complete by a test */
};

/* ---- pure arithmetic ---- */

void fs_bucketer_init(fs_bucketer *b, size_t cap) {
    b->cap = cap ? cap : 1;
    b->lo = b->hi = 0;
    b->open = 0;
}

size_t fs_bucketer_add(fs_bucketer *b, size_t off, size_t count, fs_range out[2]) {
    size_t n = 0;
    if (count == 0) return 0;
    if (b->open && off + count != b->lo && off != b->hi) {
        out[n++] = (fs_range){b->lo, b->hi};
        b->open = 0;
    }
    if (!b->open) {
        b->lo = off;
        b->hi = off + count;
        b->open = 1;
    } else if (off + count == b->lo) {
        b->lo = off; /* backward order: the range just below */
    } else {
        b->hi = off + count;
    }
    if (b->hi - b->lo >= b->cap) {
        out[n++] = (fs_range){b->lo, b->hi};
        b->open = 0;
    }
    return n;
}

size_t fs_bucketer_flush(fs_bucketer *b, fs_range out[1]) {
    if (!b->open) return 0;
    out[0] = (fs_range){b->lo, b->hi};
    b->open = 0;
    return 1;
}

size_t fs_ranges_gaps(fs_range *done, size_t k, size_t n, fs_range *out) {
    for (size_t i = 1; i < k; i++) { /* insertion sort: a handful of buckets */
        fs_range x = done[i];
        size_t j = i;
        for (; j > 0 && done[j - 1].lo > x.lo; j--) done[j] = done[j - 1];
        done[j] = x;
    }
    size_t m = 0, at = 0;
    for (size_t i = 0; i < k && at < n; i++) {
        if (done[i].lo > at) out[m++] = (fs_range){at, done[i].lo < n ? done[i].lo : n};
        if (done[i].hi > at) at = done[i].hi;
    }
    if (at < n) out[m++] = (fs_range){at, n};
    return m;
}

size_t fs_shard_size(size_t n, size_t parts) { return parts ? (n + parts - 1) / parts : n; }

fs_range fs_shard_range(size_t n, size_t parts, size_t index) {
    size_t S = fs_shard_size(n, parts), lo = index * S, hi = lo + S;
    return (fs_range){lo < n ? lo : n, hi < n ? hi : n};
}

/* ---- the traffic ---- */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static const fs_device cpu = {FS_DEVICE_CPU, 0};

int fs_data_sync_init(fs_data_sync *d, const fs_host_api *host, fs_comm *comm, fs_comm_group *group,
                      double bucket_mb, int zero, fs_error *err) {
    memset(d, 0, sizeof *d);
    d->host = host;
    d->comm = comm;
    d->group = group;
    d->size = comm->size(comm, group);
    d->rank = comm->rank(comm, group);
    d->zero = zero;
    double cap = bucket_mb * 1048576.0 / sizeof(float);
    fs_bucketer_init(&d->bucketer, cap < 1 ? 1 : cap > (double)SIZE_MAX / 2 ? SIZE_MAX / 2 : (size_t)cap);
    d->stats.struct_size = sizeof d->stats;
    (void)err;
    return FS_OK;
}

void fs_data_sync_release(fs_data_sync *d) {
    if (!d || !d->host) return;
    d->host->free(cpu, d->buckets);
    d->host->free(cpu, d->stage);
    d->host->free(cpu, d->shard);
    memset(d, 0, sizeof *d);
}

static int start_bucket(fs_data_sync *d, float *grads, fs_range r, fs_error *err) {
    if (d->n_buckets == d->cap_buckets) {
        size_t cap = d->cap_buckets ? 2 * d->cap_buckets : 64;
        fs_sync_bucket *b = d->host->alloc(cpu, cap * sizeof *b);
        if (!b) return d->host->error_set(err, FS_ERR_NOMEM, "data: out of memory for buckets");
        if (d->n_buckets) memcpy(b, d->buckets, d->n_buckets * sizeof *b);
        d->host->free(cpu, d->buckets);
        d->buckets = b;
        d->cap_buckets = cap;
    }
    fs_sync_bucket *b = &d->buckets[d->n_buckets];
    b->r = r;
    b->done = 0;
    b->t0 = now();
    fs_tensor t = fs_tensor_cpu_f32(grads + r.lo, 1, r.hi - r.lo, 0, 0, 0);
    int rc = d->comm->all_reduce_start(d->comm, d->group, &t, FS_REDUCE_SUM, &b->req, err);
    if (rc) return rc;
    d->n_buckets++;
    d->stats.collectives++;
    d->stats.bytes += 4.0 * (double)(r.hi - r.lo);
    return FS_OK;
}

/* Lets MPI move the buckets in flight forward, and notes which finished. */
static int progress(fs_data_sync *d, fs_error *err) {
    if (!FS_HAS_MEMBER(d->comm, d->comm->struct_size, fs_comm, test) || !d->comm->test) return FS_OK;
    for (size_t i = 0; i < d->n_buckets; i++) {
        fs_sync_bucket *b = &d->buckets[i];
        if (b->done) continue;
        int done = 0, rc = d->comm->test(d->comm, b->req, &done, err);
        if (rc) return rc;
        if (done) {
            b->done = 1;
            d->stats.comm_s += now() - b->t0;
        }
    }
    return FS_OK;
}

int fs_data_sync_ready(fs_data_sync *d, float *grads, size_t off, size_t count, fs_error *err) {
    if (d->size == 1 || d->zero) return FS_OK;
    fs_range closed[2];
    size_t n = fs_bucketer_add(&d->bucketer, off, count, closed);
    for (size_t i = 0; i < n; i++) {
        int rc = start_bucket(d, grads, closed[i], err);
        if (rc) return rc;
    }
    return progress(d, err);
}

typedef struct scale_arg {
    float *x;
    float s;
} scale_arg;

static void scale_body(void *arg, size_t begin, size_t end) {
    scale_arg *a = arg;
    for (size_t i = begin; i < end; i++) a->x[i] *= a->s;
}

static void scale(const fs_host_api *host, float *x, size_t n, float s) {
    scale_arg a = {x, s};
    host->parallel_for(n, 1 << 16, scale_body, &a);
}

/* ZeRO buffers for a flat vector of n floats. */
static int ensure_stage(fs_data_sync *d, size_t n, fs_error *err) {
    if (d->stage && d->stage_n == n) return FS_OK;
    d->host->free(cpu, d->stage);
    d->host->free(cpu, d->shard);
    size_t S = fs_shard_size(n, (size_t)d->size);
    d->stage = d->host->alloc(cpu, (size_t)d->size * S * sizeof(float) + 64);
    d->shard = d->host->alloc(cpu, S * sizeof(float) + 64);
    d->stage_n = n;
    if (!d->stage || !d->shard) {
        d->stage_n = 0;
        return d->host->error_set(err, FS_ERR_NOMEM, "data: out of memory for ZeRO buffers (%zu floats)", 2 * n);
    }
    return FS_OK;
}

static int zero_finish(fs_data_sync *d, float *grads, size_t n, fs_error *err) {
    int rc = ensure_stage(d, n, err);
    if (rc) return rc;
    size_t S = fs_shard_size(n, (size_t)d->size), padded = (size_t)d->size * S;
    memcpy(d->stage, grads, n * sizeof(float));
    memset(d->stage + n, 0, (padded - n) * sizeof(float));
    fs_tensor in = fs_tensor_cpu_f32(d->stage, 1, padded, 0, 0, 0), out = fs_tensor_cpu_f32(d->shard, 1, S, 0, 0, 0);
    double t0 = now();
    if ((rc = d->comm->reduce_scatter(d->comm, d->group, &in, &out, err))) return rc;
    double dt = now() - t0;
    d->stats.comm_s += dt;
    d->stats.wait_s += dt;
    d->stats.collectives++;
    d->stats.bytes += 4.0 * (double)padded;
    fs_range r = fs_shard_range(n, (size_t)d->size, (size_t)d->rank);
    float inv = 1.0f / (float)d->size;
    for (size_t i = r.lo; i < r.hi; i++) grads[i] = d->shard[i - r.lo] * inv;
    return FS_OK;
}

int fs_data_sync_finish(fs_data_sync *d, float *grads, size_t n, fs_error *err) {
    d->stats.steps++;
    if (d->size == 1) return FS_OK;
    if (d->zero) return zero_finish(d, grads, n, err);
    int rc = FS_OK;
    fs_range last[1];
    if (fs_bucketer_flush(&d->bucketer, last)) rc = start_bucket(d, grads, last[0], err);
    /* ranges the runtime never reported (none for this runtime's model)
     * travel now, so every gradient is summed exactly once */
    fs_range *done = NULL, *gaps = NULL;
    size_t k = d->n_buckets;
    for (size_t i = 0; i < k && !rc; i++)
        if (d->buckets[i].r.hi > n)
            rc = d->host->error_set(err, FS_ERR_INVALID, "data: gradients [%zu, %zu) reported past the %zu of the "
                                    "flat vector", d->buckets[i].r.lo, d->buckets[i].r.hi, n);
    if (!rc) {
        done = d->host->alloc(cpu, (k + 1) * sizeof *done);
        gaps = d->host->alloc(cpu, (k + 1) * sizeof *gaps);
        if (!done || !gaps) rc = d->host->error_set(err, FS_ERR_NOMEM, "data: out of memory");
    }
    if (!rc) {
        for (size_t i = 0; i < k; i++) done[i] = d->buckets[i].r;
        size_t m = fs_ranges_gaps(done, k, n, gaps);
        for (size_t i = 0; i < m && !rc; i++) rc = start_bucket(d, grads, gaps[i], err);
    }
    d->host->free(cpu, done);
    d->host->free(cpu, gaps);
    /* wait for all, in the order they started (the same on every rank) */
    double t0 = now();
    for (size_t i = 0; i < d->n_buckets; i++) {
        fs_sync_bucket *b = &d->buckets[i];
        int wrc = d->comm->wait(d->comm, b->req, err);
        if (wrc && !rc) rc = wrc;
        if (!b->done) d->stats.comm_s += now() - b->t0;
    }
    d->stats.wait_s += now() - t0;
    d->n_buckets = 0;
    fs_bucketer_init(&d->bucketer, d->bucketer.cap);
    if (rc) return rc;
    scale(d->host, grads, n, 1.0f / (float)d->size);
    return FS_OK;
}

int fs_data_sync_extra(fs_data_sync *d, float *grads, size_t n, fs_error *err) {
    if (d->size == 1 || n == 0) return FS_OK;
    fs_tensor t = fs_tensor_cpu_f32(grads, 1, n, 0, 0, 0);
    double t0 = now();
    int rc = d->comm->all_reduce(d->comm, d->group, &t, FS_REDUCE_SUM, err);
    if (rc) return rc;
    double dt = now() - t0;
    d->stats.comm_s += dt;
    d->stats.wait_s += dt;
    d->stats.collectives++;
    d->stats.bytes += 4.0 * (double)n;
    scale(d->host, grads, n, 1.0f / (float)d->size);
    return FS_OK;
}

void fs_data_sync_shard(const fs_data_sync *d, size_t n, size_t *lo, size_t *hi) {
    if (!d->zero || d->size == 1) {
        *lo = 0;
        *hi = n;
        return;
    }
    fs_range r = fs_shard_range(n, (size_t)d->size, (size_t)d->rank);
    *lo = r.lo;
    *hi = r.hi;
}

int fs_data_sync_gather(fs_data_sync *d, float *x, size_t n, fs_error *err) {
    if (!d->zero || d->size == 1) return FS_OK;
    int rc = ensure_stage(d, n, err);
    if (rc) return rc;
    size_t S = fs_shard_size(n, (size_t)d->size), padded = (size_t)d->size * S;
    fs_range r = fs_shard_range(n, (size_t)d->size, (size_t)d->rank);
    memcpy(d->shard, x + r.lo, (r.hi - r.lo) * sizeof(float));
    memset(d->shard + (r.hi - r.lo), 0, (S - (r.hi - r.lo)) * sizeof(float));
    fs_tensor in = fs_tensor_cpu_f32(d->shard, 1, S, 0, 0, 0), out = fs_tensor_cpu_f32(d->stage, 1, padded, 0, 0, 0);
    double t0 = now();
    if ((rc = d->comm->all_gather(d->comm, d->group, &in, &out, err))) return rc;
    double dt = now() - t0;
    d->stats.comm_s += dt;
    d->stats.wait_s += dt;
    d->stats.collectives++;
    d->stats.bytes += 4.0 * (double)padded;
    memcpy(x, d->stage, n * sizeof(float));
    return FS_OK;
}
