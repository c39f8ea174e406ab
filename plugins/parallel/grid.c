/* grid.c — see grid.h. */
#include "grid.h"

#include <stdio.h>

const char *fs_grid_dim_name(int dim) {
    static const char *names[3] = {"data", "tensor", "pipeline"};
    return dim >= 0 && dim < 3 ? names[dim] : "?";
}

int fs_grid_resolve(fs_grid *g, int world, int own, const int64_t asked[3], int *bad_dim, char *msg, size_t cap) {
    g->world = world;
    int64_t others = 1;
    for (int d = 0; d < 3; d++) {
        g->degree[d] = asked[d] > 0 ? (int)asked[d] : 1;
        if (d != own) others *= g->degree[d];
    }
    char text[160];
    snprintf(text, sizeof text, "data %d x tensor %d x pipeline %d", g->degree[0], g->degree[1], g->degree[2]);
    if (asked[own] == 0) {
        /* the plugin's own dimension takes the rest */
        if (others > world || world % others != 0) {
            int bad = own == FS_GRID_TENSOR ? FS_GRID_DATA : FS_GRID_TENSOR;
            for (int d = 0; d < 3; d++)
                if (d != own && g->degree[d] > 1) {
                    bad = d;
                    break;
                }
            *bad_dim = bad;
            snprintf(msg, cap,
                     "the other degrees multiply to %lld, which does not divide the %d ranks this run has, so "
                     "%s = 0 (the rest) has no value: make %d a multiple of it (mpirun -np) or change the degrees",
                     (long long)others, world, fs_grid_dim_name(own), world);
            return -1;
        }
        g->degree[own] = (int)(world / others);
        return 0;
    }
    int64_t product = others * g->degree[own];
    if (product != world) {
        *bad_dim = own;
        snprintf(msg, cap,
                 "%s = %lld ranks, but this run has %d (mpirun -np %d): make the product %d, or set %s = 0 to take "
                 "the rest",
                 text, (long long)product, world, world, world, fs_grid_dim_name(own));
        return -1;
    }
    return 0;
}

fs_grid_coords fs_grid_coords_of(const fs_grid *g, int rank) {
    int T = g->degree[FS_GRID_TENSOR], P = g->degree[FS_GRID_PIPELINE];
    fs_grid_coords c;
    c.c[FS_GRID_TENSOR] = rank % T;
    c.c[FS_GRID_PIPELINE] = rank / T % P;
    c.c[FS_GRID_DATA] = rank / (T * P);
    return c;
}

int fs_grid_rank_of(const fs_grid *g, fs_grid_coords c) {
    int T = g->degree[FS_GRID_TENSOR], P = g->degree[FS_GRID_PIPELINE];
    return (c.c[FS_GRID_DATA] * P + c.c[FS_GRID_PIPELINE]) * T + c.c[FS_GRID_TENSOR];
}

int fs_grid_in_embedding(const fs_grid *g, int rank) {
    int p = fs_grid_coords_of(g, rank).c[FS_GRID_PIPELINE];
    return p == 0 || p == g->degree[FS_GRID_PIPELINE] - 1;
}

void fs_grid_split_key(const fs_grid *g, int group, int rank, int *color, int *key) {
    int D = g->degree[FS_GRID_DATA], T = g->degree[FS_GRID_TENSOR], P = g->degree[FS_GRID_PIPELINE];
    fs_grid_coords c = fs_grid_coords_of(g, rank);
    int d = c.c[FS_GRID_DATA], t = c.c[FS_GRID_TENSOR], p = c.c[FS_GRID_PIPELINE];
    switch (group) {
    case FS_GROUP_DATA: /* same tensor and pipeline coordinates */
        *color = p * T + t;
        *key = d;
        break;
    case FS_GROUP_TENSOR:
        *color = d * P + p;
        *key = t;
        break;
    case FS_GROUP_PIPELINE:
        *color = d * T + t;
        *key = p;
        break;
    default: /* FS_GROUP_EMBEDDING */
        if (fs_grid_in_embedding(g, rank)) {
            *color = d * T + t;
            *key = p;
        } else {
            *color = D * T + rank; /* alone: past every shared colour */
            *key = 0;
        }
        break;
    }
}
