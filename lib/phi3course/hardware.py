"""What the hardware computes natively: the one answer every part of the course asks for.

bf16 counts as native only where the hardware multiplies in it: NVIDIA GPUs from Ampere on (and ROCm
GPUs), CPUs with AVX512-BF16 or AMX. Elsewhere torch emulates it, many times slower: a V100 or an
AVX2-only CPU accepts bf16 tensors, but the course trains and serves in fp16 or fp32 there.

The standard library and, when a question needs it, torch: nothing else of the course, because the
scoring script is deployed with a copy of this file beside it and nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # the CPU flags (as Linux names them) of native bf16 matmuls
BF16_CAPABILITY = (8, 0)  # the CUDA compute capability from which NVIDIA GPUs multiply in bf16 (Ampere: A100, A10)


@dataclass(frozen=True)
class Machine:
    """The facts that decide a number format: the GPU (its name; empty without one), whether it computes bf16
    natively, and whether the CPU does. :func:`this_machine` reads them here; an Azure VM size states its own
    (``sizes.VmSize.machine``), so a choice can be made, and tested, for hardware this process does not run on."""

    gpu: str = ""
    gpu_bf16: bool = False
    cpu_bf16: bool = False

    @property
    def cuda(self) -> bool:
        return bool(self.gpu)


def capability_bf16(capability: tuple[int, int]) -> bool:
    """Whether an NVIDIA GPU of CUDA compute ``capability`` (a T4 is (7, 5), an A100 (8, 0)) has native bf16."""
    return tuple(capability) >= BF16_CAPABILITY


def _cpuinfo_value(key: str) -> str | None:
    """The first processor's ``key`` in /proc/cpuinfo; None where there is no such file or line (not Linux)."""
    try:
        with CPUINFO.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                name, colon, value = line.partition(":")
                if colon and name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them in /proc/cpuinfo; an empty set elsewhere."""
    return set((_cpuinfo_value("flags") or "").split())


def cpu_name() -> str | None:
    """The CPU's model name from /proc/cpuinfo; None where Linux does not say."""
    return _cpuinfo_value("model name") or None


def cpu_bf16_flags(flags: set[str] | None = None) -> list[str]:
    """The native bf16 flags among ``flags`` (this CPU's when None), in :data:`NATIVE_BF16_FLAGS` order."""
    present = cpu_flags() if flags is None else set(flags)
    return [flag for flag in NATIVE_BF16_FLAGS if flag in present]


def cpu_native_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU (one with ``flags``, this one when None) computes bf16 natively (AVX512-BF16 or AMX)."""
    return bool(cpu_bf16_flags(flags))


def cuda_available() -> bool:
    """Whether torch sees a CUDA (or ROCm) GPU; False without torch."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def gpu_name(device: int = 0) -> str:
    """The name of GPU ``device``, as torch gives it ("NVIDIA A100-SXM4-80GB")."""
    import torch

    return str(torch.cuda.get_device_name(device))


def gpu_native_bf16(device: int | None = None) -> bool:
    """Whether GPU ``device`` (the current one when None) computes bf16 natively; False without a GPU.

    Emulated bf16 never counts: a V100 runs bf16 tensors, slowly, and torch calls that "supported"
    unless asked ``including_emulation=False``.
    """
    if not cuda_available():
        return False
    import torch

    if device is None:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def this_machine() -> Machine:
    """The facts of the machine this process runs on."""
    if cuda_available():
        return Machine(gpu=gpu_name(), gpu_bf16=gpu_native_bf16(), cpu_bf16=cpu_native_bf16())
    return Machine(cpu_bf16=cpu_native_bf16())


def native_bf16(machine: Machine | None = None) -> bool:
    """Whether the device that computes — the GPU where there is one, else the CPU — has native bf16 (on
    ``machine``, this one when None)."""
    machine = this_machine() if machine is None else machine
    return machine.gpu_bf16 if machine.cuda else machine.cpu_bf16


def native_precision(machine: Machine | None = None) -> str:
    """The fastest float the computing device of ``machine`` (this one when None) has: ``bf16`` where native, else
    ``fp16`` on a GPU, ``fp32`` on a CPU. Training (``precision='auto'``) and serving both choose with it."""
    machine = this_machine() if machine is None else machine
    if native_bf16(machine):
        return "bf16"
    return "fp16" if machine.cuda else "fp32"
