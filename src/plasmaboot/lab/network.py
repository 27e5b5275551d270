"""The lab's provisioning VLAN: a network namespace holding a bridge and one tap per VM.

Everything lives inside one namespace, so `lab down` (deleting the namespace) removes
every interface at once, and no lab packet can reach the host's real networks.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Interface


class LabNetworkError(RuntimeError):
    pass


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise LabNetworkError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class LabNetwork:
    netns: str
    bridge: str
    server: IPv4Interface  # the provisioning server's address on the bridge

    def exec_argv(self, *argv: str) -> list[str]:
        """A command line that runs `argv` inside the lab namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def tap_name(self, index: int) -> str:
        return f"pbtap{index}"

    def exists(self) -> bool:
        return self.netns in run("ip", "netns", "list").stdout.split()

    def create(self) -> None:
        """The namespace and its bridge; `ip netns add` fails if the namespace exists."""
        run("ip", "netns", "add", self.netns)
        try:
            ns = ("ip", "-n", self.netns)
            run(*ns, "link", "set", "lo", "up")
            run(*ns, "link", "add", self.bridge, "type", "bridge")
            run(*ns, "addr", "add", str(self.server), "dev", self.bridge)
            run(*ns, "link", "set", self.bridge, "up")
            # IPv6 link-local only, usable at once (no DAD), so the lab's router adverts
            # (lab/router_advert.py) have a source address; the bridge takes none itself.
            for setting in ("accept_dad=0", "accept_ra=0", "disable_ipv6=0"):
                run(*self.exec_argv("sysctl", "-qw", f"net.ipv6.conf.{self.bridge}.{setting}"))
        except LabNetworkError:
            self.destroy()
            raise

    def has_link(self, name: str) -> bool:
        return run("ip", "-n", self.netns, "link", "show", name, check=False).returncode == 0

    def add_tap(self, tap: str) -> None:
        ns = ("ip", "-n", self.netns)
        run(*ns, "tuntap", "add", "dev", tap, "mode", "tap")
        run(*ns, "link", "set", tap, "master", self.bridge)
        run(*ns, "link", "set", tap, "up")

    def destroy(self) -> None:
        if self.exists():
            run("ip", "netns", "delete", self.netns)
