"""BIND zone files: the cluster domain forward and one reverse zone per /24 in use.

The SOA serial is read back from the zone file the previous run wrote: it is kept while the
records are unchanged and otherwise becomes max(today's YYYYMMDD00, previous + 1). Unlike a
YYYYMMDDnn counter that wraps after 99 changes a day, it never goes backwards: after nn=99
it simply keeps counting (RFC 1912 section 2.2 only needs it to increase).

Every PTR has a matching A record: reverse zones only hold addresses the forward zone names.
Zones are written as text rather than built with dnspython: A/PTR/CNAME lines need no
library, and the tests check the result with the real named-checkzone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from ipaddress import IPv4Address

from plasmaboot.inventory.models import Inventory
from plasmaboot.render.common import (
    HEADER,
    Files,
    RenderContext,
    bootstrap_nodes,
    cluster_ip,
    services_of,
)

TTL = 86400
# Service VIPs at these host numbers of the production network, as in the network reference.
SERVICE_VIPS: tuple[tuple[str, int], ...] = (
    ("chainfire", 100),
    ("flaredb", 101),
    ("iam", 102),
    ("plasmavmc", 103),
)
SERVICE_CNAMES: tuple[tuple[str, str], ...] = (
    ("api", "iam"),
    ("db", "flaredb"),
    ("vm", "plasmavmc"),
)
_SERIAL_RE = re.compile(r"^\s+(\d+)\s+; serial$", re.MULTILINE)
_MAX_SERIAL = 2**32 - 1


@dataclass(frozen=True)
class Record:
    name: str
    rtype: str
    value: str


def _name_servers(inv: Inventory) -> list[tuple[str, IPv4Address]]:
    """ns1/ns2: the first two FlashDNS nodes (bootstrap ones first), else the PXE server."""
    dns_nodes = sorted(
        (n for n in inv.nodes if "flashdns" in services_of(inv, n)),
        key=lambda n: not n.bootstrap,
    )
    if not dns_nodes:
        return [("ns1", inv.server.provisioning_ip)]
    return [(f"ns{i}", cluster_ip(inv, node)) for i, node in enumerate(dns_nodes[:2], start=1)]


def _address_records(inv: Inventory) -> list[tuple[str, IPv4Address]]:
    records = list(_name_servers(inv))
    records += [(node.hostname, cluster_ip(inv, node)) for node in inv.nodes]
    for node in inv.nodes:
        if node.bmc is not None:
            try:
                records.append((f"{node.hostname}-bmc", IPv4Address(node.bmc.address)))
            except ValueError:
                continue  # a BMC given by name is already in DNS elsewhere
    production = inv.network("production")
    if production is not None:
        base = production.subnet.network_address
        records += [(name, base + host) for name, host in SERVICE_VIPS]
    else:
        # No VIP network (the lab): each service name resolves to every bootstrap node.
        members = [cluster_ip(inv, node) for node in bootstrap_nodes(inv)]
        records += [(name, ip) for name, _host in SERVICE_VIPS for ip in members]
    return records


def _soa(inv: Inventory, serial_text: str) -> list[str]:
    domain = inv.cluster.domain
    return [
        f"$TTL {TTL}",
        f"@ IN SOA ns1.{domain}. hostmaster.{domain}. (",
        f"    {serial_text} ; serial",
        "    3600 ; refresh",
        "    1800 ; retry",
        "    604800 ; expire",
        "    86400 ; negative-cache TTL",
        ")",
    ]


def _zone_text(inv: Inventory, origin: str, records: list[Record], serial: int) -> str:
    lines = [f"; {HEADER}", f"$ORIGIN {origin}.", *_soa(inv, str(serial))]
    lines += [f"@ IN NS {ns}.{inv.cluster.domain}." for ns, _ip in _name_servers(inv)]
    width = max((len(r.name) for r in records), default=1)
    lines += [f"{r.name:<{width}} IN {r.rtype:<5} {r.value}" for r in records]
    return "\n".join(lines) + "\n"


def next_serial(previous: int | None, today: date) -> int:
    """The first serial of today, or previous + 1 if that is not larger (never backwards)."""
    first_today = int(today.strftime("%Y%m%d")) * 100
    if previous is None or previous < first_today:
        return first_today
    if previous >= _MAX_SERIAL:
        raise ValueError(f"zone serial {previous} cannot increase past 2^32-1")
    return previous + 1


def _with_serial(
    inv: Inventory, origin: str, records: list[Record], ctx: RenderContext, filename: str
) -> str:
    """Reuse the previous serial when only it would differ; otherwise advance it."""
    draft = _zone_text(inv, origin, records, 0)
    old = ctx.previous(filename)
    old_serial: int | None = None
    if old is not None:
        found = _SERIAL_RE.search(old.decode("utf-8", "replace"))
        if found:
            old_serial = int(found.group(1))
            unchanged = _SERIAL_RE.sub("    0 ; serial", old.decode("utf-8", "replace"), 1)
            if unchanged == draft:
                return _zone_text(inv, origin, records, old_serial)
    return _zone_text(inv, origin, records, next_serial(old_serial, ctx.today))


def reverse_origin(ip: IPv4Address) -> str:
    a, b, c, _d = str(ip).split(".")
    return f"{c}.{b}.{a}.in-addr.arpa"


def render_zones(inv: Inventory, ctx: RenderContext) -> Files:
    """<domain>.zone, <c.b.a>.in-addr.arpa.zone per /24, and named.conf.zones to include."""
    domain = inv.cluster.domain
    addresses = _address_records(inv)
    forward = [Record(name, "A", str(ip)) for name, ip in addresses]
    forward += [Record(alias, "CNAME", f"{target}.{domain}.") for alias, target in SERVICE_CNAMES]
    files: Files = {}
    forward_file = f"{domain}.zone"
    files[forward_file] = _with_serial(inv, domain, forward, ctx, forward_file)
    reverse: dict[str, dict[str, str]] = {}
    ns_names = {name for name, _ip in _name_servers(inv)}
    # Name-server aliases go last so an address's PTR names the node, not "ns1".
    for name, ip in sorted(addresses, key=lambda record: record[0] in ns_names):
        ptrs = reverse.setdefault(reverse_origin(ip), {})
        last = str(ip).rsplit(".", 1)[1]
        ptrs.setdefault(last, f"{name}.{domain}.")  # first name wins: one PTR per address
    for origin in sorted(reverse):
        ptr_records = [
            Record(last, "PTR", target)
            for last, target in sorted(reverse[origin].items(), key=lambda kv: int(kv[0]))
        ]
        files[f"{origin}.zone"] = _with_serial(inv, origin, ptr_records, ctx, f"{origin}.zone")
    conf = [f"// {HEADER}"]
    for origin in [domain, *sorted(reverse)]:
        conf.append(f'zone "{origin}" IN {{ type primary; file "{origin}.zone"; }};')
    files["named.conf.zones"] = "\n".join(conf) + "\n"
    return files
