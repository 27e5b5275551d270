"""Every rendered file of both shipped inventories passes the real tool that consumes it.

Also the fleet forms (`lab+racks`, `plasmacloud+racks`): two rack networks behind relays
added, one of them with a relay address outside its subnet, so every target renders one
subnet per network and each rack's node its own network settings.

Kea and nginx bind/select the inventory's interface and address even with -t, so they run
in a network namespace of this test's own (pbr-*) holding exactly that interface and address.
Each validator is also fed a deliberately broken file, to show the check can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plasmaboot.firstboot.schema import validate_cluster_config
from plasmaboot.inventory import Inventory, load_inventory, parse_inventory
from plasmaboot.render import RenderContext, render, write_files
from plasmaboot.render.kea import render_kea

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
INVENTORIES = ["plasmacloud", "lab"]


def require(binary: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if path is None:
        print(f"SKIP reason: {binary} is not installed")
        pytest.skip(f"{binary} is not installed")
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0


def _lab_with_overrides() -> Inventory:
    """The lab plus a two-NIC node with PXE and HTTP-boot overrides: the branches the
    shipped inventories leave unused."""
    import yaml

    data = yaml.safe_load((EXAMPLES / "lab" / "cluster.yaml").read_text())
    data["nodes"][0]["macs"].append("52:54:00:aa:bb:cc")
    data["nodes"][0]["boot_overrides"] = {"7": "snponly.efi", "16": "ipxe-http.efi"}
    return parse_inventory(data)


def _with_racks(name: str) -> Inventory:
    """`name` plus two rack networks behind relays (a /24 and a /25, one relay address
    outside its subnet) and a worker on each (with a production address where there is a
    production network): several provisioning networks."""
    import yaml

    data = yaml.safe_load((EXAMPLES / name / "cluster.yaml").read_text())
    production = any(net["name"] == "production" for net in data["networks"])
    for rack, subnet, prefix, relays in (
        (1, "10.78.1.0", 24, ["10.79.0.1"]),
        (2, "10.78.2.0", 25, []),
    ):
        base = subnet.rsplit(".", 1)[0]
        data["networks"].append(
            {
                "name": f"rack{rack}",
                "vlan": 200 + rack,
                "subnet": f"{subnet}/{prefix}",
                "gateway": f"{base}.1",
                "dns": [f"{base}.53"],
                "dhcp": {
                    "mode": "full",
                    "pool": {"start": f"{base}.100", "end": f"{base}.120"},
                    "lease_time": 900 * rack,
                    "relays": relays,
                },
            }
        )
        data["nodes"].append(
            {
                "hostname": f"rack{rack}n1",
                "macs": [f"52:54:00:78:0{rack}:01"],
                "profile": "worker",
                "provisioning_ip": f"{base}.20",
                "disk": "/dev/vda",
                **({"production_ip": f"10.0.200.{40 + rack}"} if production else {}),
            }
        )
    return parse_inventory(data)


@pytest.fixture(params=[*INVENTORIES, "lab+overrides", "lab+racks", "plasmacloud+racks"])
def inv(request: pytest.FixtureRequest) -> Inventory:
    if request.param == "lab+overrides":
        return _lab_with_overrides()
    if request.param.endswith("+racks"):
        return _with_racks(request.param.removesuffix("+racks"))
    return load_inventory(EXAMPLES / request.param / "cluster.yaml")


@pytest.fixture
def rendered(inv: Inventory, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    write_files(out, render("all", inv, RenderContext()))
    return out


@pytest.fixture
def server_netns(inv: Inventory) -> Iterator[str]:
    """A namespace with the inventory's DHCP interfaces, the server address on the first."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    require("ip")
    name = f"pbr-v{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        interfaces = [n.dhcp.interface for n in inv.networks if n.dhcp and n.dhcp.interface]
        for index, interface in enumerate(interfaces or ["eth0"]):
            # A veth pair (the peer stays inside too): dummy links need a module not always there.
            link = ["ip", "-n", name, "link", "add", interface, "type", "veth"]
            subprocess.run([*link, "peer", "name", f"pbr-peer{index}"], check=True)
            subprocess.run(["ip", "-n", name, "link", "set", interface, "up"], check=True)
            if index == 0:
                prefix = inv.provisioning.subnet.prefixlen
                address = f"{inv.server.provisioning_ip}/{prefix}"
                add = ["ip", "-n", name, "addr", "add", address, "dev", interface]
                subprocess.run(add, check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_every_dhcp_target_has_a_block_per_served_network(inv: Inventory, rendered: Path) -> None:
    """What the validators below accept holds every network (the lab+racks case has three)."""
    dhcpd = (rendered / "dhcpd" / "dhcpd.conf").read_text()
    kea = json.loads((rendered / "kea" / "kea-dhcp4.json").read_text())
    dnsmasq = (rendered / "dnsmasq" / "dnsmasq.conf").read_text()
    for net in inv.dhcp_networks:
        assert f"subnet {net.subnet.network_address} netmask {net.subnet.netmask} {{" in dhcpd
        assert str(net.subnet) in [s["subnet"] for s in kea["Dhcp4"]["subnet4"]]
        assert f",{net.subnet.netmask}," in dnsmasq


def test_dhcpd_accepts_the_rendered_config(rendered: Path) -> None:
    dhcpd = require("dhcpd")
    result = run(dhcpd, "-4", "-t", "-cf", str(rendered / "dhcpd" / "dhcpd.conf"))
    assert ok(result), result.stderr


def test_kea_accepts_the_rendered_config(inv: Inventory, tmp_path: Path, server_netns: str) -> None:
    kea = require("kea-dhcp4")
    files = render_kea(inv, RenderContext(), lease_file=str(tmp_path / "kea-leases4.csv"))
    write_files(tmp_path, files)
    result = run("ip", "netns", "exec", server_netns, kea, "-t", str(tmp_path / "kea-dhcp4.json"))
    assert ok(result), result.stdout + result.stderr


def test_dnsmasq_accepts_the_rendered_config(rendered: Path) -> None:
    dnsmasq = require("dnsmasq")
    result = run(dnsmasq, "--test", "-C", str(rendered / "dnsmasq" / "dnsmasq.conf"))
    assert ok(result), result.stderr
    assert "syntax check OK" in result.stderr + result.stdout


def test_nginx_accepts_the_rendered_config(rendered: Path, server_netns: str) -> None:
    nginx = require("nginx")
    prefix = rendered / "nginx"
    result = run(
        "ip", "netns", "exec", server_netns,
        nginx, "-t", "-p", str(prefix), "-c", "nginx.conf", "-e", str(prefix / "error.log"),
    )  # fmt: skip
    assert ok(result), result.stderr


def test_named_checkzone_accepts_every_zone(inv: Inventory, rendered: Path) -> None:
    checkzone = require("named-checkzone")
    zones = sorted((rendered / "zones").glob("*.zone"))
    assert f"{inv.cluster.domain}.zone" in [z.name for z in zones]
    assert any(z.name.endswith(".in-addr.arpa.zone") for z in zones)
    for zone in zones:
        origin = zone.name.removesuffix(".zone")
        result = run(checkzone, "-k", "fail", "-m", "fail", "-M", "fail", origin, str(zone))
        assert ok(result), result.stdout


def test_named_checkconf_loads_the_zone_statements(rendered: Path) -> None:
    checkconf = require("named-checkconf")
    zones = rendered / "zones"
    wrapper = zones / "named.conf.test"
    wrapper.write_text(
        f'options {{ directory "{zones}"; }};\ninclude "{zones}/named.conf.zones";\n'
    )
    result = run(checkconf, "-z", str(wrapper))
    assert ok(result), result.stdout + result.stderr


def test_nft_accepts_every_ruleset(rendered: Path) -> None:
    nft = require("nft")
    rulesets = sorted((rendered / "nftables").rglob("*.nft"))
    assert len(rulesets) == 4  # three profiles and the provisioning server
    for ruleset in rulesets:
        result = run(nft, "-c", "-f", str(ruleset))
        assert ok(result), f"{ruleset.name}: {result.stderr}"


def test_iptables_restore_accepts_every_ruleset(rendered: Path) -> None:
    restore, restore6 = require("iptables-restore"), require("ip6tables-restore")
    files = sorted((rendered / "iptables").rglob("*.rules*"))
    assert len(files) == 8  # IPv4 and IPv6 for three profiles and the provisioning server
    for rules in files:
        result = run(restore6 if rules.suffix == ".rules6" else restore, "--test", str(rules))
        assert ok(result), f"{rules.name}: {result.stderr}"


def test_nix_parses_every_nix_file(rendered: Path) -> None:
    instantiate = require("nix-instantiate")
    nix_files = sorted(rendered.rglob("*.nix"))
    assert len(nix_files) >= 10
    for nix_file in nix_files:
        result = run(instantiate, "--parse", str(nix_file))
        assert ok(result), f"{nix_file}: {result.stderr}"


def test_nix_parses_the_package_expression() -> None:
    instantiate = require("nix-instantiate")
    result = run(instantiate, "--parse", str(EXAMPLES.parent / "nix" / "plasmaboot.nix"))
    assert ok(result), result.stderr


def _debian_root(tree: Path, root: Path) -> Path:
    """A Debian 12 root for `systemd-analyze verify --root`: this machine's unit files (etcd's
    from etcd-server among them) plus one node's rendered tree. verify also wants every
    ExecStart binary under the root; /usr/bin/plasmaboot and /usr/bin/etcd are stand-in
    scripts there (the real etcd runs from these files in test_render_etcd.py)."""
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", symlinks=True)
    shutil.copytree(tree, root, dirs_exist_ok=True)
    for binary in ("plasmaboot", "etcd"):
        stand_in = root / "usr/bin" / binary
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
    return root


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    """Every unit the tree installs, loaded as systemd would (drop-ins included); any
    message, even a warning such as an unknown key, counts as a failure."""
    analyze = require("systemd-analyze")
    if not Path("/lib/systemd/system/etcd.service").exists():
        print("SKIP reason: etcd-server is not installed (no Debian etcd.service)")
        pytest.skip("etcd-server is not installed")
    units = sorted(p.name for p in (root / "etc/systemd/system").iterdir() if p.is_file())
    return run(analyze, "verify", f"--root={root}", "etcd.service", *units)


def test_systemd_verifies_every_debian_node_tree(tmp_path: Path) -> None:
    inv = load_inventory(EXAMPLES / "lab" / "cluster.yaml")
    write_files(tmp_path / "out", render("systemd", inv, RenderContext()))
    for node in inv.nodes:
        root = _debian_root(tmp_path / "out" / "nodes" / node.hostname, tmp_path / node.hostname)
        result = _verify(root)
        assert ok(result) and not (result.stdout + result.stderr).strip(), (
            f"{node.hostname}: {result.stdout}{result.stderr}"
        )


def test_systemd_verify_rejects_a_broken_drop_in(tmp_path: Path) -> None:
    inv = load_inventory(EXAMPLES / "lab" / "cluster.yaml")
    write_files(tmp_path / "out", render("systemd", inv, RenderContext()))
    root = _debian_root(tmp_path / "out" / "nodes" / "node04", tmp_path / "root")
    drop_in = root / "etc/systemd/system/etcd.service.d/plasmaboot.conf"
    drop_in.write_text(drop_in.read_text() + "EnvironmentFiles=/nowhere\n")
    result = _verify(root)
    assert "Unknown key 'EnvironmentFiles'" in result.stdout + result.stderr


def test_every_cluster_config_on_disk_is_schema_valid_and_private(
    inv: Inventory, rendered: Path
) -> None:
    configs = sorted((rendered / "cluster-config").glob("*/cluster-config.json"))
    assert len(configs) == len(inv.nodes)
    for config in configs:
        assert validate_cluster_config(json.loads(config.read_text())) == [], config
        assert config.stat().st_mode & 0o777 == 0o600


def _with_mode(mode: str) -> Inventory:
    import yaml

    data = yaml.safe_load((EXAMPLES / "lab" / "cluster.yaml").read_text())
    data["networks"][0]["dhcp"]["mode"] = mode
    if mode != "full":
        del data["networks"][0]["dhcp"]["pool"]
    return parse_inventory(data)


@pytest.mark.parametrize("mode", ["full", "reservation", "proxy"])
def test_dnsmasq_accepts_every_dhcp_mode(mode: str, tmp_path: Path) -> None:
    dnsmasq = require("dnsmasq")
    write_files(tmp_path, render("dnsmasq", _with_mode(mode), RenderContext()))
    result = run(dnsmasq, "--test", "-C", str(tmp_path / "dnsmasq.conf"))
    assert ok(result), result.stderr


def test_dhcpd_accepts_reservation_only_mode(tmp_path: Path) -> None:
    dhcpd = require("dhcpd")
    write_files(tmp_path, render("dhcpd", _with_mode("reservation"), RenderContext()))
    conf = tmp_path / "dhcpd.conf"
    assert "range " not in conf.read_text()
    result = run(dhcpd, "-4", "-t", "-cf", str(conf))
    assert ok(result), result.stderr


def test_nginx_serves_the_rendered_boot_tree(
    inv: Inventory, rendered: Path, server_netns: str
) -> None:
    nginx = require("nginx")
    prefix = rendered / "nginx"
    shutil.copytree(rendered / "ipxe", prefix / "www" / "boot" / "ipxe")
    # pytest temp dirs are 0700: let the workers run as root rather than as nobody.
    server = subprocess.Popen(
        [
            "ip", "netns", "exec", server_netns, nginx, "-p", str(prefix), "-c", "nginx.conf",
            "-e", str(prefix / "error.log"), "-g", "daemon off; user root;",
        ],
    )  # fmt: skip
    try:
        base = f"http://{inv.server.provisioning_ip}:{inv.server.http_port}"
        mac = inv.nodes[0].macs[0]
        fetch = FETCH.format(base=base, mac=mac)
        result = run("ip", "netns", "exec", server_netns, sys.executable, "-c", fetch)
        assert ok(result), result.stderr
        health, cache, script, node_script = json.loads(result.stdout)
        assert json.loads(health)["status"] == "healthy"
        assert cache == "no-store"
        assert script == (rendered / "ipxe" / "boot.ipxe").read_text()
        assert node_script == (rendered / "ipxe" / "node" / f"{mac}.ipxe").read_text()
    finally:
        server.terminate()
        server.wait(timeout=10)


FETCH = """
import json, time, urllib.request
for _ in range(300):
    try:
        health = urllib.request.urlopen("{base}/health", timeout=2).read().decode()
        break
    except OSError:
        time.sleep(0.1)
else:
    raise SystemExit("nginx did not answer /health within 30 s")
boot = urllib.request.urlopen("{base}/boot/ipxe/boot.ipxe", timeout=2)
node = urllib.request.urlopen("{base}/boot/ipxe/node/{mac}.ipxe", timeout=2)
print(json.dumps([health, boot.headers["Cache-Control"], boot.read().decode(),
                  node.read().decode()]))
"""


BREAKAGES = {
    "dhcpd": ("dhcpd/dhcpd.conf", "subnet 10.0.0.0 netmask {\n"),
    "dnsmasq": ("dnsmasq/dnsmasq.conf", "dhcp-range=nonsense\n"),
    "zone": ("zones/example.com.zone", "node01 IN A 10.0.200.300\n"),
    "nft": ("nftables/worker.nft", "table inet plasmaboot { chain input { tcp dport x } }\n"),
    "iptables": ("iptables/worker.rules", "*filter\n-A INPUT --bogus\nCOMMIT\n"),
    "nix": ("nixos/flake.nix", "{ a = ; }\n"),
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_the_validators_reject_a_broken_file(name: str, tmp_path: Path) -> None:
    inv = load_inventory(EXAMPLES / "plasmacloud" / "cluster.yaml")
    write_files(tmp_path, render("all", inv, RenderContext()))
    relative, garbage = BREAKAGES[name]
    path = tmp_path / relative
    path.write_text(path.read_text() + garbage)
    commands = {
        "dhcpd": [require("dhcpd"), "-4", "-t", "-cf", str(path)],
        "dnsmasq": [require("dnsmasq"), "--test", "-C", str(path)],
        "zone": [require("named-checkzone"), "example.com", str(path)],
        "nft": [require("nft"), "-c", "-f", str(path)],
        "iptables": [require("iptables-restore"), "--test", str(path)],
        "nix": [require("nix-instantiate"), "--parse", str(path)],
    }
    assert not ok(run(*commands[name]))
