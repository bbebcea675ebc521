#!/usr/bin/env bash
# Every scorer on CIFAR-10N-5k (experiment=methods_cifar10n_5k), one `run` call per seed (<= 10 min):
#   SEEDS=0 bash scripts/gpu/methods.sh     then SEEDS=1, SEEDS=2 (multirun_summaries/methods_cifar10n_5k.*)
#   SEEDS=0 NOISE=worst bash scripts/gpu/methods.sh    half a seed per call, should one seed overrun the limit
# Publish: unpack each call's $OUT/results.tgz into multirun_summaries/runs/gpu_methods/ (its multirun/gpu_methods_s*
# folders), then python experiments/summarize.py multirun_summaries/runs/gpu_methods/multirun --table
# methods.methods_cifar10n_5k --out multirun_summaries/methods_cifar10n_5k (tests/test_presets_recipes.py reads every
# committed result.json as the pre-recipe layout, model.lr: it must skip these new-layout runs first)
# Worst and aggregate labels, 19 scorers, NJOBS (default 4) jobs side by side on the one GPU. The base model, its
# gradients, the K-FAC factors, TRAK's margins, the checkpoint gradients, the k-fold models and the 20 LDS subset
# models are each trained / gathered once per (noise, seed) under the cache lock and shared by the jobs.
# Expects (git-ignored): .whl/ (hydra-core, omegaconf, antlr4, cleanlab, hydra-joblib-launcher wheels; `make
# gpu-inputs`) and $GRADSIFT_DATA (default .gpu/c5k: {cifar10-partial/cifar10_partial.npz, cifar-n/cifar10n_labels.npz},
# `make gpu-inputs`). Env: SEEDS, NOISE (default worst,aggregate), OUT (results folder), LIMIT (seconds for the whole
# script, default 540), NJOBS, SUBSETS (LDS subsets, default the preset's 20). CPU dry run: DEVICE_SETUP=0 PY=.venv/bin/python NJOBS=1
# GRADSIFT_DATA=../shared/data EXTRA='+trainer.fast_dev_run=true data.device=cpu trainer.precision=32-true
# torch_threads=1 model.scheduler=null data.subset=200 data.val_size=40 data.test_size=60
# attribution.checkpoints=[1] trak_proj_dim=16 paths.cache_dir=/tmp/dry/cache' (EXTRA goes to the run.py call;
# model.scheduler=null because the triangular schedule's warm-up gives fast_dev_run's one step a zero learning rate).
set -u
T0=$(date +%s); LIMIT=${LIMIT:-540}; END=$((T0 + LIMIT))
OUT=${OUT:-/tmp/methods_out}; SEEDS=${SEEDS:-0}; EXTRA=${EXTRA:-}; PY=${PY:-python3}
mkdir -p "$OUT" multirun
if [ "${DEVICE_SETUP:-1}" = 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD GRADSIFT_DATA=${GRADSIFT_DATA:-$PWD/.gpu/c5k}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
fi
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
NOISE=${NOISE:-worst,aggregate}
S=${SEEDS//,/_}
SUFFIX=""; [ "$NOISE" = worst,aggregate ] || SUFFIX="_${NOISE//,/_}"
NAME=gpu_methods_s$S$SUFFIX
ARGS="experiment=methods_cifar10n_5k hydra/launcher=joblib hydra.launcher.n_jobs=${NJOBS:-4} torch_threads=4 \
trainer.enable_progress_bar=false seed=$SEEDS data.noise=$NOISE ${SUBSETS:+metric.n_subsets=$SUBSETS}"
echo "python3 experiments/run.py -m $ARGS hydra.sweep.dir=multirun/$NAME" > $OUT/command.txt
rem=$((END - $(date +%s) - 30))
timeout $rem $PY experiments/run.py -m $ARGS $EXTRA hydra.sweep.dir=multirun/$NAME \
  hydra.callbacks.summary.out_dir=multirun/$NAME/summary > multirun/$NAME.log 2>&1
echo "$NAME exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/progress.txt
$PY experiments/summarize.py multirun/$NAME --table methods.methods_cifar10n_5k --out $OUT/methods_cifar10n_5k_s$S$SUFFIX \
  > $OUT/summary.log 2>&1
cat $OUT/gpu.txt >> $OUT/progress.txt 2>/dev/null; rm -f $OUT/gpu.txt
tail -40 multirun/$NAME.log > multirun/$NAME.log.tail
tar czf $OUT/results.tgz multirun/$NAME.log.tail $(find multirun/$NAME -name result.json -o -name multirun.yaml 2>/dev/null) 2>/dev/null
grep -h "Error" multirun/$NAME.log 2>/dev/null | sort | uniq -c | head -20 >> $OUT/progress.txt
cat $OUT/progress.txt; ls $OUT
