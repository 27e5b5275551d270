"""The installer agent's kernel command line: plasmaboot.url=, .token=, .node=, BOOTIF=."""

from __future__ import annotations

from pathlib import Path

import pytest

from plasmaboot.agent.cmdline import CmdlineError, kernel_words, parse_cmdline, read_cmdline

TOKEN = "bm9kZTAxfDE3MDAwMDAwMDB8YWJj.c2lnbmF0dXJl"
# What the lab image's iPXE script hands the kernel (initrd= and console= included).
LAB = (
    "initrd=initrd console=ttyS0 panic=5 plasmaboot.url=http://10.77.0.1:8080 "
    f"plasmaboot.token={TOKEN} plasmaboot.stage=install plasmaboot.node=node01\n"
)


def test_the_lab_script_command_line_gives_url_token_node_and_stage() -> None:
    params = parse_cmdline(LAB)
    assert params.url == "http://10.77.0.1:8080"
    assert params.token == TOKEN
    assert params.node == "node01" and params.stage == "install"
    assert params.boot_mac is None


def test_the_token_never_shows_in_the_parameters_repr() -> None:
    assert TOKEN not in repr(parse_cmdline(LAB))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("console=ttyS0 plasmaboot.token=abc", "no plasmaboot.url="),
        ("plasmaboot.url=http://10.0.0.1", "no plasmaboot.token="),
        ("plasmaboot.url=http://10.0.0.1 plasmaboot.token=", "plasmaboot.token= is empty"),
        ("plasmaboot.url= plasmaboot.token=abc", "plasmaboot.url= is empty"),
        ("plasmaboot.url=ftp://10.0.0.1 plasmaboot.token=abc", "not an http:// or https://"),
        ("plasmaboot.url=http:// plasmaboot.token=abc", "with a host"),
        ("plasmaboot.url=http://h:99999 plasmaboot.token=abc", "bad port"),
        ("plasmaboot.url plasmaboot.token=abc", "no plasmaboot.url="),  # a flag, no value
    ],
)
def test_a_missing_or_bad_parameter_is_named(text: str, named: str) -> None:
    with pytest.raises(CmdlineError) as raised:
        parse_cmdline(text, "/proc/cmdline")
    assert named in str(raised.value) and "/proc/cmdline" in str(raised.value)
    assert "abc" not in str(raised.value), "the token must not be printed"


def test_node_is_optional_and_a_trailing_slash_is_dropped() -> None:
    params = parse_cmdline("plasmaboot.url=https://prov.example:8443/base/ plasmaboot.token=t")
    assert params.url == "https://prov.example:8443/base"
    assert params.node is None and params.stage is None


def test_quoted_values_and_the_last_occurrence_win() -> None:
    words = kernel_words('a="x y" plasmaboot.node=old quiet plasmaboot.node=new b="" c=1=2')
    assert words == {"a": "x y", "plasmaboot.node": "new", "b": "", "c": "1=2"}


def test_bootif_names_the_boot_nic_and_a_malformed_one_is_ignored() -> None:
    base = "plasmaboot.url=http://h plasmaboot.token=t "
    assert parse_cmdline(base + "BOOTIF=01-52-54-00-AB-cd-EF").boot_mac == "52:54:00:ab:cd:ef"
    assert parse_cmdline(base + "BOOTIF=52:54:00:ab:cd:ef").boot_mac is None


def test_read_cmdline_names_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(CmdlineError, match="cannot read the kernel command line"):
        read_cmdline(tmp_path / "absent")
    (tmp_path / "cmdline").write_text(LAB)
    assert read_cmdline(tmp_path / "cmdline").node == "node01"
