"""The store flavours and the Nix wiring: etcd files per node, units that only name units
that exist, the plasmaboot package in every configuration and in the netboot image."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import httpx
import pytest

from plasmaboot.firstboot.backends import make_backend
from plasmaboot.firstboot.config import build_config
from plasmaboot.firstboot.markers import DEFAULT_STATE_DIR
from plasmaboot.firstboot.schema import validate_cluster_config
from plasmaboot.inventory import Inventory, load_inventory
from plasmaboot.render import RenderContext, RenderError, render
from plasmaboot.render.cluster_config import cluster_config
from plasmaboot.render.common import base_url
from plasmaboot.render.etcd import CREDENTIALS_DIR, JOIN_ENV
from plasmaboot.render.nix_package import package_files
from plasmaboot.render.systemd import debian_node_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# Units no rendered file defines but every Debian 12 system has (etcd.service: etcd-server).
SYSTEM_UNITS = {"network-online.target", "multi-user.target"}
DEBIAN_ETCD_UNITS = {"etcd.service"}
_UNIT_REFERENCE = re.compile(r"^(?:After|Before|Wants|Requires)=(.*)$", re.MULTILINE)


def load(name: str) -> Inventory:
    return load_inventory(EXAMPLES / name / "cluster.yaml")


def text(files: dict[str, str | bytes], path: str) -> str:
    content = files[path]
    assert isinstance(content, str)
    return content


def env_vars(content: str) -> dict[str, str]:
    lines = [line for line in content.splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def directives(content: str, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", content, re.MULTILINE)


def test_cluster_config_names_the_store_and_etcd_has_no_flaredb() -> None:
    lab = render("cluster-config", load("lab"), RenderContext())
    for path, content in lab.items():
        doc = json.loads(content)
        assert doc["cluster_backend"] == "etcd", path
        assert doc["flaredb_enabled"] is False
        assert "flaredb_peers" not in doc and "flaredb_member_urls" not in doc
        assert "plasmaboot_url" not in doc and "agent_token" not in doc
    reference_files = render("cluster-config", load("plasmacloud"), RenderContext())
    reference = json.loads(reference_files["node01/cluster-config.json"])
    assert reference["cluster_backend"] == "chainfire"
    assert reference["flaredb_enabled"] is True


def test_a_node_credential_brings_the_server_url_along() -> None:
    inv = load("lab")
    node = inv.nodes[3]
    doc = cluster_config(inv, node, agent_token="n" * 32)
    assert doc["plasmaboot_url"] == base_url(inv) == "http://10.77.0.1:8080"
    assert doc["agent_token"] == "n" * 32
    assert validate_cluster_config(doc) == []
    # the server's install-time assembly may also add both itself: same document
    assert (
        cluster_config(inv, node) | {"plasmaboot_url": base_url(inv), "agent_token": "n" * 32}
        == doc
    )


def test_bootstrap_member_env_file_starts_the_initial_cluster_over_tls() -> None:
    files = render("systemd", load("lab"), RenderContext())
    env = env_vars(text(files, "nodes/node01/etc/default/etcd"))
    assert env == {
        "ETCD_NAME": "node01",
        "ETCD_DATA_DIR": "/var/lib/etcd/lab",
        "ETCD_LISTEN_PEER_URLS": "https://10.77.0.50:2380",
        "ETCD_LISTEN_CLIENT_URLS": "https://10.77.0.50:2379",
        "ETCD_ADVERTISE_CLIENT_URLS": "https://10.77.0.50:2379",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": "https://10.77.0.50:2380",
        "ETCD_INITIAL_CLUSTER_TOKEN": "lab",
        "ETCD_INITIAL_CLUSTER": "node01=https://10.77.0.50:2380,node02=https://10.77.0.51:2380,"
        "node03=https://10.77.0.52:2380",
        "ETCD_INITIAL_CLUSTER_STATE": "new",
        "ETCD_CERT_FILE": f"{CREDENTIALS_DIR}/node.crt",
        "ETCD_KEY_FILE": f"{CREDENTIALS_DIR}/node.key",
        "ETCD_TRUSTED_CA_FILE": f"{CREDENTIALS_DIR}/ca.crt",
        "ETCD_CLIENT_CERT_AUTH": "true",
        "ETCD_PEER_CERT_FILE": f"{CREDENTIALS_DIR}/node.crt",
        "ETCD_PEER_KEY_FILE": f"{CREDENTIALS_DIR}/node.key",
        "ETCD_PEER_TRUSTED_CA_FILE": f"{CREDENTIALS_DIR}/ca.crt",
        "ETCD_PEER_CLIENT_CERT_AUTH": "true",
    }
    drop_in = text(files, "nodes/node01/etc/systemd/system/etcd.service.d/plasmaboot.conf")
    assert "ConditionPathExists" not in drop_in and "EnvironmentFile" not in drop_in
    assert "nodes/node01/etc/systemd/system/etcd-join.path" not in files


def test_joining_member_waits_for_the_file_the_agent_writes_after_member_add() -> None:
    inv = load("lab")
    files = render("systemd", inv, RenderContext())
    env = env_vars(text(files, "nodes/node04/etc/default/etcd"))
    assert env["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    assert "ETCD_INITIAL_CLUSTER" not in env  # the agent writes it with every current member
    assert env["ETCD_ADVERTISE_CLIENT_URLS"] == "https://10.77.0.53:2379"
    drop_in = text(files, "nodes/node04/etc/systemd/system/etcd.service.d/plasmaboot.conf")
    path_unit = text(files, "nodes/node04/etc/systemd/system/etcd-join.path")
    # The agent, given this node's rendered cluster-config.json, writes exactly that file.
    doc = json.loads(render("cluster-config", inv, RenderContext())["node04/cluster-config.json"])
    plan = build_config(doc).services[0]
    backend = make_backend(plan, httpx.Client(), state_dir=DEFAULT_STATE_DIR)
    agent_env = str(backend._env_file)
    assert agent_env == JOIN_ENV == "/var/lib/first-boot-automation/chainfire.env"
    assert directives(drop_in, "ConditionPathExists") == [agent_env]
    assert directives(drop_in, "EnvironmentFile") == [agent_env]
    assert directives(path_unit, "PathExists") == [agent_env]
    assert directives(path_unit, "Unit") == ["etcd.service"]
    assert directives(path_unit, "ConditionPathExists") == [
        "!/var/lib/first-boot-automation/.chainfire-joined"
    ]
    # etcd's member URL is the one the agent adds (peer_url) and the one it checks (client_url)
    assert env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == plan.peer_url
    assert env["ETCD_LISTEN_CLIENT_URLS"] == plan.client_url


def test_etcd_reads_the_tls_files_cluster_config_names_through_credentials() -> None:
    inv = load("lab")
    files = render("systemd", inv, RenderContext())
    for node in inv.nodes:
        tls = cluster_config(inv, node)["tls"]
        drop_in = text(
            files, f"nodes/{node.hostname}/etc/systemd/system/etcd.service.d/plasmaboot.conf"
        )
        assert directives(drop_in, "LoadCredential") == [
            f"ca.crt:{tls['ca_cert_path']}",
            f"node.crt:{tls['node_cert_path']}",
            f"node.key:{tls['node_key_path']}",
        ]


def test_the_store_stage_pulls_etcd_in_at_every_boot() -> None:
    """Wants= holds even when the stage's marker skips it, and even where the package's
    etcd.service is disabled (the lab image disables it). No After=etcd.service: a
    bootstrap member's etcd only finishes starting once its peers are up, and the stage
    must report the first boot before that (it waits for etcd's health itself)."""
    files = render("systemd", load("lab"), RenderContext())
    for profile in ("control-plane", "worker", "all-in-one"):
        unit = text(files, f"{profile}/chainfire-cluster-join.service")
        assert directives(unit, "Wants") == ["network-online.target etcd.service"]
        assert directives(unit, "After") == ["network-online.target"]
    module = text(files, "worker/first-boot.nix")
    assert 'wants = [ "network-online.target" "etcd.service" ];' in module


def test_debian_node_files_enable_the_units_and_the_join_path() -> None:
    inv = load("lab")
    joiner = debian_node_files(inv, inv.nodes[3])
    assert joiner.enable == (
        "chainfire-cluster-join.service",
        "cluster-health-check.service",
        "etcd-join.path",
    )
    assert sorted(joiner.files) == [
        "/etc/default/etcd",
        "/etc/systemd/system/chainfire-cluster-join.service",
        "/etc/systemd/system/cluster-health-check.service",
        "/etc/systemd/system/etcd-join.path",
        "/etc/systemd/system/etcd.service.d/plasmaboot.conf",
    ]
    assert "etcd-join.path" not in debian_node_files(inv, inv.nodes[0]).enable


def _referenced(unit_text: str) -> set[str]:
    return {name for line in _UNIT_REFERENCE.findall(unit_text) for name in line.split()}


@pytest.mark.parametrize("name", ["plasmacloud", "lab"])
def test_unit_files_only_name_units_that_exist(name: str) -> None:
    inv = load(name)
    files = render("systemd", inv, RenderContext())
    known = SYSTEM_UNITS | (DEBIAN_ETCD_UNITS if inv.cluster.store == "etcd" else set())
    for profile in inv.profiles:
        units = {p.rsplit("/", 1)[1]: c for p, c in files.items() if p.startswith(f"{profile}/")}
        defined = {unit for unit in units if unit.endswith(".service")}
        for unit, content in units.items():
            if unit.endswith(".service"):
                assert isinstance(content, str)
                missing = _referenced(content) - defined - known
                assert not missing, f"{profile}/{unit} names {missing}"
    for path, content in files.items():
        if path.startswith("nodes/") and path.endswith((".service", ".path")):
            assert isinstance(content, str)
            assert _referenced(content) <= known | {p.rsplit("/", 1)[1] for p in files}


_NIX_AFTER = re.compile(r"^\s*(wants|requires|after|before) = \[([^\]]*)\](.*);$", re.MULTILINE)
_NIX_OPTIONAL = re.compile(
    r'\+\+ lib\.optional \(config\.systemd\.services \? ([\w-]+)\) "([^"]+)"'
)


@pytest.mark.parametrize("name", ["plasmacloud", "lab"])
def test_nixos_units_only_name_units_the_configuration_defines(name: str) -> None:
    inv = load(name)
    files = render("nixos", inv, RenderContext())
    for profile in inv.profiles:
        module = text(files, f"profiles/{profile}/first-boot.nix")
        defined = {f"{u}.service" for u in re.findall(r"systemd\.services\.([\w-]+) = \{", module)}
        lists = _NIX_AFTER.findall(module)
        assert lists, module
        for _key, listed, rest in lists:
            names = set(re.findall(r'"([^"]+)"', listed))
            unknown = names - defined - SYSTEM_UNITS
            if unknown:  # only etcd.service, defined by each node's services.etcd
                assert unknown == {"etcd.service"}, f"{profile}: {unknown}"
                for node in (n for n in inv.nodes if n.profile == profile):
                    fqdn = inv.fqdn(node)
                    assert "./etcd.nix" in text(files, f"nodes/{fqdn}/configuration.nix")
                    assert "services.etcd = {\n    enable = true;" in text(
                        files, f"nodes/{fqdn}/etcd.nix"
                    )
            for attr, unit in _NIX_OPTIONAL.findall(rest):
                assert unit == f"{attr}.service"  # ordered after it only where it is defined
            assert not rest or _NIX_OPTIONAL.sub("", rest).strip() == ""
    reference = text(
        render("nixos", load("plasmacloud"), RenderContext()), "profiles/worker/first-boot.nix"
    )
    assert '++ lib.optional (config.systemd.services ? chainfire) "chainfire.service"' in reference


def test_nixos_etcd_has_the_settings_of_the_debian_file() -> None:
    inv = load("lab")
    nixos = render("nixos", inv, RenderContext())
    debian = render("systemd", inv, RenderContext())
    env = env_vars(text(debian, "nodes/node01/etc/default/etcd"))
    module = text(nixos, "nodes/node01.lab.internal/etcd.nix")
    assert 'name = "node01";' in module
    assert f'dataDir = "{env["ETCD_DATA_DIR"]}";' in module
    cluster = " ".join(f'"{m}"' for m in env["ETCD_INITIAL_CLUSTER"].split(","))
    assert f"initialCluster = [ {cluster} ];" in module
    assert f'listenClientUrls = [ "{env["ETCD_LISTEN_CLIENT_URLS"]}" ];' in module
    assert f'keyFile = "{env["ETCD_KEY_FILE"]}";' in module
    assert "clientCertAuth = true;" in module and "peerClientCertAuth = true;" in module
    assert '"node.key:/etc/nixos/secrets/node01.key"' in module
    joiner = text(nixos, "nodes/node04.lab.internal/etcd.nix")
    assert 'initialClusterState = "existing";' in joiner and "initialCluster =" not in joiner
    assert f'systemd.services.etcd.serviceConfig.EnvironmentFile = "{JOIN_ENV}";' in joiner
    assert f'pathConfig = {{ PathExists = "{JOIN_ENV}"; Unit = "etcd.service"; }};' in joiner
    assert "etcd.nix" not in " ".join(render("nixos", load("plasmacloud"), RenderContext()))


def test_every_node_configuration_sets_the_firstboot_package() -> None:
    inv = load("plasmacloud")
    files = render("nixos", inv, RenderContext())
    flake = text(files, "flake.nix")
    assert "plasmaboot = pkgs.callPackage ./plasmaboot/nix/plasmaboot.nix { };" in flake
    assert "specialArgs = { inherit plasmaboot; };" in flake
    assert files["plasmaboot/nix/plasmaboot.nix"] == (ROOT / "nix/plasmaboot.nix").read_bytes()
    assert files["plasmaboot/pyproject.toml"] == (ROOT / "pyproject.toml").read_bytes()
    assert "plasmaboot/src/plasmaboot/firstboot/agent.py" in files
    assert not [p for p in files if "__pycache__" in p or p.endswith(".pyc")]
    for node in inv.nodes:
        config = text(files, f"nodes/{inv.fqdn(node)}/configuration.nix")
        assert "{ modulesPath, plasmaboot, ... }:" in config
        assert (
            "services.plasmaboot-firstboot = {\n    enable = true;\n    package = plasmaboot;"
            in config
        )


def test_netboot_image_runs_the_installer_agent() -> None:
    netboot = text(render("nixos", load("lab"), RenderContext()), "netboot-base.nix")
    unit = netboot.split("systemd.services.plasmaboot-agent = {", 1)[1].split("\n  };", 1)[0]
    assert 'ExecStart = "${plasmaboot}/bin/plasmaboot agent";' in unit
    assert 'wants = [ "network-online.target" ];' in unit
    assert 'after = [ "network-online.target" ];' in unit
    # one run, never restarted: its boot token is spent by the first lookup
    assert 'Type = "oneshot";' in unit and "Restart" not in unit
    assert 'wantedBy = [ "multi-user.target" ];' in unit


def test_nix_package_depends_on_what_pyproject_does() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {
        re.split(r"[<>=!~ \[]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]
    }
    expression = (ROOT / "nix/plasmaboot.nix").read_text()
    listed = expression.split("dependencies = with python3Packages; [", 1)[1].split("];", 1)[0]
    # nixpkgs names Python packages by their normalised PyPI names
    assert set(listed.split()) == {re.sub(r"[._]", "-", name) for name in wanted}
    assert "(lib.importTOML ../pyproject.toml).project" in expression


def test_package_copy_needs_a_source_checkout(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="not a plasmaboot source checkout"):
        package_files(tmp_path)


def test_nix_package_import_checks_name_modules_that_exist() -> None:
    import importlib

    expression = (ROOT / "nix/plasmaboot.nix").read_text()
    checked = re.search(r"pythonImportsCheck = \[([^\]]*)\];", expression)
    assert checked is not None
    modules = re.findall(r'"([\w.]+)"', checked.group(1))
    assert "plasmaboot.cli" in modules and len(modules) >= 2
    for module in modules:
        importlib.import_module(module)


def test_first_boot_waits_for_its_peers_as_long_as_the_server_waits_for_it() -> None:
    inv = load("lab")
    doc = cluster_config(inv, inv.nodes[0])
    assert doc["health_timeout_s"] == 30 * 60 - 60  # the `joining` deadline, less a minute
    plan = build_config(doc)
    assert plan.health_timeout_s == doc["health_timeout_s"]
    # full-jitter backoff capped at retry_cap_s: on average half of it between attempts
    assert plan.join_max_attempts * plan.retry_cap_s / 2 >= plan.health_timeout_s - 30
    assert validate_cluster_config(doc) == []
