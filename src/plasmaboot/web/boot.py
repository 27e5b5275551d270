"""HTTP boot: the iPXE entry script, per-node scripts, iPXE binaries and netboot images.

Images go out through aiohttp's FileResponse, which uses sendfile(2) (zero copy) and
answers Range and HEAD, so a 256 MiB initrd costs the event loop almost nothing.

The node script route is public, so what it may change is bounded: an unknown MAC is
recorded within the discovery limits (provision/discovery.py; 429 over them), a boot
token goes only where web/scripts.py allows (403/409 otherwise), and every refusal is
plain text with the reason, counted, and records nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from plasmaboot import logs
from plasmaboot.files import sha256_file
from plasmaboot.inventory import normalize_mac
from plasmaboot.provision import Provisioner
from plasmaboot.provision.discovery import DiscoveryRefused
from plasmaboot.provision.tokens import BOOT_TOKEN_REFUSED
from plasmaboot.web import scripts

log = logs.get_logger("plasmaboot.http")

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_digests: dict[tuple[str, int, int], str] = {}

PROVISIONER = web.AppKey("provisioner", Provisioner)
# The server's inventory reload (serve's SIGHUP): problems, or [] when it took the file.
ReloadInventory = Callable[[], list[str]]
RELOAD: web.AppKey[ReloadInventory] = web.AppKey("reload")


def _ipxe(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def entry_script(request: web.Request) -> web.Response:
    return _ipxe(scripts.entry_script(request.app[PROVISIONER].settings.http_base))


async def node_script(request: web.Request) -> web.Response:
    provisioner = request.app[PROVISIONER]
    try:
        mac = normalize_mac(request.match_info["mac"])
    except ValueError:
        raise web.HTTPBadRequest(text="not a MAC address") from None
    record = provisioner.store.node_by_mac(mac)
    try:
        if record is None:
            record = provisioner.discover_from(mac, request.remote)
        logs.bind_context(mac=mac, node=record.hostname)  # web/app.py resets it
        spec = provisioner.spec_of(record)
        return _ipxe(scripts.node_script(provisioner, record, spec, request.remote))
    except DiscoveryRefused as exc:
        log.warning("http: unknown machine not recorded as discovered", mac=mac, reason=exc.reason)
        raise web.HTTPTooManyRequests(
            text=f"plasmaboot: {exc.reason}\n", headers={"Retry-After": str(exc.retry_after)}
        ) from None
    except scripts.ScriptRefused as exc:
        BOOT_TOKEN_REFUSED.labels("script", exc.code).inc()
        log.warning("http: no boot token for the node", mac=mac, reason=exc.reason)
        refused = web.HTTPForbidden if exc.status == 403 else web.HTTPConflict
        raise refused(text=f"plasmaboot: {exc.reason}\n") from None


async def ipxe_binary(request: web.Request) -> web.StreamResponse:
    """The iPXE binaries over HTTP, for UEFI HTTP Boot (same files as the TFTP root)."""
    name = request.match_info["name"]
    if not _SAFE_NAME.match(name):
        raise web.HTTPNotFound()
    path = request.app[PROVISIONER].settings.tftp_root / name
    if not path.is_file():
        raise web.HTTPNotFound(text=f"{name} is not in the boot file directory")
    return web.FileResponse(path)


def image_files(provisioner: Provisioner) -> dict[str, str]:
    """URL path under /boot/ -> image version, for every kernel and initrd the inventory
    names. Only these are served: the asset directory is not browsable."""
    files: dict[str, str] = {}
    for image in provisioner.inventory.images.values():
        files[image.kernel] = files[image.initrd] = image.version
    return files


def _asset_path(provisioner: Provisioner, relative: str) -> Path:
    if relative not in image_files(provisioner):
        raise web.HTTPNotFound(text=f"{relative} is not a kernel or initrd of any image")
    root = provisioner.settings.assets_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise web.HTTPNotFound(text=f"{relative} is missing from the asset directory")
    return path


async def asset(request: web.Request) -> web.StreamResponse:
    """A kernel or initrd, by its path in the inventory (/boot/nixos/<profile>/bzImage in
    the reference layout)."""
    provisioner = request.app[PROVISIONER]
    relative = request.match_info["path"]
    path = _asset_path(provisioner, relative)
    response = web.FileResponse(path, chunk_size=1 << 20)
    response.headers["X-Image-Version"] = image_files(provisioner)[relative]
    return response


def sha256_of(path: Path) -> str:
    """Digest of a file, cached by (path, size, mtime) so it is computed once per version."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        _digests[key] = sha256_file(path)
    return _digests[key]


async def checksums(request: web.Request) -> web.Response:
    """SHA256SUMS of every image file, in the format `sha256sum -c` reads from /boot/."""
    provisioner = request.app[PROVISIONER]
    loop = asyncio.get_running_loop()
    lines = []
    for relative in sorted(image_files(provisioner)):
        try:
            path = _asset_path(provisioner, relative)
        except web.HTTPNotFound:
            continue  # an image not built yet is simply not listed
        digest = await loop.run_in_executor(None, sha256_of, path)
        lines.append(f"{digest}  {relative}\n")
    return web.Response(text="".join(lines), content_type="text/plain")
