# make test  - create .venv if needed, install spg with its test and book extras, run the test suite
# make book  - execute the notebooks on the embedded default (run manifest) and build the Jupyter Book
# make run   - the embedded default end to end from the command line
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.spg-installed

.PHONY: install test test-fast book run clean-book

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test,book]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

book: $(STAMP)
	$(PY) -m spg.book execute --manifest book/manifest.yml
	$(VENV)/bin/jupyter-book build book/ -W -n --keep-going

run: $(STAMP)
	$(PY) -m spg run

clean-book:
	rm -rf book/_build
