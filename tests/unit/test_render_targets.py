"""Unit tests of the render targets: content, determinism, per-role rules, schema."""

from __future__ import annotations

import json
from datetime import date
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from plasmaboot.boot.policy import DEFAULT_BOOTFILES, HTTP_BOOT_ARCHES, bootfile_for
from plasmaboot.firstboot.schema import validate_cluster_config
from plasmaboot.inventory import Inventory, load_inventory, parse_inventory
from plasmaboot.inventory.models import AdminListener
from plasmaboot.render import TARGETS, RenderContext, RenderError, render, target_names
from plasmaboot.render.common import internal_network
from plasmaboot.render.firewall import resolved_rules, server_rules
from plasmaboot.render.systemd import units_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
INVENTORIES = ["plasmacloud", "lab"]
TODAY = date(2026, 11, 21)


def load(name: str) -> Inventory:
    return load_inventory(EXAMPLES / name / "cluster.yaml")


def text(files: dict[str, str | bytes], path: str) -> str:
    content = files[path]
    assert isinstance(content, str)
    return content


def with_overrides(overrides: dict[str, str]) -> Inventory:
    """The lab with node01 given a second NIC and per-architecture boot overrides."""
    import yaml

    data = yaml.safe_load((EXAMPLES / "lab" / "cluster.yaml").read_text())
    data["nodes"][0]["boot_overrides"] = overrides
    data["nodes"][0]["macs"].append("52:54:00:aa:bb:cc")
    return parse_inventory(data)


def with_dhcp_mode(name: str, mode: str) -> Inventory:
    import yaml

    data = yaml.safe_load((EXAMPLES / name / "cluster.yaml").read_text())
    for net in data["networks"]:
        if net["name"] == "provisioning":
            net["dhcp"]["mode"] = mode
            net["dhcp"].pop("pool", None)
    return parse_inventory(data)


@pytest.mark.parametrize("name", INVENTORIES)
def test_render_all_twice_gives_identical_bytes(name: str) -> None:
    inv = load(name)
    first = render("all", inv, RenderContext(today=TODAY))
    second = render("all", load(name), RenderContext(today=TODAY))
    assert first == second
    assert {path.split("/", 1)[0] for path in first} == set(TARGETS)


def test_every_target_is_listed_for_the_cli() -> None:
    assert target_names() == [*TARGETS, "all"]
    assert set(TARGETS) == {
        "dhcpd", "kea", "dnsmasq", "ipxe", "nginx", "zones", "nftables", "iptables",
        "nixos-firewall", "cluster-config", "nixos", "systemd",
    }  # fmt: skip


def test_unknown_target_names_the_choices() -> None:
    with pytest.raises(KeyError, match="dhcpd"):
        render("dhcp", load("lab"), RenderContext())


def test_dhcpd_sends_ipxe_the_script_url_and_no_pxedhcp() -> None:
    conf = text(render("dhcpd", load("plasmacloud"), RenderContext()), "dhcpd.conf")
    ipxe_branch = conf.split('option user-class = "iPXE" {', 1)[1].split("}", 1)[0]
    assert 'filename "http://10.0.100.10:8080/boot/ipxe/boot.ipxe";' in ipxe_branch
    assert "option ipxe.no-pxedhcp 1;" in ipxe_branch
    assert 'elsif option architecture-type = 00:00 {\n        filename "undionly.kpxe";' in conf
    assert 'elsif option architecture-type = 00:07 {\n        filename "ipxe.efi";' in conf
    assert "host node06 {\n    hardware ethernet 52:54:00:12:34:5b;" in conf
    assert "fixed-address 10.0.100.62;" in conf


def test_dhcpd_refuses_proxy_mode_and_names_the_fix() -> None:
    with pytest.raises(RenderError, match="dnsmasq target"):
        render("dhcpd", with_dhcp_mode("lab", "proxy"), RenderContext())


def test_kea_classes_are_mutually_exclusive_and_reserve_every_mac() -> None:
    doc = json.loads(text(render("kea", load("plasmacloud"), RenderContext()), "kea-dhcp4.json"))
    classes = {c["name"]: c for c in doc["Dhcp4"]["client-classes"]}
    assert classes["ipxe"]["boot-file-name"] == "http://10.0.100.10:8080/boot/ipxe/boot.ipxe"
    assert {"space": "ipxe", "name": "no-pxedhcp", "data": "1"} in classes["ipxe"]["option-data"]
    for name, cls in classes.items():
        if name != "ipxe":
            assert cls["test"].startswith("not (option[77].hex == 'iPXE')")
    subnet = doc["Dhcp4"]["subnet4"][0]
    assert subnet["pools"] == [{"pool": "10.0.100.100 - 10.0.100.200"}]
    assert len(subnet["reservations"]) == 6


def test_dnsmasq_proxy_mode_serves_a_pxe_menu_without_addresses() -> None:
    conf = text(render("dnsmasq", with_dhcp_mode("lab", "proxy"), RenderContext()), "dnsmasq.conf")
    assert "dhcp-range=set:net0,10.77.0.0,proxy,255.255.255.0" in conf
    assert 'pxe-service=tag:!ipxe,0,"plasmaboot iPXE",undionly.kpxe,10.77.0.1' in conf
    assert "dhcp-host=" not in conf


def test_dnsmasq_full_mode_sends_option_175_176_to_ipxe() -> None:
    conf = text(render("dnsmasq", load("lab"), RenderContext()), "dnsmasq.conf")
    assert "dhcp-option=tag:ipxe,encap:175,176,1" in conf
    assert "dhcp-boot=tag:ipxe,http://10.77.0.1:8080/boot/ipxe/boot.ipxe" in conf
    assert "dhcp-range=set:net0,10.77.0.100,10.77.0.200,255.255.255.0,3600" in conf


def test_internal_scope_is_the_private_block_holding_every_network() -> None:
    assert internal_network(load("plasmacloud")) == IPv4Network("10.0.0.0/8")
    assert internal_network(load("lab")) == IPv4Network("10.0.0.0/8")


def _open(inv: Inventory, profile: str) -> dict[tuple[int, str], str | None]:
    return {
        (r.rule.port, r.rule.proto): (str(r.source) if r.source else None)
        for r in resolved_rules(inv, inv.profiles[profile])
    }


def test_control_plane_opens_raft_ports_to_the_production_network_only() -> None:
    ports = _open(load("plasmacloud"), "control-plane")
    assert ports[(2380, "tcp")] == "10.0.200.0/24"
    assert ports[(2480, "tcp")] == "10.0.200.0/24"
    assert ports[(22, "tcp")] == "10.0.10.0/24"
    assert ports[(123, "udp")] is None


def test_client_apis_are_open_to_the_cluster_and_the_provisioning_server_alone() -> None:
    """Not to the whole site (10.0.0.0/8): the network reference's complete ruleset."""
    inv = load("plasmacloud")
    for port in (2379, 2479):
        sources = {
            str(r.source)
            for r in resolved_rules(inv, inv.profiles["control-plane"])
            if r.rule.port == port
        }
        assert sources == {"10.0.200.0/24", "10.0.100.10/32"}


def test_the_provisioning_server_ruleset_follows_its_settings() -> None:
    inv = load("plasmacloud")
    rules = {(r.rule.port, r.rule.proto, str(r.source)) for r in server_rules(inv)}
    assert rules == {
        (67, "udp", "None"),
        (69, "udp", "10.0.100.0/24"),
        (8080, "tcp", "10.0.100.0/24"),
        (8080, "tcp", "10.0.10.0/24"),
        (22, "tcp", "10.0.10.0/24"),
    }  # the admin API listens on loopback: no rule
    public = inv.model_copy(
        update={"server": inv.server.model_copy(update={"admin": AdminListener(
            address=IPv4Address("0.0.0.0"), port=9443)})}
    )  # fmt: skip
    assert (9443, "tcp", "10.0.10.0/24") in {
        (r.rule.port, r.rule.proto, str(r.source)) for r in server_rules(public)
    }
    files = render("iptables", inv, RenderContext())
    ipv6 = text(files, "server/provisioning-server.rules6")
    assert "-p ipv6-icmp -j ACCEPT" in ipv6 and ":INPUT DROP" in ipv6
    assert "--dport 8080" not in ipv6  # IPv4 sources only: nothing of IPv6 is admitted
    assert "udp dport 67 accept" in text(
        render("nftables", inv, RenderContext()), "server/provisioning-server.nft"
    )


def test_worker_does_not_open_what_its_services_do_not_use() -> None:
    ports = _open(load("plasmacloud"), "worker")
    assert (2480, "tcp") not in ports  # FlareDB runs on the control plane only
    assert (8080, "tcp") not in ports  # IAM
    assert ports[(10250, "tcp")] == "10.0.200.0/24"


def test_lab_without_production_or_management_falls_back_to_provisioning() -> None:
    ports = _open(load("lab"), "control-plane")
    assert ports[(2380, "tcp")] == "10.77.0.0/24"
    assert ports[(22, "tcp")] == "10.77.0.0/24"


def test_storage_scope_is_left_out_without_a_storage_network() -> None:
    assert (3260, "tcp") in _open(load("plasmacloud"), "control-plane")
    assert (3260, "tcp") not in _open(load("lab"), "control-plane")


def test_all_three_firewalls_carry_the_same_ports() -> None:
    inv = load("plasmacloud")
    nft = text(render("nftables", inv, RenderContext()), "worker.nft")
    ipt = text(render("iptables", inv, RenderContext()), "worker.rules")
    nix = text(render("nixos-firewall", inv, RenderContext()), "worker.nix")
    for rule in resolved_rules(inv, inv.profiles["worker"]):
        assert rule.comment in nft and rule.comment in ipt
        assert rule.comment in nix or str(rule.rule.port) in nix


@pytest.mark.parametrize("name", INVENTORIES)
def test_every_cluster_config_is_schema_valid(name: str) -> None:
    files = render("cluster-config", load(name), RenderContext())
    for path, content in files.items():
        assert path.endswith("/cluster-config.json")
        assert validate_cluster_config(json.loads(content)) == []


def test_bootstrap_nodes_get_peers_and_joiners_the_leader() -> None:
    files = render("cluster-config", load("plasmacloud"), RenderContext())
    node01 = json.loads(files["node01/cluster-config.json"])
    assert node01["bootstrap"] is True
    assert node01["initial_peers"] == ["10.0.200.10:2380", "10.0.200.11:2380", "10.0.200.12:2380"]
    assert node01["flaredb_peers"] == ["10.0.200.10:2480", "10.0.200.11:2480", "10.0.200.12:2480"]
    assert node01["raft_addr"] == "10.0.200.10:2380"
    assert node01["tls"]["node_key_path"] == "/etc/nixos/secrets/node01.key"
    node04 = json.loads(files["node04/cluster-config.json"])
    assert node04["bootstrap"] is False
    assert node04["leader_url"] == "https://node01.example.com:2379"
    assert "initial_peers" not in node04
    assert node04["flaredb_enabled"] is False  # workers run no FlareDB


def _start_order(units: list[str], after: dict[str, tuple[str, ...]]) -> list[str]:
    """Order the units as systemd would from their After= edges (a topological sort)."""
    order: list[str] = []
    pending = list(units)
    while pending:
        ready = [u for u in pending if all(a in order or a not in units for a in after[u])]
        assert ready, f"cycle among {pending}"
        order.append(ready[0])
        pending.remove(ready[0])
    return order


def test_systemd_units_follow_the_seeds_order() -> None:
    units = units_for(load("plasmacloud").profiles["control-plane"])
    names = [u.unit for u in units]
    after = {u.unit: u.after for u in units}
    assert _start_order(names, after) == [
        "chainfire-cluster-join.service",
        "flaredb-cluster-join.service",
        "iam-initial-setup.service",
        "cluster-health-check.service",
    ]
    flaredb = units[1]
    assert flaredb.requires == ("chainfire-cluster-join.service",)


def test_worker_first_boot_has_no_flaredb_or_iam_units() -> None:
    files = render("systemd", load("plasmacloud"), RenderContext())
    worker = sorted(p for p in files if p.startswith("worker/"))
    assert worker == [
        "worker/chainfire-cluster-join.service",
        "worker/cluster-health-check.service",
        "worker/first-boot.nix",
    ]
    health = text(files, "worker/cluster-health-check.service")
    assert "After=chainfire-cluster-join.service network-online.target" in health


def test_nixos_node_config_uses_the_node_disk_and_profile_modules() -> None:
    files = render("nixos", load("plasmacloud"), RenderContext())
    config = text(files, "nodes/node04.example.com/configuration.nix")
    assert "../../profiles/worker/firewall.nix" in config
    assert 'address = "10.0.200.20"; prefixLength = 24;' in config
    assert 'device = "/dev/nvme0n1";' in text(files, "nodes/node04.example.com/disko.nix")
    assert "node06 = system ./nodes/node06.example.com/configuration.nix;" in text(
        files, "flake.nix"
    )


def with_rack(name: str, node_production_ip: str | None = None) -> Inventory:
    """`name` plus rack2, a /25 behind a relay with its own router and DNS, and r2n1 in it."""
    import yaml

    data = yaml.safe_load((EXAMPLES / name / "cluster.yaml").read_text())
    data["networks"].append(
        {"name": "rack2", "vlan": 202, "subnet": "10.78.2.0/25", "gateway": "10.78.2.1",
         "dns": ["10.78.2.53"],
         "dhcp": {"mode": "full", "pool": {"start": "10.78.2.100", "end": "10.78.2.120"}}}
    )  # fmt: skip
    node = {"hostname": "r2n1", "macs": ["52:54:00:78:02:01"], "profile": "worker",
            "provisioning_ip": "10.78.2.20", "production_ip": node_production_ip}  # fmt: skip
    data["nodes"].append({k: v for k, v in node.items() if v is not None})
    return parse_inventory(data)


def networking(files: dict[str, str | bytes], fqdn: str) -> str:
    config = text(files, f"nodes/{fqdn}/configuration.nix")
    return config[config.index("  networking = {") : config.index("\n  };\n")]


def test_nixos_a_rack_node_without_production_uses_its_own_rack_network() -> None:
    files = render("nixos", with_rack("lab"), RenderContext())
    rack = networking(files, "r2n1.lab.internal")
    assert "interfaces.eth0 = {" in rack and "eth1" not in rack
    assert 'address = "10.78.2.20"; prefixLength = 25;' in rack
    assert 'defaultGateway = { address = "10.78.2.1"; interface = "eth0"; };' in rack
    assert 'nameservers = [ "10.78.2.53" ];' in rack
    lab = networking(files, "node01.lab.internal")  # the first network's node is unchanged
    assert "prefixLength = 24;" in lab
    assert 'defaultGateway = { address = "10.77.0.1"; interface = "eth0"; };' in lab
    assert 'nameservers = [ "10.77.0.1" ];' in lab


def test_nixos_a_rack_node_routes_on_production_and_falls_back_to_its_rack_dns() -> None:
    files = render("nixos", with_rack("plasmacloud", "10.0.200.30"), RenderContext())
    rack = networking(files, "r2n1.example.com")
    assert 'address = "10.78.2.20"; prefixLength = 25;' in rack
    assert 'address = "10.0.200.30"; prefixLength = 24;' in rack
    assert 'defaultGateway = { address = "10.0.200.1"; interface = "eth1"; };' in rack
    assert 'nameservers = [ "10.78.2.53" ];' in rack, "production names no DNS: the rack's"
    first = networking(files, "node04.example.com")
    assert 'nameservers = [ "10.0.100.1" "8.8.8.8" ];' in first


def test_nixos_a_node_without_a_production_address_routes_on_its_rack() -> None:
    """Production exists, the node has no address there: eth0 only, the rack's router
    (production's router is not reachable from eth0)."""
    files = render("nixos", with_rack("plasmacloud"), RenderContext())
    rack = networking(files, "r2n1.example.com")
    assert "eth1" not in rack
    assert 'defaultGateway = { address = "10.78.2.1"; interface = "eth0"; };' in rack


def test_nix_strings_escape_interpolation() -> None:
    from plasmaboot.render.common import nix_string

    assert nix_string('a"b${c}\\') == '"a\\"b\\${c}\\\\"'


def test_dhcp_configs_follow_the_boot_policy_table() -> None:
    inv = load("lab")
    conf = text(render("dhcpd", inv, RenderContext()), "dhcpd.conf")
    kea = json.loads(text(render("kea", inv, RenderContext()), "kea-dhcp4.json"))
    classes = {c["name"]: c for c in kea["Dhcp4"]["client-classes"]}
    for arch in DEFAULT_BOOTFILES:
        expected, _why = bootfile_for(arch)
        if arch in HTTP_BOOT_ARCHES:
            expected = f"http://10.77.0.1:8080/boot/ipxe/{expected}"
        branch = f"architecture-type = {arch >> 8:02x}:{arch & 0xFF:02x} {{"
        assert f'{branch}\n        filename "{expected}";' in conf
        assert classes[f"arch-{arch}"]["boot-file-name"] == expected
    assert classes["arch-none"]["boot-file-name"] == bootfile_for(None)[0]


def test_uefi_http_boot_clients_get_a_url_and_option_60() -> None:
    inv = load("lab")
    conf = text(render("dhcpd", inv, RenderContext()), "dhcpd.conf")
    branch = conf.split("architecture-type = 00:10 {", 1)[1].split("}", 1)[0]
    assert 'filename "http://10.77.0.1:8080/boot/ipxe/ipxe.efi";' in branch
    assert 'option vendor-class-identifier "HTTPClient";' in branch
    dnsmasq = text(render("dnsmasq", inv, RenderContext()), "dnsmasq.conf")
    assert "dhcp-option-force=tag:!ipxe,tag:arch16,60,HTTPClient" in dnsmasq


def test_node_overrides_win_for_that_node_only_in_every_dhcp_server() -> None:
    inv = with_overrides({"7": "snponly.efi"})
    conf = text(render("dhcpd", inv, RenderContext()), "dhcpd.conf")
    host = conf.split("host node01 {", 1)[1].split("\nhost ", 1)[0]
    assert '} elsif option architecture-type = 00:07 {\n        filename "snponly.efi";' in host
    assert "snponly.efi" in conf.split("host node01-nic1 {", 1)[1].split("\nhost ", 1)[0]
    assert "snponly.efi" not in conf.split("host node02 {", 1)[1]
    kea = json.loads(text(render("kea", inv, RenderContext()), "kea-dhcp4.json"))
    classes = {c["name"]: c for c in kea["Dhcp4"]["client-classes"]}
    override = classes["node-node01-arch7"]
    assert override["boot-file-name"] == "snponly.efi"
    assert "hexstring(pkt4.mac, ':') == '52:54:00:aa:bb:cc'" in override["test"]
    assert classes["arch-7"]["test"].endswith("and not member('node-node01-arch7')")
    dnsmasq = text(render("dnsmasq", inv, RenderContext()), "dnsmasq.conf")
    assert "dhcp-mac=set:node-node01,52:54:00:aa:bb:cc" in dnsmasq
    assert "dhcp-boot=tag:!ipxe,tag:ovr-node01-7,snponly.efi,,10.77.0.1" in dnsmasq
    assert "dhcp-boot=tag:!ipxe,tag:arch7,tag:!ovr-node01-7,ipxe.efi,,10.77.0.1" in dnsmasq
    assert "dhcp-host=52:54:00:12:34:56,52:54:00:aa:bb:cc,10.77.0.50,node01" in dnsmasq


def test_an_override_that_is_not_a_file_name_is_refused() -> None:
    with pytest.raises(RenderError, match=r"nodes\[0\]\.boot_overrides\.7"):
        render("dhcpd", with_overrides({"7": 'x.efi"; filename "evil'}), RenderContext())
