"""plasmaboot: bare-metal provisioning for PlasmaCloud clusters."""

__version__ = "0.1.0"
