"""`python3 -m plasmaboot.agent` / `plasmaboot agent`: report `installer-booted` with this
machine's hardware facts, or `failed` with the reason.

Exit codes: 0 reported; 1 failed (reported to the server when it gave a session token);
2 bad command line (the program's arguments, or a missing or bad `plasmaboot.*`
parameter on the kernel command line: nothing was sent, the boot token is not spent).
Every step prints one line starting `plasmaboot-agent:` on stdout (the serial console).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from plasmaboot import __version__
from plasmaboot.agent import facts
from plasmaboot.agent.client import AgentClient, AgentError, LookupAnswer
from plasmaboot.agent.cmdline import (
    DEFAULT_CMDLINE,
    INSTALL_STAGE,
    AgentParameters,
    CmdlineError,
    read_cmdline,
)

EXIT_REPORTED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_SESSION_FILE = Path("/run/plasmaboot/session")
PREFIX = "plasmaboot-agent:"


def say(line: str) -> None:
    print(f"{PREFIX} {line}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plasmaboot agent",
        description="Installer agent: look this machine up in plasmaboot's agent API and "
        "report installer-booted with its hardware facts (or failed with the reason).",
        epilog="Exit codes: 0 reported, 1 failed (reported when possible), 2 bad command line.",
    )
    parser.add_argument(
        "--cmdline",
        type=Path,
        default=DEFAULT_CMDLINE,
        help="Kernel command line to read plasmaboot.url=, plasmaboot.token= "
        "and plasmaboot.node= from (default: %(default)s).",
    )
    parser.add_argument(
        "--sys-root",
        type=Path,
        default=Path("/sys"),
        help="Where sysfs is mounted (default: %(default)s).",
    )
    parser.add_argument(
        "--proc-root",
        type=Path,
        default=Path("/proc"),
        help="Where procfs is mounted (default: %(default)s).",
    )
    parser.add_argument(
        "--session-file",
        type=Path,
        default=DEFAULT_SESSION_FILE,
        help="Where to keep the session token, 0600, for later installer "
        "steps (default: %(default)s).",
    )
    parser.add_argument(
        "--attempts",
        type=_positive_int,
        default=10,
        help="Tries per request while the server does not answer (default: %(default)s).",
    )
    parser.add_argument(
        "--retry-delay",
        type=_positive_float,
        default=1.0,
        help="First wait between tries in seconds; it doubles up to 30 (default: %(default)s).",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        help="Seconds to wait for one answer (default: %(default)s).",
    )
    parser.add_argument(
        "--print-facts",
        action="store_true",
        help="Print the hardware facts as JSON and exit; contacts no server.",
    )
    parser.add_argument("--version", action="version", version=f"plasmaboot {__version__}")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:  # also refuses nan and inf: every wait stays bounded
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600, got {text}")
    return value


def write_session(path: Path, token: str) -> None:
    """The session token, 0600 from the first byte, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an old partial file keeps its mode through O_CREAT
        os.write(fd, f"{token}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)


@dataclass
class InstallerBoot:
    """One run: the steps after the command line was read."""

    params: AgentParameters
    client: AgentClient
    sys_root: Path
    proc_root: Path
    session_file: Path

    def macs(self) -> list[str]:
        """MACs to look up with: BOOTIF's first, then NICs with link, then the rest."""
        nics = facts.read_nics(self.sys_root)
        ordered = sorted(nics, key=lambda nic: (nic["link"] != "up", nic["name"]))
        macs = [nic["mac"] for nic in ordered if nic["mac"]]
        boot_mac = self.params.boot_mac
        if boot_mac in macs:
            macs.remove(boot_mac)
            macs.insert(0, boot_mac)
        return macs

    def run(self) -> int:
        try:
            found = self.client.lookup(self.params.token, self.macs())
        except AgentError as exc:  # no session token: the server cannot be told
            say(f"FAILED: {exc}")
            return EXIT_FAILED
        say(
            f"looked up: this is {found.hostname} (MAC {found.mac}, "
            f"profile {found.identity.get('profile')}, state {found.identity.get('state')})"
        )
        try:
            self.installer_booted(found)
        except (AgentError, OSError) as exc:
            return self.fail(found, str(exc))
        except Exception as exc:  # a bug in a reader must still reach the operator
            return self.fail(found, f"{type(exc).__name__}: {exc}")
        return EXIT_REPORTED

    def installer_booted(self, found: LookupAnswer) -> None:
        if self.params.node is not None and self.params.node != found.hostname:
            raise AgentError(
                f"the server says this machine is {found.hostname}, the kernel command line "
                f"says plasmaboot.node={self.params.node}"
            )
        try:
            write_session(self.session_file, found.session_token)
        except OSError as exc:
            raise AgentError(
                f"cannot write the session token to {self.session_file}: {exc}"
            ) from None
        say(f"session token kept in {self.session_file} (0600)")
        hardware = facts.collect(self.sys_root, self.proc_root)
        say(f"hardware: {facts.summary(hardware)}")
        detail = {"node": found.hostname, "hardware": hardware}
        self.client.report(found.session_token, "installer-booted", detail)
        say(f"reported installer-booted for {found.hostname}")

    def fail(self, found: LookupAnswer, reason: str) -> int:
        say(f"FAILED: {reason}")
        detail = {"node": found.hostname, "reason": reason}
        try:
            self.client.report(found.session_token, "failed", detail)
        except AgentError as exc:
            say(f"could not report failed: {exc}")
        else:
            say("reported failed")
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.print_facts:
        print(json.dumps(facts.collect(args.sys_root, args.proc_root), indent=2))
        return EXIT_REPORTED
    try:
        params = read_cmdline(args.cmdline)
    except CmdlineError as exc:
        say(f"bad command line: {exc}")
        return EXIT_USAGE
    if params.stage not in (None, INSTALL_STAGE):
        say(
            f"bad command line: plasmaboot.stage={params.stage} is not an installer boot "
            f"(the installer agent runs with plasmaboot.stage={INSTALL_STAGE} or none)"
        )
        return EXIT_USAGE
    say(f"plasmaboot {__version__}: server {params.url}, node {params.node or '(ask the server)'}")
    client = AgentClient(
        params.url,
        say=say,
        attempts=args.attempts,
        first_delay_s=args.retry_delay,
        timeout_s=args.timeout,
    )
    boot = InstallerBoot(params, client, args.sys_root, args.proc_root, args.session_file)
    return boot.run()
