"""Pure pieces of the lab's real install: disk layout text, loader entries, the image
manifest check, the --extra-files bundle, build keys. No root, no VM."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from plasmaboot.lab import disk_layout
from plasmaboot.lab.debian import inputs_hash
from plasmaboot.lab.image import LabImageError
from plasmaboot.lab.install import extra_files_tar
from plasmaboot.lab.os_image import MANIFEST, load_os_image

UUID = "0c3fed6f-2e69-517c-9bc8-cc5922a9ab04"


def test_partition_table_is_one_mbr_with_an_active_esp_then_the_root() -> None:
    table = disk_layout.partition_table(esp_mib=64)
    assert table.splitlines() == [
        "label: dos",
        f"label-id: {disk_layout.DISK_LABEL_ID}",
        "unit: sectors",
        "",
        "start=2048, size=131072, type=ef, bootable",
        "start=133120, type=83",
    ]


def test_partition_table_is_what_the_real_sfdisk_writes(tmp_path: Path) -> None:
    sfdisk = shutil.which("sfdisk")
    if sfdisk is None:
        pytest.skip("sfdisk is not installed (Debian package fdisk)")
    disk = tmp_path / "disk"
    with disk.open("wb") as handle:
        handle.truncate(256 << 20)
    subprocess.run([sfdisk, "--quiet", str(disk)], input=disk_layout.partition_table(),
                   text=True, check=True)  # fmt: skip
    dump = subprocess.run([sfdisk, "--dump", str(disk)], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    assert f"label-id: {disk_layout.DISK_LABEL_ID}" in dump
    assert "start=        2048, size=      131072, type=ef, bootable" in dump
    assert "start=      133120, size=      391168, type=83" in dump


@pytest.mark.parametrize(
    ("disk", "expected"),
    [("/dev/vda", "/dev/vda2"), ("/dev/sda", "/dev/sda2"), ("/dev/nvme0n1", "/dev/nvme0n1p2")],
)
def test_partition_device_follows_the_kernels_names(disk: str, expected: str) -> None:
    assert disk_layout.partition_device(disk, 2) == expected


def test_both_loaders_boot_the_same_kernel_with_the_same_options() -> None:
    options = f"root=UUID={UUID} rw console=ttyS0,115200 {disk_layout.STATUS}"
    entry = disk_layout.loader_entry(UUID)
    assert entry.splitlines()[1:] == ["linux /vmlinuz", "initrd /initrd.img", f"options {options}"]
    syslinux = disk_layout.syslinux_cfg(UUID)
    assert "  LINUX /vmlinuz\n  INITRD /initrd.img\n" in syslinux
    assert f"  APPEND {options}\n" in syslinux
    assert syslinux.startswith("SERIAL 0 115200\n")  # its prompt, if any, on the console
    conf = disk_layout.loader_conf()
    assert f"default {disk_layout.LOADER_ENTRY}" in conf and "timeout 0" in conf


def test_fstab_mounts_the_root_by_uuid_without_a_boot_time_fsck() -> None:
    assert disk_layout.fstab(UUID) == f"UUID={UUID} / ext4 rw,noatime,errors=remount-ro 0 0\n"


def _image(directory: Path) -> Path:
    directory.mkdir()
    files = {}
    for role, name in (("root", "root.ext4.zst"), ("esp", "esp.img.zst"), ("mbr", "mbr.bin")):
        data = role.encode() * 100
        (directory / name).write_bytes(data)
        files[role] = {"name": name, "sha256": hashlib.sha256(data).hexdigest()}
    (directory / MANIFEST).write_text(json.dumps({"root_uuid": UUID, "files": files}))
    return directory


def test_an_intact_image_loads(tmp_path: Path) -> None:
    image = load_os_image(_image(tmp_path / "os"))
    assert image.root == tmp_path / "os/root.ext4.zst"
    assert image.root_uuid == UUID


def test_a_missing_manifest_names_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(LabImageError, match=r"manifest\.json is missing.*plasmaboot lab image"):
        load_os_image(tmp_path / "nothing-here")


def test_a_changed_file_is_refused_as_damaged(tmp_path: Path) -> None:
    directory = _image(tmp_path / "os")
    (directory / "esp.img.zst").write_bytes(b"not what was built")
    with pytest.raises(LabImageError, match=r"esp\.img\.zst is damaged: sha256 .*lab image"):
        load_os_image(directory)


def test_a_missing_file_or_an_unreadable_manifest_is_refused(tmp_path: Path) -> None:
    directory = _image(tmp_path / "os")
    (directory / "mbr.bin").unlink()
    with pytest.raises(LabImageError, match=r"mbr\.bin is missing or unreadable"):
        load_os_image(directory)
    (directory / MANIFEST).write_text("{not json")
    with pytest.raises(LabImageError, match=r"manifest\.json is unreadable"):
        load_os_image(directory)


def test_extra_files_keep_their_modes_and_belong_to_root(tmp_path: Path) -> None:
    tree = tmp_path / "extra"
    (tree / "etc/plasmaboot").mkdir(parents=True)
    secret = tree / "etc/plasmaboot/node.key"
    secret.write_text("k")
    secret.chmod(0o600)
    script = tree / "usr/local/bin/hello"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    bundle = tmp_path / "extra.tar"
    assert extra_files_tar(tree, bundle) == 7  # 5 directories, 2 files
    with tarfile.open(bundle) as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert members["etc/plasmaboot/node.key"].mode == 0o600
    assert members["usr/local/bin/hello"].mode == 0o755
    assert {(m.uid, m.gid, m.uname) for m in members.values()} == {(0, 0, "root")}
    assert not any(name.startswith(("/", "..")) for name in members)


def test_build_keys_change_with_inputs_and_only_then(tmp_path: Path) -> None:
    source = tmp_path / "init.sh"
    source.write_text("echo one\n")
    first = inputs_hash("installer", ["python3"], files=[source])
    assert inputs_hash("installer", ["python3"], files=[source]) == first
    assert inputs_hash("installer", ["python3", "zstd"], files=[source]) != first
    source.write_text("echo two\n")
    assert inputs_hash("installer", ["python3"], files=[source]) != first


def test_image_keys_do_not_depend_on_where_the_checkout_lives() -> None:
    """A work tree and CI's clone of one commit must share the cached lab images."""
    from plasmaboot.lab import debian

    assert debian._input_name(Path(debian.__file__)) == "plasmaboot/lab/debian.py"
    outside = Path("/etc/hostname")
    assert debian._input_name(outside) == "/etc/hostname"
