"""resolve_password: the inventory names where the password is, never the password."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import SecretStr

from plasmaboot.power import CredentialSourceError, FatalPowerError, resolve_password

SECRET = "pbp-cred-Secr3t-0815"


def bmc(env: str | None = None, file: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(password_env=env, password_file=file)


def test_password_from_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBP_BMC_PW", SECRET)
    password = resolve_password(bmc(env="PBP_BMC_PW"), "n1")
    assert isinstance(password, SecretStr)
    assert password.get_secret_value() == SECRET
    assert str(password) == "**********"
    assert SECRET not in repr(password)


def test_password_from_file_drops_only_the_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(f" {SECRET} \n")
    path.chmod(0o600)
    assert resolve_password(bmc(file=str(path))).get_secret_value() == f" {SECRET} "


def test_unset_variable_names_the_node_field_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PBP_UNSET_PW", raising=False)
    with pytest.raises(CredentialSourceError) as failure:
        resolve_password(bmc(env="PBP_UNSET_PW"), "rack1-n3")
    message = str(failure.value)
    assert "nodes[rack1-n3].bmc.password_env" in message
    assert "'PBP_UNSET_PW' is not set" in message
    assert isinstance(failure.value, FatalPowerError)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "does not exist"),
        ("directory", "is not a UTF-8 text file"),
        ("empty", "is empty"),
        ("binary", "is not a UTF-8 text file"),
    ],
)
def test_bad_password_files_are_named(tmp_path: Path, setup: str, expected: str) -> None:
    path = tmp_path / "pw"
    if setup == "directory":
        path.mkdir()
    elif setup == "empty":
        path.write_text("\n")
    elif setup == "binary":
        path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CredentialSourceError, match=expected) as failure:
        resolve_password(bmc(file=str(path)), "n9")
    assert "nodes[n9].bmc.password_file" in str(failure.value)


def test_no_source_or_both_sources_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CredentialSourceError, match="no password source"):
        resolve_password(bmc(), "n1")
    monkeypatch.setenv("PBP_BMC_PW", SECRET)
    with pytest.raises(CredentialSourceError, match="keep only one"):
        resolve_password(bmc(env="PBP_BMC_PW", file="/nonexistent"), "n1")


def test_group_readable_file_warns_without_showing_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    path = tmp_path / "pw"
    path.write_text(SECRET)
    path.chmod(0o644)
    resolve_password(bmc(file=str(path)))
    assert any("chmod 600" in r.getMessage() for r in caplog.records)
    assert all(SECRET not in r.getMessage() for r in caplog.records)
