"""The boot-token signing key lives in the store (shared by every server on it); a key
file an earlier version left in the state directory is adopted, so its tokens stay good."""

from __future__ import annotations

from pathlib import Path

from plasmaboot.provision.tokens import KEY_FILE, signing_key
from plasmaboot.store import open_store


def test_a_key_file_left_by_an_earlier_version_is_adopted_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / KEY_FILE).write_bytes(b"k" * 32)
    store = open_store(state)
    try:
        assert signing_key(store, state) == b"k" * 32
        (state / KEY_FILE).write_bytes(b"x" * 32)  # the store's key wins from now on
        assert signing_key(store, state) == b"k" * 32
    finally:
        store.close()


def test_a_new_store_makes_its_key_once_and_writes_no_file(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        key = signing_key(store, tmp_path)
        assert len(key) == 32 and signing_key(store, tmp_path) == key == signing_key(store)
        assert not (tmp_path / KEY_FILE).exists()
    finally:
        store.close()
    reopened = open_store(tmp_path)
    try:
        assert signing_key(reopened) == key
    finally:
        reopened.close()
