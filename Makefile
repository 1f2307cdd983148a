# Hutch: the two commands a fresh Debian 12 machine needs are `make up` and `make test`.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo /opt/hutch/tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never
RUN := $(UV) run --frozen
TEMPLATES_DIR ?= /var/lib/hutch/templates

.PHONY: up down status deps base-template test test-unit test-integration lint proto proto-check bench

## up: install what is missing, then run the whole platform on this machine (detached)
up: deps base-template
	$(RUN) hutch local up --detach

## down: stop the local platform (data and sandbox records are kept)
down:
	$(RUN) hutch local down

status:
	$(RUN) hutch local status

## deps: apt packages, uv and the Python workspace
deps:
	./scripts/bootstrap.sh

## base-template: build the `base` template (Debian userland with python3 and git) once
base-template: deps
	HUTCH_NODE__TEMPLATES_DIR=$(TEMPLATES_DIR) $(RUN) hutch-node-agent template build-base

## test: lint, contract drift check, then every test against real servers and real crun
test: deps base-template lint proto-check
	HUTCH_NODE__TEMPLATES_DIR=$(TEMPLATES_DIR) $(RUN) pytest tests/unit tests/integration tests/e2e tests/security

test-unit: deps
	$(RUN) pytest tests/unit

lint: deps
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy libs services

## proto: regenerate libs/hutch-proto from proto/
proto: deps
	$(RUN) python scripts/gen_proto.py

## proto-check: fail when the committed generated code does not match proto/
proto-check: proto
	@git diff --exit-code --stat -- libs/hutch-proto || { echo "generated code is stale: run make proto and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- libs/hutch-proto)" || { echo "untracked generated files: run make proto and commit" >&2; exit 1; }

## bench: performance figures (printed, never asserted)
bench: deps base-template
	HUTCH_NODE__TEMPLATES_DIR=$(TEMPLATES_DIR) $(RUN) pytest -s tests/bench
