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
# A count of runs, not a duration: Go 1.26's fuzz coordinator can fail a
# target with a bare "context deadline exceeded" when a -fuzztime duration
# ends while a worker is busy (go.dev/issue/75804, fixed in Go 1.27). A count
# sets no deadline. 100000 runs take 2 to 15 s per target here.
FUZZTIME ?= 100000x

.PHONY: help build test deps lint fuzz clean dist package sizes install pkg-version nfpm-tool FORCE bench bench-onecore bench-board

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## build bin/GOOS-GOARCH/boardnbd (static, stripped, version stamped)
	CGO_ENABLED=0 GOOS=$(GOOS) GOARCH=$(GOARCH) GOARM=$(GOARM) \
		$(GO) build -trimpath $(if $(TAGS),-tags $(TAGS),) -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/boardnbd
	@echo "built $(BIN) ($$(stat -c %s $(BIN)) bytes)"

deps: ## install the real NBD clients and tools the tests use (Debian, as root)
	.ci/deps

lint: ## gofmt and go vet, here and for a non-Linux Unix and a non-Unix system
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOOS=freebsd $(GO) vet ./nbd/...
	GOOS=windows $(GO) vet ./nbd/...

test: deps lint ## install test tools, lint, and run every test with the race detector
	$(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -count=1 -tags pprof -run Pprof ./cmd/boardnbd/

bench: ## compare boardnbd with nbdkit, nbd-server and qemu-nbd on loopback (root, ~10 min; BENCHFLAGS=-quick for a smoke run)
	$(GO) run ./cmd/nbdbench $(BENCHFLAGS)

bench-onecore: ## the same with every server pinned to the last CPU and the clients to the others, as on a one-core board
	$(GO) run ./cmd/nbdbench -server-cpus=$$(( $$(nproc) - 1 )) $(BENCHFLAGS)

bench-board: ## the same again with every server held to 0.3 of that CPU (a cgroup quota), as on a board slower than its clients
	$(GO) run ./cmd/nbdbench -server-cpus=$$(( $$(nproc) - 1 )) -server-quota=0.3 $(BENCHFLAGS)

fuzz: ## run each fuzz target FUZZTIME times (default 100000x)
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

clean: ## remove build output
	rm -rf bin $(DISTDIR)

# ---- Releases: dist, package, sizes, install ---------------------------------
# Every release target is one run of the build recipe above with BIN pointed
# into $(DISTDIR), so dist binaries are built exactly as `make GOARCH=...` is.

# Evaluate `git describe` once: other commits may land during a long build,
# and every file of one release must carry the same version.
VERSION := $(VERSION)
COMMIT  := $(COMMIT)
DISTDIR     ?= dist
# Target names as bin/ spells them (linux-<name>); armvN means GOARCH=arm GOARM=N.
DIST_TARGETS := amd64 arm64 armv6 armv7 riscv64
PKG_FORMATS  := deb rpm apk
MAINTAINER  ?= boardnbd maintainers <maintainers@boardnbd.invalid>
# File times in the packages: the last commit's, so a rebuild is identical.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
SOURCE_DATE_EPOCH := $(SOURCE_DATE_EPOCH)

dist_name  = $(DISTDIR)/boardnbd-$(VERSION)-linux-$(1)
DIST_BINS := $(foreach t,$(DIST_TARGETS),$(call dist_name,$(t)))
DIST_PKGS := $(foreach t,$(DIST_TARGETS),$(foreach f,$(PKG_FORMATS),$(call dist_name,$(t)).$(f)))
goarch_of  = $(if $(filter armv%,$(1)),arm,$(1))
goarm_of   = $(patsubst armv%,%,$(filter armv%,$(1)))
# nfpm's architecture names: GOARCH, with arm6/arm7 for the two ARMs.
nfpmarch_of = $(if $(filter armv%,$(1)),arm$(call goarm_of,$(1)),$(1))

# Package versions must start with a digit and sort upwards, which a bare
# commit hash (no tag yet) does not. From `git describe`:
#   v1.2.3 -> 1.2.3;  v1.2.3-5-gabc1234[-dirty] -> 1.2.3+git5.abc1234[.dirty];
#   abc1234 (no tag) -> 0.0.0+git0.abc1234.
# Alpine allows no letters after a suffix number, so apk gets 1.2.3_git5.
PKG_VERSION ?= $(shell printf '%s\n' '$(VERSION)' | sed -E 's/-dirty$$/.dirty/; \
	s/^([0-9a-f]{7,40})(\.dirty)?$$/0.0.0+git0.\1\2/; s/^v([0-9])/\1/; \
	s/^([0-9][0-9.]*)-([0-9]+)-g([0-9a-f]+)(\.dirty)?$$/\1+git\2.\3\4/')
APK_VERSION ?= $(shell printf '%s\n' '$(PKG_VERSION)' | sed -E 's/^([0-9][0-9.]*)\+git([0-9]+)\..*$$/\1_git\2/; s/[+~-].*$$//')
PKG_VERSION := $(PKG_VERSION)
APK_VERSION := $(APK_VERSION)
PKG_WORK    := $(DISTDIR)/.pkg
MANPAGES    := boardnbd.8 boardnbd.yaml.5
PKG_INPUTS  := packaging/nfpm.yaml packaging/boardnbd.service packaging/boardnbd.socket \
	packaging/boardnbd.openrc packaging/boardnbd.confd packaging/boardnbd.sysusers \
	packaging/config.yaml packaging/postinstall.sh packaging/preremove.sh \
	$(foreach m,$(MANPAGES),$(PKG_WORK)/$(m).gz)

dist: $(DIST_BINS) ## build every release target into dist/, with SHA256SUMS
	cd $(DISTDIR) && sha256sum $(notdir $(DIST_BINS)) > SHA256SUMS
	@echo "wrote $(DISTDIR)/SHA256SUMS"

$(DIST_BINS): $(call dist_name,%): FORCE
	@$(MAKE) --no-print-directory build GOOS=linux GOARCH=$(call goarch_of,$*) GOARM=$(call goarm_of,$*) \
		VERSION='$(VERSION)' COMMIT='$(COMMIT)' BIN='$@'

package: $(DIST_BINS) $(DIST_PKGS) ## build .deb, .rpm and .apk for every target with nfpm (a go tool)
	cd $(DISTDIR) && sha256sum $(notdir $(DIST_BINS) $(DIST_PKGS)) > SHA256SUMS
	@echo "wrote $(DISTDIR)/SHA256SUMS"

# One rule per format: dist/boardnbd-V-linux-T.FMT from dist/boardnbd-V-linux-T.
define pkg_rule
$(filter %.$(1),$(DIST_PKGS)): $(call dist_name,%).$(1): $(call dist_name,%) $(PKG_INPUTS) | nfpm-tool
	BOARDNBD_BINARY='$$<' BOARDNBD_ARCH='$$(call nfpmarch_of,$$*)' \
	BOARDNBD_VERSION='$(if $(filter apk,$(1)),$$(APK_VERSION),$$(PKG_VERSION))' \
	BOARDNBD_MANDIR='$$(PKG_WORK)' BOARDNBD_MAINTAINER='$$(MAINTAINER)' SOURCE_DATE_EPOCH='$$(SOURCE_DATE_EPOCH)' \
		$$(GO) tool nfpm package --config packaging/nfpm.yaml --packager $(1) --target '$$@' >/dev/null
	@echo "packaged $$@"
endef
$(foreach f,$(PKG_FORMATS),$(eval $(call pkg_rule,$(f))))

# Build nfpm once before parallel package rules all ask for it.
nfpm-tool:
	@$(GO) tool nfpm --version >/dev/null

$(PKG_WORK)/%.gz: packaging/%
	@mkdir -p $(@D)
	gzip -9nc $< > $@

pkg-version: # print the package versions derived from VERSION (for tests)
	@echo "$(PKG_VERSION) $(APK_VERSION)"

sizes: $(DIST_BINS) ## print the size of each release binary as a markdown table
	@echo "| target | build | size |"
	@echo "| --- | --- | --- |"
	@for t in $(DIST_TARGETS); do \
		f=$(DISTDIR)/boardnbd-$(VERSION)-linux-$$t; \
		case $$t in armv*) how="make GOARCH=arm GOARM=$${t#armv}" ;; *) how="make GOARCH=$$t" ;; esac; \
		n=$$(stat -c %s "$$f"); \
		printf '| linux-%s | `%s` | %s MiB (%s bytes) |\n' "$$t" "$$how" "$$(awk -v n=$$n 'BEGIN{printf "%.1f", n/1048576}')" "$$n"; \
	done

# install: `make install` puts the binary in $(PREFIX)/bin (users run
# `boardnbd check` and `demo` too, and /usr/sbin is not in their PATH), man
# pages, the systemd units (INIT=openrc: the OpenRC script; INIT=none:
# neither) and, only if there is none yet, /etc/boardnbd/config.yaml.
# DESTDIR stages it all for a package or a Buildroot target tree; without
# DESTDIR, as root, it also creates the boardnbd user.
PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
MANDIR      ?= $(PREFIX)/share/man
SYSCONFDIR  ?= /etc
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
INIT        ?= systemd

install: build ## install BIN, man pages, units (INIT=systemd|openrc|none), config if absent; honours DESTDIR, PREFIX
	@case '$(INIT)' in systemd|openrc|none) ;; *) echo "INIT=$(INIT): want systemd, openrc or none" >&2; exit 2 ;; esac
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/boardnbd
	install -D -m 0644 packaging/boardnbd.8 $(DESTDIR)$(MANDIR)/man8/boardnbd.8
	install -D -m 0644 packaging/boardnbd.yaml.5 $(DESTDIR)$(MANDIR)/man5/boardnbd.yaml.5
	install -D -m 0644 packaging/boardnbd.sysusers $(DESTDIR)$(SYSUSERSDIR)/boardnbd.conf
	@if [ '$(INIT)' = systemd ]; then \
		set -x; \
		install -d -m 0755 $(DESTDIR)$(UNITDIR); \
		sed 's|/usr/bin/boardnbd|$(BINDIR)/boardnbd|g' packaging/boardnbd.service > $(DESTDIR)$(UNITDIR)/boardnbd.service; \
		install -m 0644 packaging/boardnbd.socket $(DESTDIR)$(UNITDIR)/boardnbd.socket; \
	fi
	@if [ '$(INIT)' = openrc ]; then \
		set -x; \
		install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/init.d $(DESTDIR)$(SYSCONFDIR)/conf.d; \
		sed 's|/usr/bin/boardnbd|$(BINDIR)/boardnbd|g' packaging/boardnbd.openrc > $(DESTDIR)$(SYSCONFDIR)/init.d/boardnbd; \
		chmod 0755 $(DESTDIR)$(SYSCONFDIR)/init.d/boardnbd; \
		[ -e $(DESTDIR)$(SYSCONFDIR)/conf.d/boardnbd ] || install -m 0644 packaging/boardnbd.confd $(DESTDIR)$(SYSCONFDIR)/conf.d/boardnbd; \
	fi
	@conf=$(DESTDIR)$(SYSCONFDIR)/boardnbd/config.yaml; \
	if [ -e "$$conf" ]; then echo "kept $$conf (packaging/config.yaml is the shipped default)"; \
	else set -x; install -D -m 0644 packaging/config.yaml "$$conf"; fi
	@if [ -z '$(DESTDIR)' ] && [ "$$(id -u)" -eq 0 ]; then sh packaging/postinstall.sh configure; fi

FORCE:
