# Two commands: `make demo` and `make test`. Both create .venv/ when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Embedded sample: the synthetic YFCC100M world the demo runs on.
SAMPLE_DIR ?= data/sample
SAMPLE_PHOTOS ?= 20000
SAMPLE_SEED ?= 7

# The Spark pipeline on the sample: jobs in order, through spark-submit (any key=value override).
SPARK_SUBMIT := $(VENV)/bin/spark-submit
SPARK_MASTER ?= local[*]
PIPELINE_JOBS := clean_metadata build_vocab shard_dataset frequency_baselines
PIPELINE_ARGS ?= paths.raw_dir=$(SAMPLE_DIR) shard.image_size=128 shard.rows_per_file=5000 shard.rows_per_row_group=250

.PHONY: install demo test test-fast sample pipeline bench clean train-mcc train-mlc train-her

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	@touch $(STAMP)

sample: install
	$(PY) -m pipeline.synth --out $(SAMPLE_DIR) --photos $(SAMPLE_PHOTOS) --seed $(SAMPLE_SEED) --skip-existing

pipeline: sample
	@for job in $(PIPELINE_JOBS); do \
		echo "pipeline: $$job"; \
		$(SPARK_SUBMIT) --master '$(SPARK_MASTER)' --driver-java-options '-Dlog4j2.configurationFile=conf/log4j2.properties' \
			jobs/$$job.py $(PIPELINE_ARGS) || exit 1; \
	done

# Image models on the sample's shards (CPU, a few minutes each): fit, export embeddings to
# outputs/<model>/embeddings, evaluate; MLflow runs in mlruns.db. Any Hydra override in TRAIN_ARGS.
SHARDS_MANIFEST ?= data/work/shards/manifest.json
TRAIN_ARGS ?=

$(SHARDS_MANIFEST):
	$(MAKE) pipeline

train-mcc train-mlc train-her: train-%: install $(SHARDS_MANIFEST)
	$(PY) -m training.run +experiment=$*_sample $(TRAIN_ARGS)

demo: sample pipeline
	@echo "demo: the synthetic world is in $(SAMPLE_DIR) (see $(SAMPLE_DIR)/world.json)"

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

bench: install
	$(PY) bench/synth_throughput.py

clean:
	rm -rf data outputs mlruns.db mlartifacts spark-warehouse .pytest_cache
