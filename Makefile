# boardnbd build. `make` builds for this machine; `make GOARCH=arm64` (or
# GOARCH=arm GOARM=6|7, riscv64, amd64) cross-builds a static binary.
# `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build
MAKEFLAGS += --no-builtin-rules

GO      ?= go
GOOS    ?= $(shell $(GO) env GOOS)
GOARCH  ?= $(shell $(GO) env GOARCH)
GOARM   ?= $(if $(filter arm,$(GOARCH)),7,)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

# bin/linux-arm64/boardnbd, bin/linux-armv6/boardnbd, ...
TARGET  := $(GOOS)-$(GOARCH)$(if $(GOARM),v$(GOARM),)
BIN     := bin/$(TARGET)/boardnbd
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
FUZZTIME ?= 10s

.PHONY: help build test deps lint fuzz clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

build: ## build bin/GOOS-GOARCH/boardnbd (static, stripped, version stamped)
	CGO_ENABLED=0 GOOS=$(GOOS) GOARCH=$(GOARCH) GOARM=$(GOARM) \
		$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/boardnbd
	@echo "built $(BIN) ($$(stat -c %s $(BIN)) bytes)"

deps: ## install the real NBD clients and tools the tests use (Debian, as root)
	.ci/deps

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test: deps lint ## install test tools, lint, and run every test with the race detector
	$(GO) test -race -count=1 -timeout 20m ./...

fuzz: ## run each fuzz target for FUZZTIME (default 10s)
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

clean: ## remove build output
	rm -rf bin dist
