#!/usr/bin/env bash
# OGA Table 2 with the authors' own recipe (experiment=table2_cifar10n_authors: ResNet-34 from scratch, 100 epochs,
# lr 0.1 -> 0.01 at epoch 60, base loader unshuffled, weight-only fc gradients, test accuracy every epoch) on
# CIFAR-10N (JPEG q75, all 50k), one noise and one seed at a time, across consecutive `run` calls (<= 10 min each):
#   MODE=base NOISE=worst SEED=0 bash scripts/gpu/authors.sh
#       trains the base model (~4.3 min with the speed overrides below, 6.2 min fp32), gathers the 5,120-number
#       gradients once and scores every method (retrain=false: detection metrics, base final and best-epoch accuracy)
#   MODE=retrain NOISE=worst SEED=0 METHODS=iforest,l2 bash scripts/gpu/authors.sh
#       retrains on what each method keeps (~4.5 min each: two per call), reusing the cached base model and gradients
#   then METHODS=l1,tracin, then METHODS=self_confidence; then NOISE=aggregate, then SEED=1 ...
#   MODE=all NOISE=aggregate SEED=0 METHODS=iforest LIMIT=585 bash scripts/gpu/authors.sh
#       both in one call: the base model (264 s on the H200), then one retrain (~232 s); what a cold machine's first
#       call of a (noise, seed) should run
# The base model, gradients, retrain results and the decoded images live in CACHE (default /root/gradsift-cache) and
# the sweep folders in RUNS (default /root/gradsift-runs), outside the repository copy that each call gets afresh: they
# last as long as the machine stays warm, so make the calls of one (noise, seed) back to back. A cold machine trains
# the base model again (it is keyed by its config, so the numbers are the same up to GPU nondeterminism). A retrain
# call finding no cached base model trains it first, which leaves time for about one retrain.
# Methods: l1, l2, iforest, tracin, self_confidence (conf/table2_authors/), and two controls of ours, not in the paper:
# random (5% deleted at random) and none (nothing deleted: the retrain's shuffled order alone, against the base model's
# unshuffled one). Neither needs a model (Scorer.needs_model): both retrain from the committed flags of any base call,
# the ones that never scored them included (gradsift.handoff scores them in the retrain job); Cross Entropy is the untrimmed base model,
# filled from every run's base accuracy. A method starts only while RETRAIN_S (default 280) seconds are left before
# LIMIT (default 540); the ones not started are listed in progress.txt ("not started"). Two retrains need about
# 2 x (258 s training + ~20 s per-epoch test evaluation + ~15 s start-up), more than 540 s: if the first one's
# timing (progress.txt, "exit 0 at N s") shows the second cannot finish, raise LIMIT towards the call's 600 s (e.g.
# LIMIT=585) or pass one method per call; a retrain cut by the limit is repeated in full by the next call.
# SPEED=1 (default) adds the H200 speed overrides, differences from the authors (fp32, eager): bf16 autocast, the
# training step as one CUDA graph with fused SGD, the data resident on the GPU, no NaN fill of new memory (SPEED_ARGS
# below; docs/BENCHMARKS.md, "Training throughput"). SPEED=0 runs fp32 eager, as the authors (one training per call).
# FROM=<folder of a MODE=base sweep> makes the retrains take that detection run's flags (retrain_from=, no base model
# needed: two retrains fit a call on a cold machine); the default is multirun_summaries/runs/gpu_authors/
# authors_base_<noise>_s<seed> when it holds flagged.npz (or flagged.csv) files (committed from an earlier call); FROM= (empty)
# uses the warm cache instead.
# Publish: python scripts/gpu/publish_authors.py <files_at of each call, in order> --label '<date> (H200, code <sha>)'
# (--rename authors_base_<noise>_s<seed>=authors_base_<noise>_s<seed>_<date> for a base call run again) does
# every step below (never overwriting a published file) and regenerates the summaries, curves and overlaps. By hand:
# unpack each call's $OUT/results.tgz (every result.json under RUNS so far, and the base sweep's flagged.csv)
# into multirun_summaries/runs/gpu_authors/ (then python -m gradsift.handoff <each authors_base_* job folder>: the
# flags as sample indices + one bit each, ~4 kB, so the tree and .gpu/c10 stay under a call's 64 MiB), then python experiments/summarize.py multirun_summaries/runs/gpu_authors
# --table oga.table2_cifar_n_resnet34_authors --accuracy best --paired --out multirun_summaries/table2_cifar10n_authors_best (and --accuracy
# final ... _final, --accuracy cross ... _cross for the runs that record test_cross_acc: code after 2026-12-03).
# The table (conf/paper/oga.yaml) takes the retrain=true runs only: authors_base_* are
# detection-only.
# Expects (git-ignored): .whl/ (hydra-core, omegaconf, antlr4, cleanlab wheels; `make wheelhouse`) and
# .gpu/c10/{cifar10-jpeg/cifar10_jpeg.npz, cifar-n/cifar10n_labels.npz} (from ../shared/data).
# PAR=K (default 1) runs the METHODS' retrains K at a time in one process, each on its own CUDA stream
# (gradsift.parallel; needs flags, FROM); the per-method sweeps then find them in the cache. Measured 2026-12-03:
# PAR=2, two 100-epoch retrains in 329 s (211 s one alone), the call 387 s (docs/BENCHMARKS.md); PAR=3 not measured.
# MODE=mix JOBS="worst:1:random worst:1:none aggregate:0:random" PAR=3 retrains jobs of several (noise, seed) in one
# process (gradsift.parallel: one datamodule per label set), each from its (noise, seed)'s committed flags (or the warm
# cache's base sweep), then each job's sweep writes its result.json: the last retrains of a seed need not wait for a
# partner of the same (noise, seed). PAR=3: not measured yet (PAR=2: 1.25-1.30x; the streams benchmark: 1.37x at 2,
# 1.50x at 4, so about 3 x 211 / 1.35 = 470 s of training, ~545 s with start-up and the three sweeps).
# Env: MODE (base | retrain | all = base, then the retrains of METHODS | mix), JOBS (mix), FLAGS_DIR (the committed base
# sweeps, default multirun_summaries/runs/gpu_authors), FROM, PAR, NOISE (worst | aggregate | random1), SEED, METHODS (retrain; default iforest,l2), OUT,
# LIMIT, RETRAIN_S, CACHE, RUNS, SPEED, EXTRA (appended to every run.py call).
# CPU dry run (ran before commit, both modes, 2 cores): DEVICE_SETUP=0 PY=.venv/bin/python GRADSIFT_DATA=../shared/data
# CACHE=/tmp/dry/cache RUNS=/tmp/dry/runs OUT=/tmp/dry/out SPEED=0 RETRAIN_S=30 EXTRA='trainer.accelerator=cpu
# trainer.max_epochs=2 model.scheduler.milestones=[1] torch_threads=1 data.subset=100 data.test_size=50
# data.batch_size=25' bash scripts/gpu/authors.sh    (then MODE=retrain METHODS=iforest,l2 with the same env)
set -u
MODE=${MODE:-base}
T0=$(date +%s); LIMIT=${LIMIT:-540}; END=$((T0 + LIMIT)); RETRAIN_S=${RETRAIN_S:-280}
OUT=${OUT:-/tmp/authors_out}; SEED=${SEED:-0}; NOISE=${NOISE:-worst}; EXTRA=${EXTRA:-}; PY=${PY:-python3}
CACHE=${CACHE:-/root/gradsift-cache}; RUNS=${RUNS:-/root/gradsift-runs}
ALL=l1,l2,iforest,tracin,self_confidence,random
METHODS=${METHODS:-iforest,l2}
mkdir -p "$OUT" "$CACHE" "$RUNS"
if [ "${DEVICE_SETUP:-1}" = 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD GRADSIFT_DATA=$PWD/.gpu/c10
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
fi
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 GRADSIFT_CACHE=$CACHE
SPEED_ARGS="trainer.precision=bf16-mixed model.cuda_graph=true model.optimizer.fused=true data.device=cuda \
fill_uninitialized_memory=false"
[ "${SPEED:-1}" = 1 ] || SPEED_ARGS=""
# every call of a (noise, seed) must pass the same model/data/trainer overrides, or the cached base model is not found
A0="experiment=table2_cifar10n_authors data.source=jpeg"
A1="trainer.enable_progress_bar=false torch_threads=4 gallery=0 paths.cache_dir=$CACHE $SPEED_ARGS"
A="$A0 data.noise=$NOISE seed=$SEED $A1"
A_MIX="$A0 $A1"  # MODE=mix: noise and seed come with each job
echo "cache $CACHE: $(find $CACHE/model -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l) base model(s), $(find $CACHE/retrain -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l) \
retrain(s) from earlier calls" | tee -a $OUT/progress.txt
: > $OUT/command.txt
sweep() {  # name overrides... : one Hydra multirun in RUNS, cut at the script's time limit
  local name=$1; shift
  local rem=$((END - $(date +%s))); [ $rem -gt 30 ] || { echo "skip $name: no time left" >> $OUT/progress.txt; return 0; }
  echo "GRADSIFT_CACHE=$CACHE python3 experiments/run.py -m $* $EXTRA hydra.sweep.dir=$RUNS/$name" >> $OUT/command.txt
  timeout $rem $PY experiments/run.py -m "$@" $EXTRA hydra.sweep.dir=$RUNS/$name \
    hydra.callbacks.summary.out_dir=$RUNS/$name/summary >> $RUNS/$name.log 2>&1
  echo "$name exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/progress.txt
}
# retrains on a cold machine: the flags of a detection run (MODE=base) committed under multirun_summaries, instead of
# the cached base model (experiments/run.py retrain_from=..., gradsift.handoff): no base model is trained
# (or, on a warm machine or after MODE=all's base sweep, the base sweep's folder in RUNS)
# (the last in name order of authors_base_<noise>_s<seed> and its re-runs, authors_base_<noise>_s<seed>_<date>, that holds
# flags: a base call run again on a cold machine is published under a dated name, publish_authors.py --rename)
FLAGS_DIR=${FLAGS_DIR:-multirun_summaries/runs/gpu_authors}  # where committed base sweeps are (a dry run: elsewhere)
committed_flags() {  # noise seed -> the committed base sweep folder with flags (empty if none)
  local d found=""
  for d in $FLAGS_DIR/authors_base_$1_s$2 $FLAGS_DIR/authors_base_$1_s$2_*; do
    [ -n "$(find $d -name 'flagged.*' 2>/dev/null | head -1)" ] && found=$(readlink -f $d)
  done
  echo "$found"
}
DET=$(committed_flags $NOISE $SEED)
if [ -z "${FROM+x}" ] && [ "$MODE" = retrain ] && [ -n "$DET" ]; then
  FROM=$DET
elif [ -z "${FROM+x}" ] && [ "$MODE" != base ]; then
  FROM=$RUNS/authors_base_${NOISE}_s$SEED  # checked below, after MODE=all's base sweep
fi
FROM=${FROM:-}
PAR=${PAR:-1}
parallel_retrains() {  # PAR > 1: the METHODS' retrains in one process, PAR at a time on CUDA streams (gradsift.parallel)
  local each="" m rem
  for m in ${METHODS//,/ }; do each="$each --each +table2_authors=$m"; done
  rem=$((END - $(date +%s)))
  echo "GRADSIFT_CACHE=$CACHE python3 -m gradsift.parallel --workers $PAR$each --out \$OUT/parallel.json -- $A retrain_from=$FROM $EXTRA" >> $OUT/command.txt
  timeout $rem $PY -m gradsift.parallel --workers $PAR $each --out $OUT/parallel.json -- $A retrain_from=$FROM $EXTRA \
    >> $RUNS/parallel_${NOISE}_s$SEED.log 2>&1
  echo "parallel retrains ($PAR at a time) exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/progress.txt
  tail -8 $RUNS/parallel_${NOISE}_s$SEED.log | grep -E "trained|cached|failed|wall" >> $OUT/progress.txt
  RETRAIN_S=30  # the sweeps below find the retrains in the cache (one failed here is trained there, time allowing)
}
mix_retrains() {  # MODE=mix: JOBS="noise:seed:method ..." retrained PAR at a time in one process, across (noise, seed)
  local each=() froms=() job n sd m from rem i=0
  for job in $JOBS; do
    IFS=: read -r n sd m <<< "$job"
    from=$(committed_flags $n $sd); [ -n "$from" ] || from=$RUNS/authors_base_${n}_s$sd
    froms+=("$from")
    each+=(--each "data.noise=$n seed=$sd +table2_authors=$m retrain_from=$from")
  done
  rem=$((END - $(date +%s)))
  { printf 'GRADSIFT_CACHE=%s python3 -m gradsift.parallel --workers %s' "$CACHE" "$PAR"; printf ' %q' "${each[@]}"
    echo " --out \$OUT/parallel.json -- $A_MIX $EXTRA"; } >> $OUT/command.txt
  timeout $rem $PY -m gradsift.parallel --workers $PAR "${each[@]}" --out $OUT/parallel.json -- $A_MIX $EXTRA \
    >> $RUNS/parallel_mix.log 2>&1
  echo "parallel retrains ($PAR at a time, $(echo $JOBS | wc -w) jobs) exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/progress.txt
  tail -8 $RUNS/parallel_mix.log | grep -E "trained|cached|failed|wall" >> $OUT/progress.txt
  for job in $JOBS; do  # each job's own sweep writes its result.json from the cache (a failed one trains here)
    IFS=: read -r n sd m <<< "$job"
    sweep authors_${n}_s${sd}_$m $A0 data.noise=$n seed=$sd $A1 +table2_authors=$m retrain_from=${froms[i]}
    i=$((i + 1))
  done
}
case "$MODE" in
  mix)
    [ -n "${JOBS:-}" ] || { echo "MODE=mix needs JOBS=\"noise:seed:method ...\"" | tee -a $OUT/progress.txt; exit 2; }
    mix_retrains ;;
  base)
    # one process, jobs one after another: the first trains and gathers, the other four find both in the cache
    sweep authors_base_${NOISE}_s$SEED $A retrain=false +table2_authors=$ALL ;;
  retrain|all)
    # all: the base model first (as MODE=base), then the retrains of METHODS while time is left, so a cold machine's
    # first call does not spend a whole call on the base model alone
    [ "$MODE" = all ] && sweep authors_base_${NOISE}_s$SEED $A retrain=false +table2_authors=$ALL
    if [ -n "$FROM" ] && [ -z "$(find $FROM -name 'flagged.*' 2>/dev/null | head -1)" ]; then
      echo "no flags in $FROM: the retrains use the cached base model" | tee -a $OUT/progress.txt; FROM=""
    fi
    [ -n "$FROM" ] && echo "retrains take the flags of $FROM" | tee -a $OUT/progress.txt
    [ "$PAR" -gt 1 ] && [ -n "$FROM" ] && parallel_retrains
    for m in ${METHODS//,/ }; do
      rem=$((END - $(date +%s)))
      if [ $rem -lt $RETRAIN_S ]; then echo "not started: $m ($rem s left < RETRAIN_S $RETRAIN_S)" | tee -a $OUT/progress.txt; continue; fi
      # one sweep folder per method: a call cut by the limit leaves a 'running' record that the next call's run of
      # the same method repeats (finished jobs of the same config are skipped; the retrain cache keeps the rest)
      sweep authors_${NOISE}_s${SEED}_$m $A +table2_authors=$m ${FROM:+retrain_from=$FROM}
    done ;;
  *) echo "MODE=$MODE: expected base, retrain, all or mix" | tee -a $OUT/progress.txt; exit 2 ;;
esac
cat $OUT/gpu.txt >> $OUT/progress.txt 2>/dev/null; rm -f $OUT/gpu.txt
for f in $RUNS/*.log; do [ -e "$f" ] && tail -40 "$f" > "$f.tail"; done
( cd "$RUNS" && tar czf $OUT/results.tgz $(find . -name result.json -o -name multirun.yaml -o -name '*.log.tail' \
  -o -path './authors_base_*/flagged.csv' 2>/dev/null) )
# the run records so far, one line each: method, noise, seed, base final/best, retrained final/best, trimmed
$PY - "$RUNS" <<'EOF' | tee -a $OUT/progress.txt
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).rglob("result.json")):
    r = json.loads(p.read_text()); m = r.get("metrics", {})
    f = lambda k: f"{m[k]:.4f}" if isinstance(m.get(k), float) else "-"
    print(f"{r.get('status')} {r.get('method')} | {r.get('config', {}).get('data', {}).get('noise')} s{r.get('seed')} | "
          f"base {f('base_test_acc')} best {f('base_test_best_acc')} cross {f('base_test_cross_acc')} | "
          f"retrained {f('test_acc')} best {f('test_best_acc')} cross {f('test_cross_acc')} | "
          f"trimmed {m.get('n_trimmed')} precision {f('precision')} auc {f('detection_auc')}"
          + (f" | McNemar p best {m['test_best_vs_base']['p']:.2g}" if "test_best_vs_base" in m else ""))
EOF
grep -h "Error" $RUNS/*.log 2>/dev/null | sort | uniq -c | head -20 >> $OUT/progress.txt
ls $OUT
