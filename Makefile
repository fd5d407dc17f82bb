# `make test` sets everything up (a venv with the torch pair that installs on our machines) and runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup test demo clean

$(BIN)/wrc: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PAIR)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(BIN)/wrc

setup: $(BIN)/wrc

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(BIN)/python examples/upsample_api.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
