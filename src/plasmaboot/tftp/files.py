"""Where TFTP data comes from: dynamic files (fbtftp-style `ResponseData`) or the root directory.

Root files are resolved strictly inside the root, and small ones (the iPXE binaries every
booting machine asks for) are kept in a shared read cache so a boot storm reads each file once.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from plasmaboot.tftp.packets import ErrorCode


class ResponseData(Protocol):
    """A file being served: read sequentially, sized if known, closed when the transfer ends."""

    def read(self, n: int) -> bytes: ...

    def size(self) -> int | None: ...

    def close(self) -> None: ...


FileResolver = Callable[[str, tuple[str, int]], ResponseData | None]
"""(requested path, client address) -> data, or None to fall back to the root directory."""


class RequestRefused(Exception):
    """A request answered with a TFTP ERROR: `code` goes on the wire with the message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class BytesResponse:
    """In-memory data: dynamic content (an iPXE script) or a cached root file."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def size(self) -> int | None:
        return len(self._data)

    def close(self) -> None:
        self._pos = len(self._data)


class FileResponse:
    """A large root file read from disk, unbuffered: the transfer reads a whole window at once."""

    def __init__(self, fd: int, size: int) -> None:
        self._file = os.fdopen(fd, "rb", buffering=0)
        self._size = size

    def read(self, n: int) -> bytes:
        return self._file.read(n) or b""

    def size(self) -> int | None:
        return self._size

    def close(self) -> None:
        self._file.close()


class NetasciiResponse:
    """RFC 1350 netascii: LF becomes CR LF and CR becomes CR NUL; the size is then unknown."""

    def __init__(self, inner: ResponseData) -> None:
        self._inner = inner
        self._pending = b""

    def read(self, n: int) -> bytes:
        while len(self._pending) < n:
            raw = self._inner.read(n)
            if not raw:
                break
            self._pending += raw.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
        chunk, self._pending = self._pending[:n], self._pending[n:]
        return chunk

    def size(self) -> int | None:
        return None

    def close(self) -> None:
        self._inner.close()


def safe_relative_path(filename: str) -> Path:
    """Turn a requested name into a relative path, refusing anything that could leave the root.

    A leading "/" means the root (as `in.tftpd -s` does), backslashes count as separators
    (some firmware sends them), and "..", NUL or control characters are refused outright.
    """
    if any(ord(c) < 0x20 or c == "\x7f" for c in filename):
        raise RequestRefused(ErrorCode.ACCESS_VIOLATION, "filename: control characters refused")
    parts = [p for p in filename.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise RequestRefused(ErrorCode.ACCESS_VIOLATION, "filename: '..' is refused")
    if not parts:
        raise RequestRefused(ErrorCode.FILE_NOT_FOUND, "filename: names no file")
    return Path(*parts)


class RootFiles:
    """Opens files under `root`; symlinks may only lead inside `root` or into `link_roots`.

    Debian's /usr/lib/ipxe links ipxe.efi to /boot/ipxe.efi, hence `link_roots`. Files up to
    `cache_file_limit` bytes are cached (LRU, `cache_total_limit` bytes in all) and re-checked
    by inode, size and mtime on every open, so a replaced binary is served at once.
    """

    def __init__(
        self,
        root: Path,
        link_roots: Iterable[Path] = (),
        *,
        cache_file_limit: int = 16 << 20,
        cache_total_limit: int = 128 << 20,
    ) -> None:
        self.root = root.resolve()
        self._allowed = [self.root, *(Path(p).resolve() for p in link_roots)]
        self._cache: OrderedDict[Path, tuple[tuple[int, int, int], bytes]] = OrderedDict()
        self._cache_file_limit = cache_file_limit
        self._cache_total_limit = cache_total_limit
        self._cached_bytes = 0

    def open(self, filename: str) -> ResponseData:
        path = (self.root / safe_relative_path(filename)).resolve()
        if not any(path.is_relative_to(allowed) for allowed in self._allowed):
            raise RequestRefused(ErrorCode.ACCESS_VIOLATION, "filename: resolves outside the root")
        try:  # O_NONBLOCK: a FIFO planted in the root must not hang the server
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise RequestRefused(ErrorCode.FILE_NOT_FOUND, "File not found") from None
        except OSError as exc:
            raise RequestRefused(ErrorCode.ACCESS_VIOLATION, f"filename: {exc.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise RequestRefused(ErrorCode.FILE_NOT_FOUND, "filename: not a regular file")
        if info.st_size > self._cache_file_limit:
            return FileResponse(fd, info.st_size)
        identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == identity:
            os.close(fd)
            self._cache.move_to_end(path)
            return BytesResponse(cached[1])
        with os.fdopen(fd, "rb") as file:
            data = file.read()
        self._remember(path, identity, data)
        return BytesResponse(data)

    def _remember(self, path: Path, identity: tuple[int, int, int], data: bytes) -> None:
        old = self._cache.pop(path, None)
        if old is not None:
            self._cached_bytes -= len(old[1])
        self._cache[path] = (identity, data)
        self._cached_bytes += len(data)
        while self._cached_bytes > self._cache_total_limit and len(self._cache) > 1:
            _, (_, evicted) = self._cache.popitem(last=False)
            self._cached_bytes -= len(evicted)
