"""Every inventory rule: the error names the field path, the bad value and a fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from plasmaboot.inventory import InventoryError, load_inventory, parse_inventory
from plasmaboot.inventory.ports import PORT_MATRIX, rules_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "examples/plasmacloud/cluster.yaml", ROOT / "examples/lab/miniature.yaml"]
Doc = dict[str, Any]


def reference() -> Doc:
    data = yaml.safe_load(EXAMPLES[0].read_text())
    assert isinstance(data, dict)
    return data


def problems_after(mutate: Callable[[Doc], None]) -> list[str]:
    doc = copy.deepcopy(reference())
    mutate(doc)
    with pytest.raises(InventoryError) as info:
        parse_inventory(doc, "cluster.yaml")
    return [p.render("cluster.yaml") for p in info.value.problems]


def one_problem(mutate: Callable[[Doc], None], *needles: str) -> str:
    found = problems_after(mutate)
    matching = [line for line in found if all(n in line for n in needles)]
    assert matching, f"no problem mentions {needles}; got {found}"
    assert all("Fix:" in line and line.startswith("cluster.yaml: ") for line in found)
    return matching[0]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_shipped_inventories_are_valid(path: Path) -> None:
    inv = load_inventory(path)
    assert len([n for n in inv.nodes if n.bootstrap]) == 3


def test_reference_cluster_matches_the_seeds() -> None:
    inv = load_inventory(EXAMPLES[0])
    assert inv.cluster.domain == "example.com"
    assert str(inv.server.provisioning_ip) == "10.0.100.10"
    pool = inv.provisioning.dhcp.pool if inv.provisioning.dhcp else None
    assert pool is not None and (str(pool.start), str(pool.end)) == ("10.0.100.100", "10.0.100.200")
    cp = [n for n in inv.nodes if n.profile == "control-plane"]
    assert [n.macs[0] for n in cp] == [f"52:54:00:12:34:5{i}" for i in (6, 7, 8)]
    assert [str(n.provisioning_ip) for n in cp] == [f"10.0.100.5{i}" for i in range(3)]
    assert [str(n.production_ip) for n in cp] == [f"10.0.200.1{i}" for i in range(3)]
    assert [n.bmc.address for n in cp if n.bmc] == [f"10.0.10.5{i}" for i in range(3)]
    workers = [n for n in inv.nodes if n.profile == "worker"]
    assert [n.hostname for n in workers] == ["node04", "node05", "node06"]
    assert [str(n.production_ip) for n in workers] == [f"10.0.200.2{i}" for i in range(3)]
    assert sorted(n.vlan for n in inv.networks) == [10, 100, 200, 300, 400]


def test_lab_inventory_matches_the_lab_plan() -> None:
    inv = load_inventory(EXAMPLES[1])
    assert str(inv.provisioning.subnet) == "10.77.0.0/24"
    assert [(n.hostname, n.macs[0], str(n.provisioning_ip)) for n in inv.nodes] == [
        ("node01", "52:54:00:12:34:56", "10.77.0.50"),
        ("node02", "52:54:00:12:34:57", "10.77.0.51"),
        ("node03", "52:54:00:12:34:58", "10.77.0.52"),
        ("node04", "52:54:00:12:34:59", "10.77.0.53"),
    ]


def test_cluster_store_defaults_to_chainfire_and_the_lab_runs_etcd() -> None:
    assert load_inventory(EXAMPLES[0]).cluster.store == "chainfire"
    assert load_inventory(EXAMPLES[1]).cluster.store == "etcd"


def test_etcd_store_refuses_a_profile_with_flaredb() -> None:
    def mutate(d: Doc) -> None:
        d["cluster"]["store"] = "etcd"

    found = problems_after(mutate)
    # control-plane and all-in-one list flaredb (second in both); workers do not.
    assert [line.split(" = ")[0] for line in found] == [
        "cluster.yaml: profiles.all-in-one.services[1]",
        "cluster.yaml: profiles.control-plane.services[1]",
    ]
    assert "stands in for Chainfire only" in found[0]
    assert "remove flaredb from this profile, or set cluster.store: chainfire" in found[0]


def test_unknown_cluster_store_names_the_choices() -> None:
    one_problem(lambda d: d["cluster"].update(store="zookeeper"), "cluster.store", "etcd")


def test_duplicate_mac_names_both_nodes() -> None:
    def mutate(d: Doc) -> None:
        d["nodes"][1]["macs"] = ["52:54:00:12:34:56"]

    line = one_problem(mutate, "nodes[1].macs[0]", "52:54:00:12:34:56")
    assert "node01" in line


def test_mac_spelling_is_normalised_before_comparing() -> None:
    def mutate(d: Doc) -> None:
        d["nodes"][1]["macs"] = ["52-54-00-12-34-56".upper()]

    one_problem(mutate, "nodes[1].macs[0]", "already given to node01")


def test_malformed_mac() -> None:
    one_problem(lambda d: d["nodes"][0].update(macs=["52:54:00:12:34"]), "nodes[0].macs[0]")


def test_duplicate_hostname() -> None:
    one_problem(lambda d: d["nodes"][1].update(hostname="node01"), "nodes[1].hostname", "node01")


def test_invalid_hostname() -> None:
    one_problem(lambda d: d["nodes"][0].update(hostname="Node_01"), "nodes[0].hostname")


def test_duplicate_ip_across_nodes() -> None:
    one_problem(
        lambda d: d["nodes"][1].update(provisioning_ip="10.0.100.50"),
        "nodes[1].provisioning_ip",
        "nodes[0].provisioning_ip",
    )


def test_ip_outside_its_subnet() -> None:
    one_problem(
        lambda d: d["nodes"][2].update(production_ip="10.0.100.70"),
        "nodes[2].production_ip",
        "10.0.200.0/24",
    )


def test_bmc_outside_management_network() -> None:
    one_problem(
        lambda d: d["nodes"][0]["bmc"].update(address="10.0.200.99"),
        "nodes[0].bmc.address",
        "management",
    )


def test_fixed_ip_inside_dynamic_pool() -> None:
    one_problem(
        lambda d: d["nodes"][3].update(provisioning_ip="10.0.100.150"),
        "nodes[3].provisioning_ip",
        "pool",
    )


def test_server_outside_provisioning_network() -> None:
    one_problem(
        lambda d: d["server"].update(provisioning_ip="10.0.200.5"), "server.provisioning_ip"
    )


def test_pool_outside_subnet() -> None:
    def mutate(d: Doc) -> None:
        d["networks"][1]["dhcp"]["pool"]["end"] = "10.0.101.20"

    one_problem(mutate, "networks[1].dhcp.pool.end", "10.0.101.20")


def test_pool_backwards() -> None:
    def mutate(d: Doc) -> None:
        d["networks"][1]["dhcp"]["pool"] = {"start": "10.0.100.200", "end": "10.0.100.100"}

    one_problem(mutate, "networks[1].dhcp.pool", "swap")


def test_full_mode_without_pool() -> None:
    one_problem(lambda d: d["networks"][1]["dhcp"].pop("pool"), "networks[1].dhcp.pool")


def test_overlapping_networks() -> None:
    one_problem(
        lambda d: d["networks"][4].update(subnet="10.0.0.0/16"), "networks[4].subnet", "overlaps"
    )


def test_subnet_with_host_bits() -> None:
    one_problem(lambda d: d["networks"][0].update(subnet="10.0.10.5/24"), "networks[0].subnet")


def test_duplicate_vlan() -> None:
    one_problem(lambda d: d["networks"][4].update(vlan=300), "networks[4].vlan", "client")


def test_no_provisioning_network() -> None:
    one_problem(lambda d: d["networks"][1].update(name="pxe"), "networks", "provisioning")


def test_unknown_profile() -> None:
    line = one_problem(lambda d: d["nodes"][4].update(profile="storage"), "nodes[4].profile")
    assert "control-plane" in line  # the fix lists the known profiles


def test_profile_with_unknown_image() -> None:
    one_problem(lambda d: d["profiles"]["worker"].update(image="nope"), "profiles.worker.image")


def test_profile_with_unknown_service() -> None:
    def mutate(d: Doc) -> None:
        d["profiles"]["worker"]["services"].append("postgres")

    one_problem(mutate, "profiles.worker.services[5]", "postgres")


def test_fewer_than_three_bootstrap_nodes() -> None:
    one_problem(lambda d: d["nodes"][2].update(bootstrap=False), "nodes[*].bootstrap", "at least 3")


def test_even_bootstrap_set() -> None:
    def mutate(d: Doc) -> None:
        d["nodes"][3].update(profile="control-plane", bootstrap=True)

    one_problem(mutate, "nodes[*].bootstrap", "even")


def test_worker_cannot_bootstrap() -> None:
    def mutate(d: Doc) -> None:
        d["nodes"][3]["bootstrap"] = True
        d["nodes"][4]["bootstrap"] = True

    one_problem(mutate, "nodes[3].bootstrap", "worker")


def test_bmc_without_credential_reference() -> None:
    one_problem(lambda d: d["nodes"][0]["bmc"].pop("password_env"), "nodes[0].bmc", "password_env")


def test_password_written_inline_is_refused() -> None:
    one_problem(lambda d: d["nodes"][0]["bmc"].update(password="hunter2"), "nodes[0].bmc.password")


def test_unknown_key_is_refused_not_ignored() -> None:
    one_problem(lambda d: d["nodes"][0].update(provisoning_ip="10.0.100.50"), "provisoning_ip")


def test_missing_required_field() -> None:
    one_problem(lambda d: d["cluster"].pop("domain"), "cluster.domain", "add this field")


def test_disk_must_be_a_device() -> None:
    one_problem(lambda d: d["nodes"][0].update(disk="sda"), "nodes[0].disk")


def test_boot_override_keys_are_arch_numbers() -> None:
    def mutate(d: Doc) -> None:
        d["nodes"][0]["boot_overrides"] = {"uefi": "snponly.efi"}

    one_problem(mutate, "nodes[0].boot_overrides.uefi")


def test_every_problem_is_reported_at_once() -> None:
    def mutate(d: Doc) -> None:
        d["nodes"][1]["macs"] = ["52:54:00:12:34:56"]
        d["nodes"][4]["profile"] = "storage"
        d["nodes"][2]["bootstrap"] = False
        d["nodes"][5]["provisioning_ip"] = "10.0.100.120"

    found = problems_after(mutate)
    assert len(found) == 4, found


def test_schema_errors_are_all_reported_together() -> None:
    def mutate(d: Doc) -> None:
        d["nodes"][0]["macs"] = ["zz"]
        d["nodes"][1]["disk"] = "sdb"
        d["cluster"]["domain"] = "not a domain"

    assert len(problems_after(mutate)) == 3


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("cluster:\n  name: a\n  domain: [unclosed\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert "line" in info.value.problems[0].path


def test_port_matrix_covers_the_seeds_raft_ports() -> None:
    ports = {(r.service, r.port) for r in PORT_MATRIX}
    assert {("chainfire", 2379), ("chainfire", 2380), ("flaredb", 2479), ("flaredb", 2480)} <= ports


def test_rules_for_a_worker_exclude_flaredb() -> None:
    inv = load_inventory(EXAMPLES[0])
    worker = {r.service for r in rules_for(inv.profiles["worker"].services)}
    control = {r.service for r in rules_for(inv.profiles["control-plane"].services)}
    assert "flaredb" not in worker and "flaredb" in control
    assert "ssh" in worker and "ssh" in control
