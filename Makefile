# The two commands a user needs: `make up` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK ?= prod

.PHONY: up test plan clean

# Installs everything (once), then runs the main job.
up: $(VENV)/.installed
	$(BIN)/hastack plan --stack $(STACK)

# The whole test suite.
test: $(VENV)/.installed
	$(BIN)/python -m pytest

plan: $(VENV)/.installed
	$(BIN)/hastack plan --stack $(STACK)

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV)
