#!/usr/bin/env bash
# Training throughput on one H200 (issue #16): docs/BENCHMARKS.md, "Training throughput". One call, under 9 minutes:
#   bash scripts/gpu/bench_training.sh                          # every default section (BUDGET=480 s of measuring)
#   SECTIONS=full100,compile bash scripts/gpu/bench_training.sh  # a second call: a whole 100-epoch ResNet-34 b128
#                                                                  # training, then the torch.compile rows
# Carry .whl/ (hydra-core, omegaconf, antlr4-python3-runtime wheels: scripts/gpu/README.md). Writes into $OUT:
# bench_training.md (the tables, printed last), bench_training.json (every record), records.jsonl (the records as
# they were measured), log.txt, gpu.txt, command.txt.
# CPU dry run: DEVICE_SETUP=0 PY=.venv/bin/python OUT=/tmp/bt EXTRA="--device cpu --tiny" bash scripts/gpu/bench_training.sh
set -u
OUT=${OUT:-/tmp/bench_training}; PY=${PY:-python3}; BUDGET=${BUDGET:-480}; SECTIONS=${SECTIONS:-default}; EXTRA=${EXTRA:-}
mkdir -p "$OUT"
if [ "${DEVICE_SETUP:-1}" = 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt" 2>&1
  nvidia-smi >> "$OUT/gpu.txt" 2>&1
else
  export PYTHONPATH=${PYTHONPATH:-$PWD/src:$PWD}  # a caller (recipe_r.sh BENCH=1) may have set up /tmp/site
fi
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 TOKENIZERS_PARALLELISM=false
CMD="$PY benchmarks/bench_training.py --out $OUT --budget $BUDGET --sections $SECTIONS $EXTRA"
echo "$CMD" > "$OUT/command.txt"
timeout $((${BUDGET%.*} + 50)) $CMD > "$OUT/log.txt" 2>&1
echo "exit $?" >> "$OUT/log.txt"
[ -f "$OUT/bench_training.md" ] || $PY benchmarks/bench_training.py --out "$OUT" --report $EXTRA > /dev/null 2>> "$OUT/log.txt"
# the tables last (the progress lines, one per configuration, are in log.txt); the targets end them
grep -E "^\[[0-9:]+\] " "$OUT/log.txt" | grep -v ": ok" | tail -n 20
echo ----
if [ -f "$OUT/bench_training.md" ]; then cat "$OUT/bench_training.md"; else tail -n 60 "$OUT/log.txt"; fi
