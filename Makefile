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

# Static, reproducible builds: no cgo (net would link libc where gcc is
# installed), no local paths in the binary.
STATIC := CGO_ENABLED=0
BUILDFLAGS := -trimpath -buildvcs=auto -ldflags "-s -w $(LDFLAGS)"
# The platforms make release builds for.
PLATFORMS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64

.PHONY: build
build: ## build bin/fanout, statically linked
	$(STATIC) $(GO) build $(BUILDFLAGS) -o bin/fanout .

IMAGE ?= fanout:$(VERSION)

.PHONY: image
image: ## build the container image $(IMAGE) from a static binary, FROM scratch, with podman (or buildah)
	@ctx=$$(mktemp -d) && trap 'rm -rf $$ctx' EXIT && \
	$(STATIC) GOOS=linux $(GO) build $(BUILDFLAGS) -o $$ctx/fanout . && \
	cp /etc/ssl/certs/ca-certificates.crt $$ctx/ && mkdir $$ctx/data && \
	if command -v podman >/dev/null; then \
		podman build --format docker -f deploy/image/Containerfile -t $(IMAGE) $$ctx; \
	elif command -v buildah >/dev/null; then \
		buildah bud --format docker -f deploy/image/Containerfile -t $(IMAGE) $$ctx; \
	else echo "make image needs podman or buildah (apt-get install podman)"; exit 1; fi

.PHONY: image-test
image-test: image ## build the image, then inspect it and run it (the run is skipped where the runtime cannot start it, saying why)
	FANOUT_IMAGE=$(IMAGE) $(GO) test -count=1 -v -run 'TestImage' ./deploy/image

.PHONY: deploy-check
deploy-check: ## check the deployment files offline: compose, the systemd unit, and the Helm chart (lint --strict, rendered objects decoded strictly; builds helm: minutes)
	$(GO) test -count=1 -v ./deploy/
	cd deploy/helm/check && $(GO) test -count=1 -v .

.PHONY: release
release: ## static binaries for every platform in dist/, with SHA256SUMS
	@rm -rf dist && mkdir -p dist
	@for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; ext=; [ $$os = windows ] && ext=.exe; \
		out=dist/fanout-$(VERSION)-$$os-$$arch$$ext; \
		echo "build $$out"; \
		$(STATIC) GOOS=$$os GOARCH=$$arch $(GO) build $(BUILDFLAGS) -o $$out . || exit 1; \
	done
	@cd dist && sha256sum fanout-* > SHA256SUMS && cat SHA256SUMS

# make test runs go test through internal/cmd/testsum, which prints what go
# test prints (a line per package, the output of failed tests), then every
# skipped test with its reason and every failed test, and exits with go
# test's status.
.PHONY: test
test: lint ## vet, gofmt, every test with the race detector (the crash tests too, every fuzz target's corpus); lists skipped tests
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || [ -n "$$FANOUT_TEST_DATABASE_URL" ] || \
		echo "NOTE: the PostgreSQL tests (dispatch/dispatchpg, replicatest) will be SKIPPED: no initdb/postgres here; apt-get install postgresql, or set FANOUT_TEST_DATABASE_URL"
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		echo "NOTE: the console's browser tests (TestConsole_Browser) will be SKIPPED: no Chromium here; apt-get install chromium"
	@command -v redis-server >/dev/null 2>&1 || \
		echo "NOTE: the Redis Streams tests (sink/redissink) will be SKIPPED: no redis-server here; apt-get install redis-server"
	@command -v nats-server >/dev/null 2>&1 || \
		echo "NOTE: the NATS tests (sink/natssink, internal/app's NATS broker tests, crashtest TestBrokers_*) will be SKIPPED: no nats-server here; apt-get install nats-server"
	@[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1 || \
		echo "NOTE: the RabbitMQ tests (sink/amqpsink) will be SKIPPED: no rabbitmq-server here; apt-get install rabbitmq-server"
	@echo "go test -race -count=1 -timeout 10m ./...   (through internal/cmd/testsum)"
	@bin=$$(mktemp -d) && $(GO) build -o $$bin/testsum ./internal/cmd/testsum && \
		GO=$(GO) $$bin/testsum -race -count=1 -timeout 10m ./...; rc=$$?; rm -rf $$bin; exit $$rc

.PHONY: crash
crash: ## the crash and fault tests alone: the real binary, SIGKILLed and broken around (about a minute)
	$(GO) test -race -count=1 -timeout 10m -v ./crashtest

.PHONY: soak
soak: ## kill fanout every few seconds under steady load for SOAK (default 10m), then check every delivery
	FANOUT_SOAK=1 FANOUT_SOAK_DURATION=$${SOAK:-10m} $(GO) test -race -count=1 -timeout 3h -v -run '^TestSoak$$' ./crashtest

.PHONY: throttle-fleet
throttle-fleet: ## issue 21's throttle test at full length: 2 replicas on PostgreSQL hold 50/s ± 5 for 60s while 5,000 events wait (about 80s)
	FANOUT_THROTTLE_SECONDS=$${THROTTLE_SECONDS:-60} $(GO) test -count=1 -timeout 10m -v -run '^TestReplicas_Throttle$$' ./replicatest

.PHONY: lint
lint: ## go vet, gofmt, staticcheck (pinned in go.mod as a tool) and go mod tidy -diff
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) tool staticcheck ./...
	@$(GO) mod tidy -diff || { echo "go.mod or go.sum is not tidy: run make tidy"; exit 1; }

# Every fuzz target, as package:name.
FUZZ_TARGETS := ./internal/httpapi:FuzzDecodeBatch ./internal/httpapi:FuzzValidateEvent ./internal/service:FuzzEventFields ./internal/service:FuzzMessageUnmarshal ./internal/service:FuzzParseToken \
	./internal/app:FuzzAPI ./internal/app:FuzzEventsQuery ./internal/app:FuzzReplayRequest \
	./internal/service:FuzzDecodeTraceMeta ./internal/service:FuzzParseKeyValues ./internal/service:FuzzDecodeRaw \
	./webhook:FuzzParseRetryAfter ./webhook:FuzzDrain ./webhook:FuzzParseSecret \
	./webhook:FuzzParseNetworks ./webhook:FuzzVerify ./webhook:FuzzGuardCheck ./destination:FuzzValidate \
	./destination/match:FuzzMatch ./destination/match:FuzzCompile ./destination/transform:FuzzDecodeResult ./destination/transform:FuzzWorkerFrames ./destination:FuzzOrderKey \
	./cmd/fanout-load:FuzzReadResponse ./dispatch/internal/storeutil:FuzzDecodePlan ./sink/kinds:FuzzConfig

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME each (default 30s; FUZZPARALLEL workers), then keep what it found in testdata
	@$(MAKE) --no-print-directory fuzz-short FUZZTIME=$${FUZZTIME:-30s}
	@$(MAKE) --no-print-directory fuzz-keep

.PHONY: fuzz-keep
# go test -fuzz keeps the inputs that widened coverage in its cache; copied
# into each package's testdata/fuzz, they are the next run's start and run
# with every go test.
fuzz-keep: ## copy the corpus the fuzzer built (in Go's cache) into each target's testdata/fuzz
	@cache=$$($(GO) env GOCACHE)/fuzz/fanout; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; src=$$cache/$${pkg#./}/$$name; \
		[ -d "$$src" ] || continue; mkdir -p $$pkg/testdata/fuzz/$$name; \
		n=$$(ls $$pkg/testdata/fuzz/$$name | wc -l); cp -n $$src/* $$pkg/testdata/fuzz/$$name/; \
		echo "$$name: $$(( $$(ls $$pkg/testdata/fuzz/$$name | wc -l) - n )) inputs kept in $$pkg/testdata/fuzz/$$name"; \
	done

.PHONY: fuzz-short
# Go 1.26's fuzz coordinator can fail a run that found nothing with a bare
# "context deadline exceeded" when -fuzztime ends under CPU contention
# (golang/go#75804, fixed in Go 1.27). Such a run is repeated once; a run that
# writes a failing input, or fails any other way, fails at once.
fuzz-short: ## run every fuzz target for FUZZTIME each (default 5s): the bounded run .ci/run makes after make test
	@for t in $(FUZZ_TARGETS); do \
		for try in 1 2; do \
			echo "fuzz $${t##*:} in $${t%%:*} for $${FUZZTIME:-5s}"; \
			out=$$($(GO) test -run '^$$' -fuzz "^$${t##*:}\$$" -fuzztime $${FUZZTIME:-5s} $${FUZZPARALLEL:+-parallel $$FUZZPARALLEL} $${t%%:*} 2>&1); rc=$$?; \
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
