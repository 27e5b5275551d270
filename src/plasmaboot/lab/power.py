"""Power a lab VM on or off by name: what the lab's simulated BMC runs.

    python -m plasmaboot.lab.power WORKDIR NODE on|off|status

`status` exits 0 when the VM runs, 1 when it is off.
"""

from __future__ import annotations

import sys
from pathlib import Path

from plasmaboot.lab.runner import Lab


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[2] not in ("on", "off", "status"):
        print(__doc__, file=sys.stderr)
        return 2
    workdir, node, action = Path(argv[0]), argv[1], argv[2]
    lab = Lab.attach(workdir)
    running = lab.vm_pid(node) is not None
    if action == "status":
        return 0 if running else 1
    if action == "on" and not running:
        lab.start_vm(node)
    elif action == "off" and running:
        lab.stop_vm(node)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
