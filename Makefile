# pediface: the two commands of the README, and what they need.
#   make demo   set up, then send a real head MRI through the embedded gateway and worker
#   make test   set up (including dcmtk and a running Redis), then run the whole test suite

PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup templates system-deps redis bids-validator demo run test test-fast bench soak scaleout lint clean

setup: $(VENV)/.installed templates

# The template images (pydeface's, mridefacer's) are other projects' data, not kept in git: copied
# from ../shared/data/templates or, for pydeface's, taken from its wheel; checked against SHA256SUMS.
templates: $(VENV)/.installed
	@$(BIN)/python models/install_templates.py

# torch first, from the CPU build pinned in constraints.txt: a bare `pip install nnunetv2`
# would pull a multi-gigabyte CUDA torch through torchvision.
# Quiet (make demo is a person's first command): one line, then pip's own errors only.
$(VENV)/.installed: pyproject.toml constraints.txt
	@echo "pediface: setting up $(VENV) (Python 3.11, CPU torch 2.13.0, the project); minutes the first time"
	@$(PY) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip
	@$(BIN)/pip install --quiet torch==2.13.0
	@$(BIN)/pip install --quiet -c constraints.txt -e ".[worker,test]"
	@touch $@

# dcmtk: the DICOM peers of the tests (storescu, storescp, echoscu); openssl for the TLS test;
# docker-compose (the client only) to validate docker-compose.yml; redis-server for the fault tests.
# dicom3tools: dciodvfy checks de-identified output against the IODs.
# orthanc: a real PACS and research archive for the end-to-end test and the ingest benchmark.
# chromium: the headless browser of the web console test.
# nodejs and npm: the BIDS validator (below) that checks pediface's BIDS derivatives.
SYSTEM_TOOLS := storescu storescp echoscu openssl docker-compose redis-server dciodvfy Orthanc chromium npm
system-deps:
	@missing=0; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	[ $$missing = 0 ] || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    dcmtk openssl docker-compose redis-server dicom3tools orthanc chromium \
	    $$(command -v npm >/dev/null || echo nodejs npm); }

# The official BIDS validator (Node.js, from npm) into .tools/, for the BIDS test of `pediface deface`.
BIDS_VALIDATOR := .tools/node_modules/.bin/bids-validator
bids-validator: $(BIDS_VALIDATOR)
$(BIDS_VALIDATOR):
	npm install --prefix .tools --no-audit --no-fund --loglevel=error bids-validator@1.15.0

# The Redis end-to-end test needs a server on 127.0.0.1:6379 (the embedded default does not).
redis:
	@$(PY) -c "import socket; socket.create_connection(('127.0.0.1', 6379), 2)" 2>/dev/null || \
	  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no

demo: setup
	@$(BIN)/pediface demo

run: setup
	$(BIN)/pediface run

# Three workers on two cores: the end-to-end tests mostly wait on real processes (quiet periods, kills,
# restarts), so they overlap the CPU-bound unit tests; work stealing evens out the long ones.
# glibc keeps freed memory for reuse (arrays up to 32 MB from its heap, the heap never trimmed): on a
# virtual machine the first touch of a page costs far more than on bare metal (144 MB: 0.6 s the first
# time, 0.04 s reused), and the suite allocates and frees large arrays all the time: 5 % less CPU over
# the suite (1,126 -> 1,067 CPU s), 12 % on the QC and template-masker tests.
TEST_MALLOC := MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456
test: setup system-deps redis bids-validator
	$(TEST_MALLOC) $(BIN)/pytest -n 3 --dist worksteal --durations=10

test-fast: setup
	$(BIN)/pytest -m "not e2e"

bench: setup system-deps
	$(BIN)/pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.echo
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.masker --backends
	$(BIN)/python -m bench.volume
	$(BIN)/python -m bench.facecheck
	$(BIN)/python -m bench.deid
	$(BIN)/python -m bench.batch

# Real parts under load and kill -9 (bench/soak.py): 30 minutes by default, MINUTES=5 make soak for less.
MINUTES ?= 30
soak: setup system-deps
	$(BIN)/python -m bench.soak --minutes $(MINUTES) --write-docs

# Series per hour with 1, 2 and 3 workers on one Redis broker (bench/scaleout.py).
scaleout: setup system-deps
	$(BIN)/python -m bench.scaleout --write-docs

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .tools .pytest_cache pediface-data
