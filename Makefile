# Two commands do all the set-up on a fresh machine:
#   make run    install, then run the pipeline end to end on Amazon 2014 Musical Instruments
#   make test   install, then run the test suite (real Spark; a few minutes on 2 cores)
# `make help` lists the rest.

VENV     ?= .venv
EXTRAS   ?= cpu,dev
DATASET  ?= amazon2014-musical-instruments
# A local copy of the dataset; when the folder does not exist, `make run` downloads the data instead.
DATA     ?= ../shared/data/amazon2014_musical_instruments_5core
P4R      := $(VENV)/bin/p4r
comma    := ,

.PHONY: help install run test lint bench clean

help:
	@sed -n '1,4p' Makefile | sed 's/^# \{0,1\}//'
	@echo "  make lint   ruff over the code"
	@echo "  make bench  benchmarks/prepare.py: prepare throughput up to 5M reviews (a table; ~10 minutes)"
	@echo "  make clean  remove artifacts/ (not the virtualenv)"
	@echo "Variables: VENV=$(VENV) EXTRAS=$(EXTRAS) DATASET=$(DATASET) DATA=$(DATA)"

install: $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

$(VENV)/.installed-$(subst $(comma),-,$(EXTRAS)): pyproject.toml requirements/constraints.txt scripts/install.sh
	scripts/install.sh --extras $(EXTRAS) --venv $(VENV)
	touch $@

run: install
	@if [ -d "$(DATA)" ]; then \
	  $(P4R) run -d $(DATASET) data.local_dir=$(DATA); \
	else \
	  $(P4R) data fetch $(DATASET) && $(P4R) run -d $(DATASET); \
	fi

# pytest exits 5 when it collects no test: that is a broken suite here, reported as such.
test: install
	@$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(VENV)/bin/python benchmarks/prepare.py --sizes 100k,1M,5M --driver-memory 12g --shuffle-partitions 32

clean:
	rm -rf artifacts
