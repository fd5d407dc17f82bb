# `make test` sets everything up (a venv with the torch pair that installs on our machines) and runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1

# Offline machines: a backbone weights file in timm layout (used when it exists; otherwise the model hub).
WEIGHTS ?= $(wildcard ../shared/weights/dinov2_vits14.safetensors)
EXTRACT_ARGS ?=

.PHONY: setup test extract demo clean

$(BIN)/wrc: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PAIR)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(BIN)/wrc

setup: $(BIN)/wrc

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

extract: setup
	HF_HUB_OFFLINE=$(if $(WEIGHTS),1,0) $(BIN)/wrc extract examples/images out/examples.zarr $(if $(WEIGHTS),--backbone-weights $(WEIGHTS)) $(EXTRACT_ARGS)
	$(BIN)/wrc info out/examples.zarr

demo: setup
	$(BIN)/python examples/upsample_api.py $(if $(WEIGHTS),--weights $(WEIGHTS))

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache out
