# Two entry points a fresh clone needs: `make demo` and `make test`.
# Each builds its own virtual environment from the project's own files.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install browser redis node-deps lint typecheck pytest pytest-no-speedups docs docs-strict bench fuzz clean autobahn autobahn-deps

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

# Autobahn TestSuite (tests/autobahn/README.md), not part of `make test`: the whole
# grid takes wstest about an hour per (side, driver) job. wstest needs Python 2.7
# ($(PYTHON2)); `make autobahn-deps` installs it into $(ABT_PREFIX), with wsaccel
# (wstest's C masking and UTF-8 check: 4-7x faster on the compression cases).
PYTHON2 ?= python2.7
ABT_PREFIX ?= /tmp/abt-env
ABT_SITE := $(ABT_PREFIX)/lib/python2.7/site-packages
autobahn-deps:
	$(PYTHON2) -m pip install --quiet 'incremental==17.5.0' 'constantly==15.1.0' 'setuptools<45'
	$(PYTHON2) -m pip install --quiet --prefix $(ABT_PREFIX) autobahntestsuite 'autobahn==0.10.9' \
	  'twisted==17.9.0' 'jinja2<3' 'markupsafe<2' 'mistune<2' six 'zope.interface<5.5' \
	  'txaio<2.9' 'Automat<20' 'attrs<21' 'hyperlink<21' 'idna<3' 'PyHamcrest<2' unittest2 \
	  'pyOpenSSL<20' 'cryptography<3.4' 'service_identity<19' 'pyasn1<0.5' \
	  'pyasn1-modules<0.3' 'cffi<1.16' enum34 ipaddress wsaccel
autobahn: $(STAMP)
	tools/loopback-only $(BIN)/python tests/autobahn/grid.py --python2 $(PYTHON2) \
	  --abt-site $(ABT_SITE) $(AUTOBAHN_ARGS)

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
