# renalflow: one Makefile for people and CI. `make demo` and `make test` need only Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9
# Installs compile bytecode up front: Prefect and TensorFlow import several times faster.
UV_INSTALL := $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode --quiet

.PHONY: demo test lint format bench bench-ingest bench-cpu-demo clean help browser pacs

help:
	@echo "make demo   - set up .venv and run the pipeline on a synthetic archive"
	@echo "make test   - set up .venv with dev tools and run the whole test suite"
	@echo "make lint   - ruff and mypy on tasks/ and flows/"
	@echo "make bench  - benchmark scripts (figures go to BENCHMARKS.md)"

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.runtime: $(BIN)/uv requirements.lock pyproject.toml
	$(UV_INSTALL) -r requirements.lock
	$(UV_INSTALL) --no-deps -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.lock
	$(UV_INSTALL) -r requirements-dev.lock
	@touch $@

demo: $(VENV)/.runtime
	$(BIN)/renalflow demo

test: lint browser pacs
	$(BIN)/python -m pytest

# The web page is tested in a real headless browser: Debian's chromium and its driver
# (from the package registry, nothing downloaded at test time).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; }

# PACS sources are tested against a real PACS: Debian's Orthanc and its DICOMweb plugin,
# started by the tests on loopback; the SR written back is checked with dciodvfy
# (Debian's dicom3tools).
pacs:
	@command -v Orthanc >/dev/null && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
	  && command -v dciodvfy >/dev/null || { \
	  SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q orthanc orthanc-dicomweb dicom3tools; }

lint: $(VENV)/.dev
	$(BIN)/ruff check tasks flows tests bench
	$(BIN)/ruff format --check tasks flows tests bench
	$(BIN)/mypy tasks flows

format: $(VENV)/.dev
	$(BIN)/ruff format tasks flows tests bench
	$(BIN)/ruff check --fix tasks flows tests bench

bench: bench-ingest

bench-ingest: $(VENV)/.runtime
	$(BIN)/python bench/bench_ingest.py

# cpu-demo train + evaluate on five 100-patient archives: about 40 minutes on 2 cores.
bench-cpu-demo: $(VENV)/.runtime
	$(BIN)/python bench/bench_cpu_demo.py

clean:
	rm -rf $(VENV) renalflow-demo renalflow-web bench-cpu-demo test-artifacts .pytest_cache .mypy_cache .ruff_cache
