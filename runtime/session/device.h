/* device.h — [run] device and [backend] plugin: where a session's model
 * computes.
 *
 *   auto      CUDA when a device is visible and the mode and graph can run
 *             there (train: modes/train_device.c), else the CPU; other
 *             modes never load the cuda backend
 *   cpu       the CPU: the runtime's own kernels (compute/), or, with
 *             [backend] plugin naming one, the model through that backend
 *             plugin's ops (model/device_gpt.h): how a CPU backend, the
 *             runtime's or a third party's, is tried end to end
 *   cuda      cuda:0; under mpirun, one GPU per rank: the rank's local
 *             rank among the ranks on its machine (NCCL's rule)
 *   cuda:N    the N-th visible CUDA device (CUDA_VISIBLE_DEVICES applies);
 *             one process per machine only, since ranks cannot share it
 *
 * Asking for CUDA where there is none is a configuration error naming the
 * key, its value, what is missing and the fix: no cuda backend in this
 * build, no device visible, an index past the last device. So is asking
 * for a backend in a mode that runs only on the runtime's own kernels. */
#ifndef FS_SESSION_DEVICE_H
#define FS_SESSION_DEVICE_H

#include "fastserve/tensor.h"
#include "session/session.h"

typedef struct fs_device_request {
    int automatic;    /* auto: `device` is unset */
    fs_device device; /* cpu or cuda:N */
    int indexed;      /* cuda:N rather than cuda */
} fs_device_request;

/* 0, or -1 when `text` is none of the forms above. */
int fs_device_parse(const char *text, fs_device_request *out);

/* [run] device and [backend] checked for s (s->run_cfg, s->registry) at
 * open: *out is the CPU model's device (always the CPU); the request stays
 * in s->backend. */
int fs_session_device(fs_session *s, fs_device *out, fs_error *err);

/* 1 when the graph asks for a backend explicitly (device = cuda[:N], or
 * [backend] plugin named): modes that cannot use one refuse it. */
int fs_session_backend_asked(const fs_session *s);
/* Where the graph asks for it ("file:line: [backend] plugin = cpu"), for
 * messages. */
const char *fs_session_backend_where(const fs_session *s);

/* The backend plugin the model should train through and its device, for a
 * mode that can: NULL (*plugin) for the runtime's own CPU kernels. `auto`
 * gives the cuda backend only where it is built and sees a device. */
int fs_session_backend(fs_session *s, const struct fs_plugin **plugin, fs_device *device, fs_error *err);

#endif
