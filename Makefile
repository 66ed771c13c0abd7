# Tartarus: `make run` sets up this machine and starts a single-node server;
# `make test` runs the whole suite. Both install what is missing (as root).

GO        ?= go
BIN       := $(CURDIR)/bin
DATA_DIR  ?= $(if $(filter 0,$(shell id -u)),/var/lib/tartarus,$(HOME)/.tartarus)
export GOFLAGS := -buildvcs=false

.PHONY: all build deps images run test vet unit e2e bench clean

all: build

deps:
	@bash scripts/deps.sh

build:
	$(GO) build -o $(BIN)/tartarus ./cmd/tartarus
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/tartarus-guest ./cmd/tartarus-guest

images: deps build
	$(BIN)/tartarus template build --data-dir $(DATA_DIR) --all

run: images
	$(BIN)/tartarus server --data-dir $(DATA_DIR)

vet:
	$(GO) vet ./...

test: deps build vet
	$(GO) test -race -count=1 ./...
