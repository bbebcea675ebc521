#!/usr/bin/env bash
# GLUE with MiniLM (or MPNet: MODEL=mpnet_base_lora) + LoRA on one GPU: dropout Table 1 (mislabel-detection AUC,
# + Table 9 scoring seconds) and OGA Figure 3 (keep 70%, per-epoch test accuracy). Five Hydra sweeps (basic
# launcher: every job in one process per sweep) run side by side on the one GPU, each with 3 CPU threads; then the
# summaries are written into $OUT.
#   bash .gpu/run_glue.sh [all|detection|selection]
# Env: OUT (results folder), BUDGET (seconds per sweep), EXTRA (more overrides for every job, e.g. tiny sizes for a
# CPU dry run), SEEDS (default 0,1,2), DEVICE_SETUP=0 skips the wheel install (CPU dry run in .venv), MODEL (model
# config, default minilm_lora), MODEL_DIR (its bf16 folder, default .cache/models/minilm_bf16; for MPNet the folder
# scripts/gpu/assemble_model.py printed), MODEL_LABEL (model name in plot titles).
set -u
PART=${1:-all}
OUT=${OUT:-/tmp/glue_out}
W=${W:-/tmp/glue_work}  # everything is written here; $OUT gets results.tgz and a few files (8 come back at most)
BUDGET=${BUDGET:-400}
EXTRA=${EXTRA:-}
SEEDS=${SEEDS:-0,1,2}
PY=${PY:-python3}
mkdir -p "$OUT" "$W"
if [ "${DEVICE_SETUP:-1}" = 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$W/gpu.txt"
fi
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
THREADS=${THREADS:-3}  # 5 sweeps x 3 threads on 16 cores
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS TOKENIZERS_PARALLELISM=false
export GRADSIFT_CACHE=${GRADSIFT_CACHE:-/tmp/gradsift_cache}
# job dirs named by number only: override values with "/" (the model path) would nest the job folders
MODEL=${MODEL:-minilm_lora}
MODEL_DIR=${MODEL_DIR:-.cache/models/minilm_bf16}
MODEL_LABEL=${MODEL_LABEL:-MiniLM-L6}
COMMON="paths.data_dir=.gpu model=$MODEL model.model=$MODEL_DIR hydra.callbacks.summary.out_dir=$W/cb hydra.sweep.subdir=\${hydra.job.num}"
DET_SCORERS=${DET_SCORERS:-orig,datainf,lissa,tracin,gaussian_influence,dropout_influence,iforest,l1,l2}
SEL_SCORERS=${SEL_SCORERS:-random,tracin,datainf,iforest,l2}
T0=$(date +%s)

sweep() {  # name experiment overrides...
  local name=$1; shift
  echo "python experiments/run.py -m $* $COMMON hydra.sweep.dir=multirun/$name $EXTRA" >> "$W/commands.txt"
  timeout "$BUDGET" $PY experiments/run.py -m "$@" $COMMON hydra.sweep.dir=multirun/$name $EXTRA \
    > "$W/$name.log" 2>&1
  echo "$name exit $? after $(( $(date +%s) - T0 )) s" >> "$W/status.txt"
}

if [ "$PART" = all ] || [ "$PART" = detection ]; then
  sweep glue_det_sst2 experiment=dropout_table1_glue_detection seed=$SEEDS data=glue_sst2 scorer=$DET_SCORERS &
  sweep glue_det_mrpc_rte experiment=dropout_table1_glue_detection seed=$SEEDS data=glue_mrpc,glue_rte \
    scorer=$DET_SCORERS &
fi
if [ "$PART" = all ] || [ "$PART" = selection ]; then
  if [ "$SEEDS" = 0,1,2 ]; then  # three processes of about equal length (SST-2 trains twice as long as MRPC)
    sweep glue_sel_sst2 experiment=figure3_glue_selection seed=0,1 data=glue_sst2 scorer=$SEL_SCORERS &
    sweep glue_sel_mrpc experiment=figure3_glue_selection seed=0,1 data=glue_mrpc scorer=$SEL_SCORERS &
    sweep glue_sel_seed2 experiment=figure3_glue_selection seed=2 data=glue_sst2,glue_mrpc scorer=$SEL_SCORERS &
  else
    sweep glue_sel_sst2 experiment=figure3_glue_selection seed=$SEEDS data=glue_sst2 scorer=$SEL_SCORERS &
    sweep glue_sel_mrpc experiment=figure3_glue_selection seed=$SEEDS data=glue_mrpc scorer=$SEL_SCORERS &
  fi
fi
wait
cat "$W/status.txt"

# summaries (paper beside ours) and the Figure-3 curves
DET="multirun/glue_det_sst2 multirun/glue_det_mrpc_rte"
SEL="multirun/glue_sel_sst2 multirun/glue_sel_mrpc $(ls -d multirun/glue_sel_seed2 2>/dev/null)"
{ $PY experiments/summarize.py $DET --table dropout.table1_mislabel_auc_glue --out "$W/dropout_table1_glue"
  $PY experiments/summarize.py $DET --table dropout.table9_ihvp_seconds_glue --out "$W/dropout_table9_glue_seconds"
  $PY experiments/summarize.py $SEL --table oga.figure3_glue_data_selection --out "$W/figure3_glue_selection_last_epoch"
  $PY -m gradsift.viz.curves $SEL --out "$W/figure3_glue_selection" \
    --title "OGA Figure 3 analog: $MODEL_LABEL + LoRA r=4, keep 70%, mean ± std over seeds"
} > "$W/summary.log" 2>&1
tail -3 "$W/summary.log"
# result.json files, logs and the summary files in one archive
rm -rf "$W/cb"
tar czf "$OUT/results.tgz" $(find $DET $SEL -name result.json 2>/dev/null) "$W" 2>/dev/null
for f in status.txt dropout_table1_glue.md dropout_table1_glue.png figure3_glue_selection.png \
         figure3_glue_selection_last_epoch.md dropout_table9_glue_seconds.md; do cp "$W/$f" "$OUT/" 2>/dev/null; done
ls "$OUT"; sed -n '/^|/p' "$W/dropout_table1_glue.md" 2>/dev/null | head -40
sed -n '/^|/p' "$W/figure3_glue_selection_last_epoch.md" 2>/dev/null
echo "total $(( $(date +%s) - T0 )) s"
