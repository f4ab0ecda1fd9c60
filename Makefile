# Aegis — build, run and test. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
GOLANGCI_VERSION := v2.15.0
GOLANGCI := $(shell $(GO) env GOPATH)/bin/golangci-lint

# Real services used by the integration suites (deploy/README.md).
export AEGIS_TEST_KAFKA ?= 127.0.0.1:19092
export AEGIS_TEST_CLICKHOUSE ?= clickhouse://127.0.0.1:19000/aegis_test
# The same broker's SASL_SSL listener and the files its clients need.
export AEGIS_TEST_KAFKA_SECURE ?= 127.0.0.1:19094
export AEGIS_TEST_KAFKA_SECURE_DIR ?= $(CURDIR)/.cache/kafka/client

.PHONY: help build run test test-unit test-integration lint vet services services-stop bench fuzz loadtest loadtest-smoke clean

help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

build: ## build aegisd, aegisctl and aegis-loadtest into bin/
	$(GO) build -o $(BIN)/ ./cmd/...

run: build ## run the embedded stack (kfake broker + SQLite) with the example manifests
	$(BIN)/aegisd --dev --data-dir ./data --manifests deploy/manifests

test: lint services ## everything: lint, hermetic tests, then real Kafka + ClickHouse suites
	# One package at a time: some suites restart the shared broker or ClickHouse.
	$(GO) test -count=1 -p 1 -timeout 30m -run Integration ./...
	$(GO) test -count=1 -short -timeout 10m ./...
	$(MAKE) loadtest-smoke

test-unit: ## hermetic tests only (kfake, SQLite); no services needed
	$(GO) test -count=1 -short ./...

test-integration: services ## only the suites that need real Kafka and ClickHouse
	$(GO) test -count=1 -p 1 -timeout 30m -run Integration ./...

services: ## install (if missing) and start real Kafka and ClickHouse on 127.0.0.1
	deploy/kafka/kafka.sh start
	deploy/clickhouse/clickhouse.sh start
	deploy/kafka/kafka.sh wait
	deploy/clickhouse/clickhouse.sh wait

services-stop: ## stop the services started by `make services`
	-deploy/kafka/kafka.sh stop
	-deploy/clickhouse/clickhouse.sh stop

vet:
	$(GO) vet ./...

$(GOLANGCI):
	$(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_VERSION)

lint: vet $(GOLANGCI) ## go vet + golangci-lint (dependency ownership rules in .golangci.yml)
	$(GOLANGCI) run ./...

bench: ## the benchmarks quoted in docs/benchmarks.md
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./schemas/... ./decider/... ./internal/stream/...

fuzz: ## run every fuzz target for 30 s
	@for pkg in ./schemas/canon ./schemas/envelope ./schemas/manifest; do \
	  for f in $$($(GO) test -list 'Fuzz.*' $$pkg | grep ^Fuzz); do \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 30s $$pkg || exit 1; done; done

loadtest: build ## 30 s fleet load test against an embedded aegisd it starts (RATE, DURATION, SESSIONS; BROKERS= for real Kafka)
	loadtest/run-stack.sh

loadtest-smoke: build ## short load tests: embedded stack, then one process per stage on real Kafka + ClickHouse (needs `make services`)
	RATE=1000 DURATION=5s SESSIONS=100 REPORT=$(BIN)/loadtest-smoke-embedded.json loadtest/run-stack.sh
	BROKERS=$(AEGIS_TEST_KAFKA) SPLIT=1 STORE=$(AEGIS_TEST_CLICKHOUSE)_loadtest \
	  RATE=2000 DURATION=10s SESSIONS=200 REPORT=$(BIN)/loadtest-smoke-kafka.json loadtest/run-stack.sh

clean:
	rm -rf $(BIN)
