"""Stage reports to the plasmaboot agent API, so the server's lifecycle follows first boot.

``POST {plasmaboot_url}/api/v1/agent/report`` with ``Authorization: Bearer <token>`` and
``{"stage", "detail"}``; the stages are the lifecycle's: ``first-boot`` and ``joining`` when
work starts, then ``joined`` or ``failed``, whose ``detail`` lists every stage's result.
Reporting is best effort: a server that is down never fails a node's first boot, and
errors are logged without the token.
"""

from __future__ import annotations

from typing import Any

import httpx

from plasmaboot.firstboot.config import FirstBootConfig
from plasmaboot.firstboot.logs import service_logger
from plasmaboot.firstboot.results import StageResult

REPORT_PATH = "/api/v1/agent/report"


def _stages(results: list[StageResult]) -> list[dict[str, Any]]:
    return [
        {"stage": r.stage, "status": r.status.value, "message": r.message, "elapsed_s": r.elapsed_s}
        for r in results
    ]


class StageReporter:
    def __init__(self, config: FirstBootConfig, client: httpx.Client) -> None:
        self._config = config
        self._client = client

    def started(self, services: list[str]) -> None:
        self._post("first-boot", {})
        self._post("joining", {"services": services})

    def finished(self, results: list[StageResult]) -> None:
        self._post("joined", {"stages": _stages(results)})

    def failed(self, stage: str, message: str, results: list[StageResult]) -> None:
        detail = {"failed_stage": stage, "message": message, "stages": _stages(results)}
        self._post("failed", detail)

    def _post(self, stage: str, detail: dict[str, Any]) -> None:
        if not (self._config.plasmaboot_url and self._config.agent_token):
            return
        url = f"{self._config.plasmaboot_url.rstrip('/')}{REPORT_PATH}"
        body = {"stage": stage, "detail": {"node": self._config.node_id, **detail}}
        headers = {"Authorization": f"Bearer {self._config.agent_token}"}
        log = service_logger("first-boot", "report")
        try:
            response = self._client.post(url, json=body, headers=headers)
        except httpx.HTTPError as error:
            log.warning(f"report {stage!r} to {url} failed: {error}")
            return
        if response.status_code >= 300:
            log.warning(f"report {stage!r} to {url} answered HTTP {response.status_code}")
