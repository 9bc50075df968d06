# Two set-up commands (see README): `make run` and `make test`.
# Both build .venv with a normal (not editable) install, so `twistd` finds
# the plugin exactly as it will on a clinic PC.
PYTHON ?= python3
VENV := .venv
# The package's files: its Python and the data it ships (admin CSS and
# JavaScript, the standard add-on pages), so an edit to either reinstalls.
SOURCES := pyproject.toml $(shell find medimage_tx twisted -type f \( -name '*.py' -o -path '*/static/*' \
	-o -path '*/standard/*' \) 2>/dev/null)
# pyproject's requires-python, as a check any Python can run.
SUPPORTED := import sys; sys.exit(sys.version_info < (3, 11))

# A $(VENV) made with an unsupported Python (say Ubuntu 22.04's 3.10) is made
# again, instead of sticking until someone runs `make clean`.
ifneq ($(wildcard $(VENV)/bin/python),)
ifneq ($(shell $(VENV)/bin/python -c '$(SUPPORTED)' 2>/dev/null && echo ok),ok)
$(info $(VENV) was made with an unsupported Python: making it again)
$(shell rm -rf $(VENV))
endif
endif

.PHONY: run test test-newest mutate faults clean

$(VENV)/installed: $(SOURCES)
	@$(PYTHON) -c '$(SUPPORTED)' || { echo "make: $(PYTHON) is older than Python 3.11; give a newer one, e.g. make PYTHON=python3.11 $(MAKECMDGOALS)" >&2; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet .
	touch $@

# The test-only packages (pytest, Playwright: 167 MB of a 296 MB .venv)
# come with `make test` only: `make run` installs what the server needs.
$(VENV)/installed-test: $(VENV)/installed
	$(VENV)/bin/python -m pip install --quiet '.[test]'
	touch $@

run: $(VENV)/installed
	$(VENV)/bin/twistd --nodaemon --pidfile= medimage $(ARGS)

test: $(VENV)/installed-test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The suite again on the newest Python here besides 3.11 (3.13 from pyenv on
# this kind of machine), in its own .venv-newest; .ci/run runs it after 3.11.
# Not through a sub-make: the tests that run make themselves must not inherit
# a VENV= from MAKEFLAGS.
test-newest:
	@newest=$$(bash .ci/newest-python) || { echo "make: no Python 3.12 or newer on this machine" >&2; exit 1; }; \
	echo "The suite on $$($$newest --version) ($$newest)"; \
	test -x .venv-newest/bin/python || $$newest -m venv .venv-newest
	.venv-newest/bin/python -m pip install --quiet --upgrade pip
	.venv-newest/bin/python -m pip install --quiet '.[test]'
	.venv-newest/bin/python -m pytest $(PYTEST_ARGS)

# Not part of `make test` (too slow for CI); see docs/testing.md.
# Mutation testing of the plain-Python modules with the fast tests; one
# module: make mutate MUTANTS='medimage_tx.photos.paths*'
mutate: $(VENV)/installed-test
	$(VENV)/bin/python -m pip install --quiet '.[mutate]'
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2 $(MUTANTS)
	$(VENV)/bin/mutmut results

# Issue 11's deliberate faults, one at a time, each against its tests.
faults: $(VENV)/installed-test
	$(VENV)/bin/python tools/faults.py $(FAULTS)

clean:
	rm -rf $(VENV) build *.egg-info mutants
