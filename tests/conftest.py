"""Shared by every test directory. Having this file here puts `tests/` on `sys.path`
(pytest's rootdir conftest), so modules shared across unit and integration tests import
by name: `store_contract` is the one suite every store passes."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """A test that sets up logging (`plasmaboot.logs.configure`, through an entry point
    or not) leaves no handler, level or structlog setting to the tests after it."""
    root, ours = logging.getLogger(), logging.getLogger("plasmaboot")
    handlers, levels, config = list(root.handlers), (root.level, ours.level), structlog.get_config()
    yield
    for handler in root.handlers[:]:  # pytest's own come and go with each test phase
        if handler.get_name() == "plasmaboot" and handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(levels[0])
    ours.setLevel(levels[1])
    structlog.configure(**config)
