#!/usr/bin/env bash
# CIFAR-10N (JPEG q75, all 50k) GPU runs. MODE=table2 | dropout
set -u
MODE=${1:-table2}
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 GRADSIFT_DATA=$PWD/.gpu/c10
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "from gradsift.data.cifar_n import read_jpeg_archive as r; d=r('.gpu/c10/cifar10-jpeg/cifar10_jpeg.npz', '.cache/gradsift/cifar'); print({k: v.shape for k, v in d.items()})"
echo "decode done $(( $(date +%s) - T0 )) s" | tee $OUT/progress.txt
mkdir -p multirun
J="hydra/launcher=joblib hydra.launcher.n_jobs=4 torch_threads=4 trainer.enable_progress_bar=false"
if [ "$MODE" = table2 ]; then
  CMD="python3 experiments/run.py -m experiment=table2_cifar10n_fast $J data.source=jpeg trainer.max_epochs=10 \
 data.batch_size=512 data.eval_batch_size=1024 model.lr=0.4 seed=0 data.noise=worst,aggregate \
 scorer=iforest,l2,l1,tracin,datainf,normalized_margin,self_confidence hydra.sweep.dir=multirun/gpu_table2"
  echo "$CMD" > $OUT/command.txt
  timeout 480 $CMD > $OUT/sweep.log 2>&1; echo "sweep exit $? at $(( $(date +%s) - T0 )) s" >> $OUT/progress.txt
  python3 experiments/summarize.py multirun/gpu_table2 --table oga.table2_cifar_n_resnet34 --out $OUT/table2_cifar10n_jpeg_resnet34 > $OUT/summary.log 2>&1
  tar czf $OUT/results.tgz $(find multirun/gpu_table2 -name result.json -o -name multirun.yaml) 2>/dev/null
else
  # OGA Figure 2 gallery from the Table 2 setting (worst labels, L2), detection only, in the background
  G="python3 experiments/run.py experiment=table2_cifar10n_fast data.source=jpeg trainer.max_epochs=10 data.batch_size=512 data.eval_batch_size=1024 model.lr=0.4 seed=0 data.noise=worst scorer=l2 retrain=false gallery=32 trainer.enable_progress_bar=false hydra.run.dir=multirun/gallery_worst_l2"
  echo "$G" > $OUT/gallery_command.txt
  ( $G > multirun/gallery.log 2>&1; cp multirun/gallery_worst_l2/gallery.png $OUT/figure2_gallery_cifar10n_worst_l2.png ) &
  B="experiment=dropout_table2_resnet9 $J hydra.launcher.n_jobs=6 data.source=jpeg seed=0 trim.budget=0.05,0.1,0.3,0.5"
  : > $OUT/command.txt; echo "$G" >> $OUT/command.txt
  END=$((T0 + 530))
  run() { rem=$((END - $(date +%s))); [ $rem -gt 30 ] || return 0
          echo "python3 experiments/run.py -m $B $*" >> $OUT/command.txt
          timeout $rem python3 experiments/run.py -m $B "$@" >> multirun/sweep.log 2>&1; echo "exit $? at $(( $(date +%s) - T0 )) s: $*" >> $OUT/progress.txt; }
  run method=Dropout compressor=dropout compressor.r=64 hydra.sweep.dir=multirun/gpu_dt2/dropout
  run method=Gaussian compressor=gaussian compressor.r=64 hydra.sweep.dir=multirun/gpu_dt2/gaussian
  run method=LOGRA compressor=logra compressor.r=4096 scorer=orig hydra.sweep.dir=multirun/gpu_dt2/logra
  run method=Random scorer=random hydra.sweep.dir=multirun/gpu_dt2/random
  run method=Hessian-Free scorer=tracin compressor.r=4096 hydra.sweep.dir=multirun/gpu_dt2/tracin
  run method=DataInf scorer=datainf compressor.r=4096 hydra.sweep.dir=multirun/gpu_dt2/datainf
  wait
  cat $OUT/gpu.txt >> $OUT/progress.txt; rm -f $OUT/gpu.txt $OUT/gallery_command.txt
  tail -50 multirun/sweep.log > multirun/sweep_tail.log
  tar czf $OUT/results.tgz multirun/sweep_tail.log multirun/gallery.log $(find multirun/gpu_dt2 multirun/gallery_worst_l2 -name result.json -o -name multirun.yaml) 2>/dev/null
fi
grep -h "Trainer.fit\|Error\|error" $OUT/sweep.log multirun/sweep.log | sort | uniq -c | head -20 >> $OUT/progress.txt
tail -3 $OUT/sweep.log; cat $OUT/progress.txt; ls $OUT
