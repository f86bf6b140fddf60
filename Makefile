# SIPAS backend. `make run` starts everything on a fresh machine; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: install run test test-embedded test-services stack migrate demo bench asyncapi clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

## All five services in one process: SQLite files under data/, in-process event bus.
run: install
	$(PY) -m services run

## The whole suite on the embedded backend, then on PostgreSQL + RabbitMQ when reachable.
test: install
	$(PY) -m tests.tiers

test-embedded: install
	SIPAS_TEST_BACKEND=embedded $(PY) -m pytest

test-services: install
	SIPAS_TEST_BACKEND=services $(PY) -m pytest

## Production shape without Docker: five processes on PostgreSQL + RabbitMQ (set SIPAS_DATABASE_URL, SIPAS_BUS_URL).
stack: install
	SIPAS_DATABASE_URL=$${SIPAS_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres} \
	SIPAS_BUS_URL=$${SIPAS_BUS_URL:-amqp://guest:guest@127.0.0.1:5672/} \
	$(PY) -m services stack

## A national wave played through the HTTP APIs against the running stack (starts it if needed).
## Small run: make demo ARGS="--frame-size 200000 --sample-size 4000"
demo: install
	$(PY) -m demo $(ARGS)

migrate: install
	$(PY) -m services migrate

## Every benchmark beside its baseline; writes docs/benchmarks.md (QUICK=1 for a smoke run).
bench: install
	$(PY) -m bench.run $(if $(QUICK),--quick,)

## Regenerate the AsyncAPI document of all events.
asyncapi: install
	$(PY) -m shared.contracts docs/events/asyncapi.json

clean:
	rm -rf $(VENV) data .pytest_cache
