"""Zone serials (never backwards, only on change) and forward/reverse agreement."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest
import yaml

from plasmaboot.inventory import Inventory, load_inventory, parse_inventory
from plasmaboot.render import RenderContext, render
from plasmaboot.render.zones import next_serial

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DAY1 = date(2026, 11, 21)
DAY2 = date(2026, 11, 22)


def load(name: str) -> Inventory:
    return load_inventory(EXAMPLES / name / "cluster.yaml")


def serial(zone: str | bytes) -> int:
    assert isinstance(zone, str)
    found = re.search(r"^\s+(\d+) ; serial$", zone, re.MULTILINE)
    assert found
    return int(found.group(1))


def context(files: dict[str, str | bytes], today: date) -> RenderContext:
    def previous(path: str) -> bytes | None:
        content = files.get(path)
        return content.encode() if isinstance(content, str) else content

    return RenderContext(previous=previous, today=today)


def test_first_serial_is_todays_first() -> None:
    assert next_serial(None, DAY1) == 2026112100


def test_serial_counts_up_within_a_day() -> None:
    assert next_serial(2026112100, DAY1) == 2026112101


def test_serial_keeps_counting_past_99_changes_instead_of_wrapping() -> None:
    assert next_serial(2026112199, DAY1) == 2026112200
    assert next_serial(2026112200, DAY1) == 2026112201


def test_serial_never_goes_backwards_when_the_clock_does() -> None:
    assert next_serial(2026112205, DAY1) == 2026112206


def test_serial_jumps_to_a_new_day() -> None:
    assert next_serial(2026112107, DAY2) == 2026112200


def test_unchanged_zones_keep_their_serial_on_a_later_day() -> None:
    first = render("zones", load("plasmacloud"), RenderContext(today=DAY1))
    again = render("zones", load("plasmacloud"), context(first, DAY2))
    assert again == first


def _moved_node04(ip: str) -> Inventory:
    data = yaml.safe_load((EXAMPLES / "plasmacloud" / "cluster.yaml").read_text())
    data["nodes"][3]["production_ip"] = ip
    return parse_inventory(data)


def test_a_changed_zone_gets_a_higher_serial_and_untouched_zones_do_not() -> None:
    first = render("zones", load("plasmacloud"), RenderContext(today=DAY1))
    changed = render("zones", _moved_node04("10.0.200.40"), context(first, DAY1))
    assert serial(changed["example.com.zone"]) == serial(first["example.com.zone"]) + 1
    assert changed["10.0.10.in-addr.arpa.zone"] == first["10.0.10.in-addr.arpa.zone"]


def test_a_hundred_changes_in_one_day_never_repeat_a_serial() -> None:
    files = render("zones", load("plasmacloud"), RenderContext(today=DAY1))
    seen = [serial(files["example.com.zone"])]
    for host in range(30, 130):
        files = render("zones", _moved_node04(f"10.0.200.{host}"), context(files, DAY1))
        seen.append(serial(files["example.com.zone"]))
    assert seen == sorted(set(seen))
    assert len(seen) == 101


@pytest.mark.parametrize("name", ["plasmacloud", "lab"])
def test_every_ptr_points_at_a_name_with_that_a_record(name: str) -> None:
    inv = load(name)
    files = render("zones", inv, RenderContext(today=DAY1))
    forward = files[f"{inv.cluster.domain}.zone"]
    assert isinstance(forward, str)
    a_records = set(re.findall(r"^(\S+)\s+IN A\s+(\S+)$", forward, re.MULTILINE))
    ptr_count = 0
    for path, zone in files.items():
        if not path.endswith(".in-addr.arpa.zone"):
            continue
        assert isinstance(zone, str)
        c, b, a = path.removesuffix(".in-addr.arpa.zone").split(".")
        for last, target in re.findall(r"^(\d+)\s+IN PTR\s+(\S+)$", zone, re.MULTILINE):
            host = target.removesuffix(f".{inv.cluster.domain}.")
            assert (host, f"{a}.{b}.{c}.{last}") in a_records
            ptr_count += 1
    assert ptr_count >= len(inv.nodes)


def test_reference_zone_has_the_network_reference_vips_and_cnames() -> None:
    zone = render("zones", load("plasmacloud"), RenderContext(today=DAY1))["example.com.zone"]
    assert isinstance(zone, str)
    for line in (
        "chainfire  IN A     10.0.200.100",
        "plasmavmc  IN A     10.0.200.103",
        "api        IN CNAME iam.example.com.",
        "db         IN CNAME flaredb.example.com.",
        "vm         IN CNAME plasmavmc.example.com.",
        "node01     IN A     10.0.200.10",
    ):
        assert line in zone
    reverse = render("zones", load("plasmacloud"), RenderContext(today=DAY1))
    assert "10  IN PTR   node01.example.com." in str(reverse["200.0.10.in-addr.arpa.zone"])
