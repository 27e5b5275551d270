"""The admin listener's TLS: a server certificate from plasmaboot's own CA, and the
deprecated static admin token.

On start, `serve` makes the CA in `<state-dir>/pki` if there is none (as the first
install would), and issues `plasmaboot.admin.crt` for the admin listener when it is
missing, near expiry, or its SANs differ from what the configuration asks: the listen
address (a wildcard: every name and address a client may use: the host's names,
`localhost`, loopback and the provisioning address) plus `server.admin.names`, or when
no CA of `ca.crt` signed it (the CA was replaced). Clients trust `<state-dir>/pki/ca.crt`
(`plasmaboot watch --ca`, `curl --cacert`).

A CA rotation (`pki rotate-ca`, its drop-old phase) reissues the certificate on disk while
serve runs; `AdminTls` loads it again into the listener's context (on SIGHUP and every
few seconds), so clients that trust only the new CA are served without a restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import ipaddress
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from plasmaboot import logs
from plasmaboot.inventory import Inventory
from plasmaboot.pki.authority import (
    CA_CERT,
    NodeCertPaths,
    cert_info,
    init_ca,
    issue_server_cert,
)
from plasmaboot.pki.rotation import issued_by_trusted
from plasmaboot.provision.nodefiles import REISSUE_DAYS, pki_dir

log = logs.get_logger("plasmaboot.serve")

CERT_NAME = "plasmaboot.admin"  # has a dot: no node's short host name can take its files
STATIC_TOKEN_ENV = "PLASMABOOT_ADMIN_TOKEN"
STATIC_TOKEN_FILE = "admin.token"
TLS_CHECK_S = 5.0  # how soon a certificate reissued on disk reaches new connections


def admin_sans(inv: Inventory, address: str) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) the admin certificate carries for this listen address."""
    ip = ipaddress.ip_address(address)
    dns = list(inv.server.admin.names)
    ips = [] if ip.is_unspecified else [str(ip)]
    if ip.is_unspecified or ip.is_loopback:
        dns.append("localhost")
        ips += ["127.0.0.1", "::1"]
    if ip.is_unspecified:
        ips.append(str(inv.server.provisioning_ip))
        for name in (socket.gethostname(), socket.getfqdn()):
            if name and name != "localhost":
                dns.append(name)
    if not dns:  # a specific address and no names: the host's name, for the CN
        dns.append(socket.gethostname() or "plasmaboot")
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


def ensure_admin_certificate(state_dir: Path, inv: Inventory, address: str) -> NodeCertPaths:
    """The admin listener's certificate, (re)issued from plasmaboot's CA when needed
    (under a lock: servers sharing a state directory never pair one's key with another's
    certificate)."""
    pki = pki_dir(state_dir)
    pki.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (pki / f".{CERT_NAME}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure(pki, inv, address)


def _ensure(pki: Path, inv: Inventory, address: str) -> NodeCertPaths:
    if not (pki / CA_CERT).exists():
        init_ca(pki, inv.cluster.name)
    paths = NodeCertPaths(pki / f"{CERT_NAME}.crt", pki / f"{CERT_NAME}.key", pki / CA_CERT)
    dns, ips = admin_sans(inv, address)
    if paths.cert.exists() and paths.key.exists():
        info = cert_info(paths.cert)
        fresh = info.days_left(dt.datetime.now(dt.UTC)) > REISSUE_DAYS
        wanted_ips = {str(ipaddress.ip_address(i)) for i in ips}
        same_sans = set(info.dns_names) == set(dns) and set(info.ip_addresses) == wanted_ips
        if fresh and same_sans and issued_by_trusted(pki, paths.cert):
            return paths
    log.info("admin API certificate issued", ca=str(pki / CA_CERT), sans=dns + ips)
    return issue_server_cert(pki, CERT_NAME, dns, ips)


def admin_url(inv: Inventory, address: str, port: int) -> str:
    """The admin listener's URL as other servers' dashboards show it: its address, or the
    provisioning address (in the certificate) when it listens on every address."""
    ip = ipaddress.ip_address(address)
    host = str(inv.server.provisioning_ip) if ip.is_unspecified else str(ip)
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def server_context(paths: NodeCertPaths) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(paths.cert, paths.key)
    return context


class AdminTls:
    """The admin listener's TLS context, kept in step with its certificate on disk:
    `refresh` reissues it when needed and loads changed files into the same context (new
    connections get the new certificate, open ones keep theirs)."""

    def __init__(self, state_dir: Path, inv: Inventory, address: str) -> None:
        self.state_dir, self.address = state_dir, address
        self.paths = ensure_admin_certificate(state_dir, inv, address)
        self.context = server_context(self.paths)
        self._loaded = self.paths.cert.stat().st_mtime_ns, self.paths.key.stat().st_mtime_ns
        self._trust: tuple[int, ssl.SSLContext] | None = None
        self._task: asyncio.Task[None] | None = None

    def client_context(self) -> ssl.SSLContext:
        """A client's view: trusting `ca.crt` as it is now (for the health probe)."""
        changed = self.paths.ca_cert.stat().st_mtime_ns
        if self._trust is None or self._trust[0] != changed:
            self._trust = changed, ssl.create_default_context(cafile=self.paths.ca_cert)
        return self._trust[1]

    def refresh(self, inv: Inventory) -> bool:
        """Reissue if needed, reload if the files changed; whether it reloaded. Runs on
        the event loop's thread, the only one that makes connections from the context."""
        paths = self._reissue(inv)
        return paths is not None and self._load(paths)

    def _reissue(self, inv: Inventory) -> NodeCertPaths | None:
        try:
            return ensure_admin_certificate(self.state_dir, inv, self.address)
        except Exception as exc:  # a PKI problem must not end the listener or this check
            log.warning("admin API certificate not checked; the loaded one stays",
                        cert=str(self.paths.cert), reason=str(exc))  # fmt: skip
            return None

    def _load(self, paths: NodeCertPaths) -> bool:
        """Load changed files into the live context, once a fresh context has shown they
        are a matching pair (a certificate caught without its new key waits a turn)."""
        try:
            stamp = paths.cert.stat().st_mtime_ns, paths.key.stat().st_mtime_ns
            if stamp == self._loaded:
                return False
            server_context(paths)  # raises on a mismatched or unreadable pair
            self.context.load_cert_chain(paths.cert, paths.key)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("admin API certificate not reloaded; the loaded one stays",
                        cert=str(paths.cert), reason=str(exc))  # fmt: skip
            return False
        self.paths, self._loaded = paths, stamp
        log.info("admin API certificate reloaded", cert=str(paths.cert))
        return True

    def start(self, inventory: Callable[[], Inventory]) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(inventory))

    async def _follow(self, inventory: Callable[[], Inventory]) -> None:
        """Every TLS_CHECK_S: the reissue check off the loop, the load on it."""
        while True:
            await asyncio.sleep(TLS_CHECK_S)
            paths = await asyncio.to_thread(self._reissue, inventory())
            if paths is not None:
                self._load(paths)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def static_admin_token(state_dir: Path) -> str | None:
    """The deprecated static admin token: `$PLASMABOOT_ADMIN_TOKEN`, else the file
    `admin.token` an earlier version made in the state directory; None if neither.
    Nothing is created any more: scoped tokens come from `plasmaboot admin token create`."""
    if token := os.environ.get(STATIC_TOKEN_ENV, "").strip():
        where = f"${STATIC_TOKEN_ENV}"
    else:
        path = state_dir / STATIC_TOKEN_FILE
        try:
            token = path.read_text().strip()
        except FileNotFoundError:
            return None
        where = str(path)
        if not token:
            return None
    log.warning(
        "the static admin token is deprecated; it is accepted as a write token named "
        "'static' until removed: create scoped tokens with `plasmaboot admin token create`",
        source=where,
    )
    return token
