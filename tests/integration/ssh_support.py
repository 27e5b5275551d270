"""A real OpenSSH server on loopback that takes root logins with a throw-away key: the
"node" the install, rollout and rollback tests reach over SSH. Shared by those tests;
no tests in here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD_CONFIG = """\
Port {port}
{listen}
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/authorized_keys
PidFile {dir}/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
"""


@dataclass
class SshHost:
    directory: Path
    client_key: Path
    port: int

    def options(self) -> list[str]:
        """ssh -o settings that reach this server (as `--ssh-option` takes them)."""
        return [
            f"Port={self.port}",
            f"IdentityFile={self.client_key}",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "LogLevel=ERROR",
        ]

    def command(self, remote: str, *ssh_options: str) -> list[str]:
        """A command template ({ip}: the node) running `remote` there, as an inventory
        would write it."""
        settings = [arg for option in self.options() for arg in ("-o", option)]
        return ["ssh", "-o", "BatchMode=yes", *settings, *ssh_options, "root@{ip}", remote]


def missing_sshd() -> str | None:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not (Path(sshd).exists() and shutil.which("ssh") and shutil.which("ssh-keygen")):
        return "sshd/ssh not installed (Debian packages openssh-server, openssh-client)"
    if os.geteuid() != 0:
        return "sshd for root logins needs root"
    return None


@contextmanager
def running_sshd(
    base: Path, port: int, addresses: Sequence[str] = ("127.0.0.1",), extra_config: str = ""
) -> Iterator[SshHost]:
    """sshd listening on `addresses` (loopback) at `port`, its keys and log in `base`;
    `extra_config`: more sshd_config lines (a ForceCommand standing in for a node's root)."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    for key in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / key)], check=True
        )
    (base / "authorized_keys").write_text((base / "client_key.pub").read_text())
    listen = "\n".join(f"ListenAddress {address}" for address in addresses)
    config = SSHD_CONFIG.format(port=port, listen=listen, dir=base) + extra_config
    (base / "sshd_config").write_text(config)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = (base / "sshd.log").open("wb")
    server = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(base / "sshd_config")],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        for address in addresses:
            _wait_for_port(server, address, port)
        yield SshHost(base, base / "client_key", port)
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def _wait_for_port(server: subprocess.Popen[bytes], address: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
