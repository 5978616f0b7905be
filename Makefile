# Everything a fresh machine needs, from Python 3.11 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
export HOST PORT

.PHONY: run dev test test-fast docs fuzz lint migrate init-db bench bench-data bench-finding bench-feed bench-fleet \
	bench-scoping bench-instructions prune clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.py setup.cfg
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

## run: serve the API with Gunicorn on http://$(HOST):$(PORT)
run: $(VENV)/.installed
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

## dev: Flask's debug server with reloading, on the same address; readable log lines
dev: $(VENV)/.installed
	LOG_FORMAT=$${LOG_FORMAT:-text} $(BIN)/flask --app sessions_app db upgrade
	LOG_FORMAT=$${LOG_FORMAT:-text} $(BIN)/flask --app sessions_app run --debug --host $(HOST) --port $(PORT)

## migrate: bring DATABASE_URL's database to the newest schema (also done at start)
migrate: $(VENV)/.installed
	$(BIN)/flask --app sessions_app db upgrade

## init-db: the same as migrate (its older name)
init-db: migrate

## test: the whole suite (SQLite; PostgreSQL too when TEST_DATABASE_URL is set) in TEST_WORKERS
## processes (pytest-xdist: each module on one, see tests/conftest.py); the 25 slowest tests
TEST_WORKERS ?= 2
test: $(VENV)/.installed-test
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --durations=25 $(PYTEST_ARGS)

## test-fast: the inner loop: SQLite only, without the tests that start real servers
test-fast: $(VENV)/.installed-test
	TEST_DATABASE_URL= $(BIN)/pytest -m "not server" $(PYTEST_ARGS)

$(VENV)/.installed-docs: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $@

## docs: check README.rst renders (the package's long description); build the Sphinx site into docs/_build/html; any warning fails
docs: $(VENV)/.installed-docs
	$(BIN)/python -W ignore -m readme_renderer README.rst -o /dev/null
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "The docs are in docs/_build/html/index.html"

## fuzz: a longer, randomised schemathesis pass over the API description (FUZZ_EXAMPLES per operation)
FUZZ_EXAMPLES ?= 500
fuzz: $(VENV)/.installed-test
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest tests/test_contract.py $(PYTEST_ARGS)

## lint: ruff over the code and the tests
lint: $(VENV)/.installed-test
	$(BIN)/ruff check sessions_app tests benchmarks wsgi.py gunicorn.conf.py
	$(BIN)/ruff format --check sessions_app tests benchmarks wsgi.py gunicorn.conf.py

## bench: wrk load against a bare-Flask ceiling; BENCH_QUICK=1 for a short run
bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.feed
	$(BIN)/python -m benchmarks.fleet
	$(BIN)/python -m benchmarks.scoping
	$(BIN)/python -m benchmarks.data
	$(BIN)/python -m benchmarks.instructions

## bench-instructions: instructions per request (valgrind), the service against its ceilings
bench-instructions: $(VENV)/.installed
	$(BIN)/python -m benchmarks.instructions

## bench-fleet: creates through one and two instances over a 2 ms network (BENCH_DATABASE_URL)
bench-fleet: $(VENV)/.installed
	$(BIN)/python -m benchmarks.fleet

## bench-feed: the change feed under load (1,000 long polls, 100 streams); BENCH_QUICK=1 too
bench-feed: $(VENV)/.installed
	$(BIN)/python -m benchmarks.feed

clean:
	rm -rf $(VENV) var .pytest_cache .coverage *.egg-info docs/_build

## prune: delete the sessions past SESSION_RETENTION_SECONDS (PRUNE_ARGS=--dry-run to count only)
prune: $(VENV)/.installed
	$(BIN)/flask --app sessions_app prune $(PRUNE_ARGS)

## bench-scoping: a token scoped to agents against an unscoped one (GET, list); BENCH_QUICK=1 too
bench-scoping: $(VENV)/.installed
	$(BIN)/python -m benchmarks.scoping

## bench-data: data filters at 100,000 sessions and a bulk change of 10,000 under writers; BENCH_QUICK=1 too
bench-data: $(VENV)/.installed
	$(BIN)/python -m benchmarks.data

## bench-finding: writes before/after the finding indexes, counts at 100,000 sessions, prune under writers
bench-finding: $(VENV)/.installed
	$(BIN)/python -m benchmarks.finding
