"""How long each lifecycle state that waits for the machine may last, from the inventory.

The server's reaper (provision/deadlines.py) fails a node past its deadline; the node's
own first boot waits for its peers as long as the server waits for it (the rendered
cluster-config.json, render/cluster_config.py), so neither gives up before the other.
Why each default: docs/lifecycle.md "Deadlines".
"""

from __future__ import annotations

import math

from plasmaboot.inventory.models import Inventory
from plasmaboot.lifecycle import State

# The install may take the installer's whole timeout; this covers the reboot around it.
INSTALL_MARGIN_S = 15 * 60

# Defaults for real hardware (why each, in docs/lifecycle.md "Deadlines"); `installing`
# (and `installer-booted` for an installer that installs itself) comes from the
# inventory's installer timeout, see `deadlines_for`.
DEFAULT_DEADLINES_S: dict[State, int] = {
    State.PXE_BOOTING: 15 * 60,
    State.INSTALLER_BOOTED: 10 * 60,
    State.INSTALLED: 30 * 60,
    State.FIRST_BOOT: 30 * 60,
    State.JOINING: 30 * 60,
    State.DRAINING: 60 * 60,
}


def deadlines_for(inv: Inventory) -> dict[State, float]:
    """Seconds each unstable state may last: the defaults, then the inventory's overrides.

    `installing` is the installer's timeout per round of serve's install queue (every
    inventory node installing at once, `max_concurrent` at a time: a queued node already
    waits in `installing`) plus a margin. An installer image that installs itself (no
    install command) reports `installed` straight from `installer-booted`, so that state
    gets the install's deadline too.
    """
    installer = inv.server.installer
    rounds = 1
    if installer.command is not None:
        rounds = max(1, math.ceil(len(inv.nodes) / installer.max_concurrent))
    install = installer.timeout_s * rounds + INSTALL_MARGIN_S
    deadlines: dict[State, float] = {**DEFAULT_DEADLINES_S, State.INSTALLING: install}
    if installer.command is None:
        deadlines[State.INSTALLER_BOOTED] = install
    for name, seconds in inv.server.deadlines.items():
        deadlines[State(name)] = seconds
    return deadlines
