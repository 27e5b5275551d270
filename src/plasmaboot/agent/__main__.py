"""``python3 -m plasmaboot.agent``: the installer agent (see docs/agent.md)."""

import sys

from plasmaboot.agent.cli import main

sys.exit(main())
