#!/usr/bin/env bash
# OGA Figure 2 on the GPU: top-scored CIFAR-10N `worst` training images (ResNet-34, 10 epochs, last-layer L2 scores).
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 GRADSIFT_DATA=$PWD/.gpu/c10
G="python3 experiments/run.py experiment=table2_cifar10n_fast data.source=jpeg trainer.max_epochs=10 data.batch_size=512 data.eval_batch_size=1024 model.optimizer.lr=0.4 seed=0 data.noise=worst scorer=l2 retrain=false gallery=32 trainer.enable_progress_bar=false hydra.run.dir=multirun/gallery_worst_l2"
echo "$G" > $OUT/command.txt
nvidia-smi --query-gpu=name --format=csv,noheader >> $OUT/command.txt
timeout 150 $G > $OUT/run.log 2>&1; echo "exit $? after $(( $(date +%s) - T0 )) s" >> $OUT/command.txt
cp multirun/gallery_worst_l2/gallery.png $OUT/figure2_gallery_cifar10n_worst_l2.png
cp multirun/gallery_worst_l2/result.json $OUT/result.json
head -40 multirun/gallery_worst_l2/flagged.csv > $OUT/flagged_head.csv
tail -25 $OUT/run.log; cat $OUT/command.txt
