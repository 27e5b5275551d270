"""`plasmaboot serve`: DHCP + TFTP + HTTP in one asyncio loop over one store.

Start order is store -> HTTP -> TFTP -> DHCP, so by the time a machine is told where to
boot, everything it will ask for is already answering; then the server's heartbeat
joins the store's server registry (provision/servers.py). SIGTERM marks it stopped there
first, then stops the services in reverse (DHCP first: no new machines are sent to a
server that is going away) and flushes leases.
SIGHUP reloads the inventory; an invalid one is refused with every problem logged and the
running one kept (Cobbler's lesson: never restart into a broken config).
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from plasmaboot import dashboard, logs
from plasmaboot.dhcp.config import DhcpConfigError
from plasmaboot.dhcp.server import DhcpServer
from plasmaboot.install.driver import InstallDriver
from plasmaboot.inventory import Inventory, InventoryError, load_inventory
from plasmaboot.provision import DeadlineReaper, Provisioner, ProvisionerSettings
from plasmaboot.provision.servers import Heartbeat, local_heartbeat
from plasmaboot.serve.admin import (
    AdminTls,
    admin_url,
    static_admin_token,
)
from plasmaboot.serve.health import HealthProber, Probe, dhcp_probe, http_probe, tftp_probe
from plasmaboot.serve.loop_thread import LoopThread
from plasmaboot.store import StoreError, open_store
from plasmaboot.tftp import DEBIAN_IPXE_LINK_ROOTS, DEBIAN_IPXE_ROOT
from plasmaboot.tftp.server import TftpServer
from plasmaboot.web.app import build_app

log = logs.get_logger("plasmaboot.serve")


@dataclass
class ServeOptions:
    config: Path
    state_dir: Path
    assets_dir: Path
    tftp_root: Path = DEBIAN_IPXE_ROOT
    interface: str | None = None
    bind: str = "0.0.0.0"
    dhcp_port: int | None = None
    tftp_port: int | None = None
    http_port: int | None = None
    # The admin API's listener (TLS); default: the inventory's server.admin (loopback).
    admin_bind: str | None = None
    admin_port: int | None = None
    proxy_dhcp: bool = False
    dhcp: bool = True
    simulate_disk_boot: bool = False
    # A postgresql:// URL shared with other servers; None: SQLite in state_dir. Not in
    # repr: the URL may hold a password.
    store: str | None = field(default=None, repr=False)


class ServeError(Exception):
    """A reason `serve` cannot start, worded for the operator."""


def dhcp_interface(options: ServeOptions, inv: Inventory) -> str:
    interface = inv.dhcp_interface(options.interface)
    if not interface:
        raise ServeError(
            "DHCP: no interface is named, and plasmaboot never answers DHCP on every "
            "interface. Pass --interface IF, set networks[provisioning].dhcp.interface in "
            "the inventory, or run with --no-dhcp (TFTP and HTTP only)."
        )
    return interface


class ProvisioningServer:
    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        try:
            inv = load_inventory(options.config)
        except InventoryError as exc:
            raise ServeError(str(exc)) from None
        # Refuse before touching the store: a server that will not start changes nothing.
        self.interface = dhcp_interface(options, inv) if options.dhcp else options.interface
        try:
            self.store = open_store(options.store or options.state_dir)
        except StoreError as exc:
            raise ServeError(str(exc)) from None
        self.store.import_inventory(inv)
        http_port = options.http_port or inv.server.http_port
        self.http_port = http_port
        settings = ProvisionerSettings(
            state_dir=options.state_dir,
            assets_dir=options.assets_dir,
            tftp_root=options.tftp_root,
            http_base=inv.server.http_base(http_port),
            simulate_disk_boot=options.simulate_disk_boot,
            inventory_file=options.config,
        )
        self.provisioner = Provisioner(inv, self.store, settings)
        self.installer = InstallDriver(self.provisioner)
        self.provisioner.listeners.append(self.installer)
        self.dhcp: DhcpServer | None = None
        # DHCP that leases addresses (full, reservation): boot tokens go only to them, and
        # from the start (none is leased before DHCP runs); docs/api.md "Tokens".
        dhcp_mode = inv.provisioning.dhcp.mode if inv.provisioning.dhcp else "full"
        if options.dhcp and not options.proxy_dhcp and dhcp_mode != "proxy":
            self.provisioner.lease_address = lambda mac: (
                self.dhcp.leased_address(mac) if self.dhcp is not None else None
            )
        self.tftp: TftpServer | None = None
        self.tftp_thread: LoopThread | None = None
        self.http: web.AppRunner | None = None
        self.admin: web.AppRunner | None = None
        self.admin_bind = options.admin_bind or str(inv.server.admin.address)
        self.admin_port = options.admin_port or inv.server.admin.port
        self.health: HealthProber | None = None
        self.reaper = DeadlineReaper(self.provisioner)
        # This server's row in the store's server registry (provision/servers.py).
        self.identity = local_heartbeat(
            options.state_dir, settings.http_base, admin_url(inv, self.admin_bind, self.admin_port)
        )
        self.provisioner.server_id = self.identity.server_id
        self.heartbeat: Heartbeat | None = None
        self.admin_tls: AdminTls | None = None

    def reload(self) -> list[str]:
        """Swap in the inventory file's current content, or keep the running one."""
        if self.admin_tls is not None:  # its certificate (a CA rotation), whatever follows
            self.admin_tls.refresh(self.provisioner.inventory)
        try:
            inv = load_inventory(self.options.config)
        except InventoryError as exc:
            problems = [p.render(exc.source) for p in exc.problems]
            log.error("inventory reload refused, keeping the running one", problems=problems)
            return problems
        result = self.store.import_inventory(inv, actor="reload")
        self.provisioner.inventory = inv
        if self.dhcp is not None:
            self.dhcp.reload(inv)
        if self.admin_tls is not None:  # the admin names it carries may have changed
            self.admin_tls.refresh(inv)
        log.info(
            "inventory reloaded",
            added=result.added,
            updated=result.updated,
            retired=result.retired,
        )
        return []

    async def start(self) -> None:
        opts, inv = self.options, self.provisioner.inventory
        static = static_admin_token(opts.state_dir)
        app = build_app(self.provisioner, static, self.reload, listener="boot")
        self.http = web.AppRunner(app, access_log=None)
        await self.http.setup()
        await web.TCPSite(self.http, opts.bind, self.http_port, reuse_address=True).start()
        # The admin API: its own address and port, TLS from plasmaboot's CA (serve/admin.py).
        self.admin_tls = admin_tls = AdminTls(opts.state_dir, inv, self.admin_bind)
        admin_app = build_app(self.provisioner, static, self.reload, listener="admin")
        dashboard.install(admin_app, self.provisioner, self.reaper)
        self.admin = web.AppRunner(admin_app, access_log=None)
        await self.admin.setup()
        await web.TCPSite(
            self.admin,
            self.admin_bind,
            self.admin_port,
            ssl_context=admin_tls.context,
            reuse_address=True,
        ).start()
        self.tftp = TftpServer(
            opts.tftp_root,
            # Debian's ipxe.efi is a symlink into /boot: allow that link, and only that.
            link_roots=DEBIAN_IPXE_LINK_ROOTS if opts.tftp_root == DEBIAN_IPXE_ROOT else (),
            host=opts.bind,
            port=opts.tftp_port or inv.server.tftp_port,
            interface=self.interface,
        )
        # TFTP gets its own loop: see serve/loop_thread.py for the boot-storm evidence.
        self.tftp_thread = LoopThread("tftp")
        await self.tftp_thread.run(self.tftp.start())
        if opts.dhcp:
            self.dhcp = DhcpServer(
                inv,
                self.store,
                interface=self.interface,
                port=opts.dhcp_port or inv.server.dhcp_port,
                proxy=True if opts.proxy_dhcp else None,
                http_base=self.provisioner.settings.http_base,
                chain_when_on_disk=opts.simulate_disk_boot,
                lifecycle=self.provisioner.lifecycle,
            )
            await self.dhcp.start()
        else:
            self.provisioner.probes["dhcp"] = lambda: "disabled"
        # /health: each service answers a real probe (serve/health.py), from the start.
        probes: dict[str, Probe] = {
            "http": http_probe(opts.bind, self.http_port),
            "admin": http_probe(
                self.admin_bind,
                self.admin_port,
                admin_tls.client_context,
            ),
            "tftp": tftp_probe(self.tftp, self.tftp_thread, self.interface),
        }
        if self.dhcp is not None:
            probes["dhcp"] = dhcp_probe(self.dhcp)
        self.health = HealthProber(probes)
        await self.health.probe_once()
        self.health.publish(self.provisioner.probes)
        self.health.start()
        admin_tls.start(lambda: self.provisioner.inventory)  # a CA rotation's reissue
        self.reaper.start()  # deadlines of the states that wait for the machine
        # every server of the store sees this one, and its health (GET /api/v1/servers)
        self.heartbeat = Heartbeat(self.store, self.identity, self.provisioner.service_status)
        self.heartbeat.start()
        tftp_on = f" on {self.interface}" if self.interface else ""
        dhcp = (
            f"on {self.interface} port {self.dhcp.port} (every address of the interface: "
            "broadcasts are heard whatever --bind says)"
            if self.dhcp
            else "off"
        )
        log.info(
            f"serving {inv.cluster.name}: http {opts.bind}:{self.http_port} (boot and agent "
            f"API), admin API https {self.admin_bind}:{self.admin_port} (CA "
            f"{admin_tls.paths.ca_cert}), tftp {opts.bind}:{self.tftp.port}{tftp_on}, dhcp {dhcp}",
            cluster=inv.cluster.name,
        )

    async def stop(self) -> None:
        if self.heartbeat is not None:  # first: the others see "stopped", not failing services
            await self.heartbeat.stop()
        await self.reaper.stop()
        if self.admin_tls is not None:
            await self.admin_tls.stop()
        if self.health is not None:
            await self.health.stop()
        if self.dhcp is not None:
            await self.dhcp.stop()
        await self.installer.stop()
        if self.tftp_thread is not None:
            if self.tftp is not None and self.tftp_thread.alive:  # a dead loop runs nothing
                await self.tftp_thread.run(self.tftp.stop())
            self.tftp_thread.close()
        if self.admin is not None:
            await self.admin.cleanup()
        if self.http is not None:
            await self.http.cleanup()
        self.store.close()


async def serve_forever(options: ServeOptions) -> None:
    server = ProvisioningServer(options)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    try:
        await server.start()
    except (OSError, DhcpConfigError) as exc:  # a port taken, an interface missing, ...
        await server.stop()
        raise ServeError(str(exc)) from None
    try:
        await stop.wait()
    finally:
        log.info("stopping: draining DHCP, TFTP, HTTP")
        await server.stop()
