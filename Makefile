# bkg — build, test and release tasks. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: help setup build build-release test schema-validate security lint fmt demo bench soak clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: ## Install the system packages bkg and its tests need (idempotent; Debian, as root)
	@bash scripts/setup.sh

build: ## Debug build of every binary
	$(CARGO) build --workspace --locked

build-release: ## Optimised build for this machine: target/release/{bkg,bkgr,bkg-agent} (`make release` makes the published one)
	$(CARGO) build --workspace --release --locked

# The ten-minute service test runs in the background beside the rest (scripts/background-test.sh).
LONG_TEST := services::a_service_keeps_answering_for_ten_minutes_and_stops_cleanly

test: setup build ## Every test: unit, integration, end-to-end, schema and API checks, the security suite (as root)
	bash scripts/check-leftovers.sh --snapshot target/leftovers-before
ifeq ($(NEXTEST),yes)
	bash scripts/background-test.sh start service-ten-minutes 'test(=$(LONG_TEST))'
	$(CARGO) nextest run --workspace --locked --no-fail-fast || { bash scripts/background-test.sh stop service-ten-minutes; exit 1; }
else
	$(CARGO) test --workspace --locked --no-fail-fast
	$(CARGO) test -p bkg-tests --test e2e --locked -- --ignored --exact $(LONG_TEST)
endif
ifeq ($(NEXTEST),yes)
	$(MAKE) schema-validate api-validate ui-browser security api-fuzz || { bash scripts/background-test.sh stop service-ten-minutes; exit 1; }
else
	$(MAKE) schema-validate api-validate ui-browser security api-fuzz
endif
ifeq ($(NEXTEST),yes)
	bash scripts/background-test.sh wait service-ten-minutes
endif
	bash scripts/check-leftovers.sh --before target/leftovers-before

schema-validate: ## Validate examples/ against schema/cave.schema.json with ajv (independent of the CLI)
	cd schema && npm ci --no-audit --no-fund --loglevel=error
	bash schema/validate-examples.sh

security: build ## The threat-matrix suite (docs/security.md); skips count as failures
	BKG_SECURITY_STRICT=1 python3 -m pytest -q security/

lint: ## rustfmt, clippy (warnings are errors), cargo-deny (licences, bans, duplicates, sources, advisories: deny.toml)
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	bash scripts/release/deny.sh

fmt: ## Format the code
	$(CARGO) fmt --all

demo: setup build-release ## Run examples/hello.py in a sandbox (starts an agent if none runs)
	./target/release/bkg exe examples/hello.py

soak: setup build ## About 10 minutes of mixed load, hostile clients and agent restarts; fails on leftovers or open records (bench/soak.py)
	python3 bench/soak.py

bench: setup ## Startup, throughput and memory benchmarks (see bench/README.md)
	bash bench/run.sh

clean: ## Remove build output
	$(CARGO) clean

# The agent's HTTP API: its OpenAPI document is generated from the code, checked in, validated by
# an independent validator and fuzzed against a live agent.
.PHONY: api-schema api-validate api-fuzz ui-browser

api-schema: ## Write schema/openapi.yaml from the code (bkg-agent --print-openapi)
	$(CARGO) build -p bkg-agent --locked
	./target/debug/bkg-agent --print-openapi > schema/openapi.yaml.new
	mv schema/openapi.yaml.new schema/openapi.yaml

api-validate: ## Validate schema/openapi.yaml as OpenAPI 3.1 with @seriousme/openapi-schema-validator (npm)
	cd schema && npm ci --no-audit --no-fund --loglevel=error
	cd schema && npx --no-install validate-api openapi.yaml

ui-browser: setup build ## The Web UI in Debian's chromium (playwright-core, axe-core); screenshots in target/ui-screenshots (as root)
	bash scripts/ui-browser.sh

api-fuzz: setup build ## schemathesis against a live agent on loopback TCP: no 5xx, every answer as documented (as root)
	bash scripts/schemathesis.sh

# Shell completions, man pages and docs/env.md, generated from the clap definitions (and, for
# env.md, the variables the sources read) and checked in; a test (cargo test -p xtask) fails
# when they are out of date.
.PHONY: completions man env-doc

completions: ## Write completions/ (bash, zsh, fish) for bkg, bkgr and bkg-agent
	$(CARGO) run -p xtask --locked -- completions

man: ## Write docs/man/: a page per command of bkg and bkgr (section 1) and bkg-agent (section 8)
	$(CARGO) run -p xtask --locked -- man

env-doc: ## Write docs/env.md: every flag of bkg, bkgr and bkg-agent and every environment variable the code reads
	$(CARGO) run -p xtask --locked -- env-doc

# The release (docs/release.md): reproducible binaries, a tarball and a .deb, SBOMs, SLSA
# provenance, SHA256SUMS and cosign-compatible signatures, all in dist/.
.PHONY: release release-bins deb tarball sbom slsa sign verify repro-check deb-test

release: release-bins ## dist/: tarball, .deb, SHA256SUMS, an SBOM per binary, provenance, signatures (reproducible)
	rm -rf dist
	bash scripts/release/package.sh
	bash scripts/release/sbom.sh
	bash scripts/release/slsa.sh
	bash scripts/release/sign.sh

release-bins: ## The three binaries, built reproducibly into target/dist/release
	bash scripts/release/build.sh

deb: release-bins ## dist/bkg_VERSION_ARCH.deb: binaries, completions, man pages, systemd unit and socket, /etc/bkg
	bash scripts/release/package.sh deb

tarball: release-bins ## dist/bkg-VERSION-TRIPLE.tar.gz: the same files, to unpack under /usr/local
	bash scripts/release/package.sh tarball

sbom: ## dist/NAME.cdx.json: a CycloneDX SBOM per binary (cargo-cyclonedx)
	bash scripts/release/sbom.sh

slsa: ## dist/bkg-VERSION.intoto.json: in-toto statement with SLSA v1 provenance of dist/
	bash scripts/release/slsa.sh

sign: ## dist/SHA256SUMS and FILE.sig for every file (COSIGN_KEY, ./cosign.key or an ephemeral key)
	bash scripts/release/sign.sh

verify: ## Check dist/ (digests, signatures, provenance), then that one changed byte in any file fails it
	bash scripts/release/verify.sh
	bash scripts/release/verify_tamper.sh

repro-check: ## Build this commit again in another directory and compare with dist/ byte for byte (slow)
	bash scripts/release/repro_check.sh

deb-test: ## Install dist/'s .deb on a clean Debian (debootstrap + overlay), run hello.py through the socket-activated agent, purge (as root)
	bash scripts/release/deb_test.sh
