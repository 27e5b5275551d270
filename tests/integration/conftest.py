"""Fixtures shared by the integration modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_power_ipmi_sim import Machine, running_sim


@pytest.fixture(scope="session")
def ipmi_sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    """One ipmi_sim for the whole run, shared by every module that drives a BMC.

    pyghmi keeps its IPMI sessions per process, keyed by address and port: a sim restarted
    on the same port for the next module was taken for the old one (a live session reused,
    its packets ignored by the new sim), so the sim is started once and never restarted.
    """
    with running_sim(tmp_path_factory.mktemp("pbp-ipmi")) as sim:
        yield sim


@pytest.fixture(scope="module")
def ipmi_machine(ipmi_sim_process: Machine) -> Machine:
    """The run's ipmi_sim with its machine as each module expects it: off, no calls yet."""
    ipmi_sim_process.reset()
    return ipmi_sim_process
