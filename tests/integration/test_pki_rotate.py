"""`plasmaboot pki rotate` and `pki rotate-ca` (runbook 10.2) against the real peers: the
3-member TLS etcd 3.4 cluster of the rollback lab (its `seed`, etcd_support), started from
plasmaboot's rendered files with the node certificates, and a real sshd standing in for
the nodes (each node address is a loopback address sshd listens on; the files really cross
SSH in a tar and are unpacked and renamed by root's shell).

sshd runs every command through WRAPPER, which plays two parts of a node this test cannot
own: its root filesystem (the node's /etc/nixos/secrets is `<state>/<node>/etc/nixos/
secrets`, as etcd_support maps a member's paths) and its systemd (`systemctl restart
etcd.service` asks `Systemd` below to restart that member with the files LoadCredential=
copies from the secrets directory; `systemctl is-system-running` says running). What is
checked is real: the files on the "node", the certificate etcd serves after its restart
(serial over TLS), `cluster verify` over TLS in the gate, and trust in the new CA alone.

The scenarios build on each other and run in file order on one module-scoped cluster.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import stat
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_power_ipmi_sim as ipmi_sim
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from etcd_support import Cluster, missing_peer
from events_support import ServeProcess
from ssh_support import missing_sshd, running_sshd
from test_firstboot_etcd import wait_healthy
from test_node_rollback_replace import MEMBERS, Lab, cli, events_of, seed, text
from test_remote_cli import Site

from plasmaboot.firstboot.backends.base import http_client
from plasmaboot.pki import cert_info

pytestmark = pytest.mark.integration

NET = "127.0.84"
SSHD_PORT = 17133
CLOSED_PORT = 17134  # nothing listens here: a node SSH cannot reach
SECRETS = "/etc/nixos/secrets"
WRAPPER = """\
set -- $SSH_CONNECTION
case "$3" in
{cases}
  *) echo "no node at $3" >&2; exit 255 ;;
esac
root={state}/$node
marks={marks}
systemctl() {{
  case "$1" in
    is-system-running) echo running ;;
    restart)
      shift
      if [ -e "$marks/restart-fails-$node" ]; then echo "Job for $* failed." >&2; return 1; fi
      echo "$*" > "$marks/.restart-$node" && mv "$marks/.restart-$node" "$marks/restart-$node"
      while [ -e "$marks/restart-$node" ]; do sleep 0.1; done ;;
    *) echo "systemctl $1: not in this test's stand-in" >&2; return 1 ;;
  esac
}}
eval "$(printf '%s' "$SSH_ORIGINAL_COMMAND" | sed "s#{secrets}#$root{secrets}#g")"
"""


def url(name: str) -> str:
    return f"https://{NET}.1{name[-1]}:2379"


def on_node(state_dir: Path, name: str, file: str) -> Path:
    """A file of the node's secrets directory, in the node's stand-in root."""
    return state_dir / name / SECRETS.lstrip("/") / file


class Systemd:
    """Restarts a member when the node's `systemctl restart` asks (a request file): stop,
    copy the TLS files from the node's secrets as LoadCredential= does, start."""

    def __init__(self, cluster: Cluster, marks: Path) -> None:
        self.cluster, self.marks = cluster, marks
        self.restarts: Counter[str] = Counter()
        self.units: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.wait(0.1):
            for request in self.marks.glob("restart-node*"):
                name = request.name.removeprefix("restart-")
                self.units.append(request.read_text().strip())
                member = self.cluster.members[name]
                self.cluster.stop(name)
                member.install_credentials(member.root / SECRETS.lstrip("/"))
                self.cluster.start(name)
                self.restarts[name] += 1
                request.unlink()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Systemd]]:
    reason = missing_peer() or missing_sshd()
    if reason:
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    state_dir = tmp_path_factory.mktemp("pki-rotate")
    marks = state_dir / "marks"
    marks.mkdir()
    inventory = state_dir / "cluster.yaml"
    cluster = seed(state_dir, inventory, marks, NET, ipmi_sim.SIM_PORT, "PBP_IT_ROTATE_BMC_PW")
    for name in MEMBERS:  # what the install put on each node
        for file in ("ca.crt", f"{name}.crt", f"{name}.key"):
            target = on_node(state_dir, name, file)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((state_dir / "pki" / file).read_bytes())
    cases = "\n".join(f"  {NET}.1{n[-1]}) node={n} ;;" for n in MEMBERS)
    wrapper = state_dir / "node-wrapper.sh"
    wrapper.write_text(WRAPPER.format(cases=cases, state=state_dir, marks=marks, secrets=SECRETS))
    (state_dir / "sshd").mkdir()
    systemd = Systemd(cluster, marks)
    try:
        for name in MEMBERS:
            cluster.start(name)
        with http_client(cluster.client_tls("node01")) as c:
            for name in MEMBERS:
                wait_healthy(c, url(name), timeout=60)
        addresses = [f"{NET}.1{n[-1]}" for n in MEMBERS]
        forced = f"ForceCommand /bin/sh {wrapper}\n"
        with running_sshd(state_dir / "sshd", SSHD_PORT, addresses, forced) as ssh:
            yield Lab(cluster, ssh, state_dir, inventory, marks), systemd
    finally:
        systemd.stop()
        cluster.stop()


def rotate(lab: Lab, *args: str, port: int = SSHD_PORT) -> Any:
    options = [o for o in lab.ssh.options() if not o.startswith("Port=")] + [f"Port={port}"]
    ssh = [arg for option in options for arg in ("--ssh-option", option)]
    return cli(lab, "pki", *args, *ssh, "--health-timeout", "60")


def _tls(name: str, cafile: Path, cert: Path, key: Path) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(cafile))
    context.load_cert_chain(str(cert), str(key))
    address = f"{NET}.1{name[-1]}"
    raw = socket.create_connection((address, 2379), timeout=10)
    return context.wrap_socket(raw, server_hostname=address)


def served(lab: Lab, name: str, cafile: Path | None = None) -> x509.Certificate:
    """The certificate the member's client port presents, verified against `cafile`
    (default: plasmaboot's ca.crt) with node01's client certificate."""
    tls = lab.cluster.client_tls("node01")
    with _tls(name, cafile or tls.ca_cert, tls.node_cert, tls.node_key) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def answers(name: str, cafile: Path, cert: Path, key: Path) -> bool:
    """Whether the member answers a client presenting this certificate (TLS 1.3 refuses
    a client certificate after the handshake: on the first read)."""
    try:
        with _tls(name, cafile, cert, key) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return conn.recv(100).startswith(b"HTTP/1.1 200")
    except (ssl.SSLError, ConnectionError):
        return False


def pki(lab: Lab, file: str) -> Path:
    return lab.state_dir / "pki" / file


def test_unknown_names_are_refused_at_once_with_the_closest_names(
    lab: tuple[Lab, Systemd],
) -> None:
    rig, _ = lab
    before = pki(rig, "node01.crt").read_bytes()
    result = rotate(rig, "rotate", "nod01", "node9", "node02")
    assert result.exit_code == 1
    assert "no such node: nod01 (did you mean node01 or" in text(result)
    assert "node9 (did you mean node03 or node02 or node01?)" in text(result)
    assert "nothing was done" in text(result)
    assert pki(rig, "node01.crt").read_bytes() == before


def test_an_unreachable_node_stops_the_rotation_naming_it(lab: tuple[Lab, Systemd]) -> None:
    rig, systemd = lab
    before = {n: pki(rig, f"{n}.crt").read_bytes() for n in ("node01", "node02")}
    result = rotate(rig, "rotate", "node01", "node02", port=CLOSED_PORT)
    assert result.exit_code == 1
    out = text(result)
    assert "node01: stopped at reach: cannot log in over SSH as root; nothing was changed" in out
    assert "not started: node02" in out
    assert {n: pki(rig, f"{n}.crt").read_bytes() for n in before} == before
    assert [e.event for e in events_of(rig, "node01")][-2:] == ["pki-rotate-reach",
                                                                "pki-rotate-failed"]  # fmt: skip
    assert not systemd.restarts


def test_a_cluster_failing_verify_is_not_restarted_without_force(
    lab: tuple[Lab, Systemd],
) -> None:
    rig, systemd = lab
    rig.cluster.stop("node03")  # a member down: restarting another would cost the quorum
    try:
        before = pki(rig, "ca.crt").read_bytes(), pki(rig, "node01.crt").read_bytes()
        for args in (("rotate", "node01"), ("rotate-ca",)):
            result = rotate(rig, *args)
            assert result.exit_code == 1
            out = text(result)
            assert "cluster verify fails before any restart:" in out and "node03" in out
            assert "nothing was done" in out and "--force" in out
        assert (pki(rig, "ca.crt").read_bytes(), pki(rig, "node01.crt").read_bytes()) == before
        assert not pki(rig, "ca-rotation.json").exists() and not systemd.restarts
    finally:
        rig.cluster.start("node03")
        with http_client(rig.cluster.client_tls("node01")) as c:
            wait_healthy(c, url("node03"), timeout=60)


def test_rotate_delivers_restarts_and_etcd_serves_the_new_certificate(
    lab: tuple[Lab, Systemd],
) -> None:
    rig, systemd = lab
    old = {n: served(rig, n).serial_number for n in ("node01", "node02")}
    old_key = pki(rig, "node01.key").read_bytes()
    old_sans = cert_info(pki(rig, "node01.crt"))

    result = rotate(rig, "rotate", "node01", "node02", "--rotate-key", "--json")

    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["ok"] and [n["node"] for n in found["nodes"]] == ["node01", "node02"]
    for name in ("node01", "node02"):
        new = cert_info(pki(rig, f"{name}.crt"))
        # the node's files are plasmaboot's, the key 0600, no staging directory left
        for file in ("ca.crt", f"{name}.crt", f"{name}.key"):
            assert on_node(rig.state_dir, name, file).read_bytes() == pki(rig, file).read_bytes()
        mode = stat.S_IMODE(on_node(rig.state_dir, name, f"{name}.key").stat().st_mode)
        assert mode == 0o600
        assert not list(on_node(rig.state_dir, name, "").glob(".plasmaboot-rotate.*"))
        # etcd was restarted and serves the new certificate, not the old
        assert systemd.restarts[name] == 1
        assert format(served(rig, name).serial_number, "x") == new.serial
        assert served(rig, name).serial_number != old[name]
        events = [e.event for e in events_of(rig, name)]
        assert events[-7:] == ["pki-rotate-reach", "pki-rotate-issued", "pki-rotate-delivered",
                               "pki-rotate-restarted", "pki-rotate-health",
                               "pki-rotate-cluster-verified", "pki-rotated"]  # fmt: skip
    assert systemd.units == ["etcd.service", "etcd.service"]
    assert pki(rig, "node01.key").read_bytes() != old_key
    new_sans = cert_info(pki(rig, "node01.crt"))
    assert (new_sans.dns_names, new_sans.ip_addresses) == (old_sans.dns_names,
                                                           old_sans.ip_addresses)  # fmt: skip
    assert systemd.restarts["node03"] == 0  # one node at a time, only those named


def test_a_failed_restart_stops_the_rotation_naming_node_and_step(
    lab: tuple[Lab, Systemd],
) -> None:
    rig, systemd = lab
    (rig.marks / "restart-fails-node03").touch()
    try:
        result = rotate(rig, "rotate", "node03", "node01")
    finally:
        (rig.marks / "restart-fails-node03").unlink()
    assert result.exit_code == 1
    out = text(result)
    assert "node03: stopped at restart: `systemctl restart etcd.service` failed" in out
    assert "not started: node01" in out
    assert events_of(rig, "node03")[-1].detail["step"] == "restart"
    assert systemd.restarts["node01"] == 1  # node01 untouched by this run


def test_rotate_through_a_server_runs_there(lab: tuple[Lab, Systemd]) -> None:
    """`--server`: the server reissues from its PKI and delivers over its own SSH."""
    rig, systemd = lab
    home = rig.state_dir / "home"
    home.mkdir()
    server = ServeProcess.start(rig.state_dir, config=rig.inventory)
    try:
        site = Site(server, rig.inventory, rig.state_dir, home)
        site.make_tokens()
        status = site.remote("pki", "rotate-ca", "--status")
        assert status.returncode == 0, status.stderr
        assert status.stdout == "no CA rotation in progress\n"
        refused = site.remote("pki", "rotate-ca")  # it would replace serve's own CA
        assert refused.returncode == 2 and "on the provisioning server itself" in refused.stderr
        ssh = [arg for option in rig.ssh.options() for arg in ("--ssh-option", option)]
        done = site.remote("pki", "rotate", "node03", *ssh, "--health-timeout", "60", "--json")
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    serial = cert_info(pki(rig, "node03.crt")).serial
    assert json.loads(done.stdout) == {
        "ok": True, "not_started": [],
        "nodes": [{"node": "node03", "ok": True, "serial": serial, "step": "", "reason": ""}],
    }  # fmt: skip
    assert f"node03: new certificate {serial} delivered" in done.stderr  # the server's log
    assert format(served(rig, "node03").serial_number, "x") == serial
    assert systemd.restarts["node03"] == 1


def test_ca_rotation_refuses_unreachable_nodes_and_changes_nothing(
    lab: tuple[Lab, Systemd],
) -> None:
    rig, _ = lab
    before = pki(rig, "ca.crt").read_bytes()
    result = rotate(rig, "rotate-ca", port=CLOSED_PORT)
    assert result.exit_code == 1
    out = text(result)
    assert "cannot log in over SSH as root to node01, node02, node03; nothing was done" in out
    assert "--force" in out
    assert pki(rig, "ca.crt").read_bytes() == before
    assert not pki(rig, "ca-rotation.json").exists()


def test_ca_rotation_keeps_both_cas_trusted_until_every_node_moved(
    lab: tuple[Lab, Systemd],
) -> None:
    rig, systemd = lab
    old_ca = pki(rig, "ca.crt").read_bytes()
    old_client = rig.state_dir / "old-client"  # node03's certificate from the old CA
    old_client.mkdir()
    for file in ("node03.crt", "node03.key"):
        shutil.copy(pki(rig, file), old_client / file)
    (rig.marks / "restart-fails-node02").touch()
    stopped = rotate(rig, "rotate-ca")  # node02's restart fails in the first phase
    (rig.marks / "restart-fails-node02").unlink()
    assert stopped.exit_code == 1
    assert "stopped at node02 (restart)" in text(stopped) and "to resume" in text(stopped)
    status = rotate(rig, "rotate-ca", "--status")
    assert status.exit_code == 0, status.output
    assert "CA rotation: bundle" in text(status) and "bundle: node01 " in text(status)
    bundle = x509.load_pem_x509_certificates(
        on_node(rig.state_dir, "node01", "ca.crt").read_bytes()
    )
    assert len(bundle) == 2 and bundle[1].public_bytes(Encoding.PEM) == old_ca
    restarts = sum(systemd.restarts.values())

    resumed = rotate(rig, "rotate-ca")

    assert resumed.exit_code == 0, resumed.output
    assert "CA rotation: done" in text(resumed)
    new_ca = x509.load_pem_x509_certificates(pki(rig, "ca.crt").read_bytes())
    assert len(new_ca) == 1 and new_ca[0].public_bytes(Encoding.PEM) != old_ca
    for name in MEMBERS:
        assert (
            on_node(rig.state_dir, name, "ca.crt").read_bytes() == pki(rig, "ca.crt").read_bytes()
        )
        served(rig, name).verify_directly_issued_by(new_ca[0])  # verified by the new CA alone
        assert events_of(rig, name)[-2].event == "ca-rotate-cluster-verified"
        assert events_of(rig, name)[-1].detail == {"phase": "drop-old"}
    # node01 had the bundle already: two phases left; node02 and node03 three each
    assert sum(systemd.restarts.values()) - restarts == 2 + 3 + 3
    assert not pki(rig, "ca-rotation.json").exists() and not pki(rig, "ca.old.key").exists()
    # the old CA is trusted no more: its certificate is refused, the new one answered
    cafile = pki(rig, "ca.crt")
    assert not answers("node01", cafile, old_client / "node03.crt", old_client / "node03.key")
    assert answers("node01", cafile, pki(rig, "node03.crt"), pki(rig, "node03.key"))


def test_force_passes_unreachable_nodes_over_and_records_them(lab: tuple[Lab, Systemd]) -> None:
    """Last: with every node passed over, the nodes keep the CA they had (what --force
    warns of); the cluster is left trusting a CA plasmaboot no longer signs with."""
    rig, systemd = lab
    trusted = on_node(rig.state_dir, "node01", "ca.crt").read_bytes()
    restarts = sum(systemd.restarts.values())
    result = rotate(rig, "rotate-ca", "--force", "--json", port=CLOSED_PORT)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["phase"], report["skipped"]) == ("done", list(MEMBERS))
    assert report["finished"] == {"bundle": [], "reissue": [], "drop-old": []}
    for name in MEMBERS:
        assert events_of(rig, name)[-1].event == "ca-rotate-skipped"
        assert on_node(rig.state_dir, name, "ca.crt").read_bytes() == trusted
    assert pki(rig, "ca.crt").read_bytes() != trusted
    assert sum(systemd.restarts.values()) == restarts
