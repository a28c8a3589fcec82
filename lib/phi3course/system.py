"""What this machine is, and which profile suits it."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import hardware

COURSE_PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "gguf",
    "mlflow",
    "promptflow",
    "azure-ai-ml",
    "azure-identity",
    "azureml-inference-server-http",
    "papermill",
    "jupyterlab",
    "ipywidgets",
)
GIB = 1024**3
PHI3_MINI_GPU_GIB = 16  # LoRA on Phi-3-mini in bf16/fp16 with short sequences fits a 16 GB GPU
# What one `local` run needs (README): 3.8 GiB of memory at its peak, 2.5 GiB of environment already installed
# plus 0.6 GiB of model cache and 1.6 GiB per run on disk. Below either, the smoke profile still runs.
LOCAL_MEMORY_GIB = 4.0
LOCAL_DISK_GIB = 2.5
SHOWN_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma")  # the flags the course's timings depend on


@dataclass
class Gpu:
    name: str
    memory_gib: float
    bf16: bool  # native bf16 (Ampere or later); a V100's emulated bf16 does not count


@dataclass
class Machine:
    python: str
    platform: str
    cpu: str
    cpus: int
    cpu_flags: list[str]
    memory_gib: float
    disk_free_gib: float
    torch: str | None
    gpus: list[Gpu] = field(default_factory=list)
    memory_available_gib: float | None = None  # free for the course now; None: not measured

    @property
    def cuda(self) -> bool:
        return bool(self.gpus)

    @property
    def native_bf16_cpu(self) -> bool:
        return hardware.cpu_native_bf16(set(self.cpu_flags))


def machine_class(machine: Machine) -> str:
    """The class the course's timings are given for: a CUDA GPU, a CPU with native bf16, or an AVX2-only CPU."""
    if machine.cuda:
        return "CUDA GPU"
    if machine.native_bf16_cpu:
        found = ", ".join(hardware.cpu_bf16_flags(set(machine.cpu_flags)))
        return f"CPU with native bf16 ({found})"
    if "avx2" in machine.cpu_flags:
        return "AVX2-only CPU (no native bf16: trains in fp32)"
    return "CPU without AVX2 (slower than the course's timings)"


def inspect(disk_path: str | os.PathLike[str] = ".") -> Machine:
    """Read the machine: Python, CPU, memory, free disk, torch and its GPUs."""
    present = hardware.cpu_flags()
    gpus: list[Gpu] = []
    torch_version: str | None = None
    try:
        import torch

        torch_version = torch.__version__
        if hardware.cuda_available():
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                gpus.append(Gpu(props.name, round(props.total_memory / GIB, 1), hardware.gpu_native_bf16(index)))
    except ImportError:
        pass
    return Machine(
        python=sys.version.split()[0],
        platform=platform.platform(),
        cpu=hardware.cpu_name() or platform.processor() or platform.machine(),
        cpus=os.cpu_count() or 1,
        cpu_flags=[flag for flag in SHOWN_CPU_FLAGS if flag in present],
        memory_gib=round(psutil.virtual_memory().total / GIB, 1),
        disk_free_gib=round(shutil.disk_usage(Path(disk_path).resolve()).free / GIB, 1),
        torch=torch_version,
        gpus=gpus,
        memory_available_gib=round(psutil.virtual_memory().available / GIB, 1),
    )


def package_versions(names: tuple[str, ...] = COURSE_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def report_rows(machine: Machine) -> list[tuple[str, str]]:
    """The machine as (what, value) rows for a table."""
    rows = [
        ("Python", machine.python),
        ("Platform", machine.platform),
        ("CPU", f"{machine.cpu} × {machine.cpus} (flags: {', '.join(machine.cpu_flags) or 'none listed'})"),
        ("Machine class", machine_class(machine)),
        (
            "Memory",
            f"{machine.memory_gib} GiB"
            + ("" if machine.memory_available_gib is None else f" ({machine.memory_available_gib} GiB available)"),
        ),
        ("Free disk", f"{machine.disk_free_gib} GiB"),
        ("torch", machine.torch or "not installed"),
    ]
    if machine.gpus:
        for index, gpu in enumerate(machine.gpus):
            rows.append((f"GPU {index}", f"{gpu.name}, {gpu.memory_gib} GiB, bf16: {'yes' if gpu.bf16 else 'no'}"))
    else:
        rows.append(("GPU", "none (CUDA not available)"))
    return rows


def recommend(machine: Machine, hub: bool) -> tuple[str, str]:
    """The profile that fits this machine (``local`` or, where memory or disk is short for it, ``smoke``), and why."""
    memory = machine.memory_gib if machine.memory_available_gib is None else machine.memory_available_gib
    short = []
    if memory < LOCAL_MEMORY_GIB:
        short.append(f"{memory} GiB of memory available (a local run peaks at about {LOCAL_MEMORY_GIB:g} GiB)")
    if machine.disk_free_gib < LOCAL_DISK_GIB:
        short.append(f"{machine.disk_free_gib} GiB of free disk (a local run writes about {LOCAL_DISK_GIB:g} GiB)")
    if short:
        return "smoke", (
            " and ".join(short) + ": the smoke profile's tiny model runs the whole course in minutes; close other "
            "programs or free disk space for the local profile, or use the azureml profile."
        )
    big_gpu = any(gpu.memory_gib >= PHI3_MINI_GPU_GIB for gpu in machine.gpus)
    if big_gpu and hub:
        return "local", (
            "a CUDA GPU with enough memory and a reachable hub: model='auto' trains the real "
            "Phi-3-mini here; the azureml profile runs the same code on an Azure ML cluster."
        )
    if machine.gpus and not big_gpu:
        return "local", (
            f"the GPU has less than {PHI3_MINI_GPU_GIB} GiB: the local profile uses the small offline model; "
            "use the azureml profile for Phi-4-mini on an Azure ML cluster."
        )
    return "local", (
        "CPU only"
        + ("" if hub else " and no model hub")
        + ": the local profile fine-tunes the packaged SmolLM2-135M-Instruct offline; "
        "use smoke for a seconds-long check, and azureml for Phi-4-mini on Azure ML."
    )
