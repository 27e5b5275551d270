"""The server's check of the agent's hardware facts (web/hardware.py): what the agent reads
always passes, and a bad shape is refused naming the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from test_agent_facts import build_machine

from plasmaboot.agent import facts
from plasmaboot.web.hardware import InvalidFacts, validated_facts


@pytest.fixture
def server_facts(tmp_path: Path) -> dict[str, Any]:
    return facts.collect(*build_machine(tmp_path))


def test_what_the_agent_reads_is_stored_unchanged(server_facts: dict[str, Any]) -> None:
    assert validated_facts(server_facts) == server_facts


def test_this_machines_facts_pass() -> None:
    real = facts.collect()
    assert validated_facts(real) == real


def problems(value: Any) -> dict[str, str]:
    with pytest.raises(InvalidFacts) as raised:
        validated_facts(value)
    return {p["field"]: p["problem"] for p in raised.value.fields}


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("disks", 0, "size_bytes"), "big", "detail.hardware.disks.0.size_bytes"),
        (("disks", 0, "size_bytes"), -1, "detail.hardware.disks.0.size_bytes"),
        (("disks", 1, "rotational"), 1, "detail.hardware.disks.1.rotational"),
        (("disks", 0, "name"), "", "detail.hardware.disks.0.name"),
        (("nics", 0, "mac"), "not-a-mac", "detail.hardware.nics.0.mac"),
        (("nics", 0, "link"), "sideways", "detail.hardware.nics.0.link"),
        (("nics", 2, "speed_mbps"), "10000", "detail.hardware.nics.2.speed_mbps"),
        (("system", "vendor"), "x" * 257, "detail.hardware.system.vendor"),
        (("cpu", "count"), 0, "detail.hardware.cpu.count"),
        (("memory_bytes",), 1.5, "detail.hardware.memory_bytes"),
        (("disks",), {"sda": {}}, "detail.hardware.disks"),
    ],
)
def test_a_bad_value_is_named(
    server_facts: dict[str, Any], path: tuple[str | int, ...], value: object, field: str
) -> None:
    bad = copy.deepcopy(server_facts)
    target: Any = bad
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert list(problems(bad)) == [field]


def test_sizes_are_bounded(server_facts: dict[str, Any]) -> None:
    many = dict(server_facts, disks=server_facts["disks"][:1] * (facts.MAX_ITEMS + 1))
    assert "at most 64" in problems(many)["detail.hardware.disks"]
    assert validated_facts(dict(many, disks=many["disks"][:64]))["disks"][63]["name"] == "nvme0n1"
    nics = dict(server_facts, nics=server_facts["nics"][:1] * (facts.MAX_ITEMS + 1))
    assert "at most 64" in problems(nics)["detail.hardware.nics"]


def test_unknown_and_missing_keys_are_refused(server_facts: dict[str, Any]) -> None:
    extra = dict(server_facts, bios="1.0")
    assert "detail.hardware.bios" in problems(extra)
    missing = {k: v for k, v in server_facts.items() if k != "nics"}
    assert problems(missing) == {"detail.hardware.nics": "Field required"}
    assert list(problems(None)) == list(problems([])) == ["detail.hardware"]
    assert list(problems("facts")) == ["detail.hardware"]
