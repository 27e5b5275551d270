"""The node lifecycle state machine."""

from plasmaboot.lifecycle.machine import (
    BOOTS_FROM_DISK,
    FAILED_STATES,
    FIRED_BY,
    STABLE_STATES,
    TARGETS,
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
    allowed_events,
    next_state,
)

__all__ = [
    "BOOTS_FROM_DISK",
    "FAILED_STATES",
    "FIRED_BY",
    "STABLE_STATES",
    "TARGETS",
    "TRANSITIONS",
    "Event",
    "IllegalTransition",
    "State",
    "allowed_events",
    "next_state",
]
