"""``python -m plasmaboot.firstboot --config cluster-config.json``."""

from plasmaboot.firstboot.command import main

main()
