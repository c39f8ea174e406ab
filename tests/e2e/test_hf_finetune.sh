#!/usr/bin/env bash
# test_hf_finetune.sh — training from existing weights ([model] init):
#  - a run with lr 0 keeps transformers' weights exactly (every tensor's
#    float32 bytes, through fp16 too) and reports transformers' loss as its
#    val_loss: the run started from those weights;
#  - fine-tuning lowers the loss below the starting one, the source is never
#    written, and the result loads back into transformers;
#  - an untied head fine-tunes; a distilled student may start from a file;
#  - the checks before any work: init missing, init in [run] out, a shape
#    that does not fit (exit 2, the key named); a fresh run refuses an out
#    holding another run's checkpoint unless --resume or [run] overwrite;
#  - a checkpoint without training state cannot be resumed, and says so.
. "$(dirname "$0")/lib.sh"
need_hf

standard_data
T=32
hf make hf tied || die "transformers could not write the model"
hf make hf16 fp16 || die "transformers could not write the fp16 model"
hf make hfu untied || die "transformers could not write the untied model"
sha_before=$(cat hf/* | sha256sum)

# val_batches x batch windows cover all of val.txt (46 windows): val_loss is the whole-file loss
common=(train.val_every=0 train.val_batches=16 generate.max_tokens=0)

# ---- lr 0: the run holds exactly the weights it started from ----
for src in hf hf16; do
    write_graph z.ini model.init=$src train.steps=1 train.lr=0 run.out=z_$src "${common[@]}"
    assert_exit 0 "$FSRUN" z.ini
    assert_err "starting from the weights of $src"
    val=$(json_last "$E2E_OUT" val_loss)
    hf eval $src val.txt $T >hf.out
    assert_close "$val" "$(json_last hf.out loss)" 1e-5 "$src: val_loss of the lr-0 run == transformers' loss"
    assert_eq "$(hf tensors z_$src/model.safetensors)" "$(hf tensors $src)" "$src: every tensor kept bit for bit"
done

# ---- fine-tuning ----
write_graph ft.ini model.init=hf train.steps=40 train.lr=3e-3 run.out=ft "${common[@]}"
assert_exit 0 "$FSRUN" ft.ini
start=$(json_last hf.out loss)
hf eval hf val.txt $T >start.out
ft_val=$(json_last "$E2E_OUT" val_loss)
assert_num "$ft_val" '<' "$(json_last start.out loss)" "fine-tuning lowers the val loss below the starting weights'"
hf eval ft val.txt $T --strict >ft.out && ok "the fine-tuned run loads into transformers without a warning" ||
    fail "transformers cannot load the fine-tuned run"
assert_close "$(json_last ft.out loss)" "$ft_val" 1e-5 "transformers agrees on the fine-tuned loss"
assert_eq "$(cat hf/* | sha256sum)" "$sha_before" "the source directory is unchanged"
# the first step's loss is the source model's on its batch: close to its val loss, far from a fresh model's
write_graph fresh.ini train.steps=1 run.out=fresh "${common[@]}"
must_fsrun fresh.ini
assert_ne "$(metrics_col ft/metrics.jsonl loss | head -n 1)" "$(metrics_col fresh/metrics.jsonl loss | head -n 1)" \
    "step 1 differs from a randomly initialised run's"

# an untied head
write_graph fu.ini model.init=hfu model.tie_word_embeddings=false train.steps=20 train.lr=3e-3 run.out=fu "${common[@]}"
assert_exit 0 "$FSRUN" fu.ini
hf eval fu val.txt $T --strict >fu.out && assert_close "$(json_last fu.out loss)" "$(json_last "$E2E_OUT" val_loss)" 1e-5 \
    "untied: the fine-tuned run agrees with transformers" || fail "transformers cannot load the untied fine-tuned run"
# a tied graph cannot start from an untied head
write_graph ut.ini model.init=hfu train.steps=2 run.out=ut "${common[@]}"
assert_exit 2 "$FSRUN" ut.ini
assert_one_error_line
assert_err "[model] init = hfu" "tie_word_embeddings"

# a distilled student starts from a file too (the teacher: the fine-tuned run)
write_graph t.ini run.out=ft "${common[@]}"
write_graph s.ini model.init=hf distill.teacher=t.ini train.steps=3 run.out=st "${common[@]}"
assert_exit 0 "$FSRUN" s.ini --mode distill
assert_err "starting from the weights of hf"
write_graph s2.ini model.init=hf distill.teacher=t.ini distill.init=teacher-layers=0,1 train.steps=3 \
    run.out=st2 "${common[@]}"
assert_exit 2 "$FSRUN" s2.ini --mode distill
assert_err "[distill] init" "[model] init"

# ---- checks before any work ----
write_graph bad.ini model.init=nosuch train.steps=2 run.out=bad_out "${common[@]}"
assert_exit 2 "$FSRUN" bad.ini
assert_one_error_line
assert_err "[model] init = nosuch"
[ -e bad_out ] && fail "a refused run created [run] out" || ok "nothing written"

write_graph self.ini model.init=ft train.steps=2 run.out=ft run.overwrite=true "${common[@]}"
assert_exit 2 "$FSRUN" self.ini
assert_one_error_line
assert_err "never written" "[run] out"

write_graph wide.ini model.init=hf model.n_embd=48 train.steps=2 run.out=wide "${common[@]}"
assert_exit 2 "$FSRUN" wide.ini
assert_one_error_line
assert_err "[model] init = hf" "transformer.wte.weight" "[model] n_embd = 32"

# ---- another run's checkpoint in [run] out ----
write_graph again.ini train.steps=5 run.out=ft "${common[@]}"
assert_exit 2 "$FSRUN" again.ini
assert_one_error_line
assert_err "already holds a checkpoint" "ft/model.safetensors" "--resume" "[run] overwrite = true"
write_graph more.ini model.init=hf train.steps=45 train.lr=3e-3 run.out=ft "${common[@]}"
assert_exit 0 "$FSRUN" more.ini --resume
assert_eq "$(json_last "$E2E_OUT" steps)" 45 "--resume continues the fine-tuned run (init is not applied again)"
assert_eq "$(metrics_col ft/metrics.jsonl loss | tail -n 1 | cut -d' ' -f1)" 45 "metrics continue to step 45"
write_graph over.ini train.steps=3 run.out=ft run.overwrite=true "${common[@]}"
assert_exit 0 "$FSRUN" over.ini
assert_eq "$(json_last "$E2E_OUT" steps)" 3 "[run] overwrite = true replaces it"

# ---- a weights-only directory cannot be resumed ----
write_graph r.ini train.steps=5 run.out=hf "${common[@]}"
assert_exit 1 "$FSRUN" r.ini --resume
assert_last_error_line "no training state" "[model] init"
assert_eq "$(cat hf/* | sha256sum)" "$sha_before" "the refused resume left the directory as it was"

e2e_finish
