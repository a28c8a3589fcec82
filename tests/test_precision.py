"""precision="auto" on a CPU with native bf16 trains in the format a measured probe found faster, cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phi3course import hardware, precision, train


def test_the_probe_times_the_recipes_step_in_both_formats() -> None:
    probe = precision.measure("phi-3-tiny")  # bf16 is emulated on an AVX2-only CPU: slow, but it runs
    assert set(probe.tokens_per_second) == {"fp32", "bf16"}
    assert all(rate > 0 for rate in probe.tokens_per_second.values())
    assert probe.key == precision.probe_key("phi-3-tiny")
    assert probe.fastest in probe.why() and "tokens/s" in probe.why()


def test_the_probe_runs_once_per_cpu_torch_and_model(tmp_path: Path) -> None:
    measured: list[str] = []

    def fake_measure(model: str, adapters: object = None) -> precision.Probe:
        measured.append(model)
        return precision.Probe(precision.probe_key(model), {"fp32": 300.0, "bf16": 250.0})

    first = precision.fastest("phi-3-tiny", fake_measure, tmp_path)
    again = precision.fastest("phi-3-tiny", fake_measure, tmp_path)
    assert measured == ["phi-3-tiny"] and first == again and again.fastest == "fp32"
    # another model (or CPU, or torch version: the same key) is measured on its own, beside the first
    precision.fastest("smollm2-135m-instruct", fake_measure, tmp_path)
    assert measured == ["phi-3-tiny", "smollm2-135m-instruct"]
    assert len(json.loads((tmp_path / precision.CACHE_FILE).read_text())) == 2
    (tmp_path / precision.CACHE_FILE).write_text("{not json")  # a broken cache is measured again, not an error
    assert precision.fastest("phi-3-tiny", fake_measure, tmp_path).fastest == "fp32" and len(measured) == 3


def test_a_job_without_the_course_folder_probes_with_its_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's snapshot holds the package, not the notebooks' profiles: ``train.train`` passes the run's settings, and
    nothing reads the local profile (which would stop the job on a CPU with native bf16)."""
    from types import SimpleNamespace

    def no_course_folder() -> None:
        raise FileNotFoundError("Cannot find the course folder")

    monkeypatch.setattr(precision, "local_adapters", no_course_folder)
    job = SimpleNamespace(lora_r=8, lora_dropout=0.0, lora_layers=0.5)
    assert "LoRA r=8 on 0.5 of the layers" in precision.probe_key("phi-3-tiny", job)
    probe = precision.measure("phi-3-tiny", job)
    assert probe.key == precision.probe_key("phi-3-tiny", job) and set(probe.tokens_per_second) == {"fp32", "bf16"}
    with pytest.raises(FileNotFoundError):  # without the run's settings it would have needed the course folder
        precision.probe_key("phi-3-tiny")


def test_a_change_of_the_recipes_adapters_measures_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe times the recipe's step: adapters on other projections make another step, so another key."""
    from phi3course import recipe

    shipped = precision.probe_key("phi-3-tiny")
    monkeypatch.setattr(recipe, "LORA_TARGETS", recipe.ATTENTION_TARGETS + recipe.MLP_TARGETS)
    assert precision.probe_key("phi-3-tiny") != shipped


@pytest.mark.parametrize(
    ("rates", "chosen"), [({"fp32": 300.0, "bf16": 250.0}, "fp32"), ({"fp32": 150.0, "bf16": 260.0}, "bf16")]
)
def test_auto_on_a_native_bf16_cpu_takes_the_measured_faster(monkeypatch, rates, chosen) -> None:
    monkeypatch.setattr(hardware, "this_machine", lambda: hardware.Machine(cpu_bf16=True))
    monkeypatch.setattr(hardware, "cpu_bf16_flags", lambda flags=None: ["amx_bf16"])
    asked: list[str] = []

    adapters_asked: list[object] = []

    def cached(model: str, adapters: object = None) -> precision.Probe:
        asked.append(model)
        adapters_asked.append(adapters)
        return precision.Probe(precision.probe_key(model), rates)

    monkeypatch.setattr(precision, "fastest", cached)
    picked, why = train.pick_precision("auto", model="auto")
    assert picked == chosen and asked == ["smollm2-135m-instruct"]  # auto: the local model
    assert adapters_asked == [None]  # the local profile's, read by the probe itself
    assert "amx_bf16" in why and f"{chosen} trains faster" in why and f"fp32 {rates['fp32']:.0f}" in why
    assert train.pick_precision("bf16") == ("bf16", "asked for") and len(asked) == 1  # asked for: no probe
    # another machine's native-bf16 CPU (a CPU cluster) cannot be timed from here: bf16
    assert train.pick_precision("auto", hardware.Machine(cpu_bf16=True), "the cluster")[0] == "bf16"
    assert len(asked) == 1


def test_auto_on_an_avx2_only_cpu_is_fp32_without_a_probe(monkeypatch) -> None:
    monkeypatch.setattr(hardware, "this_machine", lambda: hardware.Machine(cpu_bf16=False))
    monkeypatch.setattr(precision, "fastest", lambda model: pytest.fail("no probe where bf16 is only emulated"))
    assert train.pick_precision("auto")[0] == "fp32"


def test_a_model_the_probe_cannot_load_here_trains_in_the_native_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in of a hub model (the shaped CUDA check, offline): nothing to time, so bf16, saying why."""
    from phi3course.models import ModelError

    monkeypatch.setattr(hardware, "this_machine", lambda: hardware.Machine(cpu_bf16=True))
    monkeypatch.setattr(hardware, "cpu_bf16_flags", lambda flags=None: ["amx_bf16"])

    def offline(model: str, adapters: object = None) -> precision.Probe:
        raise ModelError(f"Could not load {model} from the Hugging Face hub (no network)")

    monkeypatch.setattr(precision, "fastest", offline)
    picked, why = train.pick_precision("auto", model="phi-4-mini-instruct")
    assert picked == "bf16" and "not timed (Could not load phi-4-mini-instruct from the Hugging Face hub)" in why
