# The two set-up commands of the README: `make serve` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# WEIGHTS unset: the server picks the net for its device (CUDA: weights/base, CPU: weights/small).
WEIGHTS ?=
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test image-test install install-test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

# The peers of tests/test_peers.py go in without their dependencies (the test extra has what their mel code needs);
# parallel_wavegan's setup.py imports pip, which pip's isolated build lacks, so it is built with the venv's own.
install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps "coqui-tts==0.28.0" "coqui-tts-trainer==0.4.0" "espnet==202511" \
		"bigvgan==2.4.1"
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation "parallel_wavegan==0.6.1"

serve: install
	$(BIN)/python -m server --host $(HOST) --port $(PORT) $(if $(WEIGHTS),--weights $(WEIGHTS))

test: install-test
	$(BIN)/python -m pytest

# Builds the Dockerfile's three images with podman and runs them (tests/test_images.py); CI runs it after `make test`.
image-test: install-test
	PY=$(abspath $(BIN)/python) scripts/image-test.sh

bench: install-test
	$(BIN)/python -m bench.quality $(if $(WEIGHTS),--weights $(WEIGHTS))
	$(BIN)/python -m bench.speed $(if $(WEIGHTS),--weights $(WEIGHTS))

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
