"""Prometheus metrics of the TFTP server, registered once in the default registry for /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from plasmaboot.tftp.transfer import TransferStats

TRANSFERS = Counter(
    "plasmaboot_tftp_transfers", "TFTP read transfers that ended, by outcome", ["outcome"]
)
BYTES_SENT = Counter("plasmaboot_tftp_sent_bytes", "File bytes acknowledged by TFTP clients")
RETRANSMITS = Counter("plasmaboot_tftp_retransmits", "TFTP packets sent again")
DURATION = Histogram(
    "plasmaboot_tftp_transfer_duration_seconds",
    "Duration of TFTP transfers",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
ACTIVE = Gauge("plasmaboot_tftp_active_transfers", "TFTP transfers in progress")
REQUESTS_REFUSED = Counter(
    "plasmaboot_tftp_requests_refused",
    "TFTP requests answered with an error or dropped, by reason",
    ["reason"],
)


def record_transfer(stats: TransferStats) -> None:
    TRANSFERS.labels(stats.outcome).inc()
    BYTES_SENT.inc(stats.bytes_sent)
    RETRANSMITS.inc(stats.retransmits)
    DURATION.observe(stats.duration_s)
