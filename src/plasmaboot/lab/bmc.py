"""A real IPMI BMC for a lab VM: OpenIPMI's ipmi_sim, its chassis wired to the VM.

ipmi_sim speaks IPMI 2.0 lanplus on loopback and hands chassis control to a program; the
program here powers the lab VM on and off (`plasmaboot.lab.power`) and remembers the boot
device, so `plasmaboot node provision` drives the lab exactly as it drives a rack.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

from plasmaboot.lab.runner import Lab, LabError

LAN_CONF = """\
name "{name}"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{chassis} 0x20"
  user 2 true "{user}" "{password}" admin 10 none md2 md5 straight
"""

EMU_COMMANDS = """\
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
"""

# ipmi_sim calls: chassis <mc> get <parm>... | chassis <mc> set <parm> <value>...
CHASSIS = """\
#!/bin/sh
power="{python} -m plasmaboot.lab.power {workdir} {node}"
mc=$1; op=$2; shift 2
if [ "$op" = get ]; then
  for parm in "$@"; do
    case $parm in
      power) if $power status; then echo power:1; else echo power:0; fi;;
      boot) echo "boot:$(cat {state}/boot 2>/dev/null || echo default)";;
    esac
  done
else
  while [ $# -ge 2 ]; do
    case $1 in
      power) if [ "$2" = 1 ]; then $power on; else $power off; fi;;
      boot) echo "$2" > {state}/boot;;
    esac
    shift 2
  done
fi
"""


def start_bmc(
    lab: Lab, node: str, port: int, user: str, password: str, *, in_lab: bool = False
) -> subprocess.Popen[bytes]:
    """Start ipmi_sim for `node` on 127.0.0.1:`port`; the caller stops it (terminate).

    `in_lab`: on the loopback of the lab's namespace instead of the host's, for a CLI that
    runs there because it must also reach the lab's cluster (reprovision leaves it first).
    """
    binary = shutil.which("ipmi_sim")
    if binary is None:
        raise LabError("ipmi_sim is missing: apt-get install openipmi")
    base = lab.workdir / "bmc" / node
    (base / "state").mkdir(parents=True, exist_ok=True)
    chassis = base / "chassis"
    chassis.write_text(CHASSIS.format(python=sys.executable, workdir=lab.workdir, node=node,
                                      state=base / "state"))  # fmt: skip
    chassis.chmod(0o755)
    (base / "lan.conf").write_text(
        LAN_CONF.format(name=f"pb{node}", port=port, chassis=chassis, user=user, password=password)
    )
    (base / "sim.emu").write_text(EMU_COMMANDS)
    log = (base / "ipmi_sim.log").open("ab")
    argv = [binary, "-c", "lan.conf", "-f", "sim.emu", "-s", "state", "-n"]
    proc = subprocess.Popen(
        lab.network.exec_argv(*argv) if in_lab else argv,
        cwd=base, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    if proc.poll() is not None:
        raise LabError(f"ipmi_sim exited ({proc.returncode}); see {base / 'ipmi_sim.log'}")
    return proc
