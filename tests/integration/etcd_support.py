"""A real etcd 3.4 cluster started from plasmaboot's rendered files (Debian's etcd-server).

Each member is started the way its Debian etcd.service starts it: the environment is only
what the unit gives (the unit's Environment= lines, then its EnvironmentFile, then the
rendered drop-in's), nothing inherited. The TLS files sit where the drop-in's LoadCredential=
puts them, and every node path (/run/credentials/etcd.service, /var/lib/etcd, the agent's
state dir) is mapped under the member's own root directory. Shared by the render and the
backup/restore tests; no tests in here.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.firstboot.config import TLSFiles
from plasmaboot.inventory import Inventory
from plasmaboot.pki import init_ca, issue_node_cert
from plasmaboot.render import RenderContext, render
from plasmaboot.render.common import SECRETS_DIR
from plasmaboot.render.etcd import CREDENTIALS_DIR

DEBIAN_UNIT = Path("/lib/systemd/system/etcd.service")


def missing_peer() -> str | None:
    for binary in ("etcd", "etcdctl"):
        if shutil.which(binary) is None:
            return f"{binary} not installed (Debian packages etcd-server, etcd-client)"
    if not DEBIAN_UNIT.exists():
        return f"{DEBIAN_UNIT} missing (Debian package etcd-server)"
    return None


def env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads these files (comments skipped)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def directives(text: str, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", text, re.MULTILINE)


@dataclass
class Member:
    """One node: its rendered files, and a temp dir standing in for its root."""

    hostname: str
    ip: str
    files: dict[str, str]
    root: Path

    @property
    def log(self) -> Path:
        return self.root / "etcd.log"

    def file(self, absolute: str) -> str:
        return self.files[f"nodes/{self.hostname}{absolute}"]

    @property
    def drop_in(self) -> str:
        return self.file("/etc/systemd/system/etcd.service.d/plasmaboot.conf")

    def mapped(self, path: str) -> str:
        """A node path as this test's stand-in root has it."""
        return str(self.root / path.lstrip("/"))

    def install_credentials(self, pki: Path) -> None:
        """What LoadCredential= does: the cluster-config TLS files, under the unit's name."""
        for line in directives(self.drop_in, "LoadCredential"):
            name, source = line.split(":", 1)
            assert source.startswith(f"{SECRETS_DIR}/")
            target = Path(self.mapped(f"{CREDENTIALS_DIR}/{name}"))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pki / source.removeprefix(f"{SECRETS_DIR}/"), target)

    def unit_environment(self) -> dict[str, str]:
        """Debian's etcd.service environment: Environment=, then every EnvironmentFile= in
        order (the unit's, then the drop-in's); a later file wins, a missing `-` one is
        skipped. Paths in the values are mapped into this member's root."""
        unit = DEBIAN_UNIT.read_text()
        env: dict[str, str] = {}
        for assignment in directives(unit, "Environment"):
            name, value = assignment.split("=", 1)
            env[name] = value.replace("%H", self.hostname)
        for spec in directives(unit, "EnvironmentFile") + directives(
            self.drop_in, "EnvironmentFile"
        ):
            path = spec.removeprefix("-").replace("%p", "etcd")
            rendered = self.files.get(f"nodes/{self.hostname}{path}")
            on_disk = Path(self.mapped(path))
            if rendered is not None:
                env |= env_file(rendered)
            elif on_disk.exists():
                env |= env_file(on_disk.read_text())
            else:
                assert spec.startswith("-"), f"{self.hostname}: {path} is required and missing"
        return {name: self._map_value(value) for name, value in env.items()}

    def _map_value(self, value: str) -> str:
        for prefix in (CREDENTIALS_DIR, "/var/lib/etcd"):
            if value.startswith(prefix):
                return self.mapped(value)
        return value


class Cluster:
    def __init__(self, root: Path, inv: Inventory) -> None:
        self.pki = root / "pki"
        init_ca(self.pki, inv.cluster.name)
        self.files = {
            path: content
            for path, content in render("systemd", inv, RenderContext()).items()
            if isinstance(content, str)
        }
        self.configs = render("cluster-config", inv, RenderContext())
        self.members: dict[str, Member] = {}
        self.etcdctl_binary = shutil.which("etcdctl") or "etcdctl"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        for node in inv.nodes:
            ip = str(node.provisioning_ip)
            # etcd checks a peer's client certificate against the connection's source
            # address. On a network that is the node's own address; on loopback every
            # connection comes from 127.0.0.1, so the test certificates carry it too.
            sans = [ip, "127.0.0.1"]
            issue_node_cert(self.pki, node.hostname, inv.fqdn(node), sans, days=30)
            member = Member(node.hostname, ip, self.files, root / node.hostname)
            member.install_credentials(self.pki)
            self.members[node.hostname] = member

    def start(self, hostname: str) -> None:
        """ExecStart=/usr/bin/etcd $DAEMON_ARGS with only the unit's environment."""
        member = self.members[hostname]
        env = member.unit_environment()
        assert directives(DEBIAN_UNIT.read_text(), "ExecStart") == ["/usr/bin/etcd $DAEMON_ARGS"]
        assert env.pop("DAEMON_ARGS") == ""
        with member.log.open("ab") as log:
            self.processes[hostname] = subprocess.Popen(
                ["/usr/bin/etcd"], env=env, stdout=log, stderr=log
            )

    def etcdctl(self, as_node: str, *args: str, endpoints: list[str]) -> str:
        argv = [
            self.etcdctl_binary, "--endpoints", ",".join(endpoints),
            "--cacert", str(self.pki / "ca.crt"),
            "--cert", str(self.pki / f"{as_node}.crt"),
            "--key", str(self.pki / f"{as_node}.key"),
            *args,
        ]  # fmt: skip
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, env={"ETCDCTL_API": "3"}
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    def client_tls(self, hostname: str) -> TLSFiles:
        return TLSFiles(
            self.pki / "ca.crt", self.pki / f"{hostname}.crt", self.pki / f"{hostname}.key"
        )

    def stop(self, *hostnames: str) -> None:
        """SIGTERM the named members (every member when none is named) and wait for them."""
        for hostname, process in self.processes.items():
            if hostnames and hostname not in hostnames:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
