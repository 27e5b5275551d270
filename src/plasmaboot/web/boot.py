"""HTTP boot: the iPXE entry script, per-node scripts, iPXE binaries and netboot images.

Images go out through aiohttp's FileResponse, which uses sendfile(2) (zero copy) and
answers Range and HEAD, so a 256 MiB initrd costs the event loop almost nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

from aiohttp import web

from plasmaboot.inventory import normalize_mac
from plasmaboot.serve.context import Provisioner
from plasmaboot.web import scripts

ASSET_NAMES = {"bzImage": "kernel", "initrd": "initrd"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_digests: dict[tuple[str, int, int], str] = {}

PROVISIONER = web.AppKey("provisioner", Provisioner)


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
    if record is None:
        record = provisioner.store.discover(mac, "http", {"remote": request.remote})
    return _ipxe(scripts.node_script(provisioner, record, provisioner.spec_of(record)))


async def ipxe_binary(request: web.Request) -> web.StreamResponse:
    """The iPXE binaries over HTTP, for UEFI HTTP Boot (same files as the TFTP root)."""
    name = request.match_info["name"]
    if not _SAFE_NAME.match(name):
        raise web.HTTPNotFound()
    path = request.app[PROVISIONER].settings.tftp_root / name
    if not path.is_file():
        raise web.HTTPNotFound(text=f"{name} is not in the boot file directory")
    return web.FileResponse(path)


def _asset_path(provisioner: Provisioner, profile: str, name: str) -> Path:
    inv = provisioner.inventory
    if profile not in inv.profiles or name not in ASSET_NAMES:
        raise web.HTTPNotFound(text=f"no asset {name} for profile {profile}")
    image = inv.images[inv.profiles[profile].image]
    relative = image.kernel if ASSET_NAMES[name] == "kernel" else image.initrd
    root = provisioner.settings.assets_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise web.HTTPNotFound(text=f"{relative} is missing from the asset directory")
    return path


async def asset(request: web.Request) -> web.StreamResponse:
    provisioner = request.app[PROVISIONER]
    profile = request.match_info["profile"]
    path = _asset_path(provisioner, profile, request.match_info["name"])
    image = provisioner.inventory.images[provisioner.inventory.profiles[profile].image]
    response = web.FileResponse(path, chunk_size=1 << 20)
    response.headers["X-Image-Version"] = image.version
    return response


def sha256_of(path: Path) -> str:
    """Digest of a file, cached by (path, size, mtime) so it is computed once per version."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        _digests[key] = digest.hexdigest()
    return _digests[key]


async def checksums(request: web.Request) -> web.Response:
    """SHA256SUMS for a profile's image, in the format `sha256sum -c` reads."""
    provisioner = request.app[PROVISIONER]
    profile = request.match_info["profile"]
    lines = []
    for name in ASSET_NAMES:
        path = _asset_path(provisioner, profile, name)
        digest = await asyncio.get_running_loop().run_in_executor(None, sha256_of, path)
        lines.append(f"{digest}  {name}\n")
    return web.Response(text="".join(lines), content_type="text/plain")
