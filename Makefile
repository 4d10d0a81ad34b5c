# fanout: `make run` starts the service, `make test` runs the tests.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X fanout/internal/app.version=$(VERSION)
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

# make test runs go test through internal/cmd/testsum, which prints what go
# test prints (a line per package, the output of failed tests), then every
# skipped test with its reason and every failed test, and exits with go
# test's status.
.PHONY: test
test: lint ## vet, gofmt, every test with the race detector (the crash tests too), then fuzz-short; lists skipped tests
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || [ -n "$$FANOUT_TEST_DATABASE_URL" ] || \
		echo "NOTE: the PostgreSQL tests (dispatch/dispatchpg, replicatest) will be SKIPPED: no initdb/postgres here; apt-get install postgresql, or set FANOUT_TEST_DATABASE_URL"
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		echo "NOTE: the console's browser tests (TestConsole_Browser) will be SKIPPED: no Chromium here; apt-get install chromium"
	@echo "go test -race -count=1 -timeout 10m ./...   (through internal/cmd/testsum)"
	@bin=$$(mktemp -d) && $(GO) build -o $$bin/testsum ./internal/cmd/testsum && \
		GO=$(GO) $$bin/testsum -race -count=1 -timeout 10m ./...; rc=$$?; rm -rf $$bin; exit $$rc
	@$(MAKE) --no-print-directory fuzz-short

.PHONY: crash
crash: ## the crash and fault tests alone: the real binary, SIGKILLed and broken around (about a minute)
	$(GO) test -race -count=1 -timeout 10m -v ./crashtest

.PHONY: soak
soak: ## kill fanout every few seconds under steady load for SOAK (default 10m), then check every delivery
	FANOUT_SOAK=1 FANOUT_SOAK_DURATION=$${SOAK:-10m} $(GO) test -race -count=1 -timeout 3h -v -run '^TestSoak$$' ./crashtest

.PHONY: lint
lint: ## go vet, gofmt, staticcheck (pinned in go.mod as a tool) and go mod tidy -diff
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) tool staticcheck ./...
	@$(GO) mod tidy -diff || { echo "go.mod or go.sum is not tidy: run make tidy"; exit 1; }

# Every fuzz target, as package:name.
FUZZ_TARGETS := ./internal/httpapi:FuzzDecodeBatch ./internal/httpapi:FuzzValidateEvent ./internal/service:FuzzEventFields \
	./internal/app:FuzzAPI ./internal/app:FuzzEventsQuery ./internal/app:FuzzReplayRequest \
	./internal/service:FuzzDecodeTraceMeta ./internal/service:FuzzParseKeyValues \
	./webhook:FuzzParseRetryAfter ./webhook:FuzzDrain ./webhook:FuzzParseSecret \
	./webhook:FuzzParseNetworks ./webhook:FuzzVerify ./webhook:FuzzGuardCheck ./destination:FuzzValidate \
	./cmd/fanout-load:FuzzReadResponse

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME each (default 30s)
	@$(MAKE) --no-print-directory fuzz-short FUZZTIME=$${FUZZTIME:-30s}

.PHONY: fuzz-short
# Go 1.26's fuzz coordinator can fail a run that found nothing with a bare
# "context deadline exceeded" when -fuzztime ends under CPU contention
# (golang/go#75804, fixed in Go 1.27). Such a run is repeated once; a run that
# writes a failing input, or fails any other way, fails at once.
fuzz-short: ## run every fuzz target for FUZZTIME each (default 5s): the bounded run make test ends with
	@for t in $(FUZZ_TARGETS); do \
		for try in 1 2; do \
			echo "fuzz $${t##*:} in $${t%%:*} for $${FUZZTIME:-5s}"; \
			out=$$($(GO) test -run '^$$' -fuzz "^$${t##*:}\$$" -fuzztime $${FUZZTIME:-5s} $${t%%:*} 2>&1); rc=$$?; \
			echo "$$out"; \
			[ $$rc -eq 0 ] && break; \
			if [ $$try -eq 2 ] || echo "$$out" | grep -q 'Failing input written' || ! echo "$$out" | grep -q 'context deadline exceeded'; then exit 1; fi; \
			echo "fuzz: $${t##*:} found nothing and failed on Go's own deadline (golang/go#75804): once more"; \
		done; \
	done

.PHONY: bench
bench: ## Go benchmarks of the store and the runtime
	$(GO) test -run '^$$' -bench . -benchtime $${BENCHTIME:-2s} -count $${COUNT:-5} ./dispatch/... ./internal/app

.PHONY: tidy
tidy: ## go mod tidy
	$(GO) mod tidy
