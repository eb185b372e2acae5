# The same targets for developers and CI.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
DEBS   := nftables python3-nftables python3-venv iproute2 iputils-ping nginx-light curl wrk haproxy \
          netsniff-ng keepalived resource-agents libxml2-utils pacemaker corosync pcs crmsh
# `make deb`: Debian's tools and the build dependencies of debian/control (installed by `deb`
# only, after the .venv exists, so that its PyPI packages stay what pip chose).
DEB_BUILD_DEBS := dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all \
          python3-setuptools python3-click help2man bash-completion
DEB_OUT := build/deb
PYTEST ?= $(PY) -m pytest

.PHONY: setup demo test test-unit test-lab lint check bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-debs.sh Makefile
	sh scripts/setup-debs.sh $(DEBS)
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(PY) -m clusterip.lab.demo

test: setup
	$(PYTEST) -q

test-unit: setup
	$(PYTEST) -q tests/unit

test-lab: setup
	$(PYTEST) -q tests/lab

lint: setup
	$(VENV)/bin/ruff check clusterip tests bench
	$(VENV)/bin/ruff format --check clusterip tests bench
	$(VENV)/bin/mypy

# What CI runs (.ci/run), the same for developers: lint, types, then every test.
check: lint test

bench: setup
	$(PY) -m bench

# The Debian package: $(DEB_OUT)/clusterip_VERSION_all.deb (see docs/install.md).
.PHONY: deb
deb:
	sh scripts/setup-debs.sh $(DEB_BUILD_DEBS)
	bash packaging/build-deb.sh $(DEB_OUT)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache build

# --- XDP pre-filter (issue 15): BPF objects built with Debian's clang against UAPI headers ---
DEBS       += clang libbpf-dev dpkg-dev
BPF_TRIPLE  = $(shell dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -dumpmachine)
BPF_CFLAGS  = -O2 -g -target bpf -Wall -Werror -I/usr/include/$(BPF_TRIPLE)
BPF_OBJS   := clusterip/xdp/clusterip_xdp.o bench/xdp_gen.o

.PHONY: bpf
setup: bpf
bpf: $(BPF_OBJS)

clusterip/xdp/clusterip_xdp.o: bpf/clusterip_xdp.c | $(STAMP)
	clang $(BPF_CFLAGS) -c $< -o $@

bench/xdp_gen.o: bpf/xdp_gen.c | $(STAMP)
	clang $(BPF_CFLAGS) -c $< -o $@

.PHONY: bpf-clean
clean: bpf-clean
bpf-clean:
	rm -f $(BPF_OBJS)

# --- the agent's live status page (issue 14): its lab test loads it in headless Chromium ---
DEBS       += chromium
