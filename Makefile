# pediface: the two commands of the README, and what they need.
#   make demo   set up, then send a real head MRI through the embedded gateway and worker
#   make test   set up (including dcmtk and a running Redis), then run the whole test suite

PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps redis demo run test test-fast bench lint clean

setup: $(VENV)/.installed

# torch first, from the CPU build pinned in constraints.txt: a bare `pip install nnunetv2`
# would pull a multi-gigabyte CUDA torch through torchvision.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[worker,test]"
	touch $@

# dcmtk: the DICOM peers of the tests (storescu, storescp, echoscu); openssl for the TLS test;
# docker-compose (the client only) to validate docker-compose.yml; redis-server for the fault tests.
# dicom3tools: dciodvfy checks de-identified output against the IODs.
# orthanc: a real PACS and research archive for the end-to-end test and the ingest benchmark.
# chromium: the headless browser of the web console test.
SYSTEM_TOOLS := storescu storescp echoscu openssl docker-compose redis-server dciodvfy Orthanc chromium
system-deps:
	@missing=0; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	[ $$missing = 0 ] || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    dcmtk openssl docker-compose redis-server dicom3tools orthanc chromium; }

# The Redis end-to-end test needs a server on 127.0.0.1:6379 (the embedded default does not).
redis:
	@$(PY) -c "import socket; socket.create_connection(('127.0.0.1', 6379), 2)" 2>/dev/null || \
	  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no

demo: setup
	$(BIN)/pediface demo

run: setup
	$(BIN)/pediface run

test: setup system-deps redis
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not e2e"

bench: setup system-deps
	$(BIN)/pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.volume
	$(BIN)/python -m bench.deid

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache pediface-data
