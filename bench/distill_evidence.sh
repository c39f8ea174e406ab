#!/usr/bin/env bash
# distill_evidence.sh — does distillation beat training the small model alone?
#
#   bench/distill_evidence.sh [--quick] [--fresh] [--out DIR]
#
# On the bundled corpus (data/kjv, byte level) it trains the teacher of
# conf/teacher.ini (6 layers, width 256, 4.9 M parameters), then the 2-layer
# student of the same width (1.7 M parameters) several ways, every one for
# the same number of optimizer steps on the same batches (8 x 256 tokens a
# step, the same seed):
#   (a) from scratch: next-token cross-entropy, random init
#   (b) soft_kd:      Hinton KD, T = 2, alpha = 0.5, random init
#   (c) distilbert:   5 T^2 KL + 2 CE + 1 cos(last hidden), T = 2, random init
#   (d) distilbert:   the same, initialised from teacher layers 0 and 2 (DistilBERT's recipe)
#   (e) tinybert:     intermediate layers (half the steps), then prediction layer
#   (f) init only:    cross-entropy from teacher layers 0 and 2 (what (d) owes to its init)
# and prints a table: validation loss (the same held-out windows for every
# model), the student's size against the teacher's and generation speed
# (tokens/s of the KV-cache decode, median of 5, student and teacher).
#
# Full size: 1000 teacher steps and 600 per student, about 20 minutes on two
# free cores (37 when they were shared with another job); --quick: 300 and
# 150 steps, about 6 minutes (12 shared), a smoke test of the pipeline whose
# young teacher has little to teach. Finished runs are reused
# (their summaries are kept in DIR; other step counts start over); --fresh
# starts over. TEACHER_STEPS and STUDENT_STEPS in the environment override
# the step counts. Progress goes to DIR/*.log; the table and a JSON line to
# stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
FRESH=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --fresh) FRESH=1 ;;
    --out)
        OUT=$2
        shift
        ;;
    -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        exit 0
        ;;
    *)
        echo "distill_evidence.sh: unknown argument '$1' (--quick, --fresh, --out DIR)" >&2
        exit 2
        ;;
    esac
    shift
done

FSRUN=${FSRUN:-build/fsrun}
[ -x "$FSRUN" ] || { echo "distill_evidence.sh: $FSRUN not found: build first (cmake --build build)" >&2; exit 2; }
[ -f data/kjv/train.txt ] && [ -f data/kjv/val.txt ] ||
    { echo "distill_evidence.sh: data/kjv/{train,val}.txt missing: run scripts/setup.sh" >&2; exit 2; }
# The teacher trains longer than the students, as a teacher would: a
# teacher no better than its student has nothing to teach.
if [ $QUICK = 1 ]; then
    TSTEPS=300 SSTEPS=150 VAL_BATCHES=16 OUT=${OUT:-runs/distill_evidence_quick}
else
    TSTEPS=1000 SSTEPS=600 VAL_BATCHES=32 OUT=${OUT:-runs/distill_evidence}
fi
TSTEPS=${TEACHER_STEPS:-$TSTEPS} SSTEPS=${STUDENT_STEPS:-$SSTEPS}
SETTINGS="teacher_steps=$TSTEPS student_steps=$SSTEPS val_batches=$VAL_BATCHES"
if [ $FRESH = 1 ] || [ "$(cat "$OUT/settings" 2>/dev/null)" != "$SETTINGS" ]; then
    rm -rf "$OUT"
fi
mkdir -p "$OUT"
echo "$SETTINGS" >"$OUT/settings"
# Idle OpenMP workers must sleep, not spin: on shared cores spinning makes a
# run many times slower and changes no number.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
TCKPT=$OUT/teacher/model.safetensors
# every run: same batches and seed, progress off, validation on the same
# 8 x VAL_BATCHES windows at the end only, no sample
COMMON=(--set run.progress=off --set run.log_every=50 --set generate.max_tokens=0 --set train.val_every=0
    --set train.val_batches=$VAL_BATCHES --set train.seed=1337)

json() { # FILE KEY: KEY of the last JSON line of FILE
    python3 - "$1" "$2" <<'EOF'
import json, sys
lines = [l for l in open(sys.argv[1], encoding='latin-1') if l.strip().startswith('{')]
v = json.loads(lines[-1]).get(sys.argv[2])
print('null' if v is None else v)
EOF
}

# run NAME ARGS...: fsrun ARGS unless NAME finished before; summary in NAME.json
run() {
    local name=$1
    shift
    if [ -s "$OUT/$name.json" ]; then
        echo "  $name: reusing $OUT/$name.json" >&2
        return
    fi
    echo "  $name: fsrun $*" >&2
    local t0=$SECONDS
    if ! "$FSRUN" "$@" "${COMMON[@]}" >"$OUT/$name.out" 2>"$OUT/$name.log"; then
        echo "distill_evidence.sh: $name failed; see $OUT/$name.log:" >&2
        tail -n 5 "$OUT/$name.log" >&2
        exit 1
    fi
    tail -n 1 "$OUT/$name.out" >"$OUT/$name.json"
    echo "  $name: $((SECONDS - t0)) s, val_loss $(json "$OUT/$name.json" val_loss)" >&2
}

student() { # NAME GRAPH [--set ...]
    local name=$1 graph=$2
    shift 2
    run "$name" "$graph" --mode distill --set run.out="$OUT/$name" --set train.steps=$SSTEPS \
        --set distill.teacher=conf/teacher.ini --set distill.teacher_checkpoint="$TCKPT" "$@"
}

echo "distill_evidence: $([ $QUICK = 1 ] && echo quick || echo full) run into $OUT" >&2
run teacher conf/teacher.ini --mode train --set run.out="$OUT/teacher" --set train.steps=$TSTEPS
# (a) the student alone: the student graph in train mode
run scratch conf/student.ini --mode train --set run.out="$OUT/scratch" --set train.steps=$SSTEPS
student soft_kd conf/student.ini --set distill.plugin=soft_kd --set distill.temperature=2 --set distill.alpha=0.5
student distilbert conf/distill_distilbert.ini --set distill.init=random
student distilbert_init conf/distill_distilbert.ini --set distill.init=teacher-every-other-layer
student tinybert conf/distill_tinybert.ini --set distill.intermediate_steps=$((SSTEPS / 2)) \
    --set distill.prediction_steps=$((SSTEPS - SSTEPS / 2))
student init_only conf/student.ini --set distill.plugin=soft_kd --set distill.alpha=0 \
    --set distill.init=teacher-every-other-layer

# generation speed: the KV-cache decode of 200 tokens, median of 5
gen_speed() { # GRAPH CKPT
    local i speeds=()
    for i in 1 2 3 4 5; do
        "$FSRUN" "$1" --mode generate --checkpoint "$2" --set generate.max_tokens=200 --set generate.seed=$i \
            --set "generate.prompt=And God said," >"$OUT/gen.out" 2>/dev/null
        speeds+=("$(json "$OUT/gen.out" tokens_per_s)")
    done
    printf '%s\n' "${speeds[@]}" | sort -g | sed -n 3p
}
echo "  generation speed (5 x 200 tokens each)" >&2
T_GEN=$(gen_speed conf/teacher.ini "$TCKPT")
S_GEN=$(gen_speed conf/student.ini "$OUT/scratch/model.safetensors")

python3 - "$OUT" "$TSTEPS" "$SSTEPS" "$T_GEN" "$S_GEN" "$VAL_BATCHES" <<'EOF'
import json, sys
out, tsteps, ssteps, tgen, sgen, vb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
def j(name):
    lines = [l for l in open('%s/%s.json' % (out, name))]
    return json.loads(lines[-1])
t = j('teacher')
rows = [
    ('scratch', '(a) scratch: cross-entropy alone', 'random'),
    ('soft_kd', '(b) soft_kd  T=2 alpha=0.5', 'random'),
    ('distilbert', '(c) distilbert 5/2/1 T=2', 'random'),
    ('distilbert_init', '(d) distilbert 5/2/1 T=2', 'teacher 0,2'),
    ('tinybert', '(e) tinybert %d+%d steps' % (ssteps // 2, ssteps - ssteps // 2), 'random'),
    ('init_only', '(f) cross-entropy alone', 'teacher 0,2'),
]
base = j('scratch')['val_loss']
sp = j('scratch')['params']
print()
print('Distillation on data/kjv (byte level). Teacher: 6 layers x 256, %.2fM parameters, %d steps.' % (t['params'] / 1e6, tsteps))
print('Students: 2 layers x 256, %.2fM parameters (%.2fx the teacher), %d steps x 8 x 256 tokens each, seed 1337.' % (sp / 1e6, sp / t['params'], ssteps))
print('val_loss: mean next-byte cross-entropy (nats) on the first %d windows of 256 of data/kjv/val.txt.' % (8 * vb))
print()
print('%-34s %-12s %9s %11s' % ('student', 'init', 'val_loss', 'vs (a)'))
res = {}
for name, label, init in rows:
    r = j(name)
    v = r['val_loss']
    res[name] = v
    print('%-34s %-12s %9.4f %11s' % (label, init, v, '-' if name == 'scratch' else '%+.4f' % (v - base)))
print('%-34s %-12s %9.4f' % ('teacher (6 layers)', '', t['val_loss']))
print()
print('size: student %.2fM / teacher %.2fM parameters = %.3f' % (sp / 1e6, t['params'] / 1e6, sp / t['params']))
print('generation (KV-cache decode, 1 sequence, median of 5 x 200 tokens): student %.0f tok/s, teacher %.0f tok/s (%.2fx)' % (sgen, tgen, sgen / tgen))
print(json.dumps({'bench': 'distill_evidence', 'teacher_steps': tsteps, 'student_steps': ssteps,
                  'teacher_params': t['params'], 'student_params': sp, 'size_ratio': sp / t['params'],
                  'teacher_val_loss': t['val_loss'], 'val_loss': res,
                  'gen_tokens_per_s': {'student': sgen, 'teacher': tgen}}))
EOF
