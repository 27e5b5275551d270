# One entry point for a fresh machine: `make test` installs what the tests need
# (Debian packages for the real peers, a venv with the package) and runs them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEB_PACKAGES := isc-dhcp-server isc-dhcp-client isc-dhcp-relay udhcpc dhcpcd5 dnsmasq \
	tftpd-hpa tftp-hpa atftp curl nginx bind9 bind9-utils nftables iptables \
	kea-dhcp4-server kea-admin etcd-server etcd-client openipmi ipmitool nix-bin \
	ipxe ipxe-qemu ovmf qemu-system-x86 qemu-utils busybox-static iproute2 openssl postgresql \
	linux-image-cloud-amd64 cpio openssh-server openssh-client wrk strace \
	mmdebstrap syslinux syslinux-common mtools dosfstools zstd e2fsprogs fdisk kmod \
	chromium chromium-driver
STAMP := $(VENV)/.installed

.PHONY: deps venv test unit lint lab demo clean

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

test: deps venv lint
	$(BIN)/pytest -q -ra

lab: deps venv
	$(BIN)/plasmaboot lab up --nodes 4 --teardown

clean:
	rm -rf $(VENV) build *.egg-info

demo: venv
	$(BIN)/plasmaboot inventory check -c examples/lab/cluster.yaml
	$(BIN)/plasmaboot inventory import -c examples/lab/cluster.yaml --state-dir build/demo-state
	$(BIN)/plasmaboot node list --state-dir build/demo-state
