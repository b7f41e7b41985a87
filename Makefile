# contender — the two commands:
#   make run    start the gateway on the example models (installs what it needs)
#   make test   run every check and test CI runs
# Both are idempotent and fetch only from crates.io and PyPI.

SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
CONFIG ?= contender.toml

.PHONY: run test setup test-deps build lint bench loadtest clean

## Start the gateway on the example models with the embedded defaults (port 8000).
run: setup
	$(CARGO) run --release --features torchscript --bin contender -- serve --config $(CONFIG)

## Every check CI runs: formatting, lints (with and without the torchscript feature), unit and
## integration tests (real server, real models, tritonclient), and the build without libtorch
## refusing TorchScript models.
test: setup test-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --all-features
	$(CARGO) test --test torchscript

## ONNX Runtime and a CPU libtorch from PyPI wheels, hash-checked and cached
## (~/.cache/contender; .cache/libtorch links to it for the build).
setup:
	@scripts/setup-onnxruntime.sh
	@scripts/setup-libtorch.sh > /dev/null

## Python clients the tests drive (tritonclient[http]) in .venv.
test-deps: $(VENV)/.installed

$(VENV)/.installed: tests/python/requirements.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	@touch $@

build: setup
	$(CARGO) build --release --workspace --all-features

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

## Criterion micro-benchmarks (decode/encode).
bench: setup
	$(CARGO) bench --all-features --bench decode

## End-to-end comparison written up in BENCHMARKS.md.
loadtest: setup
	loadtest/run-benchmarks.sh

clean:
	$(CARGO) clean
	rm -rf $(VENV)
