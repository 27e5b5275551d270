"""The provisioning service, between the store and the servers.

`LifecycleService` is the only writer of lifecycle state; `Provisioner` adds what a
running server shares (inventory, settings, agent tokens, health probes);
`DeadlineReaper` fails the nodes stuck in a state that waits for the machine.
"""

from plasmaboot.provision.deadlines import DeadlineReaper
from plasmaboot.provision.lifecycle import LifecycleService, Listener
from plasmaboot.provision.service import Provisioner, ProvisionerSettings
from plasmaboot.provision.tokens import AgentTokens, TokenRefused

__all__ = [
    "AgentTokens",
    "DeadlineReaper",
    "LifecycleService",
    "Listener",
    "Provisioner",
    "ProvisionerSettings",
    "TokenRefused",
]
