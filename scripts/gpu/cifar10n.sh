#!/usr/bin/env bash
# CIFAR-10N (JPEG q75, all 50k) GPU runs, one `run` call each (<= 10 min):
#   bash scripts/gpu/cifar10n.sh table2             # OGA Table 2 analog, SEEDS (default 0): worst + aggregate, 7 methods
#   SEEDS=1 bash scripts/gpu/cifar10n.sh table2     # one more seed per call (a seed is ~6.5 min on one H100)
#   bash scripts/gpu/cifar10n.sh extras             # Table 9 (ResNet-18, CE vs iForest) + Table 5 (L2 budget sweep on worst)
#   bash scripts/gpu/cifar10n.sh dropout            # dropout Table 2 (ResNet-9 on 10k images) + the Figure 2 gallery
#   bash scripts/gpu/cifar10n.sh clean              # clean-label test accuracy of the recipes (ResNet-34 and -18,
#                                                   # trainer=fast's 18 epochs and the 10 of the tables), no trimming
# Env: SEEDS (Hydra list, e.g. 0 or 1,2), OUT (results folder), LIMIT (seconds for the whole script, default 540),
# NJOBS (joblib jobs per sweep). Its defaults follow the side-by-side measurement (docs/BENCHMARKS.md, "Training
# throughput", ResNet-34 b128 on an H200): eager trainings gain from sharing the GPU (4 processes 2.86x one, 8 no
# more), so the eager modes run 4 trainings at a time in all; a CUDA-graph training keeps the GPU busy alone (2-8
# processes 1.02-1.03x one), so graph sweeps run one job at a time. Table 2 / 5 / 9 and clean train eagerly: their
# OneCycleLR changes the momentum every step, which a CUDA graph cannot replay. Memory is no limit: a training
# takes 1.0 GiB allocated at b128, 2.4 GiB at b512 (1.7-1.9 GiB per process in nvidia-smi at b128).
# CPU dry run: DEVICE_SETUP=0 PY=.venv/bin/python NJOBS=1 GRADSIFT_DATA=../shared/data
# EXTRA='+trainer.fast_dev_run=true data.device=cpu trainer.precision=32-true torch_threads=1 data.subset=600
# data.val_size=50 data.test_size=100 paths.cache_dir=/tmp/dry/cache' (EXTRA goes to every run.py call).
set -u
MODE=${1:-table2}
T0=$(date +%s); LIMIT=${LIMIT:-540}; END=$((T0 + LIMIT))
OUT=${OUT:-/tmp/cifar_out}; SEEDS=${SEEDS:-0}; EXTRA=${EXTRA:-}; PY=${PY:-python3}
mkdir -p "$OUT" multirun
if [ "${DEVICE_SETUP:-1}" = 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD GRADSIFT_DATA=$PWD/.gpu/c10
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
fi
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
$PY -c "from gradsift.data.cifar_n import read_jpeg_archive as r; import os; d=r(os.environ['GRADSIFT_DATA'] + '/cifar10-jpeg/cifar10_jpeg.npz', '.cache/gradsift/cifar'); print({k: v.shape for k, v in d.items()})"
echo "decode done $(( $(date +%s) - T0 )) s" | tee -a $OUT/progress.txt
J="hydra/launcher=joblib torch_threads=4 trainer.enable_progress_bar=false"  # + hydra.launcher.n_jobs per sweep
# the 10-epoch recipe of the committed Table 2 run (docs/results/cifar.md)
R="data.source=jpeg trainer.max_epochs=10 data.batch_size=512 data.eval_batch_size=1024 model.optimizer.lr=0.4"
: > $OUT/command.txt
sweep() {  # name overrides... : one Hydra multirun, cut at the script's time limit
  local name=$1; shift
  local rem=$((END - $(date +%s))); [ $rem -gt 30 ] || { echo "skip $name: no time left" >> $OUT/progress.txt; return 0; }
  echo "python3 experiments/run.py -m $* hydra.sweep.dir=multirun/$name" >> $OUT/command.txt
  mkdir -p "$(dirname multirun/$name.log)"
  timeout $rem $PY experiments/run.py -m "$@" $EXTRA hydra.sweep.dir=multirun/$name hydra.callbacks.summary.out_dir=multirun/$name/summary >> multirun/$name.log 2>&1
  echo "$name exit $? at $(( $(date +%s) - T0 )) s" >> $OUT/progress.txt
}
case "$MODE" in
  table2)
    # eager (OneCycleLR): 4 side by side
    S=${SEEDS//,/_}
    sweep gpu_table2_s$S experiment=table2_cifar10n_fast $J hydra.launcher.n_jobs=${NJOBS:-4} $R seed=$SEEDS data.noise=worst,aggregate \
      scorer=iforest,l2,l1,tracin,datainf,normalized_margin,self_confidence
    $PY experiments/summarize.py multirun/gpu_table2_s$S --table oga.table2_cifar_n_resnet34 \
      --out $OUT/table2_cifar10n_jpeg_resnet34_s$S > $OUT/summary.log 2>&1
    DIRS="multirun/gpu_table2_s$S" ;;
  extras)
    # two sweeps side by side: ResNet-18 (Table 9: Cross Entropy = the untrimmed base, vs Outlier Gradient iForest)
    # and the L2 budget sweep on worst (Table 5; 5% is in Table 2); eager (OneCycleLR), 2 x 2 trainings at a time
    sweep gpu_table9 experiment=table9_resnet18 $J hydra.launcher.n_jobs=${NJOBS:-2} $R seed=$SEEDS \
      data.noise=worst,aggregate scorer=iforest &
    sweep gpu_table5 experiment=table5_budget_cifar10n_fast $J hydra.launcher.n_jobs=${NJOBS:-2} $R seed=$SEEDS \
      data.noise=worst scorer=l2 trim.budget=0.025,0.075,0.1,0.125 &
    wait
    $PY experiments/summarize.py multirun/gpu_table9 --table oga.table9_resnet18 --out $OUT/table9_resnet18_cifar10n_jpeg > $OUT/summary.log 2>&1
    $PY experiments/summarize.py multirun/gpu_table5 --table oga.table5_trim_budget_cifar10n --out $OUT/table5_budget_cifar10n_jpeg >> $OUT/summary.log 2>&1
    DIRS="multirun/gpu_table9 multirun/gpu_table5" ;;
  dropout)
    # OGA Figure 2 gallery from the Table 2 setting (worst labels, L2), detection only, in the background
    G="$PY experiments/run.py experiment=table2_cifar10n_fast $R seed=0 data.noise=worst scorer=l2 retrain=false gallery=32 trainer.enable_progress_bar=false hydra.run.dir=multirun/gallery_worst_l2 $EXTRA"
    echo "$G" >> $OUT/command.txt
    ( $G > multirun/gallery.log 2>&1; cp multirun/gallery_worst_l2/gallery.png $OUT/figure2_gallery_cifar10n_worst_l2.png ) &
    # two sweeps side by side (the base model is trained once, under the cache lock): one after another, six
    # sweeps took ~620 s at seed 0 and the 540 s limit cut the last two; side by side two took 135 s (eager, 4 jobs
    # each). The preset now trains with a CUDA graph (model.cuda_graph=true, fused SGD), so each sweep runs its jobs
    # one at a time: at most 2 trainings share the GPU (not yet run on the GPU this way)
    B="experiment=dropout_table2_resnet9 $J hydra.launcher.n_jobs=${NJOBS:-1} data.source=jpeg seed=$SEEDS trim.budget=0.05,0.1,0.3,0.5"
    sweep gpu_dt2/dropout $B method=Dropout compressor=dropout compressor.r=64 &
    sweep gpu_dt2/tracin $B method=Hessian-Free scorer=tracin compressor.r=4096 &
    wait
    sweep gpu_dt2/gaussian $B method=Gaussian compressor=gaussian compressor.r=64 &
    sweep gpu_dt2/datainf $B method=DataInf scorer=datainf compressor.r=4096 &
    wait
    sweep gpu_dt2/logra $B method=LOGRA compressor=logra compressor.r=4096 scorer=orig &
    sweep gpu_dt2/random $B method=Random scorer=random &
    wait
    $PY experiments/summarize.py multirun/gpu_dt2 --table dropout.table2_resnet9_cifar10_retrain --out $OUT/dropout_table2_resnet9 > $OUT/summary.log 2>&1
    DIRS="multirun/gpu_dt2 multirun/gallery_worst_l2" ;;
  clean)
    # the untrimmed model on the clean CIFAR-10 labels (detection-only: retrain=false; the L2 scores are a by-product);
    # eager (OneCycleLR), 2 x 2 trainings at a time
    C="$J hydra.launcher.n_jobs=${NJOBS:-2} data.source=jpeg data.batch_size=512 data.eval_batch_size=1024 model.optimizer.lr=0.4 seed=$SEEDS data.noise=clean scorer=l2 retrain=false"
    sweep gpu_clean/resnet34 experiment=table2_cifar10n_fast $C trainer.max_epochs=10,18 &
    sweep gpu_clean/resnet18 experiment=table9_resnet18 $C trainer.max_epochs=10,18 &
    wait
    $PY experiments/summarize.py multirun/gpu_clean --table oga.recipe_clean_label_accuracy --out $OUT/clean_label_accuracy_cifar10_jpeg > $OUT/summary.log 2>&1
    DIRS="multirun/gpu_clean" ;;
  *) echo "mode must be table2, extras, dropout or clean, got $MODE" >&2; exit 2 ;;
esac
cat $OUT/gpu.txt >> $OUT/progress.txt 2>/dev/null; rm -f $OUT/gpu.txt
LOGS=$(find multirun -maxdepth 2 -name '*.log' 2>/dev/null)  # sweep logs sit beside their (nested) sweep folders
for f in $LOGS; do tail -30 "$f" > "$f.tail"; done
tar czf $OUT/results.tgz $(for f in $LOGS; do echo "$f.tail"; done) $(find $DIRS -name result.json -o -name multirun.yaml 2>/dev/null) 2>/dev/null
grep -h "Error" $LOGS 2>/dev/null | sort | uniq -c | head -20 >> $OUT/progress.txt
cat $OUT/progress.txt; ls $OUT
