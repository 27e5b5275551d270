"""NixOS for the nodes: a flake with one system per node, each node's configuration.nix and
disko.nix, the per-profile firewall and first-boot modules, and the netboot installer base.

Layout follows the runbook (`nodes/<fqdn>/`, `nixos-rebuild --flake .#<hostname>`).
Secrets (cluster-config.json, keys) are not here: nixos-anywhere copies them to
/etc/nixos/secrets with --extra-files, so they never enter the Nix store.

The plasmaboot package is built from the copy under plasmaboot/ (see `nix_package`) and
handed to every module as the `plasmaboot` argument: the nodes' first-boot units and the
netboot image's installer agent run it. With store etcd each node that runs the store
imports its `etcd.nix` (`services.etcd`, the settings of the Debian flavour).
"""

from __future__ import annotations

from plasmaboot.inventory.models import Inventory, Node
from plasmaboot.render.common import (
    HEADER,
    Files,
    RenderContext,
    cluster_network,
    nix_list,
    nix_string,
    provisioning_network,
)
from plasmaboot.render.etcd import nixos_etcd, runs_etcd
from plasmaboot.render.firewall import nixos_firewall, resolved_rules
from plasmaboot.render.ipxe import SERIAL_CONSOLE
from plasmaboot.render.nix_package import EXPRESSION, package_files
from plasmaboot.render.systemd import nixos_module

STATE_VERSION = "24.11"


def _flake(inv: Inventory) -> str:
    systems = "\n".join(
        f"        {node.hostname} = system ./nodes/{inv.fqdn(node)}/configuration.nix;"
        for node in inv.nodes
    )
    return f"""\
# {HEADER}
{{
  description = {nix_string(f"PlasmaCloud cluster {inv.cluster.name}: one system per node")};
  inputs = {{
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-{STATE_VERSION}";
    disko.url = "github:nix-community/disko";
    disko.inputs.nixpkgs.follows = "nixpkgs";
  }};
  outputs = {{ nixpkgs, disko, ... }}:
    let
      pkgs = nixpkgs.legacyPackages.x86_64-linux;
      plasmaboot = pkgs.callPackage ./{EXPRESSION} {{ }};
      nixos = modules: nixpkgs.lib.nixosSystem {{
        system = "x86_64-linux";
        specialArgs = {{ inherit plasmaboot; }};
        inherit modules;
      }};
      system = configuration: nixos [ disko.nixosModules.disko configuration ];
      netboot = (nixos [ ./netboot-base.nix ]).config.system.build;
    in {{
      packages.x86_64-linux = {{
        inherit plasmaboot;
        netboot-kernel = netboot.kernel;
        netboot-initrd = netboot.netbootRamdisk;
      }};
      nixosConfigurations = {{
{systems}
      }};
    }};
}}
"""


def _interface(name: str, address: str, prefix: int) -> list[str]:
    return [
        f"    interfaces.{name} = {{",
        "      useDHCP = false;",
        f"      ipv4.addresses = [ {{ address = {nix_string(address)}; "
        f"prefixLength = {prefix}; }} ];",
        "    };",
    ]


def _networking(inv: Inventory, node: Node) -> list[str]:
    """eth0 on the node's own provisioning network (its rack's), eth1 on production (the
    runbook's layout); the default route and DNS of the cluster network, DNS falling back
    to the rack's."""
    own = provisioning_network(inv, node)
    lines = [
        "  networking = {",
        f"    hostName = {nix_string(node.hostname)};",
        f"    domain = {nix_string(inv.cluster.domain)};",
        "    usePredictableInterfaceNames = false;",
        *_interface("eth0", str(node.provisioning_ip), own.subnet.prefixlen),
    ]
    route = cluster_network(inv, node)
    device = "eth0"
    if route is not own and node.production_ip is not None:
        lines += _interface("eth1", str(node.production_ip), route.subnet.prefixlen)
        device = "eth1"
    if route.gateway is not None:
        lines.append(
            f"    defaultGateway = {{ address = {nix_string(str(route.gateway))}; "
            f"interface = {nix_string(device)}; }};"
        )
    dns = [str(ip) for ip in (route.dns or own.dns)]
    lines += [f"    nameservers = {nix_list(dns)};", "  };"]
    return lines


def _configuration(inv: Inventory, node: Node) -> str:
    keys = nix_list(list(inv.server.ssh_authorized_keys))
    etcd = ["    ./etcd.nix"] if runs_etcd(inv, node) else []
    return (
        "\n".join(
            [
                f"# {HEADER}",
                f"# {inv.fqdn(node)}: profile {node.profile} (role {inv.role_of(node)})",
                "{ modulesPath, plasmaboot, ... }:",
                "{",
                "  imports = [",
                '    (modulesPath + "/installer/scan/not-detected.nix")',
                "    ./disko.nix",
                *etcd,
                f"    ../../profiles/{node.profile}/firewall.nix",
                f"    ../../profiles/{node.profile}/first-boot.nix",
                "  ];",
                "",
                *_networking(inv, node),
                "",
                "  boot.loader.grub = {",
                "    enable = true;",
                "    efiSupport = true;",
                "    efiInstallAsRemovable = true;",
                "  };",
                f"  boot.kernelParams = {nix_list([SERIAL_CONSOLE, 'console=tty0'])};",
                "",
                "  services.openssh = {",
                "    enable = true;",
                "    settings.PasswordAuthentication = false;",
                '    settings.PermitRootLogin = "prohibit-password";',
                "  };",
                f"  users.users.root.openssh.authorizedKeys.keys = {keys};",
                "",
                "  services.plasmaboot-firstboot = {",
                "    enable = true;",
                "    package = plasmaboot;",
                "  };",
                "",
                f'  system.stateVersion = "{STATE_VERSION}";',
                "}",
            ]
        )
        + "\n"
    )


def _disko(node: Node) -> str:
    """GPT with a BIOS boot partition and an ESP, so GRUB boots in BIOS and UEFI mode."""
    return f"""\
# {HEADER}
{{
  disko.devices.disk.main = {{
    type = "disk";
    device = {nix_string(node.disk)};
    content = {{
      type = "gpt";
      partitions = {{
        boot = {{ size = "1M"; type = "EF02"; }};
        ESP = {{
          size = "1G";
          type = "EF00";
          content = {{ type = "filesystem"; format = "vfat"; mountpoint = "/boot"; }};
        }};
        root = {{
          size = "100%";
          content = {{ type = "filesystem"; format = "ext4"; mountpoint = "/"; }};
        }};
      }};
    }};
  }};
}}
"""


def _netboot_base(inv: Inventory) -> str:
    """The installer every profile's netboot image starts from: the installer agent reports
    the machine (kernel arguments plasmaboot.url= and plasmaboot.token=, set by the server's
    iPXE script), and the server's keys let the install command in over SSH."""
    keys = nix_list(list(inv.server.ssh_authorized_keys))
    return f"""\
# {HEADER}
{{ modulesPath, plasmaboot, ... }}:
{{
  imports = [ (modulesPath + "/installer/netboot/netboot-minimal.nix") ];
  boot.kernelParams = {nix_list([SERIAL_CONSOLE, "console=tty0"])};
  services.openssh = {{
    enable = true;
    settings.PasswordAuthentication = false;
    settings.PermitRootLogin = "prohibit-password";
  }};
  users.users.root.openssh.authorizedKeys.keys = {keys};
  networking.firewall.allowedTCPPorts = [ 22 ];
  environment.systemPackages = [ plasmaboot ];
  systemd.services.plasmaboot-agent = {{
    description = "plasmaboot installer agent: report this machine to the server";
    wantedBy = [ "multi-user.target" ];
    wants = [ "network-online.target" ];
    after = [ "network-online.target" ];
    # One run: the agent retries while the server does not answer, and its boot token is
    # spent by the first lookup, so a restart could only be refused.
    serviceConfig = {{
      Type = "oneshot";
      RemainAfterExit = true;
      ExecStart = "${{plasmaboot}}/bin/plasmaboot agent";
    }};
  }};
  system.stateVersion = "{STATE_VERSION}";
}}
"""


def render_nixos(inv: Inventory, ctx: RenderContext) -> Files:
    files: Files = {"flake.nix": _flake(inv), "netboot-base.nix": _netboot_base(inv)}
    for name, profile in sorted(inv.profiles.items()):
        firewall = nixos_firewall(name, profile, resolved_rules(inv, profile))
        files[f"profiles/{name}/firewall.nix"] = firewall
        files[f"profiles/{name}/first-boot.nix"] = nixos_module(name, profile, inv.cluster.store)
    for node in inv.nodes:
        files[f"nodes/{inv.fqdn(node)}/configuration.nix"] = _configuration(inv, node)
        files[f"nodes/{inv.fqdn(node)}/disko.nix"] = _disko(node)
        if runs_etcd(inv, node):
            files[f"nodes/{inv.fqdn(node)}/etcd.nix"] = nixos_etcd(inv, node)
    return files | package_files()
