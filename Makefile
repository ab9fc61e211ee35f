# callagent: `make run` starts the server on the embedded defaults, `make test` passes every test.
# Both set everything up first (a virtualenv in .venv, and redis-server and Chromium for the tests).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-min bench lint redis-server chromium clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[fast,test,dev]'
	touch $(STAMP)

run: install
	$(BIN)/python -m callagent serve

# The Redis tests start their own redis-server on a free port; install it when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is missing: install it (apt-get install redis-server) to run the Redis tests" >&2; exit 1; \
	  fi; }

# The console's browser tests drive headless Chromium through chromedriver; install both when missing.
chromium:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-wqy-zenhei >/dev/null; \
	  else \
	    echo "chromium is missing: install it (apt-get install chromium chromium-driver) to run the console's browser tests" >&2; exit 1; \
	  fi; }

test: install redis-server chromium
	$(BIN)/python -m pytest -q

# The suite again on the lowest versions setup.cfg admits, so the declared bounds stay true.
MIN_VENV := .venv-min
test-min: redis-server
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
