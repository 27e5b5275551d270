"""The etcd flavour of the cluster store: one set of settings for Debian and for NixOS.

Debian 12's etcd-server (3.4) runs /usr/bin/etcd from its own etcd.service, which reads
`EnvironmentFile=-/etc/default/etcd`; NixOS has `services.etcd`. Both are written from
`etcd_settings`, so a Debian lab node and a NixOS node of one inventory run the same member.

Bootstrap nodes start etcd at boot with the full initial cluster (state `new`). A joiner
cannot: etcd refuses to start a member that was not added first. The first-boot agent adds
it as a learner and writes `<state dir>/chainfire.env` (every current member, state
`existing`); a drop-in makes etcd.service skip its boot-time start until that file exists
and read it after /etc/default/etcd (so its values win), and `etcd-join.path` starts etcd
when the file appears. Later boots find the file and start etcd as usual.

etcd runs as user etcd on both systems and cannot read the node key (root's, 0600), so the
drop-in hands the TLS files over with LoadCredential= and etcd reads them from
/run/credentials/etcd.service/. The data directory is /var/lib/etcd/<cluster>, not Debian's
/var/lib/etcd/default, which the package's own first start may have made a one-node cluster.
"""

from __future__ import annotations

from plasmaboot.firstboot.markers import DEFAULT_STATE_DIR, env_file_path, marker_path
from plasmaboot.inventory.models import Inventory, Node
from plasmaboot.render.cluster_config import CHAINFIRE_CLIENT, CHAINFIRE_RAFT, tls_paths
from plasmaboot.render.common import (
    HEADER,
    bootstrap_nodes,
    cluster_ip,
    nix_list,
    nix_string,
    services_of,
)

ETCD_UNIT = "etcd.service"
JOIN_PATH_UNIT = "etcd-join.path"
DEBIAN_ENV_FILE = "/etc/default/etcd"
DROP_IN = f"/etc/systemd/system/{ETCD_UNIT}.d/plasmaboot.conf"
CREDENTIALS_DIR = f"/run/credentials/{ETCD_UNIT}"
# etcd runs the agent's first consensus service, "chainfire" (ports 2379/2380).
STORE_SERVICE = "chainfire"
JOIN_ENV = str(env_file_path(DEFAULT_STATE_DIR, STORE_SERVICE))
JOINED_MARKER = str(marker_path(DEFAULT_STATE_DIR, STORE_SERVICE, bootstrap=False))

# ETCD_* variable -> services.etcd option of NixOS, and how the value is written there.
_NIXOS_OPTIONS: dict[str, tuple[str, str]] = {
    "ETCD_NAME": ("name", "str"),
    "ETCD_DATA_DIR": ("dataDir", "str"),
    "ETCD_LISTEN_PEER_URLS": ("listenPeerUrls", "list"),
    "ETCD_LISTEN_CLIENT_URLS": ("listenClientUrls", "list"),
    "ETCD_ADVERTISE_CLIENT_URLS": ("advertiseClientUrls", "list"),
    "ETCD_INITIAL_ADVERTISE_PEER_URLS": ("initialAdvertisePeerUrls", "list"),
    "ETCD_INITIAL_CLUSTER_TOKEN": ("initialClusterToken", "str"),
    "ETCD_INITIAL_CLUSTER": ("initialCluster", "list"),
    "ETCD_INITIAL_CLUSTER_STATE": ("initialClusterState", "str"),
    "ETCD_CERT_FILE": ("certFile", "str"),
    "ETCD_KEY_FILE": ("keyFile", "str"),
    "ETCD_TRUSTED_CA_FILE": ("trustedCaFile", "str"),
    "ETCD_CLIENT_CERT_AUTH": ("clientCertAuth", "bool"),
    "ETCD_PEER_CERT_FILE": ("peerCertFile", "str"),
    "ETCD_PEER_KEY_FILE": ("peerKeyFile", "str"),
    "ETCD_PEER_TRUSTED_CA_FILE": ("peerTrustedCaFile", "str"),
    "ETCD_PEER_CLIENT_CERT_AUTH": ("peerClientCertAuth", "bool"),
}


def runs_etcd(inv: Inventory, node: Node) -> bool:
    """With store etcd, every node whose profile runs the store (`chainfire`) runs etcd."""
    return inv.cluster.store == "etcd" and STORE_SERVICE in services_of(inv, node)


def _peer_url(inv: Inventory, node: Node) -> str:
    return f"https://{cluster_ip(inv, node)}:{CHAINFIRE_RAFT}"


def credentials(node: Node) -> list[tuple[str, str]]:
    """(credential name, source file): the TLS files cluster-config.json names."""
    paths = tls_paths(node)
    return [
        ("ca.crt", paths["ca_cert_path"]),
        ("node.crt", paths["node_cert_path"]),
        ("node.key", paths["node_key_path"]),
    ]


def etcd_settings(inv: Inventory, node: Node) -> dict[str, str]:
    """The member's ETCD_* variables; a joiner gets ETCD_INITIAL_CLUSTER from the agent."""
    client = f"https://{cluster_ip(inv, node)}:{CHAINFIRE_CLIENT}"
    peer = _peer_url(inv, node)
    settings = {
        "ETCD_NAME": node.hostname,
        "ETCD_DATA_DIR": f"/var/lib/etcd/{inv.cluster.name}",
        "ETCD_LISTEN_PEER_URLS": peer,
        "ETCD_LISTEN_CLIENT_URLS": client,
        "ETCD_ADVERTISE_CLIENT_URLS": client,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": peer,
        "ETCD_INITIAL_CLUSTER_TOKEN": inv.cluster.name,
    }
    if node.bootstrap:
        members = [f"{n.hostname}={_peer_url(inv, n)}" for n in bootstrap_nodes(inv)]
        settings["ETCD_INITIAL_CLUSTER"] = ",".join(members)
    settings["ETCD_INITIAL_CLUSTER_STATE"] = "new" if node.bootstrap else "existing"
    ca, cert, key = (f"{CREDENTIALS_DIR}/{name}" for name, _source in credentials(node))
    for prefix in ("ETCD_", "ETCD_PEER_"):
        settings |= {
            f"{prefix}CERT_FILE": cert,
            f"{prefix}KEY_FILE": key,
            f"{prefix}TRUSTED_CA_FILE": ca,
            f"{prefix}CLIENT_CERT_AUTH": "true",
        }
    return settings


def _role_comment(node: Node) -> str:
    if node.bootstrap:
        return "bootstrap member: starts at boot with the initial cluster (state new)"
    return (
        f"joining member: starts only after first boot added it; ETCD_INITIAL_CLUSTER then "
        f"comes from {JOIN_ENV}"
    )


def debian_env_file(inv: Inventory, node: Node) -> str:
    """/etc/default/etcd, read by Debian's etcd.service."""
    lines = [
        f"# {HEADER}",
        f"# {DEBIAN_ENV_FILE} of {node.hostname}, {_role_comment(node)}.",
        *(f"{name}={value}" for name, value in etcd_settings(inv, node).items()),
    ]
    return "\n".join(lines) + "\n"


def debian_drop_in(node: Node) -> str:
    """etcd.service.d/plasmaboot.conf: the TLS files as credentials; etcd listens on the
    node's address, so it starts once the network is online (Debian's unit orders it only
    after network.target: at a reboot it raced DHCP and failed to bind), and is restarted
    after a failure; a joiner waits for the agent's env file."""
    lines = [
        f"# {HEADER}",
        "[Unit]",
        "Wants=network-online.target",
        "After=network-online.target",
    ]
    if not node.bootstrap:
        lines += [
            "# A joining member may start only once first boot has added it.",
            f"ConditionPathExists={JOIN_ENV}",
        ]
    lines += [
        "",
        "[Service]",
        "Restart=on-failure",
        "RestartSec=5s",
        "# etcd runs as user etcd; the node key is root's (0600).",
        *(f"LoadCredential={name}:{source}" for name, source in credentials(node)),
    ]
    if not node.bootstrap:
        lines.append(f"EnvironmentFile={JOIN_ENV}")
    return "\n".join(lines) + "\n"


def join_path_unit() -> str:
    """etcd-join.path: start etcd once the agent wrote its env file (first boot only)."""
    return f"""\
# {HEADER}
[Unit]
Description=Start etcd once first boot has added this node as a member
ConditionPathExists=!{JOINED_MARKER}

[Path]
PathExists={JOIN_ENV}
Unit={ETCD_UNIT}

[Install]
WantedBy=multi-user.target
"""


def _nix_option(name: str, value: str) -> str:
    option, kind = _NIXOS_OPTIONS[name]
    if kind == "list":
        return f"    {option} = {nix_list(value.split(','))};"
    if kind == "bool":
        return f"    {option} = {value};"
    return f"    {option} = {nix_string(value)};"


def nixos_etcd(inv: Inventory, node: Node) -> str:
    """nodes/<fqdn>/etcd.nix: services.etcd with the settings of the Debian file."""
    settings = [_nix_option(name, value) for name, value in etcd_settings(inv, node).items()]
    loads = nix_list([f"{name}:{source}" for name, source in credentials(node)])
    lines = [
        f"# {HEADER}",
        f"# etcd of {node.hostname}, {_role_comment(node)}.",
        "{ ... }:",
        "{",
        "  services.etcd = {",
        "    enable = true;",
        *settings,
        "  };",
        "  # etcd runs as user etcd; the node key is root's (0600).",
        f"  systemd.services.etcd.serviceConfig.LoadCredential = {loads};",
    ]
    if not node.bootstrap:
        lines += [
            f"  systemd.services.etcd.unitConfig.ConditionPathExists = {nix_string(JOIN_ENV)};",
            f"  systemd.services.etcd.serviceConfig.EnvironmentFile = {nix_string(JOIN_ENV)};",
            f"  systemd.paths.{JOIN_PATH_UNIT.removesuffix('.path')} = {{",
            '    description = "Start etcd once first boot has added this node as a member";',
            '    wantedBy = [ "multi-user.target" ];',
            f"    unitConfig.ConditionPathExists = {nix_string('!' + JOINED_MARKER)};",
            f"    pathConfig = {{ PathExists = {nix_string(JOIN_ENV)}; "
            f"Unit = {nix_string(ETCD_UNIT)}; }};",
            "  };",
        ]
    return "\n".join([*lines, "}"]) + "\n"
