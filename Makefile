# sluice task runner: the same targets for people and CI (`make help`).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Debian packages sluice needs at run time and in tests (Debian 12).
#   iproute2, util-linux, procps  ip netns / nsenter / sysctl used by hostport and kernel tests
#   nftables, conntrack ......... host ports (nft maps) and UDP conntrack flushes
#   iptables .................... the bridge CNI plugin's ipMasq in the shipped conflist
#   containernetworking-plugins . CNI reference plugins (bridge, host-local, loopback) in /usr/lib/cni
#   python3 ..................... tiny TCP/UDP servers inside test network namespaces
#   docker-registry ............. a real OCI registry for the image tests (on 127.0.0.1)
#   busybox-static .............. the root filesystem of test images
#   attr ........................ getfattr, to check xattrs through overlayfs in tests
#   prometheus .................. a real Prometheus scrapes sluice in tests; promtool checks
#                                 the Grafana dashboard's queries
#   runc, conmon ................ the OCI runtime and the container monitor
#   curl, openssl ............... the HTTPS /metrics test (a self-signed certificate, a client)
DEB_PACKAGES := iproute2 util-linux procps nftables conntrack iptables containernetworking-plugins python3 ca-certificates docker-registry busybox-static attr prometheus runc conmon curl openssl
# Only for `make bench`: the skopeo + umoci baseline of the image pull benchmark.
BENCH_PACKAGES := skopeo umoci

RELEASE_BIN := target/release/sluice
CNI_CONF_DIR := /etc/cni/net.d

.PHONY: help
help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## Install the Debian packages and cargo tools sluice needs (idempotent, skips what is present)
	@$(MAKE) --no-print-directory install-debs PACKAGES="$(DEB_PACKAGES)"
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-nextest

.PHONY: install-debs
install-debs:
	@missing=(); for p in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$$p"); \
	done; \
	if [ $${#missing[@]} -gt 0 ]; then \
	  echo "installing: $${missing[*]}"; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$${missing[@]}"; \
	else echo "debian packages: all present"; fi

.PHONY: build
build: ## Build the release binary (target/release/sluice)
	$(CARGO) build --release -p sluice

.PHONY: run
run: deps build ## Install the default CNI config if none exists, then run the daemon in the foreground
	@if ! ls $(CNI_CONF_DIR)/*.conflist $(CNI_CONF_DIR)/*.conf $(CNI_CONF_DIR)/*.json >/dev/null 2>&1; then \
	  install -D -m 0644 config/cni/10-sluice-bridge.conflist $(CNI_CONF_DIR)/10-sluice-bridge.conflist; \
	  echo "installed the default CNI config in $(CNI_CONF_DIR)"; fi
	@echo "sluice: CRI socket unix:///run/sluice/sluice.sock (crictl --config config/crictl.yaml version)"
	exec $(RELEASE_BIN)

.PHONY: test
test: deps ## Run every test tier: unit, kernel (root) and end-to-end (root)
	$(CARGO) build -p sluice
	$(CARGO) nextest run --workspace --all-features --profile ci

.PHONY: test-unit
test-unit: ## Unit tests only (library and binary code, no privileges needed)
	$(CARGO) nextest run --workspace --all-features --lib --bins

.PHONY: test-kernel
test-kernel: deps ## Kernel tests of the subsystem crates (root: netns, nftables, CNI plugins)
	$(CARGO) nextest run --all-features -p nsmgr -p cnimgr -p hostport -p images -p oci --tests

.PHONY: test-e2e
test-e2e: deps ## End-to-end tests: the real daemon driven by a CRI client (root)
	$(CARGO) build -p sluice
	$(CARGO) nextest run -p sluice-e2e

.PHONY: lint
lint: ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: bench
bench: deps build ## Benchmarks (print p50/p90; run on a quiet machine)
	@$(MAKE) --no-print-directory install-debs PACKAGES="$(BENCH_PACKAGES)"
	SLUICE_BIN=$(CURDIR)/$(RELEASE_BIN) $(CARGO) bench -p sluice-e2e --bench daemon
	SLUICE_BIN=$(CURDIR)/$(RELEASE_BIN) $(CARGO) bench -p sluice-e2e --bench containers
	SLUICE_BIN=$(CURDIR)/$(RELEASE_BIN) $(CARGO) bench -p sluice-e2e --bench streaming
	SLUICE_BENCH_PID=pod SLUICE_BIN=$(CURDIR)/$(RELEASE_BIN) $(CARGO) bench -p sluice-e2e --bench pods
	for mode in plain metrics tracing; do \
	  SLUICE_BENCH_MODE=$$mode SLUICE_BIN=$(CURDIR)/$(RELEASE_BIN) $(CARGO) bench -p sluice-e2e --bench pods; \
	done
	$(CARGO) bench -p nsmgr --bench ns_latency
	$(CARGO) bench -p cnimgr --bench cni_add_del
	$(CARGO) bench -p hostport --bench hostport_scale
	$(CARGO) bench -p images --bench pull
	$(CARGO) bench -p oci --bench lifecycle
	$(CARGO) bench -p netpolicy --bench compile_scale
	$(CARGO) bench -p netpolicy --bench enforce_scale

# `make fuzz`: cargo-fuzz on the stable toolchain (RUSTC_BOOTSTRAP=1 lets stable rustc take the
# -Z flags libfuzzer needs). FUZZ_TARGET is spdy_frames (the frame decoder) or spdy_session (a
# server-role session fed arbitrary bytes); the seeds are the SPDY part of the captures.
FUZZ_DIR := crates/streaming/fuzz
FUZZ_TARGET ?= spdy_frames
FUZZ_TIME ?= 60
SPDY_VECTORS ?= $(or $(SLUICE_SPDY_VECTORS),$(CURDIR)/../shared/spdy-vectors)

.PHONY: fuzz
fuzz: ## Fuzz the SPDY decoder for FUZZ_TIME seconds (default 60; FUZZ_TARGET=spdy_session for the session)
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz
	@mkdir -p $(FUZZ_DIR)/corpus/$(FUZZ_TARGET)
	@if [ -d "$(SPDY_VECTORS)" ]; then \
	  python3 -c 'import pathlib, sys; \
	  out = pathlib.Path(sys.argv[2]); prefix = b"\x03" if sys.argv[3] == "spdy_frames" else b"\x07"; \
	  [ (out / f"seed-{d.name}-{n[0]}").write_bytes(prefix + b[b.index(b"\r\n\r\n") + 4:][:4096]) \
	    for d in sorted(pathlib.Path(sys.argv[1]).iterdir()) \
	    for n in (("c2s", "client-to-server.bin"), ("s2c", "server-to-client.bin")) \
	    if (d / n[1]).is_file() for b in [(d / n[1]).read_bytes()] ]' \
	    "$(SPDY_VECTORS)" "$(FUZZ_DIR)/corpus/$(FUZZ_TARGET)" "$(FUZZ_TARGET)"; \
	  echo "seeds: the SPDY captures in $(SPDY_VECTORS)"; \
	else echo "warning: no SPDY captures at $(SPDY_VECTORS) (set SLUICE_SPDY_VECTORS); fuzzing without seeds"; fi
	cd $(FUZZ_DIR) && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $(FUZZ_TARGET) -- -max_total_time=$(FUZZ_TIME)

.PHONY: clean
clean: ## Remove build output
	$(CARGO) clean
