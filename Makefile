# Two entry points a fresh clone needs: `make demo` and `make test`.
# Each builds its own virtual environment from the project's own files.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install browser redis node-deps lint typecheck pytest pytest-no-speedups docs docs-strict bench fuzz clean

install: $(STAMP)

# setup.py builds the optional C speedup (socker_transports/wire/_speedups.c) in place.
$(STAMP): pyproject.toml setup.py socker_transports/wire/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The browser interop test needs Debian's Chromium (never a tool's own download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The engine tests (tests/engine) start a real redis-server: Debian's package.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# Node's ws 8.x for the interop tests (tests/interop), as pinned by its package-lock.json.
node-deps:
	cd tests/interop && npm ci --no-audit --no-fund

demo: $(STAMP)
	$(BIN)/python -m socker_transports demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite runs where only loopback exists when the machine allows it.
pytest: $(STAMP) browser redis node-deps
	tools/loopback-only $(BIN)/python -m pytest

# The documentation site (MkDocs + mkdocstrings, extra `docs`) in site/. make test
# builds it with warnings as errors, so a broken reference or table fails CI.
export NO_MKDOCS_2_WARNING := 1
docs: $(STAMP)
	$(BIN)/mkdocs build

docs-strict: $(STAMP)
	$(BIN)/mkdocs build --strict


# The frame layer's tests again on the pure-Python fallback of the C speedup.
NO_SPEEDUPS_TESTS = tests/transports/test_masking.py tests/transports/test_reader_parity.py \
	tests/transports/test_wire_frames.py tests/transports/test_wire_close.py \
	tests/transports/test_wire_fuzz.py tests/transports/test_fragments.py \
	tests/transports/test_compression.py tests/transports/test_wire_zero_copy.py \
	tests/transports/test_big_echo.py
pytest-no-speedups: $(STAMP)
	SOCKER_NO_SPEEDUPS=1 tools/loopback-only $(BIN)/python -m pytest -q $(NO_SPEEDUPS_TESTS)

test: lint typecheck docs-strict pytest pytest-no-speedups

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis site build
	rm -f socker_transports/wire/_speedups*.so

# Long fuzzing runs (atheris, extra `fuzz`): FUZZ_SECONDS per harness, corpus kept in fuzz/corpus.
FUZZ_SECONDS ?= 1800
fuzz: $(STAMP)
	$(BIN)/pip install --quiet -e '.[fuzz]'
	mkdir -p fuzz/corpus/core fuzz/corpus/wire
	$(BIN)/python fuzz/fuzz_core.py -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=fuzz/ fuzz/corpus/core
	$(BIN)/python fuzz/fuzz_wire.py -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=fuzz/ fuzz/corpus/wire
