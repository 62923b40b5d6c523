# Two entry points for a new user: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DATA := demo-data

# Nothing phones home: no pretrained-weight downloads, no albumentations update check.
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# Re-install only when pyproject.toml changes; the editable install picks up code changes by itself.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/segcli make-demo-dataset $(DEMO_DATA) --train 96 --val 24
	$(BIN)/segcli train --config experiments/demo.yaml --experiment shapes \
		--dataset $(DEMO_DATA) --classes background,disc,square,triangle --offline --output-dir runs --overwrite

test: $(VENV)/.installed-dev
	$(BIN)/ruff check segcli tests
	$(BIN)/python -m pytest --tb=short  # short tracebacks: CI shows only a part of the output

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) $(DEMO_DATA) runs
