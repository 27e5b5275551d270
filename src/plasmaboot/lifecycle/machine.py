"""The node lifecycle: one transition table and the one function that reads it.

Modelled on Ironic's provisioning states: every operation has an unstable state that
waits for the machine (`pxe-booting`, `installing`, `joining`...), a target it is heading
for, and a failed state with a way back. The store applies a transition only through
`next_state`, inside the same transaction that records the event, so there is no way to
set a state without both checking this table and leaving a trace.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    DISCOVERED = "discovered"  # an unknown MAC asked to boot; waits for an operator
    ENROLLED = "enrolled"  # known from the inventory, nothing done yet
    PXE_BOOTING = "pxe-booting"  # DHCP/TFTP/HTTP seen; waiting for the installer to call in
    BOOT_FAILED = "boot-failed"
    INSTALLER_BOOTED = "installer-booted"
    INSTALLING = "installing"
    INSTALL_FAILED = "install-failed"
    INSTALLED = "installed"  # on disk; next boot is from disk
    FIRST_BOOT = "first-boot"  # the installed OS confirmed it booted: never netboot again
    JOINING = "joining"
    JOIN_FAILED = "join-failed"
    ACTIVE = "active"
    DRAINING = "draining"
    MAINTENANCE = "maintenance"
    DECOMMISSIONED = "decommissioned"


class Event(StrEnum):
    ENROLL = "enroll"
    PXE_BOOT = "pxe-boot"
    BOOT_TIMEOUT = "boot-timeout"
    INSTALLER_BOOTED = "installer-booted"
    INSTALL_STARTED = "install-started"
    INSTALLED = "installed"
    FIRST_BOOT = "first-boot"
    JOIN_STARTED = "join-started"
    JOINED = "joined"
    FAIL = "fail"
    RETRY = "retry"
    REPROVISION = "reprovision"
    DRAIN = "drain"
    DRAINED = "drained"
    MAINTAIN = "maintain"
    ACTIVATE = "activate"
    DECOMMISSION = "decommission"
    RECOMMISSION = "recommission"


S, E = State, Event

_ANY_LIVE = tuple(s for s in State if s is not S.DECOMMISSIONED)
_INSTALLED_OS = (S.INSTALLED, S.FIRST_BOOT, S.JOINING, S.JOIN_FAILED, S.ACTIVE)

# (event, from) -> to. Everything not listed is illegal.
TRANSITIONS: dict[tuple[Event, State], State] = {
    (E.ENROLL, S.DISCOVERED): S.ENROLLED,
    **{(E.PXE_BOOT, s): S.PXE_BOOTING for s in (S.ENROLLED, S.BOOT_FAILED, S.INSTALL_FAILED)},
    (E.BOOT_TIMEOUT, S.PXE_BOOTING): S.BOOT_FAILED,
    (E.INSTALLER_BOOTED, S.PXE_BOOTING): S.INSTALLER_BOOTED,
    (E.INSTALL_STARTED, S.INSTALLER_BOOTED): S.INSTALLING,
    # The lab installer (and a quick real one) may report done without an "installing" step.
    (E.INSTALLED, S.INSTALLER_BOOTED): S.INSTALLED,
    (E.INSTALLED, S.INSTALLING): S.INSTALLED,
    (E.FIRST_BOOT, S.INSTALLED): S.FIRST_BOOT,
    (E.JOIN_STARTED, S.FIRST_BOOT): S.JOINING,
    (E.JOINED, S.FIRST_BOOT): S.ACTIVE,
    (E.JOINED, S.JOINING): S.ACTIVE,
    # "fail" lands in the failed state of whatever operation was under way.
    (E.FAIL, S.PXE_BOOTING): S.BOOT_FAILED,
    (E.FAIL, S.INSTALLER_BOOTED): S.INSTALL_FAILED,
    (E.FAIL, S.INSTALLING): S.INSTALL_FAILED,
    (E.FAIL, S.INSTALLED): S.JOIN_FAILED,
    (E.FAIL, S.FIRST_BOOT): S.JOIN_FAILED,
    (E.FAIL, S.JOINING): S.JOIN_FAILED,
    (E.RETRY, S.JOIN_FAILED): S.JOINING,
    (E.RETRY, S.BOOT_FAILED): S.ENROLLED,
    (E.RETRY, S.INSTALL_FAILED): S.ENROLLED,
    **{
        (E.REPROVISION, s): S.ENROLLED
        for s in (*_INSTALLED_OS, S.MAINTENANCE, S.BOOT_FAILED, S.INSTALL_FAILED)
    },
    (E.DRAIN, S.ACTIVE): S.DRAINING,
    (E.DRAINED, S.DRAINING): S.MAINTENANCE,
    # Maintenance is entered only from active, so "activate" can never skip the join.
    (E.MAINTAIN, S.ACTIVE): S.MAINTENANCE,
    (E.ACTIVATE, S.MAINTENANCE): S.ACTIVE,
    (E.ACTIVATE, S.DRAINING): S.ACTIVE,
    **{(E.DECOMMISSION, s): S.DECOMMISSIONED for s in _ANY_LIVE},
    (E.RECOMMISSION, S.DECOMMISSIONED): S.ENROLLED,
}

# Who fires each event (Ironic names the firing function per transition; here every
# transition of an event has the same source, so the table is per event).
FIRED_BY: dict[Event, str] = {
    E.ENROLL: "operator (inventory import, admin API)",
    E.PXE_BOOT: "DHCP/HTTP seeing the machine's firmware, or an operator",
    E.BOOT_TIMEOUT: "the deadline reaper of serve, when pxe-booting outlives its deadline",
    E.INSTALLER_BOOTED: "the installer agent (plasmaboot agent), with its boot token",
    E.INSTALL_STARTED: "the install driver of serve, or an installer that installs itself",
    E.INSTALLED: "the install driver of serve, or an installer that installs itself",
    E.FIRST_BOOT: "the installed OS (plasmaboot firstboot), with its node credential",
    E.JOIN_STARTED: "the installed OS (plasmaboot firstboot), with its node credential",
    E.JOINED: "the installed OS (plasmaboot firstboot), with its node credential",
    E.FAIL: "whoever runs the operation under way (agent, install driver, first boot), or "
    "the deadline reaper of serve when the state outlives its deadline",
    E.RETRY: "operator",
    E.REPROVISION: "operator",
    E.DRAIN: "operator",
    E.DRAINED: "operator (after the drain command succeeded)",
    E.MAINTAIN: "operator",
    E.ACTIVATE: "operator",
    E.DECOMMISSION: "operator",
    E.RECOMMISSION: "operator",
}

# States a node rests in until someone acts; every other state waits for the machine.
STABLE_STATES = frozenset(
    {S.DISCOVERED, S.ENROLLED, S.BOOT_FAILED, S.INSTALL_FAILED, S.JOIN_FAILED, S.ACTIVE,
     S.MAINTENANCE, S.DECOMMISSIONED}
)  # fmt: skip

# The stable state each unstable state is heading for (Ironic's target_provision_state).
TARGETS: dict[State, State] = {
    **{s: S.ACTIVE for s in (S.PXE_BOOTING, S.INSTALLER_BOOTED, S.INSTALLING, S.INSTALLED,
                             S.FIRST_BOOT, S.JOINING)},
    S.DRAINING: S.MAINTENANCE,
}  # fmt: skip

FAILED_STATES = frozenset({S.BOOT_FAILED, S.INSTALL_FAILED, S.JOIN_FAILED})

# States in which the machine has an installed OS that confirmed it boots: netbooting it
# again would reinstall or loop, so the boot policy sends it to its local disk.
BOOTS_FROM_DISK = frozenset(
    {S.FIRST_BOOT, S.JOINING, S.JOIN_FAILED, S.ACTIVE, S.DRAINING, S.MAINTENANCE}
)


class IllegalTransition(Exception):
    """An event that the current state does not accept; names what it would accept."""

    def __init__(self, node: str, state: State, event: Event) -> None:
        self.node, self.state, self.event = node, state, event
        allowed = ", ".join(sorted(e.value for e in allowed_events(state))) or "none"
        super().__init__(
            f"node {node} is {state.value}: event '{event.value}' is not allowed there "
            f"(allowed: {allowed})"
        )


def allowed_events(state: State) -> list[Event]:
    return [event for (event, src) in TRANSITIONS if src is state]


def next_state(node: str, state: State, event: Event) -> State:
    """The state `event` moves `node` to from `state`, or IllegalTransition."""
    try:
        return TRANSITIONS[(event, state)]
    except KeyError:
        raise IllegalTransition(node, state, event) from None
