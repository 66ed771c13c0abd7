# Tartarus: `make run` sets up this machine and starts a single-node server;
# `make test` runs the whole suite. Both install what is missing (as root).

GO        ?= go
BIN       := $(CURDIR)/bin
DATA_DIR  ?= $(if $(filter 0,$(shell id -u)),/var/lib/tartarus,$(HOME)/.tartarus)
# Where the tests keep built templates and runsc between runs.
TEST_DATA ?= /var/tmp/tartarus-test
# Restored sandboxes `make run` keeps ready per template (make run WARM_POOL=0
# turns the pool off); the node's memory capacity bounds them.
WARM_POOL ?= 1
STATICCHECK_VERSION := v0.8.2
export GOFLAGS := -buildvcs=false
SHELL     := /bin/bash

.PHONY: all build deps images run test vet staticcheck test-deps test-images bench clean

all: build

deps:
	@bash scripts/deps.sh

build:
	$(GO) build -o $(BIN)/tartarus ./cmd/tartarus
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/tartarus-guest ./cmd/tartarus-guest

images: deps build
	$(BIN)/tartarus template build --data-dir $(DATA_DIR) --all

run: images
	$(BIN)/tartarus server --data-dir $(DATA_DIR) $(if $(filter-out 0,$(WARM_POOL)),--prewarm --warm-pool $(WARM_POOL))

vet:
	$(GO) vet ./...

staticcheck:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

test-deps:
	@bash scripts/deps.sh --test
	@RUNSC_DIR=$(TEST_DATA)/bin bash scripts/runsc.sh >/dev/null
	@bash scripts/seaweedfs.sh $(TEST_DATA)/bin >/dev/null

# Templates are built once, before the tests, so test binaries running in
# parallel find them ready (the build is cached by the digest of its inputs).
test-images: test-deps build
	$(BIN)/tartarus template build --data-dir $(TEST_DATA) --all

# The whole suite: vet, staticcheck, benchmarks once, then unit and end-to-end tests under the
# race detector (the end-to-end ones boot real microVMs and start real Redis,
# dockerd, containerd and runsc; TARTARUS_E2E=1 turns a missing piece into a
# failure). Every benchmark runs once first, so they stay alive; the tests
# run last, so their summary closes the output.
test: test-images vet staticcheck
	TARTARUS_E2E=1 TARTARUS_REQUIRE_KAMPE=1 TARTARUS_TEST_DATA=$(TEST_DATA) TARTARUS_RUNSC=$(TEST_DATA)/bin/runsc TARTARUS_WEED=$(TEST_DATA)/bin/weed TARTARUS_REQUIRE_S3=1 \
		$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 20m ./...
	TARTARUS_E2E=1 TARTARUS_REQUIRE_KAMPE=1 TARTARUS_TEST_DATA=$(TEST_DATA) TARTARUS_RUNSC=$(TEST_DATA)/bin/runsc TARTARUS_WEED=$(TEST_DATA)/bin/weed TARTARUS_REQUIRE_S3=1 \
		$(GO) test -race -count=1 -timeout 60m ./... 2>&1 | tee $(BIN)/test.log; exit $${PIPESTATUS[0]}
	@echo "packages: $$(grep -c '^ok' $(BIN)/test.log) passed, $$(grep -c '^FAIL' $(BIN)/test.log) failed"

clean:
	rm -rf $(BIN)
