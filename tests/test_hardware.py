"""The one answer to "what does this hardware compute natively?", on machines faked with monkeypatch."""

from __future__ import annotations

import ast
import builtins
import contextlib
from pathlib import Path

import pytest

from phi3course import hardware

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2
"""


@pytest.fixture
def cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a /proc/cpuinfo of one's choosing; hardware reads it instead of this machine's."""
    path = tmp_path / "cpuinfo"
    monkeypatch.setattr(hardware, "CPUINFO", path)

    def write(text: str) -> None:
        path.write_text(text)

    return write


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch):
    """Fake one CUDA GPU of a compute capability (major): torch answers as it does on that GPU."""
    import torch

    def make(major: int | None) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: major is not None)
        monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=0: f"a GPU of compute capability {major}.x")
        # torch's own rule: native from Ampere (8.x) on; with emulation counted, older GPUs say yes too
        monkeypatch.setattr(
            torch.cuda,
            "is_bf16_supported",
            lambda including_emulation=True: major is not None and (major >= 8 or including_emulation),
        )

    return make


def test_cpu_flags_and_name_come_from_cpuinfo(cpuinfo) -> None:
    cpuinfo(CPUINFO)
    assert hardware.cpu_flags() == {"fpu", "sse2", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert hardware.cpu_name() == "Intel(R) Xeon(R) Platinum 8480+"
    assert hardware.cpu_bf16_flags() == ["avx512_bf16", "amx_bf16"]
    assert hardware.cpu_native_bf16()


def test_without_cpuinfo_there_are_no_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "absent")  # macOS, Windows
    assert hardware.cpu_flags() == set() and hardware.cpu_name() is None
    assert not hardware.cpu_native_bf16()


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ({"avx2", "fma"}, False),  # AVX2 only: bf16 is emulated
        ({"avx2", "avx512f"}, False),  # AVX-512 without its bf16 extension
        ({"avx512f", "avx512_bf16"}, True),
        ({"avx2", "amx_bf16"}, True),
        (set(), False),
    ],
)
def test_cpu_native_bf16_needs_avx512_bf16_or_amx(flags: set[str], native: bool) -> None:
    assert hardware.cpu_native_bf16(flags) is native
    assert hardware.cpu_bf16_flags(flags) == [f for f in hardware.NATIVE_BF16_FLAGS if f in flags]


@pytest.mark.parametrize(
    ("major", "cpu", "cuda", "gpu_native", "native", "precision"),
    [
        (8, "avx2", True, True, True, "bf16"),  # an A100 or later
        (7, "avx2 avx512_bf16", True, False, False, "fp16"),  # a V100: emulated bf16 is not native; the GPU computes
        (None, "avx2 avx512_bf16", False, False, True, "bf16"),  # no GPU: the CPU computes, natively in bf16
        (None, "avx2", False, False, False, "fp32"),  # an AVX2-only CPU
    ],
)
def test_the_computing_device_decides(cpuinfo, gpu, major, cpu, cuda, gpu_native, native, precision) -> None:
    cpuinfo(f"flags\t: {cpu}\n")
    gpu(major)
    assert hardware.cuda_available() is cuda
    assert hardware.gpu_native_bf16() is gpu_native and hardware.gpu_native_bf16(0) is gpu_native
    assert hardware.native_bf16() is native
    assert hardware.native_precision() == precision


def test_without_torch_there_is_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_torch(name: str, *args, **kwargs):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert not hardware.cuda_available() and not hardware.gpu_native_bf16()


def test_the_module_stands_alone() -> None:
    """It is copied beside the scoring script, which is deployed alone: the standard library only, torch lazily."""
    import sys

    tree = ast.parse(Path(hardware.__file__).read_text())
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert top <= {"__future__"} | sys.stdlib_module_names, top
    relative = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    assert not relative, "no phi3course imports"
    lazily = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert lazily - top <= {"torch"}


@pytest.mark.parametrize(
    ("machine", "precision"),
    [
        (hardware.Machine(gpu="NVIDIA A100 80GB PCIe", gpu_bf16=True), "bf16"),
        (hardware.Machine(gpu="Tesla T4", gpu_bf16=False, cpu_bf16=True), "fp16"),  # the GPU computes, not the CPU
        (hardware.Machine(cpu_bf16=True), "bf16"),  # a CPU with AVX512-BF16 or AMX
        (hardware.Machine(), "fp32"),  # an AVX2-only CPU, as Azure's E4s_v3
    ],
)
def test_the_choice_is_made_from_facts_of_any_machine(machine: hardware.Machine, precision: str) -> None:
    """The facts passed in, not this machine's: training on a cluster and serving on a deployment size choose
    with the same rule as a local run."""
    assert hardware.native_precision(machine) == precision


def test_bf16_is_native_from_ampere_on() -> None:
    assert not hardware.capability_bf16((7, 5)) and not hardware.capability_bf16((7, 0))  # T4, V100
    assert hardware.capability_bf16((8, 0)) and hardware.capability_bf16((9, 0))  # A100, H100
