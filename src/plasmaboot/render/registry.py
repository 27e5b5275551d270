"""TARGET name -> renderer. Renderers are pure: inventory (+ previous output) -> files."""

from __future__ import annotations

from collections.abc import Callable

from plasmaboot.inventory.models import Inventory
from plasmaboot.render.cluster_config import render_cluster_config
from plasmaboot.render.common import Files, RenderContext
from plasmaboot.render.dhcpd import render_dhcpd
from plasmaboot.render.dnsmasq import render_dnsmasq
from plasmaboot.render.firewall import render_iptables, render_nftables, render_nixos_firewall
from plasmaboot.render.ipxe import render_ipxe
from plasmaboot.render.kea import render_kea
from plasmaboot.render.nginx import render_nginx
from plasmaboot.render.nixos import render_nixos
from plasmaboot.render.systemd import render_systemd
from plasmaboot.render.zones import render_zones

Renderer = Callable[[Inventory, RenderContext], Files]

TARGETS: dict[str, Renderer] = {
    "dhcpd": render_dhcpd,
    "kea": render_kea,
    "dnsmasq": render_dnsmasq,
    "ipxe": render_ipxe,
    "nginx": render_nginx,
    "zones": render_zones,
    "nftables": render_nftables,
    "iptables": render_iptables,
    "nixos-firewall": render_nixos_firewall,
    "cluster-config": render_cluster_config,
    "nixos": render_nixos,
    "systemd": render_systemd,
}
ALL = "all"


def target_names() -> list[str]:
    return [*TARGETS, ALL]


def _prefixed(prefix: str, previous: RenderContext) -> RenderContext:
    """The context a target sees in `all`: its previous files live under its subdirectory."""
    return RenderContext(
        previous=lambda relative: previous.previous(f"{prefix}/{relative}"),
        today=previous.today,
    )


def render(target: str, inv: Inventory, ctx: RenderContext) -> Files:
    """Every file of `target` (or of all targets, each in its own subdirectory)."""
    if target == ALL:
        files: Files = {}
        for name, renderer in TARGETS.items():
            for path, content in renderer(inv, _prefixed(name, ctx)).items():
                files[f"{name}/{path}"] = content
        return files
    if target not in TARGETS:
        raise KeyError(f"unknown render target {target!r}; use one of {target_names()}")
    return TARGETS[target](inv, ctx)
