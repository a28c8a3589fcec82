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


@dataclass
class Gpu:
    name: str
    memory_gib: float
    bf16: bool


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

    @property
    def cuda(self) -> bool:
        return bool(self.gpus)


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    name, flags = platform.processor() or platform.machine(), []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                present = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma") if f in present]
                break
    return name, flags


def inspect(disk_path: str | os.PathLike[str] = ".") -> Machine:
    """Read the machine: Python, CPU, memory, free disk, torch and its GPUs."""
    cpu, flags = _cpu_model_and_flags()
    gpus: list[Gpu] = []
    torch_version: str | None = None
    try:
        import torch

        torch_version = torch.__version__
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                gpus.append(Gpu(props.name, round(props.total_memory / GIB, 1), torch.cuda.is_bf16_supported()))
    except ImportError:
        pass
    return Machine(
        python=sys.version.split()[0],
        platform=platform.platform(),
        cpu=cpu,
        cpus=os.cpu_count() or 1,
        cpu_flags=flags,
        memory_gib=round(psutil.virtual_memory().total / GIB, 1),
        disk_free_gib=round(shutil.disk_usage(Path(disk_path).resolve()).free / GIB, 1),
        torch=torch_version,
        gpus=gpus,
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
        ("Memory", f"{machine.memory_gib} GiB"),
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
    """The profile that fits this machine, and why."""
    big_gpu = any(gpu.memory_gib >= PHI3_MINI_GPU_GIB for gpu in machine.gpus)
    if big_gpu and hub:
        return "local", (
            "a CUDA GPU with enough memory and a reachable hub: model='auto' trains the real "
            "Phi-3-mini here; the azureml profile runs the same code on an Azure ML cluster."
        )
    if machine.gpus and not big_gpu:
        return "local", (
            f"the GPU has less than {PHI3_MINI_GPU_GIB} GiB: the local profile uses the small offline model; "
            "use the azureml profile for Phi-3-mini."
        )
    return "local", (
        "CPU only"
        + ("" if hub else " and no model hub")
        + ": the local profile fine-tunes the packaged SmolLM2-135M-Instruct offline; "
        "use smoke for a seconds-long check, and azureml for the real Phi-3-mini on Azure ML."
    )
