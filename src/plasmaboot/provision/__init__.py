"""The provisioning service, between the store and the servers.

`LifecycleService` is the only writer of lifecycle state; `Provisioner` adds what a
running server shares (inventory, settings, agent tokens, health probes).
"""

from plasmaboot.provision.lifecycle import LifecycleService, Listener
from plasmaboot.provision.service import Provisioner, ProvisionerSettings
from plasmaboot.provision.tokens import AgentTokens, TokenRefused

__all__ = [
    "AgentTokens",
    "LifecycleService",
    "Listener",
    "Provisioner",
    "ProvisionerSettings",
    "TokenRefused",
]
