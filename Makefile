# callagent: `make run` starts the server on the embedded defaults, `make test` passes every test.
# Both set everything up first (a virtualenv in .venv; redis-server, nginx and Chromium for the tests).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-min soak bench lint system-packages clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[fast,test,dev]'
	touch $(STAMP)

run: install
	$(BIN)/python -m callagent serve

# The tests start their own redis-server and nginx and drive Debian's headless Chromium (with a
# CJK font for the console's screenshots); install whatever is missing, in one apt run.
system-packages:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	{ command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; } || missing="$$missing nginx"; \
	{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || \
	  missing="$$missing chromium chromium-driver fonts-wqy-zenhei"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing: install them (apt-get install$$missing) to run the tests" >&2; exit 1; \
	  fi; \
	fi

test: install system-packages
	$(BIN)/python -m pytest -q

# A few minutes of barge-in races, disconnects, faults and bad input; then nothing may be left
# behind. Not part of `make test`. CALLAGENT_SOAK_SECONDS sets the length (120 by default).
soak: install system-packages
	CALLAGENT_SOAK=1 $(BIN)/python -m pytest -q tests/test_soak.py

# The suite again on the lowest versions setup.cfg admits, so the declared bounds stay true.
MIN_VENV := .venv-min
test-min: system-packages
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(PYTHON) scripts/minimum_versions.py > $(MIN_VENV)/constraints.txt
	$(MIN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/python -m pip install --quiet -c $(MIN_VENV)/constraints.txt -e '.[test]'
	$(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider

bench: install
	$(BIN)/python -m scripts.bench

lint: install
	$(BIN)/ruff check callagent scripts tests
	$(BIN)/mypy callagent

clean:
	rm -rf $(VENV) $(MIN_VENV) build *.egg-info .pytest_cache .mypy_cache .hypothesis
