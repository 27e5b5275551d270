"""First-boot systemd units, as unit files and as a NixOS module, from one description.

The order is the seeds': chainfire join -> flaredb join -> iam setup -> health check. A
profile only gets the units of services it runs (a worker has no FlareDB or IAM). Marker
files make a finished stage a no-op on later boots (ConditionPathExists=!marker), and the
agent's exit code 2 ("already a member") counts as success.

Units only name units that exist. With store etcd the store stage wants etcd.service
(Debian's package and NixOS's services.etcd both define it) but does not wait for its
start: a bootstrap member's etcd is "started" only once a quorum of its peers is up, and
the node reports its first boot before that (the agent waits for etcd's health itself,
bounded). Nothing plasmaboot renders
defines chainfire/flaredb/iam.service, so unit files leave them out (the agent waits for
each service's health itself) and the NixOS module orders after them only where the
configuration defines them.

A Debian node of an etcd cluster gets one tree mirroring its root (`debian_node_files`):
the first-boot units and the etcd files of `render.etcd`.
"""

from __future__ import annotations

from dataclasses import dataclass

from plasmaboot.firstboot.markers import DEFAULT_STATE_DIR
from plasmaboot.inventory.models import ClusterStore, Inventory, Node, Profile
from plasmaboot.render.common import CLUSTER_CONFIG_PATH, HEADER, Files, RenderContext, nix_list
from plasmaboot.render.etcd import (
    DEBIAN_ENV_FILE,
    DROP_IN,
    ETCD_UNIT,
    JOIN_PATH_UNIT,
    debian_drop_in,
    debian_env_file,
    join_path_unit,
    runs_etcd,
)

STATE_DIR = str(DEFAULT_STATE_DIR)
SYSTEMD_DIR = "/etc/systemd/system"
ALREADY_MEMBER = 2
_NIX_PLASMABOOT = "${cfg.package}/bin/plasmaboot"


@dataclass(frozen=True)
class FirstBootUnit:
    name: str
    stage: str
    description: str
    after: tuple[str, ...]
    # Units of the service itself, ordered after only where the configuration defines them.
    after_if_defined: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    remain_after_exit: bool = True

    @property
    def unit(self) -> str:
        return f"{self.name}.service"

    def command(self, plasmaboot: str, config_path: str) -> str:
        return f"{plasmaboot} firstboot --config {config_path} --stage {self.stage}"


# (service, unit name, agent stage, description, markers) in the seeds' start order.
_STAGES: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    (
        "chainfire",
        "chainfire-cluster-join",
        "chainfire",
        "Bootstrap or join the Chainfire cluster",
        (".chainfire-initialized", ".chainfire-joined"),
    ),
    (
        "flaredb",
        "flaredb-cluster-join",
        "flaredb",
        "Bootstrap or join the FlareDB cluster",
        (".flaredb-initialized", ".flaredb-joined"),
    ),
    ("iam", "iam-initial-setup", "iam", "Run the IAM initial setup once", (".iam-initialized",)),
)
_ONLINE = "network-online.target"
_ETCD_DESCRIPTION = "Bootstrap or join the etcd cluster (in place of Chainfire)"


def units_for(profile: Profile, store: ClusterStore = "chainfire") -> list[FirstBootUnit]:
    """The first-boot units of a profile, in start order: each one after the previous, a
    FlareDB join requiring the Chainfire join, the health check after all of them. With
    store etcd the store stage keeps the seeds' names (etcd stands in for Chainfire) and
    wants etcd.service: that pulls etcd in at every boot (its marker only skips the
    stage's own command), also where the package's unit is disabled."""
    stages = [stage for stage in _STAGES if stage[0] in profile.services]
    names = [f"{stage[1]}.service" for stage in stages]
    units: list[FirstBootUnit] = []
    for i, (service, name, stage, description, markers) in enumerate(stages):
        previous = (names[i - 1],) if i else ()
        etcd = store == "etcd" and service == "chainfire"
        units.append(
            FirstBootUnit(
                name,
                stage,
                _ETCD_DESCRIPTION if etcd else description,
                after=(*previous, _ONLINE),
                after_if_defined=() if etcd else (f"{service}.service",),
                before=(names[i + 1],) if i + 1 < len(names) else ("cluster-health-check.service",),
                wants=(_ONLINE, ETCD_UNIT) if etcd else (_ONLINE,),
                requires=previous if service == "flaredb" else (),
                markers=markers,
            )
        )
    units.append(
        FirstBootUnit(
            "cluster-health-check",
            "health",
            "Check the health of the cluster services",
            after=(*names, _ONLINE),
            wants=(_ONLINE,),
            remain_after_exit=False,
        )
    )
    return units


def unit_file(unit: FirstBootUnit, config_path: str = CLUSTER_CONFIG_PATH) -> str:
    lines = [f"# {HEADER}", "[Unit]", f"Description=plasmaboot first boot: {unit.description}"]
    for key, values in (
        ("Wants", unit.wants),
        ("Requires", unit.requires),
        ("After", unit.after),
        ("Before", unit.before),
    ):
        if values:
            lines.append(f"{key}={' '.join(values)}")
    lines += [f"ConditionPathExists=!{STATE_DIR}/{m}" for m in unit.markers]
    lines += [
        "",
        "[Service]",
        "Type=oneshot",
        f"RemainAfterExit={'yes' if unit.remain_after_exit else 'no'}",
        f"ExecStart={unit.command('plasmaboot', config_path)}",
        f"SuccessExitStatus={ALREADY_MEMBER}",
        "StateDirectory=first-boot-automation",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def _if_defined(unit: FirstBootUnit, key: str) -> str:
    """`++ lib.optional (config.systemd.services ? chainfire) "chainfire.service"`, so the
    NixOS units never name a service the configuration does not define."""
    if key != "after":
        return ""
    return "".join(
        f' ++ lib.optional (config.systemd.services ? {name.removesuffix(".service")}) "{name}"'
        for name in unit.after_if_defined
    )


def _nix_service(unit: FirstBootUnit) -> list[str]:
    lines = [
        f"    systemd.services.{unit.name} = {{",
        f'      description = "plasmaboot first boot: {unit.description}";',
        '      wantedBy = [ "multi-user.target" ];',
    ]
    for key, values in (
        ("wants", unit.wants),
        ("requires", unit.requires),
        ("after", unit.after),
        ("before", unit.before),
    ):
        if values:
            lines.append(f"      {key} = {nix_list(values)}{_if_defined(unit, key)};")
    if unit.markers:
        conditions = nix_list([f"!{STATE_DIR}/{m}" for m in unit.markers])
        lines.append(f"      unitConfig.ConditionPathExists = {conditions};")
    lines += [
        "      serviceConfig = {",
        '        Type = "oneshot";',
        f"        RemainAfterExit = {'true' if unit.remain_after_exit else 'false'};",
        f'        ExecStart = "{unit.command(_NIX_PLASMABOOT, "${cfg.configFile}")}";',
        f'        SuccessExitStatus = "{ALREADY_MEMBER}";',
        '        StateDirectory = "first-boot-automation";',
        "      };",
        "    };",
    ]
    return lines


def nixos_module(name: str, profile: Profile, store: ClusterStore = "chainfire") -> str:
    """services.plasmaboot-firstboot: the same units for NixOS. The config path is a string,
    not a Nix path, so the secret never gets copied into the world-readable store."""
    body = [line for unit in units_for(profile, store) for line in _nix_service(unit)]
    return (
        "\n".join(
            [
                f"# {HEADER}",
                f"# First-boot units of profile {name} (role {profile.role}).",
                "{ config, lib, ... }:",
                "let",
                "  cfg = config.services.plasmaboot-firstboot;",
                "in",
                "{",
                "  options.services.plasmaboot-firstboot = {",
                '    enable = lib.mkEnableOption "plasmaboot first-boot cluster bootstrap/join";',
                "    package = lib.mkOption {",
                "      type = lib.types.package;",
                '      description = "The plasmaboot package (provides bin/plasmaboot).";',
                "    };",
                "    configFile = lib.mkOption {",
                "      type = lib.types.str;",
                f'      default = "{CLUSTER_CONFIG_PATH}";',
                '      description = "cluster-config.json (a secret: not copied to the store)";',
                "    };",
                "  };",
                "  config = lib.mkIf cfg.enable {",
                *body,
                "  };",
                "}",
            ]
        )
        + "\n"
    )


@dataclass(frozen=True)
class DebianNodeFiles:
    """What a Debian node needs besides its secrets: absolute path -> content, and the
    units to enable (link into multi-user.target.wants/)."""

    files: dict[str, str]
    enable: tuple[str, ...]


def debian_node_files(inv: Inventory, node: Node) -> DebianNodeFiles:
    """The first-boot units and, for an etcd member, /etc/default/etcd, the etcd.service
    drop-in and (joiners) etcd-join.path. etcd.service needs no enabling: the store stage
    wants it."""
    units = units_for(inv.profiles[node.profile], inv.cluster.store)
    files = {f"{SYSTEMD_DIR}/{unit.unit}": unit_file(unit) for unit in units}
    enable = [unit.unit for unit in units]
    if runs_etcd(inv, node):
        files[DEBIAN_ENV_FILE] = debian_env_file(inv, node)
        files[DROP_IN] = debian_drop_in(node)
        if not node.bootstrap:
            files[f"{SYSTEMD_DIR}/{JOIN_PATH_UNIT}"] = join_path_unit()
            enable.append(JOIN_PATH_UNIT)
    return DebianNodeFiles(files, tuple(enable))


def render_systemd(inv: Inventory, ctx: RenderContext) -> Files:
    """<profile>/<unit>.service and <profile>/first-boot.nix for every profile; with store
    etcd also nodes/<hostname>/, each Debian node's files laid out as on its root."""
    files: Files = {}
    store = inv.cluster.store
    for name, profile in sorted(inv.profiles.items()):
        for unit in units_for(profile, store):
            files[f"{name}/{unit.unit}"] = unit_file(unit)
        files[f"{name}/first-boot.nix"] = nixos_module(name, profile, store)
    if store == "etcd":
        for node in inv.nodes:
            for path, content in debian_node_files(inv, node).files.items():
                files[f"nodes/{node.hostname}{path}"] = content
    return files
