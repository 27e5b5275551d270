"""First-boot systemd units, as unit files and as a NixOS module, from one description.

The order is the seeds': chainfire join -> flaredb join -> iam setup -> health check. A
profile only gets the units of services it runs (a worker has no FlareDB or IAM). Marker
files make a finished stage a no-op on later boots (ConditionPathExists=!marker), and the
agent's exit code 2 ("already a member") counts as success.
"""

from __future__ import annotations

from dataclasses import dataclass

from plasmaboot.inventory.models import Inventory, Profile
from plasmaboot.render.common import CLUSTER_CONFIG_PATH, HEADER, Files, RenderContext, nix_list

STATE_DIR = "/var/lib/first-boot-automation"
ALREADY_MEMBER = 2
_NIX_PLASMABOOT = "${cfg.package}/bin/plasmaboot"


@dataclass(frozen=True)
class FirstBootUnit:
    name: str
    stage: str
    description: str
    after: tuple[str, ...]
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


def units_for(profile: Profile) -> list[FirstBootUnit]:
    """The first-boot units of a profile, in start order: each one after the previous, a
    FlareDB join requiring the Chainfire join, the health check after all of them."""
    stages = [stage for stage in _STAGES if stage[0] in profile.services]
    names = [f"{stage[1]}.service" for stage in stages]
    units: list[FirstBootUnit] = []
    for i, (service, name, stage, description, markers) in enumerate(stages):
        previous = (names[i - 1],) if i else ()
        units.append(
            FirstBootUnit(
                name,
                stage,
                description,
                after=(*previous, _ONLINE, f"{service}.service"),
                before=(names[i + 1],) if i + 1 < len(names) else ("cluster-health-check.service",),
                wants=(_ONLINE,),
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
            lines.append(f"      {key} = {nix_list(values)};")
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


def nixos_module(name: str, profile: Profile) -> str:
    """services.plasmaboot-firstboot: the same units for NixOS. The config path is a string,
    not a Nix path, so the secret never gets copied into the world-readable store."""
    body = [line for unit in units_for(profile) for line in _nix_service(unit)]
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


def render_systemd(inv: Inventory, ctx: RenderContext) -> Files:
    """<profile>/<unit>.service files and <profile>/first-boot.nix for every profile."""
    files: Files = {}
    for name, profile in sorted(inv.profiles.items()):
        for unit in units_for(profile):
            files[f"{name}/{unit.unit}"] = unit_file(unit)
        files[f"{name}/first-boot.nix"] = nixos_module(name, profile)
    return files
