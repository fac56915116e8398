# LungScan: `make run` serves the page and the API on http://127.0.0.1:5001; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
SAM_VENV := .venv-sam
PY := $(VENV)/bin/python
PORT ?= 5001

.PHONY: help install install-dev install-sam run test test-unit test-integration lint format events bench train deploy clean

help:
	@echo "make run    - install and serve page + API on http://127.0.0.1:$(PORT) (local S3, bundled model)"
	@echo "make test   - install and run lint + every test (unit, integration, template, local stack)"
	@echo "make bench  - print latency / cold start / memory figures"
	@echo "make train  - retrain the bundled default model from ../shared/data"
	@echo "make deploy - sam build + deploy + site sync + model publish (needs an AWS account and Docker)"

$(VENV)/.installed-app: requirements.txt functions/classifier/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-app requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The SAM CLI pins conflict with the app's boto3/pydantic: it gets its own virtualenv.
$(SAM_VENV)/.installed: infrastructure/sam-requirements.txt
	test -x $(SAM_VENV)/bin/python || $(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet -r infrastructure/sam-requirements.txt
	touch $@

install: $(VENV)/.installed-app
install-dev: $(VENV)/.installed-dev
install-sam: $(SAM_VENV)/.installed

run: install
	$(PY) -m infrastructure.local_stack --port $(PORT)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install-dev install-sam lint
	$(PY) -m pytest

test-unit: install-dev
	$(PY) -m pytest tests/unit

test-integration: install-dev install-sam
	$(PY) -m pytest tests/integration

events: install-sam
	$(PY) events/generate.py

bench: install-dev
	$(PY) benchmarks/bench_predict.py

train: install
	$(PY) -m training.train_default

deploy: install install-sam
	PATH="$(CURDIR)/$(SAM_VENV)/bin:$$PATH" bash infrastructure/deploy.sh

clean:
	rm -rf build .pytest_cache .ruff_cache .aws-sam
