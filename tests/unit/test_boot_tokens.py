"""Issue 15: a boot token reaches only its machine, once per provisioning cycle, and
unauthenticated boot requests cannot grow the store without bound.

The real aiohttp app on loopback (aiohttp's TestServer: every request comes from
127.0.0.1), with the DHCP lease lookup serve wires in replaced by a table, so "the address
plasmaboot leased to this MAC" is whatever a test says. Every refusal is checked for its
status, its reason, its /metrics counter and an unchanged store."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from pydantic import ValidationError

from plasmaboot.dhcp.leases import FixedHost, LeaseAllocator
from plasmaboot.inventory import Inventory, load_inventory
from plasmaboot.inventory.models import DiscoveryLimits
from plasmaboot.lifecycle import Event, State
from plasmaboot.provision import Provisioner, ProvisionerSettings
from plasmaboot.provision.discovery import DiscoveryLimiter, DiscoveryRefused, source_key
from plasmaboot.provision.tokens import token_hash
from plasmaboot.store import SqliteStore
from plasmaboot.web.app import build_app

ROOT = Path(__file__).resolve().parents[2]
MAC = "52:54:00:12:34:56"  # node01 of the lab inventory
LOOPBACK = "127.0.0.1"  # where TestServer's requests come from

Client = TestClient[web.Request, web.Application]


class Boot:
    def __init__(self, client: Client, provisioner: Provisioner, leases: dict[str, str]):
        self.client = client
        self.provisioner = provisioner
        self.leases = leases  # MAC -> the address "DHCP" leased to it

    @property
    def store(self) -> SqliteStore:
        store = self.provisioner.store
        assert isinstance(store, SqliteStore)
        return store

    def state(self, hostname: str = "node01") -> State:
        node = self.store.get_node(hostname)
        assert node is not None
        return node.state

    def snapshot(self) -> tuple[Any, ...]:
        return (self.store.events(), self.store.list_nodes())

    async def fetch(self, mac: str = MAC) -> tuple[int, str]:
        response = await self.client.get(f"/boot/ipxe/node/{mac}.ipxe")
        return response.status, await response.text()

    async def token(self) -> str:
        status, script = await self.fetch()
        assert status == 200, script
        match = re.search(r"plasmaboot\.token=(\S+)", script)
        assert match, script
        return match.group(1)

    async def lookup(self, token: str, mac: str = MAC) -> tuple[int, dict[str, Any]]:
        response = await self.client.post(
            "/api/v1/agent/lookup", json={"mac": mac}, headers={"Authorization": f"Bearer {token}"}
        )
        return response.status, await response.json()


def counted(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def token_refusals(where: str, reason: str) -> float:
    return counted("plasmaboot_boot_token_refused_total", where=where, reason=reason)


def discovery_refusals(reason: str) -> float:
    return counted("plasmaboot_discovery_refused_total", reason=reason)


def with_discovery(inv: Inventory, **limits: int) -> Inventory:
    server = inv.server.model_copy(update={"discovery": DiscoveryLimits(**limits)})
    return inv.model_copy(update={"server": server})


BootFactory = Callable[..., Awaitable[Boot]]


@pytest.fixture
async def boot(tmp_path: Path) -> AsyncIterator[BootFactory]:
    """Start the app: `leases` is None for "plasmaboot leases nothing" (proxy, no DHCP)."""
    started: list[tuple[Client, SqliteStore]] = []

    async def start(leases: dict[str, str] | None = None, **limits: int) -> Boot:
        inv = load_inventory(ROOT / "examples/lab/miniature.yaml")
        if limits:
            inv = with_discovery(inv, **limits)
        store = SqliteStore(tmp_path / "db")
        store.import_inventory(inv)
        settings = ProvisionerSettings(
            state_dir=tmp_path,
            assets_dir=tmp_path / "assets",
            tftp_root=Path("/usr/lib/ipxe"),
            http_base="http://10.77.0.1:8080",
        )
        provisioner = Provisioner(inv, store, settings)
        table: dict[str, str] = {} if leases is None else leases
        if leases is not None:
            provisioner.lease_address = table.get
        client = TestClient(TestServer(build_app(provisioner, "admin-secret", list)))
        await client.start_server()
        started.append((client, store))
        return Boot(client, provisioner, table)

    yield start
    for client, store in started:
        await client.close()
        store.close()


# ---- 2. a boot token reaches only that machine --------------------------------------


async def test_token_goes_to_the_address_dhcp_leased_to_the_mac(boot: BootFactory) -> None:
    lab = await boot({MAC: LOOPBACK})
    status, script = await lab.fetch()
    assert status == 200 and "plasmaboot.token=" in script
    assert lab.state() is State.PXE_BOOTING
    status, answer = await lab.lookup(await lab.token())
    assert status == 200 and answer["hostname"] == "node01"


@pytest.mark.parametrize("leased", ["10.77.0.50", None], ids=["other-address", "no-lease"])
async def test_token_is_refused_to_any_other_address(boot: BootFactory, leased: str | None) -> None:
    lab = await boot({MAC: leased} if leased else {})
    before = lab.snapshot()
    refusals = token_refusals("script", "not-leased-address")
    status, text = await lab.fetch()
    assert status == 403
    assert "plasmaboot.token" not in text and "kernel" not in text
    assert "goes only to the address plasmaboot's DHCP leased to it" in text
    assert LOOPBACK in text
    assert token_refusals("script", "not-leased-address") == refusals + 1
    assert lab.snapshot() == before, "a refused request records nothing (not even pxe-boot)"
    assert lab.state() is State.ENROLLED
    metrics = await (await lab.client.get("/metrics")).text()
    assert 'plasmaboot_boot_token_refused_total{reason="not-leased-address",where="script"}' in (
        metrics
    )


async def test_a_lease_on_another_mac_of_the_node_counts(boot: BootFactory) -> None:
    lab = await boot({"52:54:00:12:34:57": LOOPBACK})  # node02's address, not node01's
    assert (await lab.fetch())[0] == 403
    lab.leases.clear()
    node01 = lab.store.get_node("node01")
    assert node01 is not None
    lab.leases[node01.macs[-1]] = LOOPBACK
    assert (await lab.fetch())[0] == 200


async def test_without_leases_whoever_asks_gets_a_token(boot: BootFactory) -> None:
    """Proxy DHCP, --no-dhcp: the weaker guarantee (one exchange per cycle still holds)."""
    lab = await boot(None)
    assert lab.provisioner.lease_address is None
    status, answer = await lab.lookup(await lab.token())
    assert status == 200 and answer["hostname"] == "node01"


async def test_second_exchange_in_a_cycle_is_refused(boot: BootFactory) -> None:
    lab = await boot({MAC: LOOPBACK})
    first, second = await lab.token(), await lab.token()
    assert first != second
    assert (await lab.lookup(first))[0] == 200
    before = lab.snapshot()
    refusals = token_refusals("lookup", "cycle-spent")
    status, body = await lab.lookup(second)
    assert status == 409
    assert "already called in for this boot" in body["error"] and body["state"] == "pxe-booting"
    assert token_refusals("lookup", "cycle-spent") == refusals + 1
    assert lab.snapshot() == before
    assert lab.store.get_token(token_hash(second)) is None, "the refused token is not spent"
    # and the script stops handing out tokens that would be refused
    script_refusals = token_refusals("script", "cycle-spent")
    status, text = await lab.fetch()
    assert status == 409 and "plasmaboot.token" not in text and "already called in" in text
    assert token_refusals("script", "cycle-spent") == script_refusals + 1
    assert lab.snapshot() == before


async def test_replay_is_401_even_after_the_node_moved_on(boot: BootFactory) -> None:
    lab = await boot({MAC: LOOPBACK})
    token = await lab.token()
    assert (await lab.lookup(token))[0] == 200
    lab.provisioner.fire("node01", Event.FAIL, "test")
    lab.provisioner.fire("node01", Event.REPROVISION, "admin")  # revokes sessions
    before = lab.snapshot()
    refusals = token_refusals("lookup", "replayed")
    status, body = await lab.lookup(token)
    assert status == 401 and "already used" in body["error"]
    assert token_refusals("lookup", "replayed") == refusals + 1
    assert lab.snapshot() == before


@pytest.mark.parametrize(
    "events", [(Event.FAIL,), (Event.DECOMMISSION,)], ids=["boot-failed", "decommissioned"]
)
async def test_lookup_for_a_node_not_pxe_booting_is_409(
    boot: BootFactory, events: tuple[Event, ...]
) -> None:
    lab = await boot({MAC: LOOPBACK})
    token = await lab.token()
    for event in events:
        lab.provisioner.fire("node01", event, "admin")
    before = lab.snapshot()
    refusals = token_refusals("lookup", "wrong-state")
    status, body = await lab.lookup(token)
    assert status == 409
    assert body["state"] == lab.state().value and "not pxe-booting" in body["error"]
    assert token_refusals("lookup", "wrong-state") == refusals + 1
    assert lab.snapshot() == before
    assert lab.store.get_token(token_hash(token)) is None


async def test_token_of_an_earlier_boot_is_409(boot: BootFactory) -> None:
    lab = await boot({MAC: LOOPBACK})
    old = await lab.token()
    lab.provisioner.fire("node01", Event.FAIL, "test")  # pxe-booting -> boot-failed
    assert (await lab.fetch())[0] == 200  # netboots again: a new pxe-booting cycle
    assert lab.state() is State.PXE_BOOTING
    before = lab.snapshot()
    refusals = token_refusals("lookup", "stale-cycle")
    status, body = await lab.lookup(old)
    assert status == 409 and "earlier boot" in body["error"]
    assert token_refusals("lookup", "stale-cycle") == refusals + 1
    assert lab.snapshot() == before
    assert (await lab.lookup(await lab.token()))[0] == 200


async def test_script_while_the_install_runs_is_409_without_token(boot: BootFactory) -> None:
    lab = await boot({MAC: LOOPBACK})
    assert (await lab.lookup(await lab.token()))[0] == 200
    lab.provisioner.fire("node01", Event.INSTALLER_BOOTED, "agent")
    before = lab.snapshot()
    refusals = token_refusals("script", "install-under-way")
    status, text = await lab.fetch()
    assert status == 409 and "plasmaboot.token" not in text
    assert "node01 is installer-booted" in text
    assert token_refusals("script", "install-under-way") == refusals + 1
    assert lab.snapshot() == before


async def test_bad_lookups_are_counted(boot: BootFactory) -> None:
    lab = await boot({MAC: LOOPBACK})
    token = await lab.token()
    before = lab.snapshot()
    unknown = token_refusals("lookup", "unknown-mac")
    bad = token_refusals("lookup", "bad-mac")
    forged = token_refusals("lookup", "unknown")
    assert (await lab.lookup(token, "52:54:00:99:99:99"))[0] == 404
    assert (await lab.lookup(token, "not-a-mac"))[0] == 400
    assert (await lab.lookup(token[:-4] + "AAAA"))[0] == 401
    assert token_refusals("lookup", "unknown-mac") == unknown + 1
    assert token_refusals("lookup", "bad-mac") == bad + 1
    assert token_refusals("lookup", "unknown") == forged + 1
    assert lab.snapshot() == before


# ---- 3. unauthenticated requests cannot grow state without bound --------------------


async def test_fifty_fetches_record_one_pxe_boot(boot: BootFactory) -> None:
    lab = await boot({MAC: LOOPBACK})
    for _ in range(50):
        status, _script = await lab.fetch()
        assert status == 200
    assert [e.event for e in lab.store.events("node01")] == ["enroll", "pxe-boot"]
    unknown = "52:54:00:99:99:01"
    for _ in range(50):
        assert (await lab.fetch(unknown))[0] == 200
    discovered = [n for n in lab.store.list_nodes() if n.state is State.DISCOVERED]
    assert len(discovered) == 1
    assert len(lab.store.events(discovered[0].hostname)) == 1


async def test_discovery_is_rate_limited_per_source(boot: BootFactory) -> None:
    lab = await boot({MAC: LOOPBACK}, per_source_per_minute=3)
    for i in range(3):
        status, script = await lab.fetch(f"52:54:00:99:00:0{i}")
        assert status == 200 and "menu" in script
    before = lab.snapshot()
    refusals = discovery_refusals("rate")
    response = await lab.client.get("/boot/ipxe/node/52:54:00:99:00:09.ipxe")
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1
    text = await response.text()
    assert "too many unknown machines asked from 127.0.0.1" in text
    assert "per_source_per_minute is 3" in text
    assert discovery_refusals("rate") == refusals + 1
    assert lab.snapshot() == before
    # a machine already recorded, and known nodes, are not discovery: never limited
    assert (await lab.fetch("52:54:00:99:00:00"))[0] == 200
    assert (await lab.fetch())[0] == 200
    metrics = await (await lab.client.get("/metrics")).text()
    assert 'plasmaboot_discovery_refused_total{reason="rate"}' in metrics


async def test_discovery_is_capped_in_total(boot: BootFactory) -> None:
    lab = await boot({MAC: LOOPBACK}, per_source_per_minute=100, max_discovered=2)
    for i in range(2):
        assert (await lab.fetch(f"52:54:00:99:00:0{i}"))[0] == 200
    before = lab.snapshot()
    refusals = discovery_refusals("cap")
    status, text = await lab.fetch("52:54:00:99:00:05")
    assert status == 429 and "2 unknown machines already wait in discovered" in text
    assert discovery_refusals("cap") == refusals + 1
    assert lab.snapshot() == before


async def test_discovery_off(boot: BootFactory) -> None:
    lab = await boot(None, per_source_per_minute=0)
    before = lab.snapshot()
    assert (await lab.fetch("52:54:00:99:00:01"))[0] == 429
    assert lab.snapshot() == before


def test_bucket_refills_and_counts_each_source_apart() -> None:
    now = [1000.0]
    limiter = DiscoveryLimiter(clock=lambda: now[0])
    limits = DiscoveryLimits(per_source_per_minute=2, max_discovered=10)
    for _ in range(2):
        limiter.admit("10.0.0.1", limits, 0)
    with pytest.raises(DiscoveryRefused) as refused:
        limiter.admit("10.0.0.1", limits, 0)
    assert refused.value.code == "rate" and refused.value.retry_after == 30
    limiter.admit("10.0.0.2", limits, 0)  # another source has its own bucket
    now[0] += 30  # one token back at 2 a minute
    limiter.admit("10.0.0.1", limits, 0)
    with pytest.raises(DiscoveryRefused):
        limiter.admit("10.0.0.1", limits, 0)


def test_source_table_is_bounded() -> None:
    limiter = DiscoveryLimiter(max_sources=8)
    limits = DiscoveryLimits()
    for i in range(100):
        limiter.admit(f"10.0.{i // 250}.{i % 250}", limits, 0)
    assert limiter.sources == 8


def test_ipv6_sources_count_by_their_64() -> None:
    assert source_key("2001:db8:1:2::5") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:3::5") != source_key("2001:db8:1:2::5")
    assert source_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert source_key(None) == "unknown"


def test_discovery_limits_are_checked() -> None:
    assert DiscoveryLimits() == DiscoveryLimits(per_source_per_minute=10, max_discovered=1000)
    for bad in ({"per_source_per_minute": -1}, {"max_discovered": -5}, {"burst": 3}):
        with pytest.raises(ValidationError):
            DiscoveryLimits.model_validate(bad)


# ---- the lease lookup serve wires in -------------------------------------------------


def test_allocator_names_the_address_bound_to_a_mac() -> None:
    fixed = {MAC: FixedHost(MAC, IPv4Address("10.77.0.50"), "node01")}
    pool = (IPv4Address("10.77.0.100"), IPv4Address("10.77.0.110"))
    leases = LeaseAllocator(IPv4Network("10.77.0.0/24"), pool, fixed, 600)
    assert leases.bound_to(MAC, 0) is None  # offered is not leased
    leases.offer("client-a", MAC, None, 0)
    assert leases.bound_to(MAC, 0) is None
    assert leases.bind("client-a", MAC, IPv4Address("10.77.0.50"), 0) is not None
    assert leases.bound_to(MAC, 1) == IPv4Address("10.77.0.50")
    assert leases.bound_to(MAC, 601) is None  # expired
    other = "52:54:00:99:99:99"
    ip = leases.offer(other, other, None, 0)
    assert ip is not None and leases.bind(other, other, ip, 0) is not None
    assert leases.bound_to(other, 1) == ip
    leases.release(other, ip, 2)
    assert leases.bound_to(other, 3) is None
