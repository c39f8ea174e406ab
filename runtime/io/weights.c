/* weights.c — see weights.h. The shard index is read with jansson. */
#include "io/weights.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/host.h"
#include "io/files.h"
#include "io/strmap.h"

#define PREFIX "transformer."

typedef struct shard {
    char *path;
    fs_safetensors *st;
} shard;

struct fs_weights {
    char *path, *dir;
    shard *shards;
    size_t n_shards;
    json_t *index;          /* the shard index, or NULL */
    fs_strmap claimed;      /* names (as in the file) looked up */
    float **copies;         /* converted tensors */
    size_t n_copies;
};

static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    return !slash ? strdup(".") : slash == path ? strdup("/") : strndup(path, (size_t)(slash - path));
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int add_shard(fs_weights *w, const char *path, fs_error *err) {
    for (size_t i = 0; i < w->n_shards; i++)
        if (!strcmp(w->shards[i].path, path)) return FS_OK;
    shard *ns = realloc(w->shards, (w->n_shards + 1) * sizeof *ns);
    if (!ns) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    w->shards = ns;
    shard *s = &w->shards[w->n_shards];
    memset(s, 0, sizeof *s);
    if (!(s->path = strdup(path))) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    w->n_shards++;
    return fs_safetensors_open(&s->st, path, err);
}

/* model.safetensors.index.json: every shard it names, opened. */
static int open_index(fs_weights *w, const char *path, fs_error *err) {
    int rc = fs_json_read(path, &w->index, err);
    if (rc) return rc;
    json_t *map = json_object_get(w->index, "weight_map");
    if (!json_is_object(map) || !json_object_size(map))
        return fs_error_set(err, FS_ERR_INVALID, "%s: no \"weight_map\" object: not a safetensors shard index", path);
    const char *name;
    json_t *file;
    json_object_foreach(map, name, file) {
        if (!json_is_string(file) || strchr(json_string_value(file), '/'))
            return fs_error_set(err, FS_ERR_INVALID, "%s: weight_map[\"%s\"] is not a file name beside the index", path,
                                name);
        char *p = join(w->dir, json_string_value(file));
        rc = p ? add_shard(w, p, err) : fs_error_set(err, FS_ERR_NOMEM, "out of memory");
        if (rc == FS_ERR_NOT_FOUND)
            rc = fs_error_set(err, FS_ERR_NOT_FOUND, "%s: shard %s (listed for %s) is missing", path, p, name);
        free(p);
        if (rc) return rc;
    }
    return FS_OK;
}

/* A directory: model.safetensors, or a sharded checkpoint. */
static int open_dir(fs_weights *w, const char *dir, fs_error *err) {
    static const char *const single = "model.safetensors", *const index = "model.safetensors.index.json";
    char *p = join(dir, single), *q = join(dir, index), *bin = join(dir, "pytorch_model.bin");
    int rc;
    if (!p || !q || !bin)
        rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    else if (fs_is_file(p))
        rc = (w->path = strdup(p)) ? add_shard(w, p, err) : fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    else if (fs_is_file(q))
        rc = (w->path = strdup(q)) ? open_index(w, q, err) : fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    else if (fs_is_file(bin))
        rc = fs_error_set(err, FS_ERR_INVALID,
                          "%s: holds pytorch_model.bin (a pickle), which fsrun does not read: write safetensors "
                          "(save_pretrained(DIR, safe_serialization=True))",
                          dir);
    else
        rc = fs_error_set(err, FS_ERR_NOT_FOUND, "%s: no %s or %s in the directory", dir, single, index);
    free(p);
    free(q);
    free(bin);
    return rc;
}

int fs_weights_open(fs_weights **out, const char *path, fs_error *err) {
    *out = NULL;
    fs_weights *w = calloc(1, sizeof *w);
    if (!w) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    fs_strmap_init(&w->claimed);
    int rc;
    size_t n = strlen(path);
    if (fs_is_dir(path)) {
        w->dir = strdup(path);
        rc = w->dir ? open_dir(w, path, err) : fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    } else {
        w->path = strdup(path);
        w->dir = dir_of(path);
        if (!w->path || !w->dir)
            rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
        else if (n > 11 && !strcmp(path + n - 11, ".index.json"))
            rc = open_index(w, path, err);
        else
            rc = add_shard(w, path, err);
    }
    if (rc) {
        fs_weights_close(w);
        return rc;
    }
    *out = w;
    return FS_OK;
}

void fs_weights_close(fs_weights *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_shards; i++) {
        fs_safetensors_close(w->shards[i].st);
        free(w->shards[i].path);
    }
    for (size_t i = 0; i < w->n_copies; i++) free(w->copies[i]);
    free(w->copies);
    free(w->shards);
    if (w->index) json_decref(w->index);
    fs_strmap_release(&w->claimed);
    free(w->path);
    free(w->dir);
    free(w);
}

const char *fs_weights_path(const fs_weights *w) { return w->path; }
const char *fs_weights_dir(const fs_weights *w) { return w->dir; }

const char *fs_weights_metadata(const fs_weights *w, const char *key) {
    if (w->index) return json_string_value(json_object_get(json_object_get(w->index, "metadata"), key));
    return fs_safetensors_metadata(w->shards[0].st, key);
}

/* The tensor under exactly this name, in the shard the index names (or any). */
static const fs_st_tensor *lookup(fs_weights *w, const char *name, const char **file) {
    const char *want = w->index ? json_string_value(json_object_get(json_object_get(w->index, "weight_map"), name)) : NULL;
    for (size_t i = 0; i < w->n_shards; i++) {
        const char *base = strrchr(w->shards[i].path, '/');
        if (want && strcmp(base ? base + 1 : w->shards[i].path, want)) continue;
        const fs_st_tensor *t = fs_safetensors_find(w->shards[i].st, name);
        if (t) {
            if (file) *file = w->shards[i].path;
            fs_strmap_put(&w->claimed, name, strlen(name), NULL);
            return t;
        }
    }
    return NULL;
}

const fs_st_tensor *fs_weights_find(fs_weights *w, const char *name, const char **file) {
    const fs_st_tensor *t = lookup(w, name, file);
    if (!t && !strncmp(name, PREFIX, strlen(PREFIX))) t = lookup(w, name + strlen(PREFIX), file); /* GPT2Model */
    return t;
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | man << 13; /* inf, nan */
    } else if (exp) {
        bits = sign | (exp + 112) << 23 | man << 13;
    } else if (man) { /* subnormal: normalise */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while (!(man & 0x400));
        bits = sign | (uint32_t)(112 - e) << 23 | (man & 0x3FF) << 13;
    } else {
        bits = sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int fs_weights_f32(fs_weights *w, const fs_st_tensor *t, const char *file, const float **out, fs_error *err) {
    if (t->dtype == FS_DTYPE_F32) {
        *out = t->data;
        return FS_OK;
    }
    size_t esize = fs_safetensors_dtype_size(t->dtype), n = esize ? t->nbytes / esize : 0;
    if (t->dtype != FS_DTYPE_F16 && t->dtype != FS_DTYPE_BF16 && t->dtype != FS_ST_DTYPE_F64)
        return fs_error_set(err, FS_ERR_INVALID, "%s: tensor '%s' is %s: weights must be F32, F16, BF16 or F64", file,
                            t->name, fs_safetensors_dtype_name(t->dtype));
    float **nc = realloc(w->copies, (w->n_copies + 1) * sizeof *nc);
    if (!nc) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    w->copies = nc;
    float *f = malloc((n ? n : 1) * sizeof *f);
    if (!f) return fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory converting '%s'", file, t->name);
    w->copies[w->n_copies++] = f;
    const unsigned char *p = t->data;
    for (size_t i = 0; i < n; i++) {
        if (t->dtype == FS_ST_DTYPE_F64) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            f[i] = (float)d;
        } else {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            if (t->dtype == FS_DTYPE_F16) {
                f[i] = half_to_float(h);
            } else {
                uint32_t bits = (uint32_t)h << 16;
                memcpy(&f[i], &bits, 4);
            }
        }
    }
    *out = f;
    return FS_OK;
}

void fs_weights_unclaimed(const fs_weights *w, void (*fn)(void *arg, const char *name, const fs_st_tensor *t),
                          void *arg) {
    for (size_t i = 0; i < w->n_shards; i++)
        for (size_t k = 0; k < fs_safetensors_count(w->shards[i].st); k++) {
            const fs_st_tensor *t = fs_safetensors_at(w->shards[i].st, k);
            if (!fs_strmap_find(&w->claimed, t->name, strlen(t->name))) fn(arg, t->name, t);
        }
}
