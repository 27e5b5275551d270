"""Per-profile firewalls (nftables, iptables-restore, NixOS) from the one port matrix.

All three read `resolved_rules`, so a port is open in all of them or in none. Scopes resolve
against the inventory: internal = the site (`internal_network`), cluster = production (else
the provisioning networks, as in the lab), management = management (else the provisioning
networks, where the operator reaches the lab), storage = storage (rules for it are left out
when there is no such network), server = the provisioning server's address alone (SSH for
install, rollout and rollback; never the whole world). "The provisioning networks" are the
one named provisioning and every network DHCP serves (one per rack behind relays): a rule
then names each subnet.

The seeds flush the whole ruleset and drop forwarding; that would erase the tables of other
software and cut off VM and pod traffic on workers. The nftables ruleset here owns only its
own table (`inet plasmaboot`) and filters only input.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Literal

from plasmaboot.inventory.models import Inventory, Profile
from plasmaboot.inventory.ports import PortRule, Scope, rules_for
from plasmaboot.render.common import HEADER, Files, RenderContext, internal_network

TABLE = "plasmaboot"


@dataclass(frozen=True)
class ResolvedRule:
    rule: PortRule
    sources: tuple[IPv4Network, ...]  # empty: from anywhere

    @property
    def source(self) -> IPv4Network | None:
        """The one source network (None: from anywhere); `sources` when there are several."""
        if len(self.sources) > 1:
            raise ValueError(f"{self.comment} has several sources; read .sources")
        return self.sources[0] if self.sources else None

    @property
    def comment(self) -> str:
        optional = "" if self.rule.required else " (optional)"
        return f"{self.rule.service}: {self.rule.purpose}{optional}"


def provisioning_subnets(inv: Inventory) -> tuple[IPv4Network, ...]:
    """The provisioning network and every network DHCP serves, in inventory order."""
    return tuple(n.subnet for n in inv.networks if n.name == "provisioning" or n.dhcp is not None)


def _fallback(inv: Inventory, name: Literal["production", "management"]) -> tuple[IPv4Network, ...]:
    net = inv.network(name)
    return (net.subnet,) if net is not None else provisioning_subnets(inv)


def scope_networks(inv: Inventory, scope: Scope) -> tuple[IPv4Network, ...]:
    """The source networks of a scope; empty for `any`. Raises LookupError if it has none."""
    if scope == "any":
        return ()
    if scope == "internal":
        return (internal_network(inv),)
    if scope == "cluster":
        return _fallback(inv, "production")
    if scope == "management":
        return _fallback(inv, "management")
    if scope == "server":
        return (IPv4Network(f"{inv.server.provisioning_ip}/32"),)
    storage = inv.network("storage")
    if storage is None:
        raise LookupError("the inventory has no storage network")
    return (storage.subnet,)


def resolved_rules(inv: Inventory, profile: Profile) -> list[ResolvedRule]:
    """The matrix rules the profile's services (plus SSH and NTP) open, in matrix order."""
    resolved: list[ResolvedRule] = []
    for rule in rules_for(profile.services):
        try:
            resolved.append(ResolvedRule(rule, scope_networks(inv, rule.source)))
        except LookupError:
            continue
    return resolved


def _nft_match(r: ResolvedRule) -> str:
    port = f"{r.rule.port}-{r.rule.port_end}" if r.rule.port_end else str(r.rule.port)
    if len(r.sources) > 1:
        source = f"ip saddr {{ {', '.join(map(str, r.sources))} }} "
    else:
        source = f"ip saddr {r.sources[0]} " if r.sources else ""
    return f'{source}{r.rule.proto} dport {port} accept comment "{r.comment}"'


def nft_ruleset(inv: Inventory, name: str, profile: Profile) -> str:
    """A complete `nft -f` file: replaces table inet plasmaboot atomically, nothing else."""
    rules = "\n".join(f"        {_nft_match(r)}" for r in resolved_rules(inv, profile))
    return f"""\
#!/usr/sbin/nft -f
# {HEADER}
# Profile {name} (role {profile.role}): {", ".join(profile.services)}
table inet {TABLE}
delete table inet {TABLE}

table inet {TABLE} {{
    chain input {{
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
        ct state invalid drop
        meta l4proto icmp accept
        meta l4proto ipv6-icmp accept
{rules}
        limit rate 5/minute log prefix "plasmaboot drop: " level debug
    }}
}}
"""


def iptables_rules(inv: Inventory, name: str, profile: Profile) -> str:
    """An `iptables-restore` file for hosts without nftables (IPv4 filter table)."""
    lines = [
        f"# {HEADER}",
        f"# Profile {name} (role {profile.role}); load with: iptables-restore FILE",
        "*filter",
        ":INPUT DROP [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        "-A INPUT -i lo -j ACCEPT",
        "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A INPUT -m conntrack --ctstate INVALID -j DROP",
        "-A INPUT -p icmp -j ACCEPT",
    ]
    for r in resolved_rules(inv, profile):
        port = f"{r.rule.port}:{r.rule.port_end}" if r.rule.port_end else str(r.rule.port)
        # iptables-restore expands a comma-separated -s into one rule per network.
        source = f"-s {','.join(map(str, r.sources))} " if r.sources else ""
        lines.append(
            f"-A INPUT {source}-p {r.rule.proto} -m {r.rule.proto} --dport {port} "
            f'-m comment --comment "{r.comment}" -j ACCEPT'
        )
    lines += [
        '-A INPUT -m limit --limit 5/min -j LOG --log-prefix "plasmaboot drop: " --log-level 7',
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def nixos_firewall(inv: Inventory, name: str, profile: Profile) -> str:
    """A NixOS module: the nftables-based firewall with the same rules as `nft_ruleset`.

    Source-restricted rules go to extraInputRules (nftables syntax); the NixOS firewall
    appends them to its input-allow chain, after loopback and established traffic.
    """
    open_tcp: list[str] = []
    open_udp: list[str] = []
    ranges: list[str] = []
    restricted: list[str] = []
    for r in resolved_rules(inv, profile):
        if r.sources:
            restricted.append(f"      {_nft_match(r)}")
        elif r.rule.port_end:
            ranges.append(f"{{ from = {r.rule.port}; to = {r.rule.port_end}; }}")
        else:
            (open_tcp if r.rule.proto == "tcp" else open_udp).append(str(r.rule.port))
    tcp_ranges = " ".join(ranges)
    return f"""\
# {HEADER}
# Profile {name} (role {profile.role}): {", ".join(profile.services)}
{{ ... }}:
{{
  networking.nftables.enable = true;
  networking.firewall = {{
    enable = true;
    allowPing = true;
    allowedTCPPorts = [ {" ".join(open_tcp)} ];
    allowedUDPPorts = [ {" ".join(open_udp)} ];
    allowedTCPPortRanges = [ {tcp_ranges} ];
    extraInputRules = ''
{chr(10).join(restricted)}
    '';
  }};
}}
"""


def _profiles_in_use(inv: Inventory) -> dict[str, Profile]:
    """Every profile (a spare profile still gets a firewall, so it is ready when used)."""
    return dict(sorted(inv.profiles.items()))


def render_nftables(inv: Inventory, ctx: RenderContext) -> Files:
    return {f"{n}.nft": nft_ruleset(inv, n, p) for n, p in _profiles_in_use(inv).items()}


def render_iptables(inv: Inventory, ctx: RenderContext) -> Files:
    return {f"{n}.rules": iptables_rules(inv, n, p) for n, p in _profiles_in_use(inv).items()}


def render_nixos_firewall(inv: Inventory, ctx: RenderContext) -> Files:
    return {f"{n}.nix": nixos_firewall(inv, n, p) for n, p in _profiles_in_use(inv).items()}
