"""`plasmaboot node adopt` through the real CLI: the edited cluster.yaml is loaded by the
real loader and passes the real `inventory check`; only the new entry's lines are added
(comments, order and a hand-wrapped list kept); bad input names the field and changes
neither the file nor the store. Also: `node replace` and `node rollback` refusals that
need no peer (unknown names, a MAC that is another node's, a bad rollback command)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from plasmaboot.cli import app
from plasmaboot.inventory import InventoryError, load_inventory
from plasmaboot.lifecycle import State
from plasmaboot.store import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
MAC = "52:54:00:77:00:05"
GIB = 2**30
FACTS: dict[str, Any] = {
    "system": {"vendor": "QEMU", "product": "Standard PC"},
    "disks": [
        {"name": "sda", "size_bytes": 500 * GIB, "removable": False},
        {"name": "nvme0n1", "size_bytes": 256 * GIB, "removable": False},
        {"name": "sdb", "size_bytes": 32 * GIB, "removable": True},  # a USB stick
        {"name": "vdz", "size_bytes": 2 * GIB, "removable": False},  # too small to install
    ],
    "nics": [{"name": "ens3", "mac": MAC, "link": "up", "speed_mbps": 1000}],
}


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), terminal_width=200)


@pytest.fixture
def lab(tmp_path: Path) -> tuple[Path, list[str]]:
    """The miniature inventory (comments, a wrapped flow list) imported, and a machine
    that netbooted unknown and reported its facts."""
    config = tmp_path / "cluster.yaml"
    shutil.copy(ROOT / "examples/lab/miniature.yaml", config)
    state = ["-c", str(config), "--state-dir", str(tmp_path / "state")]
    assert run("inventory", "import", *state).exit_code == 0
    store = SqliteStore.in_dir(tmp_path / "state")
    store.set_hardware(store.discover(MAC, "http", {"remote": "10.77.0.150"}).hostname, FACTS)
    store.close()
    return config, state


def store_of(config: Path) -> SqliteStore:
    return SqliteStore.in_dir(config.parent / "state")


def test_adopt_appends_the_entry_in_place_and_the_inventory_still_checks(
    lab: tuple[Path, list[str]],
) -> None:
    config, state = lab
    before = config.read_text()

    result = run("node", "adopt", MAC, "--name", "node05", "--profile", "worker", *state)

    assert result.exit_code == 0, result.output
    assert "discovered-525400770005 is now node05 (enrolled)" in " ".join(result.output.split())
    added = config.read_text().removeprefix(before)
    assert config.read_text().startswith(before)  # every line as it was, comments too
    assert added == (
        "  - hostname: node05\n"
        f'    macs: ["{MAC}"]\n'
        "    profile: worker\n"
        "    provisioning_ip: 10.77.0.2\n"  # the first address nothing else takes
        "    disk: /dev/nvme0n1\n"  # the smallest fixed disk of at least 4 GiB
    )
    checked = run("inventory", "check", "-c", str(config))
    assert checked.exit_code == 0, checked.output
    assert "5 nodes" in checked.output
    node = load_inventory(config).node("node05")
    assert node is not None and node.macs == (MAC,) and node.profile == "worker"
    store = store_of(config)
    try:
        record = store.get_node("node05")
        assert record is not None
        assert (record.state, record.macs, record.hardware) == (State.ENROLLED, (MAC,), FACTS)
        assert [e.event for e in store.events("node05")] == ["discovered", "enroll"]
        assert store.get_node("discovered-525400770005") is None  # it became node05
    finally:
        store.close()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--name", "node05", "--profile", "storage"], "nodes[4].profile = 'storage'"),
        (["--name", "Node_5", "--profile", "worker"], "nodes[4].hostname = 'Node_5'"),
        (["--name", "node05", "--profile", "worker", "--ip", "10.77.0.150"],
         "nodes[4].provisioning_ip = '10.77.0.150': inside the DHCP pool"),
        (["--name", "node05", "--profile", "worker", "--ip", "10.77.0.50"],
         "nodes[4].provisioning_ip = '10.77.0.50': address already used by nodes[0]"),
    ],
)  # fmt: skip
def test_a_refused_entry_names_the_field_and_changes_nothing(
    lab: tuple[Path, list[str]], args: list[str], field: str
) -> None:
    config, state = lab
    before = config.read_text()

    result = run("node", "adopt", MAC, *args, *state)

    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert f"refused, {config} unchanged" in text
    assert f"{config}: {field}" in text
    assert config.read_text() == before
    assert [p.name for p in config.parent.iterdir() if p.name.startswith(".")] == []
    store = store_of(config)
    try:
        assert store.get_node("node05") is None
        record = store.node_by_mac(MAC)
        assert record is not None and record.state is State.DISCOVERED
    finally:
        store.close()


def test_adopt_refuses_what_is_not_a_discovered_machine(lab: tuple[Path, list[str]]) -> None:
    config, state = lab
    before = config.read_text()
    unknown = run("node", "adopt", "52:54:00:77:00:06", "--name", "n9", "--profile", "worker",
                  *state)  # fmt: skip
    assert unknown.exit_code == 1
    text = " ".join(unknown.output.split())
    assert f"no discovered machine has MAC 52:54:00:77:00:06 (did you mean {MAC}?)" in text
    taken = run("node", "adopt", "52:54:00:12:34:56", "--name", "n9", "--profile", "worker",
                *state)  # fmt: skip
    assert "is the MAC of node01 (enrolled), not of a discovered machine" in taken.output
    named = run("node", "adopt", MAC, "--name", "node02", "--profile", "worker", *state)
    assert "--name node02: a node of that name exists already" in named.output
    assert config.read_text() == before


def test_replace_refuses_unknown_names_and_foreign_macs_before_anything(
    lab: tuple[Path, list[str]],
) -> None:
    config, state = lab
    before = config.read_text()
    unknown = run("node", "replace", "nod03", "--mac", "52:54:00:77:00:09", *state)
    assert unknown.exit_code == 1
    assert "no such node: nod03 (did you mean node03" in unknown.output
    foreign = run("node", "replace", "node03", "--mac", "52:54:00:12:34:57", *state)
    assert foreign.exit_code == 1
    assert "--mac 52:54:00:12:34:57 is already node02's MAC" in foreign.output
    no_bmc = run("node", "replace", "node03", "--mac", MAC, *state)  # the discovered one
    assert no_bmc.exit_code == 1
    assert "node03 has no bmc in the inventory" in no_bmc.output
    assert config.read_text() == before
    store = store_of(config)
    try:
        assert [e.event for e in store.events("node03")] == ["enroll"]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("nixos-rebuild switch --rollback --flake {flake}", "unknown placeholder(s) ['flake']"),
        ("", "empty command"),
    ],
)
def test_the_rollback_command_is_checked_at_load(
    tmp_path: Path, command: str, message: str
) -> None:
    config = tmp_path / "cluster.yaml"
    text = (ROOT / "examples/lab/miniature.yaml").read_text()
    config.write_text(text.replace("  http_port: 8080\n", f"  http_port: 8080\n  rollback:\n"
                                   f"    command: '{command}'\n"))  # fmt: skip
    with pytest.raises(InventoryError) as failure:
        load_inventory(config)
    assert "server.rollback.command" in str(failure.value) and message in str(failure.value)
