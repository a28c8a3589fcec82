from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

from phi3course import system, telemetry
from phi3course.system import Gpu, Machine

ROOT = Path(__file__).resolve().parents[1]


def test_inspect_reads_this_machine() -> None:
    machine = system.inspect()
    assert machine.cpus == os.cpu_count() and machine.memory_gib > 0 and machine.disk_free_gib > 0
    assert machine.torch and machine.torch.startswith("2.")
    rows = dict(system.report_rows(machine))
    assert {"Python", "CPU", "Memory", "Free disk", "torch"} <= set(rows)


def test_package_versions_are_what_pyproject_asks_for() -> None:
    from packaging.requirements import Requirement

    wanted = {}
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        wanted[canonicalize_name(requirement.name)] = requirement.specifier
    versions = system.package_versions()
    assert set(versions) == set(system.COURSE_PACKAGES)
    for name, version in versions.items():
        assert canonicalize_name(name) in wanted, f"00_setup reports {name}, which pyproject.toml does not install"
        spec = wanted[canonicalize_name(name)]
        assert spec.contains(version), f"{name} {version} is installed; pyproject.toml asks for {spec}"
    assert system.package_versions(("no-such-package-here",)) == {"no-such-package-here": "not installed"}


def machine(memory: float = 24.0, disk: float = 50.0, available: float | None = None, gpus=(), flags=()) -> Machine:
    return Machine("3.11", "linux", "cpu", 2, list(flags), memory, disk, "2.13.0", list(gpus), available)


@pytest.mark.parametrize(
    ("box", "hub", "profile", "words"),
    [
        (machine(), False, "local", "CPU only and no model hub"),
        (machine(gpus=[Gpu("T4", 15.0, False)]), True, "local", "less than 16 GiB"),
        (machine(gpus=[Gpu("A100", 80.0, True)]), True, "local", "trains the real Phi-3-mini"),
        (machine(gpus=[Gpu("A100", 80.0, True)]), False, "local", "packaged SmolLM2"),
        (machine(memory=3.0), False, "smoke", "3.0 GiB of memory available"),
        (machine(memory=16.0, available=2.5), False, "smoke", "2.5 GiB of memory available"),
        (machine(available=8.0), False, "local", "CPU only"),
        (machine(disk=1.0), False, "smoke", "1.0 GiB of free disk"),
        (machine(memory=2.0, disk=1.0), True, "smoke", "memory available (a local run peaks at about 4 GiB) and 1.0"),
    ],
)
def test_recommendation_decides_from_the_machine(box: Machine, hub: bool, profile: str, words: str) -> None:
    fit, why = system.recommend(box, hub)
    assert (fit, words in why) == (profile, True), why


@pytest.mark.parametrize(
    ("box", "words"),
    [
        (machine(flags=["avx2", "fma"]), "AVX2-only"),
        (machine(flags=["avx2", "avx512f", "avx512_bf16"]), "native bf16 (avx512_bf16)"),
        (machine(flags=["avx2", "amx_bf16"]), "native bf16 (amx_bf16)"),
        (machine(flags=[]), "without AVX2"),
        (machine(flags=["avx2"], gpus=[Gpu("T4", 15.0, False)]), "CUDA GPU"),
    ],
)
def test_machine_class_follows_the_cpu_flags(box: Machine, words: str) -> None:
    assert words in system.machine_class(box)
    assert dict(system.report_rows(box))["Machine class"] == system.machine_class(box)


class FakeGpu:
    def __init__(self, name: str, major: int) -> None:
        self.name, self.major, self.total_memory = name, major, 16 * system.GIB


@pytest.mark.parametrize(("gpu", "native"), [(FakeGpu("Tesla V100-PCIE-16GB", 7), False), (FakeGpu("A100", 8), True)])
def test_inspect_counts_only_native_bf16_on_a_gpu(monkeypatch: pytest.MonkeyPatch, gpu: FakeGpu, native: bool) -> None:
    """A V100 runs bf16 only emulated (torch's default ``is_bf16_supported()`` says yes): not native bf16."""
    import contextlib

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: gpu)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: gpu.major >= 8 or including_emulation
    )
    (found,) = system.inspect().gpus
    assert (found.name, found.memory_gib, found.bf16) == (gpu.name, 16.0, native)
    assert f"bf16: {'yes' if native else 'no'}" in dict(system.report_rows(system.inspect()))["GPU 0"]


ENVIRONMENT_BEFORE_QUIET: dict[str, str] = {}


@pytest.fixture
def restored_environment():
    """Every variable as it was before the test, including those the code under test set for the first time
    (``monkeypatch.delenv(key, raising=False)`` of an unset key records nothing, so it would leave them set)."""
    saved = dict(os.environ)
    ENVIRONMENT_BEFORE_QUIET.update(saved)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_quiet_switches_telemetry_off_and_goes_offline(restored_environment) -> None:
    for key in [*telemetry.QUIET_ENV, *telemetry.OFFLINE_ENV]:
        os.environ.pop(key, None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    applied = telemetry.quiet()
    for key, value in telemetry.QUIET_ENV.items():
        assert os.environ[key] == value
    assert applied["hub reachable"] is False and os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert applied["promptflow telemetry.enabled"] is False
    pf_config = Path(os.environ["PF_HOME_DIRECTORY"]) / "pf.yaml"
    assert yaml.safe_load(pf_config.read_text())["telemetry"]["enabled"] is False


def test_quiet_leaves_no_variable_behind_for_later_tests() -> None:
    """Runs right after the test above (file order): what quiet() set there is gone again."""
    assert ENVIRONMENT_BEFORE_QUIET, "run with the test above"
    keys = [*telemetry.QUIET_ENV, *telemetry.OFFLINE_ENV]
    now = {key: os.environ.get(key) for key in keys}
    assert now == {key: ENVIRONMENT_BEFORE_QUIET.get(key) for key in keys}
