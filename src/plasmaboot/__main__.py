"""`python -m plasmaboot` is the `plasmaboot` command."""

from plasmaboot.cli import main

main()
