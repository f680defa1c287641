# Two commands do every set-up step on a fresh machine:
#   make run    the engine on the embedded default (SQLite, in-process worker)
#   make test   the whole suite
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run serve test install clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/chartbridge demo

serve: install
	$(BIN)/chartbridge db upgrade
	$(BIN)/chartbridge serve

test: install
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info
