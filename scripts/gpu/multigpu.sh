#!/usr/bin/env bash
# Several GPUs of one host (issue #21): docs/BENCHMARKS.md, "Several GPUs". Per-sample gradient gathering through
# the Attributor's DDP path (NCCL) on N = 1, 2, 4, 8 ranks (N above the visible GPUs is recorded as skipped), GPT-2
# small (random weights, seq 256, dropout r=4096) and ResNet-34 last layer, every merged store checked row for row
# against N = 1. One call on nvidia-h200-x2/x4/x8, under 9 minutes:
#   bash scripts/gpu/multigpu.sh                      # RANKS=1,2,4,8 MODELS=gpt2,resnet34
#   RANKS=1,2 GPT2_SAMPLES=1024 bash scripts/gpu/multigpu.sh   # a smaller call
# Carry .whl/ (hydra-core, omegaconf, antlr4-python3-runtime wheels, as bench_training.sh: the image has no
# hydra/omegaconf). torch and transformers come from the image; CausalLM also imports peft and torchmetrics: if
# the image lacks them, carry the `make wheelhouse` set instead (not checked on the device). NVLink multicast stays off: the benchmark sets
# NCCL_NVLS_ENABLE=0 (and the PyTorch/NVSHMEM switches) in every rank's environment, as the device notes ask.
# Writes into $OUT: bench_multigpu.md (the table, printed last), bench_multigpu.json, log.txt, gpu.txt, command.txt;
# the gradient stores go to $STORES (not $OUT: ResNet-34 at 50k samples is 1 GiB per N).
# CPU dry run (gloo, 2 processes; a code-path check, not a speed number):
#   DEVICE_SETUP=0 PY=.venv/bin/python OUT=/tmp/mg RANKS=1,2 EXTRA="--device cpu --tiny" bash scripts/gpu/multigpu.sh
set -u
OUT=${OUT:-/tmp/bench_multigpu}; PY=${PY:-python3}; LIMIT=${LIMIT:-540}; EXTRA=${EXTRA:-}
RANKS=${RANKS:-1,2,4,8}; MODELS=${MODELS:-gpt2,resnet34}; GPT2_SAMPLES=${GPT2_SAMPLES:-2048}
RESNET_SAMPLES=${RESNET_SAMPLES:-50000}; STORES=${STORES:-/tmp/bench_multigpu_stores}
mkdir -p "$OUT"
if [ "${DEVICE_SETUP:-1}" = 1 ]; then
  if ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src:$PWD
  else
    export PYTHONPATH=$PWD/src:$PWD
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt" 2>&1
  nvidia-smi topo -m >> "$OUT/gpu.txt" 2>&1
else
  export PYTHONPATH=${PYTHONPATH:-$PWD/src:$PWD}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # see the header
CMD="$PY benchmarks/bench_multigpu.py --out $OUT --store-root $STORES --ranks $RANKS --models $MODELS --gpt2-samples $GPT2_SAMPLES --resnet-samples $RESNET_SAMPLES $EXTRA"
echo "$CMD" > "$OUT/command.txt"
timeout "$LIMIT" $CMD > "$OUT/log.txt" 2>&1
echo "exit $?" >> "$OUT/log.txt"
rm -rf "$STORES"
grep -E '^\{' "$OUT/log.txt" | tail -n 12 | cut -c1-300   # the records as they were measured
echo ----
if [ -f "$OUT/bench_multigpu.md" ]; then cat "$OUT/bench_multigpu.md"; else tail -n 60 "$OUT/log.txt"; fi
tail -n 1 "$OUT/log.txt"
