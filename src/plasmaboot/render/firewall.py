"""Firewalls (nftables, iptables-restore + ip6tables-restore, NixOS) for every profile from
the one port matrix, and for the provisioning server itself from its inventory settings.

All flavours read the same resolved rules, so a port is open in all of them or in none.
Scopes resolve against the inventory: internal = the site (`internal_network`), cluster =
production (else the provisioning networks, as in the lab), provisioning = the
provisioning networks, management = management (else the provisioning networks, where the
operator reaches the lab), storage = storage (rules for it are left out when there is no
such network), server = the provisioning server's address alone (SSH for install, rollout
and rollback; never the whole world). "The provisioning networks" are the one named
provisioning and every network DHCP serves (one per rack behind relays): a rule then names
each subnet.

IPv6: the inventory's networks are IPv4, so a source-restricted rule admits IPv4 alone;
IPv6 gets loopback, established traffic, ICMPv6 (neighbour discovery) and the rules open
to any source. nftables does this in one `inet` table; iptables needs a second file for
ip6tables-restore, without which IPv6 would stay open.

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
SERVER_DIR = "server"  # the provisioning server's files: no profile's name can clash
SERVER_NAME = "provisioning-server"


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
    if scope == "provisioning":
        return provisioning_subnets(inv)
    if scope == "management":
        return _fallback(inv, "management")
    if scope == "server":
        return (IPv4Network(f"{inv.server.provisioning_ip}/32"),)
    storage = inv.network("storage")
    if storage is None:
        raise LookupError("the inventory has no storage network")
    return (storage.subnet,)


def _resolve(inv: Inventory, rules: list[PortRule]) -> list[ResolvedRule]:
    """Rules with their source networks; a rule whose scope has none is left out, and so
    is one that opens what an earlier rule opened already (the lab's fallbacks)."""
    resolved: list[ResolvedRule] = []
    seen: set[tuple[int, int | None, str, tuple[IPv4Network, ...]]] = set()
    for rule in rules:
        try:
            sources = scope_networks(inv, rule.source)
        except LookupError:
            continue
        key = (rule.port, rule.port_end, rule.proto, sources)
        if key not in seen:
            seen.add(key)
            resolved.append(ResolvedRule(rule, sources))
    return resolved


def resolved_rules(inv: Inventory, profile: Profile) -> list[ResolvedRule]:
    """The matrix rules the profile's services (plus SSH and NTP) open, in matrix order."""
    return _resolve(inv, rules_for(profile.services))


def server_rules(inv: Inventory) -> list[ResolvedRule]:
    """What the provisioning server itself must admit, from its inventory settings.

    TFTP transfers answer from ephemeral ports: a client's ACK comes back to the port the
    server sent from, which conntrack admits as established. The agent API is served on
    the HTTP boot port. The server is not a DHCP client, so 68 stays closed."""
    server = inv.server
    rules = [
        # from any source: a client asks from 0.0.0.0, a relay from wherever it sits
        PortRule("dhcp", server.dhcp_port, "udp", "DHCP (clients and relay agents)", "any"),
        PortRule("tftp", server.tftp_port, "udp", "TFTP (iPXE binaries)", "provisioning"),
        PortRule("http", server.http_port, "tcp", "boot port: iPXE, agent API", "provisioning"),
        PortRule("http", server.http_port, "tcp", "boot port: /health, /metrics", "management"),
        PortRule("ssh", 22, "tcp", "Remote management", "management"),
    ]
    if any(net.dhcp is not None and net.dhcp.mode == "proxy" for net in inv.networks):
        rules.insert(1, PortRule("dhcp", 4011, "udp", "proxyDHCP PXE port", "any"))
    if not server.admin.address.is_loopback:  # loopback is admitted with the lo rule
        rules.append(PortRule("admin", server.admin.port, "tcp", "Admin API (TLS)", "management"))
    return _resolve(inv, rules)


def _nft_match(r: ResolvedRule) -> str:
    port = f"{r.rule.port}-{r.rule.port_end}" if r.rule.port_end else str(r.rule.port)
    if len(r.sources) > 1:
        source = f"ip saddr {{ {', '.join(map(str, r.sources))} }} "
    else:
        source = f"ip saddr {r.sources[0]} " if r.sources else ""
    return f'{source}{r.rule.proto} dport {port} accept comment "{r.comment}"'


def _title(name: str, profile: Profile | None) -> str:
    if profile is None:
        return f"The provisioning server ({name}): DHCP, TFTP, HTTP boot port, admin API, SSH"
    return f"Profile {name} (role {profile.role}): {', '.join(profile.services)}"


def nft_ruleset(name: str, profile: Profile | None, resolved: list[ResolvedRule]) -> str:
    """A complete `nft -f` file: replaces table inet plasmaboot atomically, nothing else."""
    rules = "\n".join(f"        {_nft_match(r)}" for r in resolved)
    return f"""\
#!/usr/sbin/nft -f
# {HEADER}
# {_title(name, profile)}
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


def iptables_rules(
    name: str, profile: Profile | None, resolved: list[ResolvedRule], *, ipv6: bool = False
) -> str:
    """An `iptables-restore` file (IPv4), or with `ipv6` its `ip6tables-restore` twin: the
    rules open to any source, ICMPv6, and a drop of everything else."""
    tool = "ip6tables-restore" if ipv6 else "iptables-restore"
    lines = [
        f"# {HEADER}",
        f"# {_title(name, profile)}; load with: {tool} FILE",
        "*filter",
        ":INPUT DROP [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        "-A INPUT -i lo -j ACCEPT",
        "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A INPUT -m conntrack --ctstate INVALID -j DROP",
        "-A INPUT -p ipv6-icmp -j ACCEPT" if ipv6 else "-A INPUT -p icmp -j ACCEPT",
    ]
    for r in resolved:
        if ipv6 and r.sources:  # IPv4 networks: nothing of IPv6 is admitted by them
            continue
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


def nixos_firewall(name: str, profile: Profile | None, resolved: list[ResolvedRule]) -> str:
    """A NixOS module: the nftables-based firewall with the same rules as `nft_ruleset`.

    Source-restricted rules go to extraInputRules (nftables syntax); the NixOS firewall
    appends them to its input-allow chain, after loopback and established traffic.
    """
    open_tcp: list[str] = []
    open_udp: list[str] = []
    ranges: list[str] = []
    restricted: list[str] = []
    for r in resolved:
        if r.sources:
            restricted.append(f"      {_nft_match(r)}")
        elif r.rule.port_end:
            ranges.append(f"{{ from = {r.rule.port}; to = {r.rule.port_end}; }}")
        else:
            (open_tcp if r.rule.proto == "tcp" else open_udp).append(str(r.rule.port))
    tcp_ranges = " ".join(ranges)
    return f"""\
# {HEADER}
# {_title(name, profile)}
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


Ruleset = tuple[str, Profile | None, list[ResolvedRule]]  # name, profile (None: the server)


def _every_ruleset(inv: Inventory) -> dict[str, Ruleset]:
    """Path stem -> ruleset: each profile's, and the server's in its own directory."""
    rulesets: dict[str, Ruleset] = {
        n: (n, p, resolved_rules(inv, p)) for n, p in _profiles_in_use(inv).items()
    }
    rulesets[f"{SERVER_DIR}/{SERVER_NAME}"] = (SERVER_NAME, None, server_rules(inv))
    return rulesets


def render_nftables(inv: Inventory, ctx: RenderContext) -> Files:
    return {f"{stem}.nft": nft_ruleset(*r) for stem, r in _every_ruleset(inv).items()}


def render_iptables(inv: Inventory, ctx: RenderContext) -> Files:
    files: Files = {}
    for stem, ruleset in _every_ruleset(inv).items():
        files[f"{stem}.rules"] = iptables_rules(*ruleset)
        files[f"{stem}.rules6"] = iptables_rules(*ruleset, ipv6=True)
    return files


def render_nixos_firewall(inv: Inventory, ctx: RenderContext) -> Files:
    return {f"{stem}.nix": nixos_firewall(*r) for stem, r in _every_ruleset(inv).items()}
