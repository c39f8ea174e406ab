/* device.h — [run] device: which device a session computes on.
 *
 *   auto      CUDA when a device is visible and the model can run there,
 *             else the CPU (a CPU-only install never loads the cuda backend)
 *   cpu       the CPU
 *   cuda      cuda:0
 *   cuda:N    the N-th visible CUDA device (CUDA_VISIBLE_DEVICES applies)
 *
 * Asking for CUDA where there is none is a configuration error naming the
 * key, its value, what is missing and the fix: no cuda backend in this
 * build, no device visible, an index past the last device. */
#ifndef FS_SESSION_DEVICE_H
#define FS_SESSION_DEVICE_H

#include "fastserve/tensor.h"
#include "session/session.h"

typedef struct fs_device_request {
    int automatic;    /* auto: `device` is unset */
    fs_device device; /* cpu or cuda:N */
} fs_device_request;

/* 0, or -1 when `text` is none of the forms above. */
int fs_device_parse(const char *text, fs_device_request *out);

/* [run] device resolved for s (s->run_cfg, s->registry) into *out. */
int fs_session_device(fs_session *s, fs_device *out, fs_error *err);

#endif
