"""``python -m plasmaboot.firstboot --config cluster-config.json``."""

from plasmaboot.firstboot.cli import main

main()
