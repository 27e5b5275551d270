"""The hardware facts an `installer-booted` report carries (`detail.hardware`).

The installer agent (`plasmaboot.agent.facts`) reads them; the server validates their
shape here before it stores them on the node and in the event. Every key is required,
an unknown value is null, nothing else is accepted, and every size is bounded (the
agent's own cut-offs), so one report stays small: a usual server's facts are 0.3-2 KB of
JSON; the bound (64 disks, 64 NICs, every string 256 characters) is 80 KB, 405 KB as
stored if every character needs a JSON escape. They are kept twice: on the node (the
latest) and in each `installer-booted` event's detail (the history).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plasmaboot.agent.facts import MAX_ITEMS, MAX_TEXT

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
Bytes = Annotated[int, Field(ge=0, le=2**63 - 1)]
# Ethernet has 6 octets, InfiniBand link-layer addresses 20.
Mac = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5,19}$")]


class Facts(BaseModel):
    # strict: "12" is not a number and 1 is not true; the agent sends real JSON types
    model_config = ConfigDict(extra="forbid", strict=True)


class SystemFacts(Facts):
    vendor: Text | None = Field(description="DMI sys_vendor")
    product: Text | None = Field(description="DMI product_name")
    serial: Text | None = Field(description="DMI product_serial (root only)")
    uuid: Text | None = Field(description="DMI product_uuid (root only)")


class CpuFacts(Facts):
    model: Text | None = Field(description="/proc/cpuinfo model name")
    count: Annotated[int, Field(ge=1, le=1 << 20)] | None = Field(description="logical CPUs")


class DiskFacts(Facts):
    name: Name
    size_bytes: Bytes | None
    model: Text | None
    serial: Text | None
    rotational: bool | None
    removable: bool | None


class NicFacts(Facts):
    name: Name
    mac: Mac | None
    link: Literal["up", "down"]
    speed_mbps: Annotated[int, Field(ge=1, le=10_000_000)] | None


class HardwareFacts(Facts):
    system: SystemFacts
    cpu: CpuFacts
    memory_bytes: Bytes | None = Field(description="MemTotal")
    disks: Annotated[list[DiskFacts], Field(max_length=MAX_ITEMS)]
    nics: Annotated[list[NicFacts], Field(max_length=MAX_ITEMS)]


class InvalidFacts(ValueError):
    """The facts do not fit; `fields` name each problem (`detail.hardware.disks.0.name`)."""

    def __init__(self, fields: list[dict[str, str]]) -> None:
        super().__init__("invalid hardware facts")
        self.fields = fields


def validated_facts(value: Any) -> dict[str, Any]:
    """The facts as they are stored, or InvalidFacts naming every field that does not fit."""
    try:
        return HardwareFacts.model_validate(value).model_dump(mode="json")
    except ValidationError as exc:
        raise InvalidFacts(
            [
                {
                    "field": ".".join(["detail", "hardware", *(str(p) for p in e["loc"])]),
                    "problem": e["msg"],
                }
                for e in exc.errors()
            ]
        ) from None
