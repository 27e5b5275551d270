"""The virtual provisioning lab: network namespace, bridge, QEMU VMs and the lab image."""
