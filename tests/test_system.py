from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from phi3course import system, telemetry
from phi3course.system import Gpu, Machine


def test_inspect_reads_this_machine() -> None:
    machine = system.inspect()
    assert machine.cpus == os.cpu_count() and machine.memory_gib > 0 and machine.disk_free_gib > 0
    assert machine.torch and machine.torch.startswith("2.")
    rows = dict(system.report_rows(machine))
    assert {"Python", "CPU", "Memory", "Free disk", "torch"} <= set(rows)


def test_package_versions_cover_the_course() -> None:
    versions = system.package_versions()
    assert set(system.COURSE_PACKAGES) == set(versions)
    assert versions["mlflow"] == "3.17.2" and versions["promptflow"] == "1.18.5"
    assert system.package_versions(("no-such-package-here",)) == {"no-such-package-here": "not installed"}


@pytest.mark.parametrize(
    ("gpus", "hub", "words"),
    [
        ([], False, "CPU only and no model hub"),
        ([Gpu("T4", 15.0, False)], True, "less than 16 GiB"),
        ([Gpu("A100", 80.0, True)], True, "trains the real Phi-3-mini"),
    ],
)
def test_recommendation_explains_itself(gpus: list[Gpu], hub: bool, words: str) -> None:
    machine = Machine("3.11", "linux", "cpu", 2, [], 24.0, 50.0, "2.13.0", gpus)
    profile, why = system.recommend(machine, hub)
    assert profile == "local" and words in why


def test_quiet_switches_telemetry_off_and_goes_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in telemetry.QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    applied = telemetry.quiet()
    for key, value in telemetry.QUIET_ENV.items():
        assert os.environ[key] == value
    assert applied["hub reachable"] is False and os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert applied["promptflow telemetry.enabled"] is False
    pf_config = Path(os.environ["PF_HOME_DIRECTORY"]) / "pf.yaml"
    assert yaml.safe_load(pf_config.read_text())["telemetry"]["enabled"] is False
