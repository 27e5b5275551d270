"""Rules that relate inventory fields to each other, reported all at once.

Each rule yields `Problem`s naming the field path, the bad value and the fix; `check`
runs them all so an operator fixes a broken file in one pass, not one error per run.
"""

from __future__ import annotations

import shlex
import string
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

from plasmaboot.inventory.models import (
    DRAIN_PLACEHOLDERS,
    INSTALL_PLACEHOLDERS,
    ROLLBACK_PLACEHOLDERS,
    Inventory,
    Network,
    Node,
)
from plasmaboot.inventory.ports import KNOWN_SERVICES
from plasmaboot.lifecycle import STABLE_STATES, State

MIN_BOOTSTRAP = 3
CONSENSUS_ROLES = ("control-plane", "all-in-one")


@dataclass(frozen=True)
class Problem:
    path: str
    value: object
    message: str
    fix: str

    def render(self, source: str) -> str:
        return f"{source}: {self.path} = {self.value!r}: {self.message}. Fix: {self.fix}"


def node_path(inv: Inventory, node: Node, field: str) -> str:
    index = inv.nodes.index(node)
    return f"nodes[{index}].{field}"


def _duplicate_macs(inv: Inventory) -> Iterator[Problem]:
    owners: dict[str, str] = {}
    for i, node in enumerate(inv.nodes):
        for j, mac in enumerate(node.macs):
            if mac in owners:
                yield Problem(
                    f"nodes[{i}].macs[{j}]",
                    mac,
                    f"MAC of {node.hostname} is already given to {owners[mac]}",
                    "each NIC's MAC belongs to exactly one node; remove or correct one of them",
                )
            else:
                owners[mac] = node.hostname


def _duplicate_hostnames(inv: Inventory) -> Iterator[Problem]:
    seen: dict[str, int] = {}
    for i, node in enumerate(inv.nodes):
        if node.hostname in seen:
            yield Problem(
                f"nodes[{i}].hostname",
                node.hostname,
                f"host name already used by nodes[{seen[node.hostname]}]",
                "give every node a unique host name",
            )
        else:
            seen[node.hostname] = i


def _bmc_ip(node: Node) -> IPv4Address | None:
    """The BMC's address, or None for a BMC given by host name (allowed, unchecked)."""
    if node.bmc is None:
        return None
    try:
        return IPv4Address(node.bmc.address)
    except ValueError:
        return None


def _addresses(inv: Inventory) -> Iterator[tuple[str, IPv4Address]]:
    yield "server.provisioning_ip", inv.server.provisioning_ip
    for i, node in enumerate(inv.nodes):
        yield f"nodes[{i}].provisioning_ip", node.provisioning_ip
        if node.production_ip is not None:
            yield f"nodes[{i}].production_ip", node.production_ip
        bmc_ip = _bmc_ip(node)
        if bmc_ip is not None:
            yield f"nodes[{i}].bmc.address", bmc_ip


def free_address(inv: Inventory, network: Network) -> IPv4Address | None:
    """The first host address of `network` that nothing in the inventory takes (no node,
    BMC or server address, gateway, DNS or NTP server, relay, nor the DHCP pool): where
    `node adopt` puts a node not given an address. None when the subnet is full."""
    taken = {ip for _, ip in _addresses(inv)} | set(network.dns) | set(network.ntp)
    if network.gateway is not None:
        taken.add(network.gateway)
    pool = network.dhcp.pool if network.dhcp else None
    taken |= set(network.dhcp.relays) if network.dhcp else set()
    return next(
        (ip for ip in network.subnet.hosts() if ip not in taken and not (pool and ip in pool)),
        None,
    )


def _duplicate_addresses(inv: Inventory) -> Iterator[Problem]:
    users: dict[IPv4Address, list[str]] = defaultdict(list)
    for path, ip in _addresses(inv):
        users[ip].append(path)
    for ip, paths in users.items():
        for path in paths[1:]:
            yield Problem(
                path,
                str(ip),
                f"address already used by {paths[0]}",
                "give every interface its own address",
            )


def _in_network(inv: Inventory, network_name: str, path: str, ip: IPv4Address) -> Iterator[Problem]:
    net = inv.network(network_name)
    if net is not None and ip not in net.subnet:
        yield Problem(
            path,
            str(ip),
            f"not inside the {network_name} network {net.subnet}",
            f"pick an address in {net.subnet} or correct networks[{network_name}].subnet",
        )


def _served_subnets(inv: Inventory) -> list[Network]:
    """Where a node's provisioning address may be: the provisioning network and every
    network DHCP serves (one per rack behind a relay)."""
    return [n for n in inv.networks if n.name == "provisioning" or n.dhcp is not None]


def _in_served_network(inv: Inventory, path: str, ip: IPv4Address) -> Iterator[Problem]:
    served = _served_subnets(inv)
    if served and not any(ip in net.subnet for net in served):
        names = ", ".join(f"{net.name} {net.subnet}" for net in served)
        yield Problem(
            path,
            str(ip),
            f"not inside any provisioning network ({names})",
            "pick an address in the subnet of the rack's network, or add a network with a "
            "dhcp: section whose subnet holds it",
        )


def _addresses_in_their_subnets(inv: Inventory) -> Iterator[Problem]:
    yield from _in_network(
        inv, "provisioning", "server.provisioning_ip", inv.server.provisioning_ip
    )
    for i, node in enumerate(inv.nodes):
        yield from _in_served_network(inv, f"nodes[{i}].provisioning_ip", node.provisioning_ip)
        if node.production_ip is not None:
            yield from _in_network(
                inv, "production", f"nodes[{i}].production_ip", node.production_ip
            )
        bmc_ip = _bmc_ip(node)
        if bmc_ip is not None:
            yield from _in_network(inv, "management", f"nodes[{i}].bmc.address", bmc_ip)


def _fixed_addresses_outside_pool(inv: Inventory) -> Iterator[Problem]:
    for net in inv.networks:
        if net.dhcp is None or net.dhcp.pool is None:
            continue
        pool = net.dhcp.pool
        fix = (
            f"fixed addresses must be outside the dynamic pool {pool.start}-{pool.end} of "
            f"network {net.name}"
        )
        if inv.server.provisioning_ip in pool:
            yield Problem(
                "server.provisioning_ip",
                str(inv.server.provisioning_ip),
                "inside the DHCP pool",
                fix,
            )
        for i, node in enumerate(inv.nodes):
            if node.provisioning_ip in pool:
                yield Problem(
                    f"nodes[{i}].provisioning_ip",
                    str(node.provisioning_ip),
                    "inside the DHCP pool, so it could be leased to another machine",
                    fix,
                )


def _dhcp_networks(inv: Inventory) -> Iterator[Problem]:
    """Several served networks must never leave a request two candidate networks."""
    relays: dict[IPv4Address, str] = {}
    interfaces: dict[str, str] = {}
    modes: dict[str, str] = {}
    for i, net in enumerate(inv.networks):
        if net.dhcp is None:
            continue
        modes.setdefault("proxy" if net.dhcp.mode == "proxy" else "leasing", net.name)
        if net.dhcp.interface is not None:
            if net.dhcp.interface in interfaces:
                yield Problem(
                    f"networks[{i}].dhcp.interface",
                    net.dhcp.interface,
                    f"network {interfaces[net.dhcp.interface]} answers on the same interface",
                    "name an interface on one network only; the other networks are reached "
                    "through relays (list their giaddr under dhcp.relays if it is outside "
                    "their subnet)",
                )
            interfaces.setdefault(net.dhcp.interface, net.name)
        for j, relay in enumerate(net.dhcp.relays):
            path = f"networks[{i}].dhcp.relays[{j}]"
            if relay in relays:
                yield Problem(
                    path,
                    str(relay),
                    f"relay address already listed by network {relays[relay]}",
                    "a relay address (giaddr) picks one network; list it under one of them",
                )
            relays.setdefault(relay, net.name)
            owner = inv.network_of(relay)
            if owner is not None and owner.name != net.name and owner.dhcp is not None:
                yield Problem(
                    path,
                    str(relay),
                    f"inside network {owner.name} ({owner.subnet}), which a giaddr there picks",
                    f"remove it, or give the relay an address outside {owner.subnet}",
                )
    if len(modes) > 1:
        yield Problem(
            "networks[*].dhcp.mode",
            f"proxy on {modes['proxy']}, full/reservation on {modes['leasing']}",
            "one server is either a proxyDHCP (PXE options only) or a leasing DHCP server",
            "give every dhcp: section mode proxy, or none of them",
        )


def _network_shapes(inv: Inventory) -> Iterator[Problem]:
    names: set[str] = set()
    vlans: dict[int, str] = {}
    for i, net in enumerate(inv.networks):
        if net.name in names:
            yield Problem(f"networks[{i}].name", net.name, "network name used twice", "rename it")
        names.add(net.name)
        if net.vlan in vlans:
            yield Problem(
                f"networks[{i}].vlan",
                net.vlan,
                f"VLAN already used by network {vlans[net.vlan]}",
                "give each network its own VLAN ID",
            )
        vlans[net.vlan] = net.name
        for j, other in enumerate(inv.networks[:i]):
            if net.subnet.overlaps(other.subnet):
                yield Problem(
                    f"networks[{i}].subnet",
                    str(net.subnet),
                    f"overlaps networks[{j}] ({other.name}, {other.subnet})",
                    "networks must not overlap",
                )
        yield from _network_internals(i, net)
    if "provisioning" not in names:
        yield Problem(
            "networks",
            sorted(names),
            "no network is named 'provisioning'",
            "name the PXE network 'provisioning'; the server answers DHCP there",
        )


def _network_internals(i: int, net: Network) -> Iterator[Problem]:
    if net.gateway is not None and net.gateway not in net.subnet:
        yield Problem(
            f"networks[{i}].gateway",
            str(net.gateway),
            f"not inside {net.subnet}",
            "the gateway must be on the network it serves",
        )
    if net.dhcp is None:
        return
    pool = net.dhcp.pool
    if pool is None:
        if net.dhcp.mode == "full":
            yield Problem(
                f"networks[{i}].dhcp.pool",
                None,
                "full DHCP mode needs a dynamic pool",
                "add pool: {start: ..., end: ...} or use mode: reservation",
            )
        return
    if pool.start > pool.end:
        yield Problem(
            f"networks[{i}].dhcp.pool",
            f"{pool.start}-{pool.end}",
            "the pool starts after it ends",
            "swap start and end",
        )
    for end_name, ip in (("start", pool.start), ("end", pool.end)):
        if ip not in net.subnet or ip in (net.subnet.network_address, net.subnet.broadcast_address):
            yield Problem(
                f"networks[{i}].dhcp.pool.{end_name}",
                str(ip),
                f"not a host address of {net.subnet}",
                "keep the pool inside the subnet's host addresses",
            )
    if net.gateway is not None and net.gateway in pool:
        yield Problem(
            f"networks[{i}].gateway",
            str(net.gateway),
            "inside the DHCP pool",
            "move the gateway out of the pool",
        )


def _profiles_and_images(inv: Inventory) -> Iterator[Problem]:
    for name, profile in sorted(inv.profiles.items()):
        if profile.image not in inv.images:
            yield Problem(
                f"profiles.{name}.image",
                profile.image,
                "no such image",
                f"use one of {sorted(inv.images)} or add it under images",
            )
        for j, service in enumerate(profile.services):
            if service not in KNOWN_SERVICES:
                yield Problem(
                    f"profiles.{name}.services[{j}]",
                    service,
                    "not a service of the port matrix",
                    f"use one of {sorted(KNOWN_SERVICES)}",
                )
    for i, node in enumerate(inv.nodes):
        if node.profile not in inv.profiles:
            yield Problem(
                f"nodes[{i}].profile",
                node.profile,
                f"unknown profile for {node.hostname}",
                f"use one of {sorted(inv.profiles)}",
            )


def _store_services(inv: Inventory) -> Iterator[Problem]:
    """etcd stands in for Chainfire only: a profile that also lists FlareDB would get no
    FlareDB at all, so say so instead of silently dropping a service the operator asked for."""
    if inv.cluster.store != "etcd":
        return
    for name, profile in sorted(inv.profiles.items()):
        for j, service in enumerate(profile.services):
            if service == "flaredb":
                yield Problem(
                    f"profiles.{name}.services[{j}]",
                    service,
                    "cluster.store is etcd, which stands in for Chainfire only: there is no "
                    "FlareDB to bootstrap or join",
                    "remove flaredb from this profile, or set cluster.store: chainfire",
                )


def _bootstrap_quorum(inv: Inventory) -> Iterator[Problem]:
    if not inv.nodes:
        return
    bootstrap = [n for n in inv.nodes if n.bootstrap]
    for node in bootstrap:
        profile = inv.profiles.get(node.profile)
        if profile is not None and profile.role not in CONSENSUS_ROLES:
            yield Problem(
                node_path(inv, node, "bootstrap"),
                True,
                f"{node.hostname} is a {profile.role} node; only control-plane nodes "
                "bootstrap the Raft stores",
                "set bootstrap: false, or give the node a control-plane profile",
            )
    names = [n.hostname for n in bootstrap]
    if len(bootstrap) < MIN_BOOTSTRAP:
        yield Problem(
            "nodes[*].bootstrap",
            names,
            f"{len(bootstrap)} bootstrap node(s); a Raft cluster that survives a failure "
            f"needs at least {MIN_BOOTSTRAP}",
            f"mark at least {MIN_BOOTSTRAP} control-plane nodes bootstrap: true",
        )
    elif len(bootstrap) % 2 == 0:
        yield Problem(
            "nodes[*].bootstrap",
            names,
            f"{len(bootstrap)} bootstrap nodes is an even number: one more node adds no "
            "fault tolerance and a split vote can stall the election",
            "mark an odd number (3 or 5) of nodes bootstrap: true",
        )


def _bmc_credentials(inv: Inventory) -> Iterator[Problem]:
    for i, node in enumerate(inv.nodes):
        bmc = node.bmc
        if bmc is None or bmc.driver == "manual":
            continue
        if bmc.password_env is None and bmc.password_file is None:
            yield Problem(
                f"nodes[{i}].bmc",
                bmc.address,
                f"no credential reference for the {bmc.driver} BMC of {node.hostname}",
                "set password_env (an environment variable) or password_file; never the "
                "password itself",
            )
        elif bmc.password_env is not None and bmc.password_file is not None:
            yield Problem(
                f"nodes[{i}].bmc",
                bmc.address,
                "both password_env and password_file are set",
                "keep one of them",
            )


def _boot_overrides(inv: Inventory) -> Iterator[Problem]:
    for i, node in enumerate(inv.nodes):
        for key in node.boot_overrides:
            if not key.isdigit():
                yield Problem(
                    f"nodes[{i}].boot_overrides.{key}",
                    key,
                    "override keys are DHCP option-93 architecture numbers",
                    "use keys such as '0' (BIOS), '7' (UEFI x64), '16' (UEFI HTTP)",
                )


def _installer_command(inv: Inventory) -> Iterator[Problem]:
    installer = inv.server.installer
    if installer.command is None:
        return
    try:
        fields = {
            name
            for arg in shlex.split(installer.command)
            for _, name, _, _ in string.Formatter().parse(arg)
            if name is not None
        }
    except ValueError as exc:
        yield Problem("server.installer.command", installer.command, str(exc), "fix the quoting")
        return
    unknown = sorted(fields - INSTALL_PLACEHOLDERS)
    if unknown:
        yield Problem(
            "server.installer.command",
            installer.command,
            f"unknown placeholder(s) {unknown}",
            f"use only {sorted(INSTALL_PLACEHOLDERS)}",
        )
    if "flake" in fields and not installer.flake:
        yield Problem(
            "server.installer.flake",
            None,
            "the install command uses {flake} but no flake is set",
            "set server.installer.flake, e.g. /srv/provisioning",
        )


def _command_template(
    path: str, command: str, placeholders: frozenset[str], what: str
) -> Iterator[Problem]:
    """An argv template of the inventory: it splits, is not empty, names only `placeholders`."""
    try:
        argv = shlex.split(command)
        parsed = [
            (name, spec, conversion)
            for arg in argv
            for _, name, spec, conversion in string.Formatter().parse(arg)
            if name is not None
        ]
    except ValueError as exc:
        yield Problem(path, command, str(exc), "fix the quoting or the braces")
        return
    fields = {name for name, _, _ in parsed}
    fields |= {f"{name}!{conv}" if conv else f"{name}:{spec}" for name, spec, conv in parsed
               if spec or conv}  # fmt: skip
    if not argv:
        yield Problem(path, command, "empty command", f"give {what}, or remove the key")
    unknown = sorted(fields - placeholders)
    if unknown:
        yield Problem(
            path,
            command,
            f"unknown placeholder(s) {unknown}",
            f"use only {sorted(placeholders)} (write {{{{ }}}} for literal braces)",
        )


def _drain_command(inv: Inventory) -> Iterator[Problem]:
    command = inv.server.drain.command
    if command is not None:
        yield from _command_template(
            "server.drain.command", command, DRAIN_PLACEHOLDERS,
            "the program that drains a node and its arguments",
        )  # fmt: skip


def _rollback_command(inv: Inventory) -> Iterator[Problem]:
    yield from _command_template(
        "server.rollback.command", inv.server.rollback.command, ROLLBACK_PLACEHOLDERS,
        "the command that switches a node back to its previous system, e.g. "
        "nixos-rebuild switch --rollback",
    )  # fmt: skip


def _deadlines(inv: Inventory) -> Iterator[Problem]:
    """Deadlines exist only for the states that wait for the machine, in whole seconds."""
    unstable = [s.value for s in State if s not in STABLE_STATES]
    for name, seconds in sorted(inv.server.deadlines.items()):
        path = f"server.deadlines.{name}"
        if name not in unstable:
            stable = name in {s.value for s in STABLE_STATES}
            yield Problem(
                path,
                name,
                f"{name} is a stable state: it waits for an operator, not the machine, so "
                "it has no deadline"
                if stable
                else "not a lifecycle state",
                f"name one of the states that wait for the machine: {', '.join(unstable)}",
            )
        if seconds <= 0:
            yield Problem(
                path,
                seconds,
                "a deadline must be a positive number of seconds",
                "give the seconds the state may last, e.g. 5400 for 90 minutes, or remove "
                "the key to keep the default",
            )


RULES: tuple[Callable[[Inventory], Iterator[Problem]], ...] = (
    _network_shapes,
    _duplicate_macs,
    _duplicate_hostnames,
    _duplicate_addresses,
    _addresses_in_their_subnets,
    _fixed_addresses_outside_pool,
    _dhcp_networks,
    _profiles_and_images,
    _store_services,
    _bootstrap_quorum,
    _bmc_credentials,
    _boot_overrides,
    _installer_command,
    _drain_command,
    _rollback_command,
    _deadlines,
)


def check(inv: Inventory) -> list[Problem]:
    """Every cross-field problem in the inventory; empty means it is usable."""
    return [problem for rule in RULES for problem in rule(inv)]
