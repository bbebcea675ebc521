#!/usr/bin/env bash
# Gradient-gathering benchmark on the GPU, rows (a)-(f) incl. dattri 0.3.0 (helper C, issue 4).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/helperC/dattri_whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import torch, transformers, scipy, tqdm, yaml, dattri, importlib.metadata as m; print('torch', torch.__version__, 'transformers', transformers.__version__, 'scipy', scipy.__version__, 'dattri', m.version('dattri'))" 2>&1 | tee -a $OUT/gpu.txt
(which gcc cc; nproc) >> $OUT/gpu.txt 2>&1
CMD="python3 benchmarks/bench_gradients.py --device cuda --model gpt2-small --seq-len 256 --batch-size 32 --r 4096 --n-batches 4 --naive-samples 32"
echo "$CMD" > $OUT/command.txt
timeout 255 $CMD > $OUT/bench.md 2> $OUT/bench.err
echo "exit $?" >> $OUT/bench.err
tr '\r' '\n' < $OUT/bench.err | grep -v "it/s\]\|s/it\]\|^\s*$" | tail -60 > $OUT/bench_err_tail.txt
rm -f $OUT/bench.err
cat $OUT/bench.md; echo ----; grep -v "^ROW" $OUT/bench_err_tail.txt | tail -25
