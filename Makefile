# Two set-up commands (see README): `make run` and `make test`.
# Both build .venv with a normal (not editable) install, so `twistd` finds
# the plugin exactly as it will on a clinic PC.
PYTHON ?= python3
VENV := .venv
SOURCES := pyproject.toml $(shell find medimage_tx twisted -name '*.py' 2>/dev/null)

.PHONY: run test clean

$(VENV)/installed: $(SOURCES)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet '.[test]'
	touch $@

run: $(VENV)/installed
	$(VENV)/bin/twistd --nodaemon --pidfile= medimage $(ARGS)

test: $(VENV)/installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
