"""Compute: clusters as entities, the sizes the stand-in offers in every region, and canned quota.

The quota is canned, clearly marked as such, and high enough for the course; ``COURSE_REHEARSAL_QUOTA`` sets any of
its limits, as a new subscription's may be: ``COURSE_REHEARSAL_QUOTA=standardNCADSA100v4Family=0`` rehearses a
subscription with no A100 quota (00_setup must stop, naming the family and the cores to request).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..azure import RETIRED_SIZES, TOTAL_QUOTA, family_key
from ..files import read_json, write_json
from .common import Poller, RehearsalError, not_found

if TYPE_CHECKING:
    from .workspace import Workspace

# Azure ML compute sizes the stand-in offers in every region, with canned quota (clearly not real numbers).
CANNED_SIZES = {
    # name: (family, vCPUs, GPUs, memory GB, quota limit)
    "Standard_NC24ads_A100_v4": ("standardNCADSA100v4Family", 24, 1, 220.0, 24),
    "Standard_NC4as_T4_v3": ("standardNCASv3_T4Family", 4, 1, 28.0, 8),
    "Standard_E16s_v3": ("standardESv3Family", 16, 0, 128.0, 32),
    "Standard_E4s_v3": ("standardESv3Family", 4, 0, 32.0, 32),
    "Standard_DS3_v2": ("standardDSv2Family", 4, 0, 14.0, 32),
}
CANNED_TOTAL_VCPUS = 100
QUOTA_VARIABLE = "COURSE_REHEARSAL_QUOTA"


def canned_quota() -> dict[str, tuple[int, bool]]:
    """Each quota the stand-in lists: its limit, and whether ``COURSE_REHEARSAL_QUOTA`` set it.

    The variable holds ``<quota>=<vCPUs>`` pairs separated by commas; a quota is a family as ``list_usage`` names
    it (``standardNCADSA100v4Family``, spelled in any case) or ``total`` for the regional total. A name the stand-in
    does not list, or a limit that is no whole number, raises :class:`RehearsalError` naming what it accepts.
    """
    limits = {TOTAL_QUOTA: (CANNED_TOTAL_VCPUS, False)}
    for family, _, _, _, limit in CANNED_SIZES.values():
        limits[family] = (limit, False)
    setting = os.environ.get(QUOTA_VARIABLE, "").strip()
    names = {family_key(name): name for name in limits} | {"total": TOTAL_QUOTA}
    for pair in filter(None, (part.strip() for part in setting.split(","))):
        name, _, value = pair.partition("=")
        quota = names.get(family_key(name))
        if quota is None or not value.strip().isdigit():
            raise RehearsalError(
                f"{QUOTA_VARIABLE}={setting!r}: {pair!r} is not <quota>=<vCPUs>. Quotas the stand-in lists: "
                f"{', '.join(n for n in limits if n != TOTAL_QUOTA)} and total; vCPUs a whole number "
                f"(e.g. {QUOTA_VARIABLE}=standardNCADSA100v4Family=0)."
            )
        limits[quota] = (int(value), True)
    return limits


class ComputeOperations:
    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def get(self, name: str) -> Any:
        from azure.ai.ml._restclient.arm_ml_service.models import ComputeResource
        from azure.ai.ml.entities import Compute

        path = self._ws.state_file("computes", name)
        if not path.is_file():
            raise not_found(f"compute {name!r}")
        return Compute._from_rest_object(ComputeResource(read_json(path)))

    def begin_create_or_update(self, compute: Any) -> Poller:
        size = getattr(compute, "size", None)
        if size and size not in CANNED_SIZES:
            why = RETIRED_SIZES.get(size, "not offered in this region")
            raise RehearsalError(f"compute size {size}: {why}. Offered here: {', '.join(CANNED_SIZES)}.")
        compute.location = compute.location or self._ws.location
        rest = compute._to_rest_object()
        data = rest.as_dict()
        data["id"] = self._ws.arm_id("computes", compute.name)
        data.setdefault("properties", {})["provisioningState"] = "Succeeded"
        write_json(self._ws.state_file("computes", compute.name), data)
        return Poller(self.get(compute.name))

    def list_sizes(self, *, location: str | None = None, compute_type: str | None = None) -> list[Any]:
        """The sizes the stand-in offers (every region alike: the real list depends on the region)."""
        from azure.ai.ml._restclient.arm_ml_service.models import VirtualMachineSize
        from azure.ai.ml.entities import VmSize

        return [
            VmSize._from_rest_object(
                VirtualMachineSize(
                    name=name,
                    family=family,
                    v_cp_us=vcpus,
                    gpus=gpus,
                    memory_gb=memory,
                    supported_compute_types=["AmlCompute", "ComputeInstance"],
                )
            )
            for name, (family, vcpus, gpus, memory, _) in CANNED_SIZES.items()
        ]

    def list_usage(self, *, location: str | None = None) -> list[Any]:
        """Canned quota: limits that let the course run, marked '(rehearsal: canned, not your quota)', or set by
        ``COURSE_REHEARSAL_QUOTA`` and marked so."""
        from azure.ai.ml._restclient.arm_ml_service.models import Usage as RestUsage
        from azure.ai.ml._restclient.arm_ml_service.models import UsageName
        from azure.ai.ml.entities import Usage

        region = location or self._ws.location
        used = sum(CANNED_SIZES[c.size][1] for c in self._computes_running())
        return [
            Usage._from_rest_object(
                RestUsage(
                    id=f"/subscriptions/{self._ws.subscription_id}/providers/Microsoft.MachineLearningServices"
                    f"/locations/{region}/usages/{name}",
                    aml_workspace_location=region,
                    type="Microsoft.MachineLearningServices/vmFamily/usages",
                    unit="Count",
                    current_value=used if name == TOTAL_QUOTA else 0,
                    limit=limit,
                    name=UsageName(
                        value=name,
                        localized_value=f"{name} (rehearsal: "
                        + (f"set by {QUOTA_VARIABLE})" if chosen else "canned, not your quota)"),
                    ),
                )
            )
            for name, (limit, chosen) in canned_quota().items()
        ]

    def _computes_running(self) -> list[Any]:
        return []  # clusters scale to zero; the stand-in's jobs use no cluster cores
