"""The agent's parameters from the kernel command line (/proc/cmdline).

The node's iPXE script puts them there: `plasmaboot.url=` (the server's HTTP base),
`plasmaboot.token=` (the one-time boot token), optionally `plasmaboot.node=` (the node the
server expects) and `plasmaboot.stage=`; `BOOTIF=` (the pxelinux convention,
`01-aa-bb-cc-dd-ee-ff`) names the NIC the machine booted from, which is tried first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_CMDLINE = Path("/proc/cmdline")
INSTALL_STAGE = "install"

# A word of the kernel command line: unquoted text, or "..." which may hold spaces.
_WORD = re.compile(r'(?:[^\s"]+|"[^"]*")+')
_BOOTIF = re.compile(r"^[0-9a-fA-F]{2}((?:-[0-9a-fA-F]{2}){6})$")


class CmdlineError(ValueError):
    """The command line lacks a parameter or holds a bad one; the message names it."""


@dataclass(frozen=True)
class AgentParameters:
    url: str  # the server's HTTP base, without a trailing slash
    token: str = field(repr=False)  # the boot token: never printed
    node: str | None = None
    stage: str | None = None
    boot_mac: str | None = None  # from BOOTIF=, lower case with colons


def kernel_words(text: str) -> dict[str, str]:
    """`key=value` words (quotes removed); a later word overrides an earlier one."""
    words: dict[str, str] = {}
    for word in _WORD.findall(text):
        key, sep, value = word.replace('"', "").partition("=")
        if sep:
            words[key] = value
    return words


def parse_cmdline(text: str, source: str = str(DEFAULT_CMDLINE)) -> AgentParameters:
    """The agent's parameters, or CmdlineError naming the missing or bad one."""
    words = kernel_words(text)
    for required in ("plasmaboot.url", "plasmaboot.token"):
        if required not in words:
            raise CmdlineError(f"no {required}= on the kernel command line ({source})")
        if not words[required]:
            raise CmdlineError(f"{required}= is empty on the kernel command line ({source})")
    url = words["plasmaboot.url"].rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CmdlineError(
            f"plasmaboot.url={url} is not an http:// or https:// URL with a host ({source})"
        )
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise CmdlineError(f"plasmaboot.url={url} has a bad port ({source})") from None
    node = words.get("plasmaboot.node") or None
    stage = words.get("plasmaboot.stage") or None
    bootif = _BOOTIF.match(words.get("BOOTIF", ""))
    boot_mac = bootif.group(1)[1:].replace("-", ":").lower() if bootif else None
    return AgentParameters(url, words["plasmaboot.token"], node, stage, boot_mac)


def read_cmdline(path: Path = DEFAULT_CMDLINE) -> AgentParameters:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise CmdlineError(f"cannot read the kernel command line {path}: {exc}") from None
    return parse_cmdline(text, str(path))
