"""The dashboard in a real browser: Debian's headless Chromium, driven through
chromium-driver (selenium), against a real `plasmaboot serve` on loopback (its admin
listener's TLS, its store, its install driver) with a real BMC (ipmi_sim, the run's one sim of
conftest.py) behind node01. Agent reports are posted to the running server the
way the installer agent posts them (AgentClient, a boot token from the node's iPXE
script), and the inventory's install command runs for real (a shell line that prints and
exits; non-zero for node05).

Checked: login (a bad token refused, the cookie HttpOnly/Secure/SameSite=Strict and out
of reach of scripts, no token in any URL), the fleet page and its counts, a node's row
changing state live while the reports arrive (no reload), failed nodes pinned, the
filters, the node page (inventory, hardware facts, timeline, install output, power from
the BMC), actions with confirmation and their effect (power on through ipmi_sim,
decommission), refusals in a disallowed state with the lifecycle's reason, a read
token's session refused an action, CSRF and origin checks, the CSP, and no CSP violation
in the browser's console. Screenshots of both pages are written to a temporary folder,
or to `$PLASMABOOT_DASHBOARD_SHOTS` (the docs' images are made that way).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_power_ipmi_sim as ipmi_sim
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from events_support import ServeProcess
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from plasmaboot.agent import facts
from plasmaboot.agent.client import AgentClient

pytestmark = pytest.mark.integration

IPMI_ENV = "PBP_DASHBOARD_NODE01_BMC_PW"
NODES = {  # hostname -> (MAC, network, profile)
    "node01": ("52:54:00:90:01:01", "rack-a", "control"),
    "node02": ("52:54:00:90:01:02", "rack-a", "control"),
    "node03": ("52:54:00:90:01:03", "rack-a", "control"),
    "node04": ("52:54:00:90:02:04", "rack-b", "worker"),
    "node05": ("52:54:00:90:02:05", "rack-b", "worker"),
    "node06": ("52:54:00:90:02:06", "rack-b", "worker"),
}
INSTALL = "sh -c 'echo partitioning /dev/vda on {node}; sleep 1; echo system copied; test {node} != node05'"  # noqa: E501
WAIT_S = 20
RELAYED = {"mode": "reservation"}  # a rack behind a relay: known machines only


def inventory() -> dict[str, Any]:
    nodes = []
    for i, (hostname, (mac, network, profile)) in enumerate(NODES.items(), start=1):
        rack = 1 if network == "rack-a" else 2
        ip = f"10.90.{rack}.{10 + i}"
        nodes.append({"hostname": hostname, "macs": [mac], "profile": profile, "disk": "/dev/vda",
                      "provisioning_ip": ip, "bootstrap": rack == 1})  # fmt: skip
    nodes[0]["bmc"] = {"address": "127.0.0.1", "driver": "ipmi", "port": ipmi_sim.SIM_PORT,
                       "username": ipmi_sim.USER, "password_env": IPMI_ENV}  # fmt: skip
    nodes[2]["bmc"] = {"address": "rack A, U7", "driver": "manual"}
    return {
        "cluster": {"name": "dash", "domain": "dash.internal"},
        "networks": [
            {"name": "provisioning", "vlan": 100, "subnet": "10.90.0.0/24"},
            {"name": "rack-a", "vlan": 101, "subnet": "10.90.1.0/24", "dhcp": RELAYED},
            {"name": "rack-b", "vlan": 102, "subnet": "10.90.2.0/24", "dhcp": RELAYED},
        ],
        "server": {"provisioning_ip": "10.90.0.1", "installer": {"command": INSTALL}},
        "profiles": {
            "control": {"role": "control-plane", "services": ["chainfire"], "image": "img"},
            "worker": {"role": "worker", "services": ["k8shost"], "image": "img"},
        },
        "images": {"img": {"kernel": "k", "initrd": "i"}},
        "nodes": nodes,
    }


class Board:
    """The served dashboard, a browser on it, and what the tests do with both."""

    def __init__(self, serve: ServeProcess, browser: WebDriver, state: Path) -> None:
        self.serve, self.browser, self.state = serve, browser, state
        self.root = serve.base + "/dashboard"

    def token(self, name: str, scope: str) -> str:
        made = subprocess.run(
            [sys.executable, "-m", "plasmaboot", "admin", "token", "create", "--name", name,
             "--scope", scope, "--state-dir", str(self.state)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()

    def until(self, what: Callable[[WebDriver], Any], message: str = "") -> Any:
        return WebDriverWait(self.browser, WAIT_S, 0.1).until(what, message)

    def text(self, css: str) -> str:
        """An element's text, read in one step (the live part may be swapped meanwhile)."""
        script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : null"
        found = self.browser.execute_script(script, css)
        assert found is not None, f"nothing matches {css} on {self.browser.current_url}"
        return str(found)

    def login(self, token: str) -> None:
        self.browser.delete_all_cookies()
        self.browser.get(self.root + "/")
        self.until(lambda d: d.current_url.endswith("/dashboard/login"), "sent to login")
        self.browser.find_element(By.ID, "token").send_keys(token)
        self.browser.find_element(By.ID, "login").click()

    def open(self, path: str) -> None:
        self.browser.get(self.root + path)
        self.until(lambda d: d.find_element(By.ID, "stream-status").text == "live",
                   "the page follows the event stream")  # fmt: skip

    def act(self, hostname: str, action: str, **boxes: bool) -> str:
        """Press the action on the node page, confirm it; the flash it answers with."""
        self.open(f"/nodes/{hostname}")
        self.browser.find_element(By.ID, f"action-{action}").click()
        self.until(lambda d: "?" in d.title, "the confirmation page")
        for box, on in boxes.items():
            if on:
                self.browser.find_element(By.ID, box).click()
        self.browser.find_element(By.ID, "confirm").click()
        self.until(lambda d: d.find_elements(By.ID, "flash"), "the action's outcome")
        return self.text("#flash")

    def netboot(self, hostname: str) -> str:
        """What the node's firmware does: fetch its iPXE script (pxe-boot); its boot token."""
        mac = NODES[hostname][0]
        script = httpx.get(f"{self.serve.boot}/boot/ipxe/node/{mac}.ipxe",
                           headers={"User-Agent": "iPXE/1.21.1"}, timeout=10)  # fmt: skip
        assert script.status_code == 200, script.text
        found = re.search(r"plasmaboot\.token=(\S+)", script.text)
        assert found, script.text
        return found.group(1)


def spki_pin(cert: Path) -> str:
    """Chromium's pin of the admin certificate's key (so it accepts exactly this one)."""
    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="module")
def board(
    tmp_path_factory: pytest.TempPathFactory, ipmi_machine: ipmi_sim.Machine
) -> Iterator[Board]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("no chromium / chromedriver (Debian packages chromium chromium-driver)")
    tmp = tmp_path_factory.mktemp("dashboard")
    config = tmp / "cluster.yaml"
    config.write_text(yaml.safe_dump(inventory()))
    state = tmp / "state"
    with pytest.MonkeyPatch.context() as env:
        env.setenv(IPMI_ENV, ipmi_sim.PASSWORD)  # serve's BMC driver reads it
        serve = ServeProcess.start(state, config=config)
    try:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        pin = spki_pin(state / "pki/plasmaboot.admin.crt")
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1400,1100",
                    f"--ignore-certificate-errors-spki-list={pin}"):  # fmt: skip
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        browser = webdriver.Chrome(service=Service(driver), options=options)
        try:
            yield Board(serve, browser, state)
        finally:
            browser.quit()
    finally:
        serve.stop()


@pytest.fixture(scope="module")
def writer(board: Board) -> str:
    return board.token("operator", "write")


@pytest.fixture
def logged_in(board: Board, writer: str) -> Board:
    board.login(writer)
    board.until(lambda d: d.current_url.endswith("/dashboard/"), "the fleet page")
    return board


def shots() -> Path | None:
    folder = os.environ.get("PLASMABOOT_DASHBOARD_SHOTS")
    return Path(folder) if folder else None


def test_login_refuses_a_bad_token_and_keeps_the_good_one_out_of_reach(
    board: Board, writer: str
) -> None:
    board.login("not-a-token")
    board.until(lambda d: d.find_elements(By.ID, "problem"), "the login's refusal")
    assert "unknown or revoked admin token" in board.text("#problem")
    board.browser.find_element(By.ID, "token").send_keys(writer)
    board.browser.find_element(By.ID, "login").click()
    board.until(lambda d: d.current_url == board.root + "/", "the fleet page after login")
    rows = board.browser.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")
    assert {r.get_attribute("id") for r in rows} >= {f"row-{h}" for h in NODES}
    cookie = board.browser.get_cookie("plasmaboot_session")
    assert cookie is not None
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
    assert "plasmaboot_session" not in board.browser.execute_script("return document.cookie")
    assert writer not in board.browser.current_url
    page = httpx.get(board.root + "/login", verify=board.serve.tls)
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"


def test_a_node_changes_state_live_while_the_agent_reports(logged_in: Board) -> None:
    board = logged_in
    board.open("/?network=rack-a")
    board.browser.execute_script("window.notReloaded = true")

    def state_of(hostname: str) -> Callable[[WebDriver], str]:
        return lambda _: board.text(f"#row-{hostname} .state")

    token = board.netboot("node02")
    board.until(lambda d: state_of("node02")(d) == "pxe-booting", "pxe-booting, live")
    agent = AgentClient(board.serve.boot, say=lambda _: None, attempts=1)
    session = agent.lookup(token, [NODES["node02"][0]]).session_token
    agent.report(session, "installer-booted", {"hardware": facts.collect()})
    seen: set[str] = set()

    def installed(d: WebDriver) -> bool:
        seen.add(state_of("node02")(d))
        return "installed" in seen

    board.until(installed, "the install driver's installing and installed, live")
    assert {"installing", "installed"} <= seen or seen >= {"installer-booted", "installed"}
    assert board.browser.execute_script("return window.notReloaded") is True
    assert int(board.browser.find_element(By.TAG_NAME, "body").get_attribute("data-refreshed")) >= 2

    # a failed install is pinned at the top, and counted
    failing = board.netboot("node05")
    agent.report(agent.lookup(failing, [NODES["node05"][0]]).session_token, "installer-booted", {})
    board.until(lambda _: "node05" in board.text("#pinned"), "node05 pinned")
    assert "install-failed" in board.text("#pinned")
    assert "install-failed 1" in board.text("#counts")
    if (folder := shots()) is not None:
        board.open("/")
        board.browser.save_screenshot(str(folder / "dashboard-summary.png"))


def test_filters_are_applied_by_the_server(logged_in: Board) -> None:
    board = logged_in

    def shown() -> set[str]:
        return {e.text for e in board.browser.find_elements(By.CSS_SELECTOR, "#nodes tbody td a")}

    board.open("/")
    Select(board.browser.find_element(By.ID, "f-network")).select_by_visible_text("rack-b")
    board.browser.find_element(By.ID, "f-apply").click()
    board.until(lambda d: "network=rack-b" in d.current_url)
    assert shown() == {"node04", "node05", "node06"}
    Select(board.browser.find_element(By.ID, "f-profile")).select_by_visible_text("worker")
    board.browser.find_element(By.ID, "f-text").send_keys("52:54:00:90:02:04")
    board.browser.find_element(By.ID, "f-apply").click()
    board.until(lambda d: "q=" in d.current_url)
    assert shown() == {"node04"}
    board.open("/?profile=control")
    assert shown() == {"node01", "node02", "node03"}
    board.open("/?state=decommissioned&q=nothing-like-this")
    assert shown() == set() and board.text("#paging").startswith("0 matches")


def test_the_node_page_shows_record_hardware_timeline_output_and_power(
    logged_in: Board, ipmi_machine: ipmi_sim.Machine
) -> None:
    board = logged_in
    board.open("/")
    board.browser.find_element(By.LINK_TEXT, "node01").click()
    board.until(lambda d: d.find_elements(By.ID, "power-state"))
    assert board.text("#power-state") in ("on", "off")
    assert "ipmi 127.0.0.1" in board.text("#power-note")
    assert "bmc.password_env" in board.text("#inventory")  # the variable's name, no secret
    assert ipmi_sim.PASSWORD not in board.browser.page_source

    board.open("/nodes/node02")
    board.until(lambda _: board.text("#node-state") == "installed")
    hardware = board.text("#hardware")
    assert f"{os.cpu_count()} ×" in hardware and "NIC" in hardware
    timeline = board.text("#timeline")
    for state in ("enrolled", "pxe-booting", "installer-booted", "installing", "installed"):
        assert state in timeline
    took = re.search(r"installing\s+\S+ \S+ UTC\s+([\d.]+) s", timeline)
    assert took and 1.0 <= float(took.group(1)) < 30, timeline  # the command sleeps 1 s
    assert "so far" in timeline.splitlines()[-1]
    assert "install" in board.text("#phases")
    assert "partitioning /dev/vda on node02" in board.text("#output")
    assert "system copied" in board.text("#output")
    if (folder := shots()) is not None:
        board.browser.save_screenshot(str(folder / "dashboard-node.png"))


def test_actions_confirm_then_act_through_the_bmc_and_the_lifecycle(
    logged_in: Board, ipmi_machine: ipmi_sim.Machine
) -> None:
    board = logged_in
    flash = board.act("node01", "power-on")
    assert flash.startswith("ok:") and "node01: on" in flash, flash
    assert ipmi_machine.read("power") == "1"  # the machine behind the BMC is on
    assert board.text("#power-state") == "on"
    flash = board.act("node01", "power-off")
    assert "node01: off" in flash and ipmi_machine.read("power") == "0"

    flash = board.act("node06", "decommission")
    assert flash.startswith("ok:"), flash
    board.until(lambda _: board.text("#node-state") == "decommissioned")
    events = board.text("#events")
    assert "enrolled → decommissioned" in events and "operator" in events


def test_a_disallowed_action_is_refused_with_the_lifecycle_reason(logged_in: Board) -> None:
    board = logged_in
    flash = board.act("node03", "activate")
    assert flash.startswith("refused:") and "enrolled" in flash and "activate" in flash, flash
    assert board.text("#node-state") == "enrolled"
    flash = board.act("node06", "decommission")  # decommissioned by the test before, or now
    if not flash.startswith("refused:"):
        flash = board.act("node06", "decommission")
    assert flash.startswith("refused:") and "decommissioned" in flash, flash
    flash = board.act("node03", "power-on")  # a manual BMC: what a person must do
    assert flash.startswith("failed:") and "manual BMC" in flash and "rack A, U7" in flash
    logs = board.browser.get_log("browser")
    assert not [e for e in logs if "Content Security Policy" in e["message"]], logs


def test_a_read_tokens_session_reads_but_cannot_act(board: Board) -> None:
    board.login(board.token("viewer", "read"))
    board.until(lambda d: d.current_url.endswith("/dashboard/"))
    flash = board.act("node04", "decommission")
    assert flash.startswith("refused:") and "scope read" in flash, flash
    assert board.text("#node-state") == "enrolled"


def test_csrf_origin_and_the_cookie_on_the_admin_api(logged_in: Board) -> None:
    board = logged_in
    cookie = board.browser.get_cookie("plasmaboot_session")
    assert cookie is not None
    jar = {"plasmaboot_session": cookie["value"]}
    with httpx.Client(base_url=board.serve.base, verify=board.serve.tls, cookies=jar) as http:
        board.browser.get(board.root + "/nodes/node04/actions/decommission")
        csrf = board.browser.find_element(By.NAME, "csrf").get_attribute("value")
        url = "/dashboard/nodes/node04/actions/decommission"
        assert http.post(url, data={}).status_code == 403  # no CSRF token
        assert http.post(url, data={"csrf": "forged"}).status_code == 403
        other = {"Origin": "https://evil.example"}
        assert http.post(url, data={"csrf": csrf}, headers=other).status_code == 403
        # the session reads the admin API (the stream's auth), but never acts through it
        assert http.get("/api/v1/nodes/node04").json()["state"] == "enrolled"
        refused = http.post("/api/v1/nodes/node04/actions", json={"event": "decommission"})
        assert refused.status_code == 401
        assert http.get("/api/v1/nodes/node04").json()["state"] == "enrolled"
        http.cookies.clear()
        assert http.get("/api/v1/nodes/node04").status_code == 401
        assert http.get("/dashboard/").status_code == 303
