# fanout: `make run` starts the service, `make test` runs the tests.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
GO      ?= go
ARGS    ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_\/-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: run
run: ## run the service (embedded SQLite under ./data); pass flags with ARGS="--destination http://..."
	$(GO) run -ldflags "$(LDFLAGS)" . $(ARGS)

.PHONY: demo
demo: ## run the service with a demonstration destination that logs every delivery
	$(GO) run -ldflags "$(LDFLAGS)" . --demo $(ARGS)

.PHONY: build
build: ## build bin/fanout
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/fanout .

.PHONY: test
test: lint ## vet, gofmt, then every test with the race detector
	$(GO) test -race -count=1 -timeout 10m ./...

.PHONY: lint
lint: ## go vet and gofmt
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME each (default 30s)
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeBatch$$' -fuzztime $${FUZZTIME:-30s} .
	$(GO) test -run '^$$' -fuzz '^FuzzValidateEvent$$' -fuzztime $${FUZZTIME:-30s} .
	$(GO) test -run '^$$' -fuzz '^FuzzParseRetryAfter$$' -fuzztime $${FUZZTIME:-30s} ./webhook

.PHONY: bench
bench: ## Go benchmarks of the store and the runtime
	$(GO) test -run '^$$' -bench . -benchtime $${BENCHTIME:-2s} -count $${COUNT:-5} ./dispatch/... .

.PHONY: tidy
tidy: ## go mod tidy
	$(GO) mod tidy
