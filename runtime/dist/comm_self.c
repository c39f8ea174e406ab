/* comm_self.c — see comm_self.h. */
#include "dist/comm_self.h"

#include <string.h>

#include "core/host.h"

static int self_rank(const fs_comm *c, const fs_comm_group *g) { (void)c, (void)g; return 0; }
static int self_size(const fs_comm *c, const fs_comm_group *g) { (void)c, (void)g; return 1; }

static int self_group_split(fs_comm *c, int color, int key, fs_comm_group **out, fs_error *err) {
    (void)c, (void)color, (void)key, (void)err;
    *out = NULL; /* the only group is the world */
    return FS_OK;
}
static void self_group_free(fs_comm *c, fs_comm_group *g) { (void)c, (void)g; }

static int self_all_reduce(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int op, fs_error *err) {
    (void)c, (void)g, (void)t, (void)op, (void)err;
    return FS_OK;
}
static int self_all_reduce_start(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int op, fs_comm_request **req,
                                 fs_error *err) {
    (void)c, (void)g, (void)t, (void)op, (void)err;
    *req = NULL;
    return FS_OK;
}
static int self_wait(fs_comm *c, fs_comm_request *req, fs_error *err) { (void)c, (void)req, (void)err; return FS_OK; }
static int self_broadcast(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int root, fs_error *err) {
    (void)c, (void)g, (void)t, (void)root, (void)err;
    return FS_OK;
}
static int self_all_gather(fs_comm *c, const fs_comm_group *g, const fs_tensor *in, fs_tensor *out, fs_error *err) {
    (void)c, (void)g, (void)err;
    size_t es = in->dtype == FS_DTYPE_F64 ? 8 : in->dtype == FS_DTYPE_F16 || in->dtype == FS_DTYPE_BF16 ? 2 : 4;
    if (in->data != out->data) memcpy(out->data, in->data, fs_tensor_numel(in) * es);
    return FS_OK;
}
static int self_p2p(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int peer, int tag, fs_error *err) {
    (void)c, (void)g, (void)t, (void)tag;
    return fs_error_set(err, FS_ERR_COMM, "self communicator: no peer %d in a world of one rank", peer);
}
static int self_send(fs_comm *c, const fs_comm_group *g, const fs_tensor *t, int peer, int tag, fs_error *err) {
    return self_p2p(c, g, (fs_tensor *)t, peer, tag, err);
}
static int self_p2p_start(fs_comm *c, const fs_comm_group *g, const fs_tensor *t, int peer, int tag,
                          fs_comm_request **req, fs_error *err) {
    *req = NULL;
    return self_p2p(c, g, (fs_tensor *)t, peer, tag, err);
}
static int self_recv_start(fs_comm *c, const fs_comm_group *g, fs_tensor *t, int peer, int tag, fs_comm_request **req,
                           fs_error *err) {
    return self_p2p_start(c, g, t, peer, tag, req, err);
}
static int self_reduce_scatter(fs_comm *c, const fs_comm_group *g, const fs_tensor *in, fs_tensor *out,
                               fs_error *err) {
    return self_all_gather(c, g, in, out, err); /* one rank: out = in */
}
static int self_test(fs_comm *c, fs_comm_request *req, int *done, fs_error *err) {
    (void)c, (void)req, (void)err;
    *done = 1;
    return FS_OK;
}
static int self_barrier(fs_comm *c, const fs_comm_group *g, fs_error *err) { (void)c, (void)g, (void)err; return FS_OK; }

void fs_comm_self_init(fs_comm *c) {
    memset(c, 0, sizeof *c);
    c->struct_size = sizeof *c;
    c->engine = "self";
    c->rank = self_rank;
    c->size = self_size;
    c->group_split = self_group_split;
    c->group_free = self_group_free;
    c->all_reduce = self_all_reduce;
    c->all_reduce_start = self_all_reduce_start;
    c->wait = self_wait;
    c->broadcast = self_broadcast;
    c->all_gather = self_all_gather;
    c->send = self_send;
    c->recv = self_p2p;
    c->barrier = self_barrier;
    c->send_start = self_p2p_start;
    c->recv_start = self_recv_start;
    c->reduce_scatter = self_reduce_scatter;
    c->timeout_s = 0;
    c->test = self_test;
}
