/* student_init.c — [distill] init: start the student from teacher layers.
 *
 *   init = random                      the student graph's own seed (default)
 *   init = teacher-every-other-layer   student layer i <- teacher layer 2i,
 *                                      as DistilBERT initialised its student
 *   init = teacher-layers = 0,2,4      student layer i <- the i-th listed
 *                                      (also "teacher-layers:0,2,4")
 *
 * With a teacher init the token and position embeddings and the final
 * LayerNorm are copied too (the first max_seq rows of the position table),
 * so the student starts as the teacher with layers left out. The copy is
 * tensor for tensor, so the widths must be equal; a different head count
 * copies too but regroups the heads, which is allowed with a warning. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "modes/distill/distill_internal.h"

static const char *skip_ws(const char *p) {
    while (*p && isspace((unsigned char)*p)) p++;
    return p;
}

int fs_student_init_plan(fs_student_init *in, const char *value, const char *where, const fs_model *student,
                         const fs_model *teacher, fs_error *err) {
    memset(in, 0, sizeof *in);
    size_t Ls = fs_model_cfg(student)->n_layer, Lt = fs_model_cfg(teacher)->n_layer;
    in->n = Ls;
    const char *v = skip_ws(value ? value : "");
    static const char usage[] =
        "must be random, teacher-every-other-layer, or teacher-layers = A,B,... (one teacher layer per student layer)";
    if (!*v || strcmp(v, "random") == 0) return FS_OK;
    if (Ls > sizeof in->layers / sizeof in->layers[0])
        return fs_error_set(err, FS_ERR_INVALID, "%s: a student of %zu layers is too deep to copy", where, Ls);
    if (strcmp(v, "teacher-every-other-layer") == 0) {
        if (2 * (Ls - 1) >= Lt)
            return fs_error_set(err, FS_ERR_INVALID,
                                "%s: every other teacher layer (0, 2, ..., %zu) for %zu student layers needs a teacher "
                                "of at least %zu layers, but it has %zu: use init = teacher-layers = ... to choose them",
                                where, 2 * (Ls - 1), Ls, 2 * Ls - 1, Lt);
        in->kind = FS_INIT_EVERY_OTHER;
        for (size_t i = 0; i < Ls; i++) in->layers[i] = (int64_t)(2 * i);
    } else if (strncmp(v, "teacher-layers", 14) == 0) {
        const char *p = skip_ws(v + 14);
        if (*p == '=' || *p == ':') p++;
        size_t n = 0;
        for (;;) {
            p = skip_ws(p);
            char *end;
            long long x = strtoll(p, &end, 10);
            if (end == p)
                return fs_error_set(err, FS_ERR_INVALID, "%s: %s; '%s' is not a list of layer numbers", where, usage,
                                    v);
            if (n == sizeof in->layers / sizeof in->layers[0])
                return fs_error_set(err, FS_ERR_INVALID, "%s: too many layers listed", where);
            in->layers[n++] = x;
            p = skip_ws(end);
            if (*p == ',') {
                p++;
                continue;
            }
            if (*p) return fs_error_set(err, FS_ERR_INVALID, "%s: %s; unexpected '%s'", where, usage, p);
            break;
        }
        if (n != Ls)
            return fs_error_set(err, FS_ERR_INVALID,
                                "%s: lists %zu teacher layers, but the student has %zu layers: give one per student "
                                "layer",
                                where, n, Ls);
        for (size_t i = 0; i < n; i++)
            if (in->layers[i] < 0 || (size_t)in->layers[i] >= Lt)
                return fs_error_set(err, FS_ERR_INVALID,
                                    "%s: teacher layer %lld does not exist: the teacher has %zu layers (0-%zu)", where,
                                    (long long)in->layers[i], Lt, Lt - 1);
        in->kind = FS_INIT_LAYERS;
    } else {
        return fs_error_set(err, FS_ERR_INVALID, "%s: %s", where, usage);
    }
    if (fs_model_cfg(student)->n_embd != fs_model_cfg(teacher)->n_embd)
        return fs_error_set(err, FS_ERR_INVALID,
                            "%s: copying teacher layers needs equal widths, but the student's n_embd is %zu and the "
                            "teacher's %zu: set init = random (tinybert can distil across widths through its "
                            "projection)",
                            where, fs_model_cfg(student)->n_embd, fs_model_cfg(teacher)->n_embd);
    if (fs_model_cfg(student)->n_head != fs_model_cfg(teacher)->n_head)
        fs_log(FS_LOG_WARN, NULL,
               "%s: the student has %zu heads, the teacher %zu: the copied attention weights are regrouped into the "
               "student's heads",
               where, fs_model_cfg(student)->n_head, fs_model_cfg(teacher)->n_head);
    return FS_OK;
}

/* Copies the tensor `name` of the teacher into the student's (both whole
 * models of equal width, so the shapes agree). */
static void copy_tensor(fs_model *student, const char *sname, const fs_model *teacher, const char *tname) {
    const fs_param_view *sv = fs_model_find(student, sname), *tv = fs_model_find(teacher, tname);
    memcpy(fs_model_block(student)->params + sv->offset, fs_model_block(teacher)->params + tv->offset,
           sv->numel * sizeof(float));
}

void fs_student_init_apply(const fs_student_init *in, fs_model *student, const fs_model *teacher) {
    if (in->kind == FS_INIT_RANDOM) return;
    static const char *const whole[] = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
                                        "transformer.ln_f.bias"};
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++) copy_tensor(student, whole[i], teacher, whole[i]);
    /* a layer's tensors are contiguous in the block (model.h): one copy each */
    for (size_t i = 0; i < in->n; i++) {
        char sname[96], tname[96];
        snprintf(sname, sizeof sname, "transformer.h.%zu.ln_1.weight", i);
        snprintf(tname, sizeof tname, "transformer.h.%lld.ln_1.weight", (long long)in->layers[i]);
        const fs_param_view *sv = fs_model_find(student, sname), *tv = fs_model_find(teacher, tname);
        size_t n = 0;
        for (size_t k = 0; k < FS_LAYER_TENSORS; k++) n += sv[k].numel;
        memcpy(fs_model_block(student)->params + sv->offset, fs_model_block(teacher)->params + tv->offset,
               n * sizeof(float));
    }
}
