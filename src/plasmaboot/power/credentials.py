"""Resolve a BMC password from where the inventory points to, never from the inventory.

The inventory names an environment variable (``bmc.password_env``) or a file
(``bmc.password_file``); the value only ever lives in a ``SecretStr`` whose ``str``/``repr``
is masked, so it cannot leak into logs, errors or API answers by accident.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr

from plasmaboot.logs import get_logger
from plasmaboot.power.errors import CredentialSourceError

log = get_logger("plasmaboot.power")


class BmcCredentialSource(Protocol):
    """The inventory's BMC fields this module reads (any object with them will do)."""

    @property
    def password_env(self) -> str | None: ...

    @property
    def password_file(self) -> str | None: ...


def resolve_password(bmc: BmcCredentialSource, node_name: str = "?") -> SecretStr:
    """Read the password named by ``bmc.password_env`` or ``bmc.password_file``."""
    field = f"nodes[{node_name}].bmc"
    if bmc.password_env and bmc.password_file:
        raise CredentialSourceError(
            f"{field}: both password_env and password_file are set; keep only one"
        )
    if bmc.password_env:
        value = os.environ.get(bmc.password_env)
        if value is None:
            raise CredentialSourceError(
                f"{field}.password_env: environment variable {bmc.password_env!r} is not set; "
                "export it in plasmaboot's environment or use bmc.password_file"
            )
        if not value:
            raise CredentialSourceError(
                f"{field}.password_env: environment variable {bmc.password_env!r} is empty"
            )
        return SecretStr(value)
    if bmc.password_file:
        return SecretStr(_read_password_file(Path(bmc.password_file), f"{field}.password_file"))
    raise CredentialSourceError(
        f"{field}: no password source; set password_env (an environment variable name) "
        "or password_file (a path readable by plasmaboot)"
    )


def _read_password_file(path: Path, field: str) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CredentialSourceError(f"{field}: file {str(path)!r} does not exist") from None
    except PermissionError:
        raise CredentialSourceError(
            f"{field}: file {str(path)!r} is not readable by this user; fix its owner or mode"
        ) from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise CredentialSourceError(
            f"{field}: {str(path)!r} is not a UTF-8 text file ({type(exc).__name__})"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("password file is readable by group/others", path=path, fix="chmod 600")
    password = text.rstrip("\r\n")
    if not password:
        raise CredentialSourceError(f"{field}: file {str(path)!r} is empty")
    return password
