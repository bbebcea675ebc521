#!/usr/bin/env bash
# Recipe R on CIFAR-10N-5k `worst` (issue #15, part 6), one `run` call (<= 10 min): experiment=recipe_r_cifar10n_5k
# (R exactly) and experiment=recipe_r_nearest_cifar10n_5k (zero padding, per-image crop, CIFAR-N constants), SEEDS
# (default 0,1,2); each job trains the untrimmed ResNet-18 (40 epochs), trims the top 5% L2 and retrains. Eager
# trainings (OneCycleLR changes the momentum every step: no CUDA graph), NJOBS (default 4) side by side per sweep,
# the two sweeps one after the other. Then, with what is left of LIMIT, optional extras in the same call:
#   BENCH=1   the gather/streams sections of benchmarks/bench_training.py (about a minute)
#   METHODS=worst  scripts/gpu/methods.sh for SEEDS_METHODS (default 0) and that noise, in the time left
# Publish: unpack $OUT/results.tgz into multirun_summaries/runs/gpu_recipe_r/, then
#   python experiments/summarize.py multirun_summaries/runs/gpu_recipe_r/multirun/gpu_recipe_r \
#     multirun_summaries/runs/gpu_recipe_r/multirun/gpu_recipe_r_nearest --out multirun_summaries/recipe_r_cifar10n_5k
# Expects (git-ignored): .whl/ (make wheelhouse) and $GRADSIFT_DATA (default .gpu/c5k) holding
# cifar10-partial/cifar10_partial.npz and cifar-n/cifar10n_labels.npz from ../shared/data.
# CPU dry run: DEVICE_SETUP=0 PY=.venv/bin/python NJOBS=1 SEEDS=0 GRADSIFT_DATA=../shared/data OUT=/tmp/rr
# EXTRA='data.device=null trainer.max_epochs=1 trainer.precision=32-true torch_threads=1 data.subset=200
# data.test_size=100 paths.cache_dir=/tmp/rr_cache' bash scripts/gpu/recipe_r.sh
set -u
T0=$(date +%s); LIMIT=${LIMIT:-540}; END=$((T0 + LIMIT))
OUT=${OUT:-/tmp/recipe_r_out}; SEEDS=${SEEDS:-0,1,2}; EXTRA=${EXTRA:-}; PY=${PY:-python3}
mkdir -p "$OUT" multirun
if [ "${DEVICE_SETUP:-1}" = 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
fi
export GRADSIFT_DATA=${GRADSIFT_DATA:-$PWD/.gpu/c5k} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
: > $OUT/command.txt
sweep() {  # name overrides... : one Hydra multirun, cut at the script's time limit
  local name=$1; shift
  local rem=$((END - $(date +%s))); [ $rem -gt 30 ] || { echo "skip $name: no time left" >> $OUT/progress.txt; return 0; }
  echo "python3 experiments/run.py -m $* hydra.sweep.dir=multirun/$name" >> $OUT/command.txt
  timeout $rem $PY experiments/run.py -m "$@" $EXTRA hydra.sweep.dir=multirun/$name \
    hydra.callbacks.summary.out_dir=multirun/$name/summary >> multirun/$name.log 2>&1
  echo "$name exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/progress.txt
}
J="hydra/launcher=joblib hydra.launcher.n_jobs=${NJOBS:-4} torch_threads=4 trainer.enable_progress_bar=false"
sweep gpu_recipe_r experiment=recipe_r_cifar10n_5k $J seed=$SEEDS
sweep gpu_recipe_r_nearest experiment=recipe_r_nearest_cifar10n_5k $J seed=$SEEDS
$PY experiments/summarize.py multirun/gpu_recipe_r multirun/gpu_recipe_r_nearest --out $OUT/recipe_r_cifar10n_5k \
  > $OUT/summary.log 2>&1
DIRS="multirun/gpu_recipe_r multirun/gpu_recipe_r_nearest"
for d in $DIRS; do tail -30 $d.log > $d.log.tail 2>/dev/null; done
tar czf $OUT/results.tgz $(ls multirun/*.log.tail 2>/dev/null) $(find $DIRS -name result.json -o -name multirun.yaml 2>/dev/null) 2>/dev/null
if [ "${BENCH:-0}" = 1 ] && [ $((END - $(date +%s))) -gt 90 ]; then
  echo "bench_training gather,streams from $(( $(date +%s) - T0 )) s" >> $OUT/progress.txt
  DEVICE_SETUP=0 PY=$PY OUT=$OUT/bench SECTIONS=gather,streams BUDGET=65 bash scripts/gpu/bench_training.sh \
    > $OUT/bench.log 2>&1
  echo "bench done at $(( $(date +%s) - T0 )) s" >> $OUT/progress.txt
fi
if [ -n "${METHODS:-}" ]; then
  rem=$((END - $(date +%s) - 10))
  if [ $rem -gt 120 ]; then
    DEVICE_SETUP=0 PY=$PY OUT=$OUT/methods LIMIT=$rem SEEDS=${SEEDS_METHODS:-0} NOISE=$METHODS \
      bash scripts/gpu/methods.sh > $OUT/methods.log 2>&1
  else echo "skip methods: $rem s left" >> $OUT/progress.txt; fi
fi
grep -h "Error" multirun/*.log 2>/dev/null | sort | uniq -c | head -20 >> $OUT/progress.txt
cat $OUT/gpu.txt >> $OUT/progress.txt 2>/dev/null; rm -f $OUT/gpu.txt
cat $OUT/progress.txt; cat $OUT/summary.log | tail -30; ls $OUT
