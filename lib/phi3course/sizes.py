"""The Azure VM sizes the course offers, for training and for serving, and what each computes.

The standard library and ``hardware`` only: the Azure ML job imports this module (``python -m phi3course.train``
checks the method and the number format against the cluster's GPU, and that it sees that GPU), and the job's
environment installs nothing else of the course's Azure side. ``phi3course.azure`` builds the notebooks' entities
from the same records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .hardware import Machine, capability_bf16, native_precision

# The training cluster's size. The original tutorial's V100 size (NCv3) was retired on 2025-09-30;
# its maintainers moved to the A100 size below. VM_SIZES says what each offered size fits.
GPU_CLUSTER_SIZE = "Standard_NC24ads_A100_v4"
SMALL_GPU_CLUSTER_SIZE = "Standard_NC4as_T4_v3"
SERVING_SIZE = "Standard_E4s_v3"  # 03's default deployment size, as in the original tutorial: CPU only
GPU_SERVING_SIZE = "Standard_NC4as_T4_v3"  # one T4: fp16 generation, many times faster than 4 CPU cores

TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"  # CUDA 12.8 wheels: kernels for T4 (sm75) to H100
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class VmSize:
    """A VM size the course offers, and what fits on it (see :data:`VM_SIZES` and :data:`SERVING_SIZES`)."""

    name: str
    gpu: str  # "" for a size without a GPU
    gpu_gib: float  # memory of one GPU as torch reports it (an "80 GB" A100 has 80 GiB, a "16 GB" T4 ~15 GiB)
    gpus: int
    vcpus: int  # cores the quota counts per node
    family: str  # the quota family, as ml_client.compute.list_usage() and list_sizes() name it
    capability: tuple[int, int]  # the GPU's CUDA compute capability (T4 7.5, A100 8.0); (0, 0) without a GPU
    method: str  # the fine-tuning method that fits Phi-3-mini on it ("" for a serving-only size)
    torch_index: str  # the PyTorch wheel index with kernels for this size (CUDA, or CPU only)

    @property
    def bf16(self) -> bool:
        """Native bf16: a GPU from Ampere on (compute capability 8.0). The CPU sizes here have none either."""
        return bool(self.gpus) and capability_bf16(self.capability)

    @property
    def machine(self) -> Machine:
        """The facts a number format is chosen by (``hardware.native_precision``), as this size states them."""
        return Machine(gpu=self.gpu if self.gpus else "", gpu_bf16=self.bf16)

    @property
    def precision(self) -> str:
        """The number format it trains and serves in: bf16 where native, fp16 on an older GPU, fp32 on a CPU."""
        return native_precision(self.machine)

    def row(self, purpose: str = "training") -> dict[str, Any]:
        """One row for a table in a notebook; ``purpose``: training (the cluster) or serving (03's deployment)."""
        return {
            "size": self.name,
            "for": purpose,
            "GPU": f"{self.gpus} × {self.gpu}" if self.gpus else "none (CPU)",
            "GPU GiB": self.gpu_gib,
            "vCPUs": self.vcpus,
            "quota family": self.family,
            "bf16": "yes" if self.bf16 else f"no ({self.precision})",
            "Phi-3-mini": f"trains as {self.method}, {self.precision}"
            if purpose == "training"
            else f"serves in {self.precision}",
        }


T4 = VmSize("Standard_NC4as_T4_v3", "T4 16GB", 15.0, 1, 4, "standardNCASv3_T4Family", (7, 5), "lora", TORCH_CUDA_INDEX)
VM_SIZES: dict[str, VmSize] = {
    v.name: v
    for v in (
        VmSize(
            "Standard_NC24ads_A100_v4",
            "A100 80GB PCIe",
            80.0,
            1,
            24,
            "standardNCADSA100v4Family",
            (8, 0),
            "lora",
            TORCH_CUDA_INDEX,
        ),
        T4,  # LoRA in fp16 fits the course's rows in 15 GiB; method='qlora' (4-bit) leaves room for longer ones
    )
}
# Sizes 03 deploys on: the original tutorial's CPU size, or one T4 (the same record as the training size).
SERVING_SIZES: dict[str, VmSize] = {
    v.name: v for v in (VmSize(SERVING_SIZE, "", 0.0, 0, 4, "standardESv3Family", (0, 0), "", TORCH_CPU_INDEX), T4)
}
# Sizes the original tutorial or older guides name that Azure no longer offers, with what to use instead.
RETIRED_SIZES = {
    "Standard_NC6s_v3": "NCv3 (V100) sizes were retired on 2025-09-30",
    "Standard_NC12s_v3": "NCv3 (V100) sizes were retired on 2025-09-30",
    "Standard_NC24s_v3": "NCv3 (V100) sizes were retired on 2025-09-30",
    "Standard_NC6": "NC (K80) sizes were retired on 2023-09-06",
}


class SizeError(ValueError):
    """A VM size the course cannot use, with the sizes it offers."""


def vm_size(name: str) -> VmSize:
    """The course's record of training size ``name``; a retired or unknown size raises :class:`SizeError`."""
    offered = ", ".join(f"{v.name} ({v.gpu}: {v.method}, {v.precision})" for v in VM_SIZES.values())
    if name in RETIRED_SIZES:
        raise SizeError(f"{name}: {RETIRED_SIZES[name]}. Use one of: {offered}.")
    if name not in VM_SIZES:
        raise SizeError(f"{name} is not a training size this course has sized; use one of: {offered}.")
    return VM_SIZES[name]


def serving_size(name: str) -> VmSize:
    """The course's record of deployment size ``name``; an unknown one raises :class:`SizeError` naming the offered
    sizes (the serving environment, CPU or CUDA, and the number format follow from the record)."""
    if name not in SERVING_SIZES:
        offered = ", ".join(f"{v.name} ({v.gpu or 'CPU'}, {v.precision})" for v in SERVING_SIZES.values())
        raise SizeError(f"{name} is not a serving size this course has sized; use one of: {offered}.")
    return SERVING_SIZES[name]


def vm_size_table() -> list[dict[str, Any]]:
    """The offered sizes as rows, the training sizes then the serving ones (``pandas.DataFrame(...)`` in 00)."""
    rows = [v.row("training") for v in VM_SIZES.values()]
    return rows + [v.row("serving") for v in SERVING_SIZES.values()]
