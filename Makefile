# Two commands: `make demo` and `make test`. Both create .venv/ when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export SPARK_LOCAL_IP ?= 127.0.0.1
# No usage telemetry from MLflow (the UI's banner included): runs and machines are the user's.
export MLFLOW_DISABLE_TELEMETRY ?= true
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
# The parallel (throughput) collector: the jobs are batch work, and G1's concurrent bookkeeping
# cost ~10% of wall time on 2 cores (bench/pipeline_throughput.py).
SPARK_JAVA_OPTS ?= -XX:+UseParallelGC -Dlog4j2.configurationFile=conf/log4j2.properties
PIPELINE_JOBS := clean_metadata build_vocab shard_dataset frequency_baselines
PIPELINE_ARGS ?= paths.raw_dir=$(SAMPLE_DIR) shard.image_size=128 shard.rows_per_file=5000 shard.rows_per_row_group=250

.PHONY: faults install demo test test-fast sample pipeline bench clean train-mcc train-mlc train-her report readme-results ui repeats search-index register serve browser \
	worker-env pipeline-env dist cluster-up cluster-down img2dataset-env tracking-server tracking-server-stop gpu-check

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt -e '.[pipeline,synth,train,serve,test,bench]'
	@touch $(STAMP)

sample: install
	$(PY) -m pipeline.synth --out $(SAMPLE_DIR) --photos $(SAMPLE_PHOTOS) --seed $(SAMPLE_SEED) --skip-existing

# Each job publishes its outputs by a pointer file in each output folder (a new version beside the
# old, nothing renamed); PIPELINE_MARKER is make's own stamp that every job of a run succeeded.
PIPELINE_MARKER := data/work/pipeline.done
pipeline: sample
	@rm -f $(PIPELINE_MARKER)
	@for job in $(PIPELINE_JOBS); do \
		echo "pipeline: $$job"; \
		$(SPARK_SUBMIT) --master '$(SPARK_MASTER)' --driver-java-options '$(SPARK_JAVA_OPTS)' \
			jobs/$$job.py $(PIPELINE_ARGS) || exit 1; \
	done
	@touch $(PIPELINE_MARKER)

# Image models on the sample's shards (CPU, a few minutes each): fit, export embeddings to
# outputs/<model>/embeddings, evaluate; MLflow runs in mlruns.db. Any Hydra override in TRAIN_ARGS.
TRAIN_ARGS ?=
# The CPU sample's settings for an experiment (conf/sample/): image models, LocSens, the
# sigma-schedule LocSens (longer: five models in one run), and the factorised model.
sample_of = $(if $(filter locsens,$1),locsens_sigma,$(if $(filter locsens_%,$1),locsens,$(if $(filter factorised,$1),factorised,image)))
on_sample = +experiment=$1 +sample=$(call sample_of,$1)

train-mcc train-mlc train-her: train-%: install $(PIPELINE_MARKER)
	$(PY) -m training.run $(call on_sample,$*) $(TRAIN_ARGS)

# The demo: every stage on the embedded sample, as file targets: a stage runs when its output marker
# is missing or older than its input's, so a second `make demo` skips finished stages and FORCE=1
# reruns all of them. A failed stage says which and stops, leaving earlier outputs intact: fix it
# and rerun `make demo` to carry on. Seconds per stage: outputs/demo_timings.tsv.
# Every seed of DEMO_SEEDS is a chain: MCC trained with that seed, then each LocSens model of
# DEMO_LOCSENS trained with it on that MCC's export (the report compares them seed by seed). The
# first seed's chain writes to outputs/<model> (what search, the registry's defaults and the report's
# figures read), the others to outputs/seeds/<seed>/<model>. DEMO_ONCE trains on the first chain only
# (LocSens for retrieval, which search serves, and the factorised model). DEMO=full adds LocSens for
# retrieval with raw and zeroed locations to every chain, and MLC, HER, LocSens with dropout and
# zeroed locations for tagging to the first. Training stages
# run DEMO_JOBS at a time, one CPU thread each (two small models train faster side by side than one
# after the other on two threads); their output goes to outputs/logs/<stage>.log.
MLFLOW_PORT ?= 5000
DEMO_VOCAB ?= 2000
DEMO ?= default
DEMO_SEEDS ?= 12345
ifeq ($(DEMO),full)
DEMO_LOCSENS ?= locsens_raw locsens locsens_raw_retrieval locsens_zeroed_retrieval
DEMO_ONCE ?= factorised mlc her locsens_dropout locsens_zeroed
else
DEMO_LOCSENS ?= locsens_raw locsens
DEMO_ONCE ?= locsens_raw_retrieval factorised
endif
DEMO_JOBS ?= 2
DEMO_TRAIN_ARGS := $(if $(filter 1,$(DEMO_JOBS)),,torch_threads=1) $(TRAIN_ARGS)
PRIMARY_SEED := $(firstword $(DEMO_SEEDS))
# A seed's chain: its folder, its settings, its stages' names (mcc, mcc@1, locsens_raw@1, ...).
seed_dir = $(if $(filter $(PRIMARY_SEED),$1),outputs,outputs/seeds/$1)
seed_args = seed=$1 $(if $(filter $(PRIMARY_SEED),$1),,paths.output_dir=$(call seed_dir,$1))
stage_of = $2$(if $(filter $(PRIMARY_SEED),$1),,@$1)
DEMO_STAGES := sample pipeline $(foreach s,$(DEMO_SEEDS),$(call stage_of,$(s),mcc) \
	$(foreach m,$(DEMO_LOCSENS),$(call stage_of,$(s),$(m)))) $(DEMO_ONCE) search register report
DEMO_PIPELINE_ARGS ?= $(PIPELINE_ARGS) vocab.size=$(DEMO_VOCAB)
SAMPLE_MARKER := $(SAMPLE_DIR)/world.json
CHAIN_MARKERS := $(foreach s,$(DEMO_SEEDS),$(foreach m,mcc $(DEMO_LOCSENS),$(call seed_dir,$(s))/$(m)/metrics.json))
ONCE_MARKERS := $(foreach m,$(DEMO_ONCE),outputs/$(m)/metrics.json)
FIRST_CHAIN_MARKERS := $(foreach m,mcc $(DEMO_LOCSENS),outputs/$(m)/metrics.json)
REPORT_MARKER := outputs/report/report.md
SEARCH_MARKER := outputs/search/manifest.json
REGISTER_MARKER := outputs/registered.txt
ifneq ($(FORCE),)
MAKEFLAGS += --always-make
endif

# $(call demo_stage,name,command[,log]): announce "stage i/N", run, time, or say which stage
# failed. With a log file, the command's output goes there (and its tail to the screen on failure).
define demo_stage
	@i=0; for s in $(DEMO_STAGES); do i=$$((i+1)); [ "$$s" = "$(1)" ] && break; done; \
	log="$(3)"; echo ""; echo "==> demo stage $$i/$(words $(DEMO_STAGES)): $(1)$${log:+ (progress: $$log)}"; \
	mkdir -p outputs/logs; start=$$(date +%s); \
	if [ -n "$$log" ]; then ( $(2) ) > "$$log" 2>&1; else ( $(2) ); fi; status=$$?; \
	if [ $$status -ne 0 ]; then echo ""; [ -n "$$log" ] && tail -n 30 "$$log"; \
		echo "demo: stage '$(1)' FAILED ($${log:-messages above}); earlier stages' outputs are intact"; exit 1; fi; \
	secs=$$(( $$(date +%s) - start )); printf '%s\t%s\n' "$(1)" "$$secs" >> outputs/demo_timings.tsv; \
	echo "    $(1) done in $${secs} s"
endef

# Every MLflow run of one make demo is nested under a parent run "demo <time>" in its experiment
# (common/tracking.py); set LOCSENS_RUN_GROUP to name the group yourself.
demo: install
	@LOCSENS_RUN_GROUP="$${LOCSENS_RUN_GROUP:-demo $$(date -u +%Y-%m-%dT%H:%M:%SZ)}" \
		$(MAKE) --no-print-directory -j$(DEMO_JOBS) $(REPORT_MARKER)
	@echo ""; echo "demo: complete. Report: $(REPORT_MARKER); runs: make ui (MLflow UI on http://127.0.0.1:$(MLFLOW_PORT)/#/experiments?workflowType=machine_learning)"
	@echo "seconds per stage (this and earlier runs):"; cat outputs/demo_timings.tsv 2>/dev/null || true
	$(if $(word 2,$(DEMO_SEEDS)),,@echo "one seed per model: make repeats trains seeds $(SEEDS) too and rewrites the report with each row's spread")

$(SAMPLE_MARKER): $(wildcard pipeline/synth/*.py) | install
	$(call demo_stage,sample,$(PY) -m pipeline.synth --out $(SAMPLE_DIR) --photos $(SAMPLE_PHOTOS) --seed $(SAMPLE_SEED))

$(PIPELINE_MARKER): $(SAMPLE_MARKER)
	$(call demo_stage,pipeline,$(MAKE) --no-print-directory pipeline PIPELINE_ARGS="$(DEMO_PIPELINE_ARGS)")

# A seed's chain: MCC on the shards, then the LocSens models on that MCC's export ($(1): the seed).
define demo_chain
$(call seed_dir,$(1))/mcc/metrics.json: $$(PIPELINE_MARKER)
	$$(call demo_stage,$(call stage_of,$(1),mcc),$$(PY) -m training.run $$(call on_sample,mcc) $(call seed_args,$(1)) $$(DEMO_TRAIN_ARGS),outputs/logs/$(call stage_of,$(1),mcc).log)

$(foreach m,$(DEMO_LOCSENS),$(call seed_dir,$(1))/$(m)/metrics.json): $(call seed_dir,$(1))/%/metrics.json: $(call seed_dir,$(1))/mcc/metrics.json
	$$(call demo_stage,$$*$(if $(filter $(PRIMARY_SEED),$(1)),,@$(1)),$$(PY) -m training.run $$(call on_sample,$$*) $(call seed_args,$(1)) $$(DEMO_TRAIN_ARGS),outputs/logs/$$*$(if $(filter $(PRIMARY_SEED),$(1)),,@$(1)).log)
endef
$(foreach s,$(DEMO_SEEDS),$(eval $(call demo_chain,$(s))))

# Models trained on the first chain only: image models on the shards, location models on its MCC.
$(ONCE_MARKERS): outputs/%/metrics.json: $(PIPELINE_MARKER) outputs/mcc/metrics.json
	$(call demo_stage,$*,$(PY) -m training.run $(call on_sample,$*) seed=$(PRIMARY_SEED) $(DEMO_TRAIN_ARGS),outputs/logs/$*.log)

# The search gallery over the test split, with the demo's LocSens models (python -m serving.search,
# settings in conf/serving.yaml).
$(SEARCH_MARKER): $(FIRST_CHAIN_MARKERS) $(ONCE_MARKERS)
	$(call demo_stage,search,$(PY) -m serving.search build)

# The Model Registry: mcc, locsens-tagging, factorised, locsens-retrieval, each best version
# aliased champion (python -m serving.register); what it registered goes to the marker.
$(REGISTER_MARKER): $(CHAIN_MARKERS) $(ONCE_MARKERS) $(SEARCH_MARKER)
	$(call demo_stage,register,$(PY) -m serving.register > $(REGISTER_MARKER).tmp && mv $(REGISTER_MARKER).tmp $(REGISTER_MARKER) && cat $(REGISTER_MARKER))

$(REPORT_MARKER): $(CHAIN_MARKERS) $(ONCE_MARKERS) $(SEARCH_MARKER) $(REGISTER_MARKER)
	$(call demo_stage,report,$(PY) -m training.report > /dev/null)

report: install
	$(PY) -m training.report

# The README's results table: the summary of the report, rewritten from MLflow (after make demo).
readme-results: install
	$(PY) -m training.report report.readme=README.md > /dev/null

# Rebuild the search gallery over the demo's test split (after make demo).
search-index: install
	$(PY) -m serving.search build

# The REST service over the registered models (after make demo), on loopback: POST /tag, GET /photos.
SERVE_PORT ?= 8000
serve: install
	$(PY) -m serving.serve serve.port=$(SERVE_PORT)

# Register the trained models (after make demo or more training runs); the best of each -> champion.
register: install
	$(PY) -m serving.register

# Repeats: more seed chains (MCC, then the LocSens models on it) after `make demo`, then the report,
# which averages every model over its chains and judges the findings seed by seed. Three chains
# (the demo's and two more) do not fit the demo's 25 minutes on two cores, so the demo runs one and
# `make repeats` adds SEEDS (1 2: about as long again); `make repeats SEEDS="3 4"` adds more.
SEEDS ?= 1 2
repeats: install
	$(MAKE) --no-print-directory demo DEMO_SEEDS="$(DEMO_SEEDS) $(SEEDS)"

# The MLflow UI over the project's tracking store, on loopback only.
# MLflow 3's UI opens on its GenAI views unless told the workflow: the URL below opens the runs tables.
ui: install
	@echo "MLflow UI: http://127.0.0.1:$(MLFLOW_PORT)/#/experiments?workflowType=machine_learning"
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath mlruns.db) --host 127.0.0.1 --port $(MLFLOW_PORT)

# What one GPU does with the training code (bench/gpu_check.py, docs/gpu.md): MCC fed by the loader
# against its ceilings, LocSens positives/s, exact evaluation in bf16 and fp32. On a GPU machine it
# also writes the table into docs/gpu.md; on a CPU it prints (slowly: use the --tiny form there).
gpu-check: install
	$(PY) bench/gpu_check.py --doc docs/gpu.md

# A tracking server several processes and nodes share (common/tracking_server.py): PostgreSQL
# (Debian's postgresql package) with its data under $(TRACKING_DIR), and `mlflow server` on it with
# the artifact root beside it, on loopback (TRACKING_HOST=0.0.0.0 to serve other nodes). Prints the
# MLFLOW_TRACKING_URI to export; `make tracking-server-stop` stops both.
TRACKING_DIR ?= outputs/tracking
TRACKING_PORT ?= 5001
TRACKING_PG_PORT ?= 5433
TRACKING_HOST ?= 127.0.0.1

tracking-server: install
	$(PY) -m common.tracking_server start --dir $(TRACKING_DIR) --port $(TRACKING_PORT) --pg-port $(TRACKING_PG_PORT) --host $(TRACKING_HOST)

tracking-server-stop: install
	$(PY) -m common.tracking_server stop --dir $(TRACKING_DIR)

# A Spark standalone cluster on this machine (pipeline/cluster.py): a master and two workers on
# 127.0.0.1 whose Python is $(WORKER_VENV), an environment with the executors' dependencies (the
# `executors` extra) and without this project; the jobs' code reaches them in $(DIST_ZIP)
# (spark-submit --py-files). The cluster tests use the same pieces.
WORKER_VENV := .venv-workers
WORKER_STAMP := $(WORKER_VENV)/.installed-stamp
DIST_ZIP := dist/locsens-pipeline.zip
CLUSTER_DIR ?= .cluster

worker-env: $(WORKER_STAMP)

$(WORKER_STAMP): $(STAMP)
	@test -x $(WORKER_VENV)/bin/python || $(PYTHON) -m venv $(WORKER_VENV)
	$(PY) -m pipeline.cluster requirements | xargs $(WORKER_VENV)/bin/pip install --quiet -c constraints.txt
	@touch $(WORKER_STAMP)

dist: install
	$(PY) -m pipeline.cluster package --out $(DIST_ZIP)

cluster-up: worker-env dist
	$(PY) -m pipeline.cluster up --dir $(CLUSTER_DIR) --worker-python $(WORKER_VENV)/bin/python

cluster-down: install
	$(PY) -m pipeline.cluster down --dir $(CLUSTER_DIR)

# The Spark driver's install alone (pip install '.[pipeline]': no torch, Lightning or faiss), as a
# user's edge node or cluster driver would have it; the cluster test submits every job with it.
PIPELINE_VENV := .venv-pipeline
PIPELINE_STAMP := $(PIPELINE_VENV)/.installed-stamp

pipeline-env: $(PIPELINE_STAMP)

# (a copy of the code, as pip installs it: made again when the jobs' code changes)
$(PIPELINE_STAMP): setup.cfg pyproject.toml constraints.txt $(shell find pipeline common -name '*.py')
	@test -x $(PIPELINE_VENV)/bin/python || $(PYTHON) -m venv $(PIPELINE_VENV)
	$(PIPELINE_VENV)/bin/pip install --quiet -c constraints.txt '.[pipeline]'
	$(PIPELINE_VENV)/bin/pip install --quiet --no-deps --force-reinstall .
	@rm -rf build
	@touch $(PIPELINE_STAMP)

# img2dataset (the image downloader) in its own environment, for the URL-list recipe in the README
# and the end-to-end test that downloads from a loopback server.
I2D_VENV := .venv-img2dataset
I2D_STAMP := $(I2D_VENV)/.installed-stamp

img2dataset-env: $(I2D_STAMP)

$(I2D_STAMP): $(STAMP) constraints-img2dataset.txt
	@test -x $(I2D_VENV)/bin/python || $(PYTHON) -m venv $(I2D_VENV)
	$(PY) -m pipeline.cluster requirements --extra img2dataset | \
		xargs $(I2D_VENV)/bin/pip install --quiet -c constraints-img2dataset.txt
	@touch $(I2D_STAMP)

test: install worker-env pipeline-env img2dataset-env browser
	$(PY) -m pytest

# The fault tests alone (tests marked faults: SIGKILL of Spark jobs, of training and of a DDP
# rank; a tracking server that goes away; corrupt files; fuzzed lines), ending with the fault
# table, which also goes to outputs/faults.md and into docs/faults.md. They run in make test too.
faults: install worker-env
	@mkdir -p outputs
	FAULT_TABLE=outputs/faults.md FAULT_DOC=docs/faults.md $(PY) -m pytest -m faults -q

# The web page's test drives headless Chromium: Debian's chromium and chromium-driver, installed
# when missing (as root, as CI runs); without root that one test is skipped, saying why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "make test: no chromium/chromedriver and not root: the browser test will be skipped" \
		"(apt-get install chromium chromium-driver)"; fi

# The tests that need no whole training, cluster, browser or killed process (a few minutes).
test-fast: install
	$(PY) -m pytest -m "not slow and not faults"

bench: install
	$(PY) bench/synth_throughput.py

clean:
	rm -rf data outputs mlruns.db mlartifacts spark-warehouse .pytest_cache dist
