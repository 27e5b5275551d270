"""The inventory: one declarative description of the cluster every other part reads.

Models only check the shape of each field (types, formats, enums). Rules that relate
fields to each other (duplicates, subnets, pools, bootstrap quorum) live in
`validation.py`, so that all of them can be reported at once instead of stopping at the
first broken field.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    field_validator,
)

_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DNS_NAME_RE = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def normalize_mac(value: str) -> str:
    """Lower-case, colon-separated: the one spelling the store, DHCP and iPXE compare."""
    mac = value.strip().lower()
    if not _MAC_RE.match(mac):
        raise ValueError(
            f"{value!r} is not a MAC address; write six hex pairs such as 52:54:00:12:34:56"
        )
    return mac.replace("-", ":")


def _check_hostname(value: str) -> str:
    if not _HOSTNAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid host name; use lower-case letters, digits and '-', "
            "at most 63 characters, not starting or ending with '-'"
        )
    return value


def _check_domain(value: str) -> str:
    if not _DNS_NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a DNS domain; write one such as example.com")
    return value


def _check_sha256(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"{value!r} is not a sha256 digest; write 64 lower-case hex digits")
    return value


MacAddress = Annotated[str, AfterValidator(normalize_mac)]
Hostname = Annotated[str, AfterValidator(_check_hostname)]
DomainName = Annotated[str, AfterValidator(_check_domain)]
Sha256 = Annotated[str, AfterValidator(_check_sha256)]


class Strict(BaseModel):
    """Unknown keys are refused: a misspelt key silently ignored is a machine misbooted."""

    model_config = ConfigDict(extra="forbid", frozen=True)


ClusterStore = Literal["chainfire", "etcd"]


class Cluster(Strict):
    """`store` picks the Raft store first boot bootstraps and joins: PlasmaCloud's Chainfire
    (the default, so existing inventories keep their meaning), or etcd on the same ports,
    standing in for it where no Chainfire is installable (the lab)."""

    name: Hostname
    domain: DomainName
    store: ClusterStore = "chainfire"


class AddressRange(Strict):
    start: IPv4Address
    end: IPv4Address

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, IPv4Address) and self.start <= ip <= self.end

    @property
    def size(self) -> int:
        return int(self.end) - int(self.start) + 1


DhcpMode = Literal["full", "reservation", "proxy"]


class Dhcp(Strict):
    """How plasmaboot answers DHCP on this network. Every network with a `dhcp:` section is
    served: the provisioning one (the server's own segment) and, in a fleet, one per rack
    behind a relay. `relays` are relay addresses (giaddr) that pick this network although
    they lie outside its subnet (a relay's loopback, say); a giaddr inside the subnet picks
    it anyway. docs/dhcp.md says how a request's network is chosen."""

    mode: DhcpMode = "full"
    pool: AddressRange | None = None
    lease_time: int = Field(default=3600, ge=60, le=7 * 86400)
    interface: str | None = None
    relays: tuple[IPv4Address, ...] = ()


class Network(Strict):
    name: Hostname
    vlan: int = Field(ge=1, le=4094)
    subnet: IPv4Network
    gateway: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    ntp: tuple[IPv4Address, ...] = ()
    purpose: str = ""
    dhcp: Dhcp | None = None

    @field_validator("subnet", mode="before")
    @classmethod
    def _strict_subnet(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                IPv4Network(value, strict=True)
            except ValueError as exc:
                raise ValueError(
                    f"{value!r} is not a network address with prefix; write one such as "
                    f"10.0.100.0/24 ({exc})"
                ) from exc
        return value


# What an install command may name; anything else in braces is refused at load time.
INSTALL_PLACEHOLDERS = frozenset({"node", "ip", "flake", "extra_files"})


class Installer(Strict):
    """How a node is installed once its installer image has booted and called in.

    `command` is an argv template ({node}, {ip}, {flake}, {extra_files}), e.g.
    "nixos-anywhere --extra-files {extra_files} --flake {flake}#{node} root@{ip}".
    {extra_files} is a directory mirroring the installed root: the node's secrets, and for
    `target_os: debian` also its rendered first-boot units. Without a command the installer
    image installs itself and reports its own stages (the lab's busybox miniature does).
    """

    command: str | None = None
    flake: str | None = None
    # nixos: the flake carries units and config, the node's files only its secrets.
    # debian: a plain systemd OS (the lab's stand-in for NixOS) also gets the units.
    target_os: Literal["nixos", "debian"] = "nixos"
    max_concurrent: int = Field(default=4, ge=1, le=256)
    timeout_s: int = Field(default=3600, ge=10, le=24 * 3600)


# What a drain command may name (the node's host name and provisioning address).
DRAIN_PLACEHOLDERS = frozenset({"node", "ip"})


class Drain(Strict):
    """What `plasmaboot node drain` runs before a node may reach maintenance.

    `command` is an argv template ({node}, {ip}: the node's provisioning address), e.g.
    "plasmacloud-drain --node {node}": the operator's own step that moves VMs off and
    takes the node out of the load balancer. It must exit 0 within `timeout_s`
    for the node to reach maintenance. Without a command a drain only marks the node.
    """

    command: str | None = None
    timeout_s: int = Field(default=600, ge=1, le=24 * 3600)


# What a rollback command may name (the node's host name and provisioning address).
ROLLBACK_PLACEHOLDERS = frozenset({"node", "ip"})


class Rollback(Strict):
    """What `plasmaboot node rollback` runs on the node, as root over SSH (runbook 9.1).

    `command` is a shell command line for the node ({node}, {ip} allowed); the default
    switches a NixOS node back to its previous generation. An OS without generations (the
    lab's Debian stand-in) sets its own. It must exit 0 within `timeout_s`; the health
    gate comes after it.
    """

    command: str = "nixos-rebuild switch --rollback"
    timeout_s: int = Field(default=900, ge=1, le=24 * 3600)


class DiscoveryLimits(Strict):
    """How many unknown machines unauthenticated boot requests may record (discovered).

    `per_source_per_minute`: new machines one address (an IPv6 /64) may make known a
    minute, with a burst of as many; `max_discovered`: nodes that may wait in
    `discovered` at once. 0 turns discovery over HTTP off. See provision/discovery.py.
    """

    per_source_per_minute: int = Field(default=10, ge=0, le=100_000)
    max_discovered: int = Field(default=1000, ge=0, le=1_000_000)


class AdminListener(Strict):
    """Where the admin API listens (TLS, its certificate from plasmaboot's CA; the SANs:
    `address` unless it is a wildcard, else every local name and the provisioning
    address, plus `names`). Loopback by default: the boot port never serves it."""

    address: IPv4Address | IPv6Address = IPv4Address("127.0.0.1")
    port: int = Field(default=8443, ge=1, le=65535)
    names: tuple[str, ...] = ()  # extra DNS names clients use, e.g. pxe.example.com

    @field_validator("names")
    @classmethod
    def _dns_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not (_HOSTNAME_RE.match(name) or _DNS_NAME_RE.match(name)):
                raise ValueError(f"{name!r} is not a DNS name (e.g. pxe.example.com)")
        return names


class Server(Strict):
    """The provisioning server itself: where nodes fetch iPXE, scripts and images."""

    provisioning_ip: IPv4Address
    http_port: int = Field(default=8080, ge=1, le=65535)
    tftp_port: int = Field(default=69, ge=1, le=65535)
    dhcp_port: int = Field(default=67, ge=1, le=65535)
    ssh_authorized_keys: tuple[str, ...] = ()
    installer: Installer = Installer()
    drain: Drain = Drain()
    rollback: Rollback = Rollback()
    discovery: DiscoveryLimits = DiscoveryLimits()
    admin: AdminListener = AdminListener()
    # Seconds a node may wait in an unstable lifecycle state before serve's reaper fails
    # it, e.g. {installing: 5400}; unnamed states keep the defaults of
    # provision/deadlines.py. validation.py checks the names and values.
    deadlines: dict[str, StrictInt] = Field(default_factory=dict)

    def http_base(self, port: int | None = None) -> str:
        """The server's HTTP root as nodes see it, e.g. http://10.0.100.10:8080 (`port`:
        what `serve --http-port` overrides)."""
        return f"http://{self.provisioning_ip}:{port or self.http_port}"


class Image(Strict):
    """A netboot image: paths are relative to the server's asset directory."""

    kernel: str
    initrd: str
    cmdline: str = ""
    kernel_sha256: Sha256 | None = None
    initrd_sha256: Sha256 | None = None
    version: str = "0"


Role = Literal["control-plane", "worker", "all-in-one"]
# How a machine's firmware boots: which one-time network boot the BMC is asked for.
Firmware = Literal["bios", "uefi"]


class Profile(Strict):
    role: Role
    description: str = ""
    services: tuple[str, ...]
    image: str
    firmware: Firmware = "uefi"


class Bmc(Strict):
    """A node's BMC. Credentials are referenced (env var or file), never written here."""

    address: str
    driver: Literal["ipmi", "redfish", "manual"] = "ipmi"
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str = "admin"
    password_env: str | None = None
    password_file: str | None = None
    system_id: str | None = None
    verify_tls: bool = True


class Node(Strict):
    hostname: Hostname
    macs: tuple[MacAddress, ...] = Field(min_length=1)
    profile: str
    provisioning_ip: IPv4Address
    production_ip: IPv4Address | None = None
    bmc: Bmc | None = None
    firmware: Firmware | None = None  # None: the profile's (uefi unless it says bios)
    disk: str = "/dev/sda"
    bootstrap: bool = False
    boot_overrides: dict[str, str] = Field(default_factory=dict)

    @field_validator("disk")
    @classmethod
    def _disk_is_device(cls, value: str) -> str:
        if not value.startswith("/dev/"):
            raise ValueError(f"{value!r} is not a block device; write a path such as /dev/sda")
        return value


class Inventory(Strict):
    _by_hostname: dict[str, Node] = PrivateAttr(default_factory=dict)
    _by_mac: dict[str, Node] = PrivateAttr(default_factory=dict)

    cluster: Cluster
    networks: tuple[Network, ...] = Field(min_length=1)
    server: Server
    profiles: dict[str, Profile]
    images: dict[str, Image]
    nodes: tuple[Node, ...] = ()

    def network(self, name: str) -> Network | None:
        return next((n for n in self.networks if n.name == name), None)

    @property
    def dhcp_networks(self) -> tuple[Network, ...]:
        """The networks DHCP serves (those with a `dhcp:` section), in inventory order."""
        return tuple(n for n in self.networks if n.dhcp is not None)

    def network_of(self, ip: IPv4Address) -> Network | None:
        """The network whose subnet holds `ip` (validation keeps subnets disjoint)."""
        return next((n for n in self.networks if ip in n.subnet), None)

    @property
    def provisioning(self) -> Network:
        """The network the server answers DHCP on: the one named `provisioning`."""
        net = self.network("provisioning")
        if net is None:  # validation guarantees it; this guards direct construction
            raise LookupError("the inventory has no network named 'provisioning'")
        return net

    def dhcp_interface(self, override: str | None = None) -> str | None:
        """Where DHCP answers: `--interface`, else the provisioning network's dhcp.interface;
        None when neither names one (plasmaboot never answers on every interface)."""
        dhcp = self.provisioning.dhcp
        return override or (dhcp.interface if dhcp else None)

    def model_post_init(self, context: object, /) -> None:
        # Indexes for the per-request lookups of serve (1,000 nodes make a scan show up).
        self._by_hostname = {n.hostname: n for n in self.nodes}
        self._by_mac = {mac: n for n in self.nodes for mac in n.macs}

    def node(self, hostname: str) -> Node | None:
        return self._by_hostname.get(hostname)

    def node_by_mac(self, mac: str) -> Node | None:
        return self._by_mac.get(normalize_mac(mac))

    def fqdn(self, node: Node) -> str:
        return f"{node.hostname}.{self.cluster.domain}"

    def role_of(self, node: Node) -> Role:
        return self.profiles[node.profile].role

    def firmware_of(self, node: Node) -> Firmware:
        """The node's firmware mode: its own, else its profile's, else uefi."""
        if node.firmware is not None:
            return node.firmware
        profile = self.profiles.get(node.profile)
        return profile.firmware if profile is not None else "uefi"
