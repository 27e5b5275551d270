"""The boot decision table, without sockets: RFC 4578 arch numbers, iPXE, HTTP boot,
node overrides and the boot-from-disk rule that stops netboot loops."""

from __future__ import annotations

import pytest

from plasmaboot.boot.policy import NEXT_BOOT, BootKind, ClientFacts, NextBoot, dhcp_boot
from plasmaboot.lifecycle import BOOTS_FROM_DISK, State

BASE = "http://10.77.0.1:8080"
MAC = "52:54:00:12:34:56"


@pytest.mark.parametrize(
    ("arch", "bootfile"),
    [(0, "undionly.kpxe"), (7, "ipxe.efi"), (9, "ipxe.efi"), (11, "ipxe-arm64.efi"),
     (None, "undionly.kpxe"), (99, "ipxe.efi")],
)  # fmt: skip
def test_rfc4578_arch_selects_the_ipxe_binary(arch: int | None, bootfile: str) -> None:
    vendor = f"PXEClient:Arch:{arch or 0:05d}:UNDI:003000"
    decision = dhcp_boot(ClientFacts(MAC, arch, vendor), State.ENROLLED, BASE)
    assert (decision.kind, decision.filename) == (BootKind.TFTP, bootfile)
    # EDK2 takes a full-DHCP offer echoing PXEClient without option 43 for a BINL offer.
    assert decision.vendor_class is None


def test_uefi_http_boot_gets_a_url_and_httpclient() -> None:
    facts = ClientFacts(MAC, 16, "HTTPClient:Arch:00016:UNDI:003000")
    decision = dhcp_boot(facts, State.ENROLLED, BASE)
    assert decision.kind is BootKind.HTTP
    assert decision.filename == f"{BASE}/boot/ipxe/ipxe.efi"
    assert decision.vendor_class == "HTTPClient"


def test_ipxe_client_gets_the_entry_script() -> None:
    decision = dhcp_boot(ClientFacts(MAC, 7, "PXEClient", is_ipxe=True), State.ENROLLED, BASE)
    assert (decision.kind, decision.filename) == (
        BootKind.IPXE_SCRIPT,
        f"{BASE}/boot/ipxe/boot.ipxe",
    )


def test_unknown_machine_still_gets_ipxe() -> None:
    assert dhcp_boot(ClientFacts(MAC, 0), None, BASE).filename == "undionly.kpxe"


def test_node_override_wins_for_its_arch_only() -> None:
    overrides = {"7": "snponly.efi"}
    assert dhcp_boot(ClientFacts(MAC, 7), State.ENROLLED, BASE, overrides=overrides).filename == (
        "snponly.efi"
    )
    assert dhcp_boot(ClientFacts(MAC, 0), State.ENROLLED, BASE, overrides=overrides).filename == (
        "undionly.kpxe"
    )


@pytest.mark.parametrize("state", sorted(BOOTS_FROM_DISK))
def test_confirmed_installs_boot_from_disk(state: State) -> None:
    decision = dhcp_boot(ClientFacts(MAC, 7, "PXEClient"), state, BASE)
    assert decision.kind is BootKind.NONE and decision.filename is None
    chained = dhcp_boot(ClientFacts(MAC, 7, "PXEClient"), state, BASE, chain_when_on_disk=True)
    assert chained.kind is BootKind.TFTP  # the script then exits to the disk


def test_installed_but_unconfirmed_still_netboots() -> None:
    assert dhcp_boot(ClientFacts(MAC, 0), State.INSTALLED, BASE).kind is BootKind.TFTP


def test_decommissioned_machine_gets_nothing() -> None:
    facts = ClientFacts(MAC, 0, is_ipxe=True)
    assert dhcp_boot(facts, State.DECOMMISSIONED, BASE).kind is BootKind.NONE


def test_next_boot_table_covers_every_state_and_never_netboots_a_confirmed_install() -> None:
    assert set(NEXT_BOOT) == set(State)
    for state in BOOTS_FROM_DISK:
        assert NEXT_BOOT[state] is NextBoot.LOCAL_DISK
    assert NEXT_BOOT[State.INSTALLED] is NextBoot.LOCAL_DISK
    assert NEXT_BOOT[State.ENROLLED] is NextBoot.INSTALL
    assert NEXT_BOOT[State.DECOMMISSIONED] is NextBoot.STOP
