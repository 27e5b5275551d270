"""iPXE scripts: a syntax sanity check (every jump has a label, every menu item a target)
and the boot rules the firmware depends on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from plasmaboot.inventory import Inventory, load_inventory
from plasmaboot.render import RenderContext, render
from plasmaboot.render.ipxe import install_script, local_disk_script, menu_script

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASE = "http://10.0.100.10:8080"
KNOWN_COMMANDS = {
    "set", "clear", "iseq", "goto", "echo", "menu", "item", "choose", "kernel", "initrd",
    "boot", "inc", "sleep", "prompt", "reboot", "shell", "sanboot", "exit",
}  # fmt: skip


def load(name: str) -> Inventory:
    return load_inventory(EXAMPLES / name / "cluster.yaml")


def check_script(script: str) -> list[str]:
    """Problems iPXE would hit at run time: unknown commands, jumps to missing labels,
    menu items without a label, variables used but never set."""
    lines = script.splitlines()
    problems = [] if lines[0] == "#!ipxe" else ["first line is not #!ipxe"]
    labels = {line[1:] for line in lines if line.startswith(":")}
    defined = {"net0/mac", "errno", "target"}
    for number, line in enumerate(lines, start=1):
        if not line or line.startswith(("#", ":")):
            continue
        for part in re.split(r"\s+(?:&&|\|\|)\s*", line):
            words = part.split()
            if not words:
                continue
            if words[0] not in KNOWN_COMMANDS:
                problems.append(f"line {number}: unknown command {words[0]!r}")
            if words[0] == "set":
                defined.add(words[1].split(":")[0])
            if words[0] == "goto" and words[1] != "${target}" and words[1] not in labels:
                problems.append(f"line {number}: goto {words[1]} has no label")
            if words[0] == "item" and not words[1].startswith("--") and words[1] not in labels:
                problems.append(f"line {number}: menu item {words[1]} has no label")
            if words[0] == "choose" and words[words.index("--default") + 1] not in labels:
                problems.append(f"line {number}: default item has no label")
    for name in re.findall(r"\$\{([^}]+)\}", script):
        if name not in defined and name != "node-args":
            problems.append(f"variable {name} is never set")
    return problems


def test_the_checker_catches_a_missing_label() -> None:
    assert check_script("#!ipxe\ngoto nowhere\n") == ["line 2: goto nowhere has no label"]
    assert check_script("#!ipxe\nchain ${undefined}\n") == [
        "line 2: unknown command 'chain'",
        "variable undefined is never set",
    ]


@pytest.mark.parametrize("name", ["plasmacloud", "lab"])
def test_every_rendered_script_passes_the_sanity_check(name: str) -> None:
    for path, script in render("ipxe", load(name), RenderContext()).items():
        assert isinstance(script, str)
        assert check_script(script) == [], path


def test_menu_selects_every_known_mac_automatically() -> None:
    inv = load("plasmacloud")
    script = menu_script(inv, BASE)
    for node in inv.nodes:
        for mac in node.macs:
            assert f"iseq ${{net0/mac}} {mac} && goto node-{node.hostname} ||" in script
    assert ":node-node04\necho node04 (node04.example.com): profile worker" in script


def test_menu_offers_the_three_profiles_with_a_timeout() -> None:
    script = menu_script(load("plasmacloud"), BASE)
    for profile in ("control-plane", "worker", "all-in-one"):
        assert f"item profile-{profile} {profile}: " in script
    assert "choose --timeout 30000 --default local target || goto local" in script


def test_kernel_lines_name_the_initrd_for_efi_and_use_a_serial_console() -> None:
    inv = load("lab")
    for script in (menu_script(inv, BASE), install_script(inv, inv.nodes[0], BASE)):
        kernel = [line for line in script.splitlines() if line.startswith("kernel ")]
        assert kernel and all(" initrd=initrd " in line for line in kernel)
        assert "initrd --name initrd ${initrd-url} && goto boot ||" in script
    assert "set cmdline console=ttyS0,115200 quiet" in menu_script(inv, BASE)


def test_downloads_are_retried_a_bounded_number_of_times() -> None:
    script = install_script(load("lab"), load("lab").nodes[0], BASE)
    assert "iseq ${attempt} 5 && goto failed ||" in script
    assert script.count("goto kernel-retry") == 1 and script.count("goto initrd-retry") == 1


def test_install_script_boots_the_node_profile_assets_with_extra_args() -> None:
    inv = load("plasmacloud")
    script = install_script(inv, inv.nodes[3], BASE, kernel_args="plasmaboot.token=abc")
    assert f"set kernel-url {BASE}/boot/nixos/worker/bzImage" in script
    assert f"set initrd-url {BASE}/boot/nixos/worker/initrd" in script
    assert "set node-args plasmaboot.node=node04 plasmaboot.token=abc" in script
    assert "menu" not in script.split()


def test_local_disk_script_sanboots_with_an_exit_fallback() -> None:
    script = local_disk_script()
    assert check_script(script) == []
    lines = script.splitlines()
    sanboot = lines.index("sanboot --no-describe --drive 0x80 || goto local-failed")
    # Non-zero: UEFI firmware then boots its next entry (the disk) instead of opening its
    # boot manager menu, which is what a successful `exit` gets from OVMF.
    assert lines[-1] == "exit 1" and sanboot < len(lines) - 1


def test_ipxe_target_writes_one_script_per_mac() -> None:
    files = render("ipxe", load("plasmacloud"), RenderContext())
    assert "node/52:54:00:12:34:5b.ipxe" in files
    assert "boot.ipxe" in files and "local.ipxe" in files
