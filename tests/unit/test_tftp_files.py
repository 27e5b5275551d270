"""Root directory safety (no escape by '..', absolute paths or symlinks), cache, netascii."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plasmaboot.tftp.files import (
    BytesResponse,
    NetasciiResponse,
    RequestRefused,
    ResponseData,
    RootFiles,
    safe_relative_path,
)
from plasmaboot.tftp.packets import ErrorCode


def read_all(data: ResponseData, chunk: int = 7) -> bytes:
    parts = []
    while part := data.read(chunk):
        parts.append(part)
    data.close()
    return b"".join(parts)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "efi").mkdir(parents=True)
    (tmp_path / "root" / "undionly.kpxe").write_bytes(b"bios")
    (tmp_path / "root" / "efi" / "ipxe.efi").write_bytes(b"uefi")
    (tmp_path / "secret").write_bytes(b"do not serve")
    return tmp_path / "root"


@pytest.mark.parametrize(
    "name", ["../secret", "efi/../../secret", "..\\secret", "a/\x01b", "x\x7f"]
)
def test_rfc1350_traversal_names_are_refused(name: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        safe_relative_path(name)
    assert refused.value.code == ErrorCode.ACCESS_VIOLATION


def test_rfc1350_leading_slash_means_the_root(root: Path) -> None:
    assert read_all(RootFiles(root).open("/efi/ipxe.efi")) == b"uefi"
    assert read_all(RootFiles(root).open("efi\\ipxe.efi")) == b"uefi"


def test_rfc1350_absolute_path_stays_inside_the_root(root: Path) -> None:
    secret = root.parent / "secret"
    with pytest.raises(RequestRefused) as refused:
        RootFiles(root).open(str(secret))
    assert refused.value.code == ErrorCode.FILE_NOT_FOUND


def test_rfc1350_symlink_out_of_root_is_refused(root: Path) -> None:
    (root / "escape").symlink_to(root.parent / "secret")
    with pytest.raises(RequestRefused, match="outside the root") as refused:
        RootFiles(root).open("escape")
    assert refused.value.code == ErrorCode.ACCESS_VIOLATION


def test_symlink_into_a_link_root_is_served(root: Path, tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "ipxe.efi").write_bytes(b"linked")
    (root / "linked.efi").symlink_to(boot / "ipxe.efi")
    assert read_all(RootFiles(root, [boot]).open("linked.efi")) == b"linked"


def test_symlink_inside_root_is_served(root: Path) -> None:
    (root / "alias").symlink_to("undionly.kpxe")
    assert read_all(RootFiles(root).open("alias")) == b"bios"


@pytest.mark.parametrize(("name", "code"), [("missing", 1), ("efi", 1), ("/", 1)])
def test_rfc1350_missing_file_or_directory_is_error_1(root: Path, name: str, code: int) -> None:
    with pytest.raises(RequestRefused) as refused:
        RootFiles(root).open(name)
    assert refused.value.code == code


def test_rfc1350_fifo_is_refused_without_blocking(root: Path) -> None:
    os.mkfifo(root / "pipe")
    with pytest.raises(RequestRefused, match="not a regular file"):
        RootFiles(root).open("pipe")


def test_cache_serves_a_replaced_file_at_once(root: Path) -> None:
    files = RootFiles(root)
    assert read_all(files.open("undionly.kpxe")) == b"bios"
    replacement = root / "new"
    replacement.write_bytes(b"bios v2")
    replacement.replace(root / "undionly.kpxe")
    assert read_all(files.open("undionly.kpxe")) == b"bios v2"


def test_large_files_are_streamed_with_their_size(root: Path) -> None:
    (root / "big").write_bytes(bytes(range(256)) * 100)
    data = RootFiles(root, cache_file_limit=1000).open("big")
    assert data.size() == 25600
    assert read_all(data, 4096) == bytes(range(256)) * 100


def test_cache_evicts_least_recently_used(root: Path) -> None:
    files = RootFiles(root, cache_total_limit=6)
    read_all(files.open("undionly.kpxe"))
    read_all(files.open("efi/ipxe.efi"))
    assert files._cached_bytes == 4


def test_rfc1350_netascii_turns_lf_into_crlf_and_cr_into_cr_nul() -> None:
    data = NetasciiResponse(BytesResponse(b"#!ipxe\nchain a\rb\n"))
    assert data.size() is None
    assert read_all(data, 3) == b"#!ipxe\r\nchain a\r\0b\r\n"
