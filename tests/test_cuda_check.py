"""The GPU check (benchmarks/cuda_check.py) in its CPU mode: every part runs at the stand-ins' widths, so the script
cannot rot while no GPU is at hand, and its JSON holds what the measurements page takes from it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import cuda_check
from phi3course import models, sizes
from phi3course.paths import course_root


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``python -m benchmarks.cuda_check --cpu-smoke``, run once: its exit code and its cuda_check.json."""
    folder = tmp_path_factory.mktemp("cuda_check")
    root = course_root()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "lib"), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "benchmarks.cuda_check", "--cpu-smoke", "--out", str(folder / "out")]
    done = subprocess.run(
        [*command, "--work", str(folder / "work")], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    found = json.loads((folder / "out" / "cuda_check.json").read_text())
    rows = json.loads((folder / "out" / "figures.json").read_text())
    return {"returncode": done.returncode, "output": done.stdout[-3000:] + done.stderr[-3000:], "rows": rows, **found}


def test_every_part_runs_on_the_cpu(report: dict) -> None:
    parts = ["environment", "precision", "data", "train_lora", "serve", "train_full", *cuda_check.shaped_parts()]
    failed = {
        part: report.get(part, {}).get("error", "not run") for part in parts if not report.get(part, {}).get("ok")
    }
    assert not failed, f"{failed}\n{report['output']}"
    assert report["returncode"] == 0, report["output"]
    assert report["environment"]["cpu_smoke"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", report["date"])  # a measurements record's date


def test_each_shaped_model_is_trained_saved_and_served_as_deployed(report: dict) -> None:
    for name in cuda_check.SHAPED_PRESETS:
        part = report[f"{name}/lora-a100"]
        assert part["steps"] == part["settings"]["max_steps"] and part["tokens_per_second"] > 0
        held = part["parameters_at_train_begin"]  # what the measurements take: dtypes and devices, adapters trained
        assert {p["device"] for p in held} == {"cpu"} and any(p["trainable"] for p in held)
        assert all({"dtype", "device", "trainable", "parameters"} <= set(p) for p in held)
        memory = part["memory"]
        assert memory["estimate_without_overhead_gib"] > 0 and "needs CUDA" in memory["measured"]
        assert part["saved_model"]["tensor_dtypes"] and not part["saved_model"]["adapter_keys_left"]
        served = part["served"]  # azmlinfsrv with the key: one answer; without the key: 401
        assert served["status"] == 200 and isinstance(served["answer"], list) and len(served["answer"]) == 1
        assert served["status_without_key"] == 401 and served["serving_precision"] in ("bf16", "fp32")


def test_shaped_models_keep_the_presets_architecture_at_the_stand_ins_width(report: dict) -> None:
    for name in cuda_check.SHAPED_PRESETS:
        real, shape = models.PRESETS[name].shape, report[f"{name}/lora-a100"]["shape"]
        assert shape["heads"] * real.kv_heads == shape["kv_heads"] * real.heads  # grouped-query attention or not
        assert shape["tied"] == real.tied and shape["hidden"] == models.stand_in(models.PRESETS[name]).shape.hidden
        assert shape["vocab"] > models.TINY_VOCAB  # ids the tokenizer lacks are generated and decoded, as at full size
        saved = report[f"{name}/lora-a100"]["saved_model"]["reloaded_parameters"]
        assert saved == report[f"{name}/lora-a100"]["parameters"]  # the model built is the shape the memory counts


def test_what_needs_cuda_is_skipped_saying_why(report: dict) -> None:
    for name in cuda_check.SHAPED_PRESETS:
        assert "needs a CUDA GPU" in report[f"{name}/lora-t4"]["skipped"]
        assert "QLoRA needs a CUDA GPU" in report[f"{name}/qlora-t4"]["skipped"]


def test_the_ways_of_training_are_the_clusters_the_course_offers() -> None:
    assert {size for _, size in cuda_check.WAYS.values()} == {sizes.GPU_CLUSTER_SIZE, sizes.SMALL_GPU_CLUSTER_SIZE}
    assert sizes.vm_size(sizes.GPU_CLUSTER_SIZE).precision == "bf16" and sizes.T4.precision == "fp16"


def test_its_figures_make_a_measurements_record(report: dict) -> None:
    from benchmarks import measurements

    rows = report["rows"]
    record = measurements.make_record(
        rows,
        cpu_class="gpu",
        command="python -m benchmarks.cuda_check",
        what="the GPU check",
        conditions="one GPU",
        day=rows["date"],
    )
    measurements.check_record("figures.json", record)
    assert measurements.kind_of(record) == "figures" and rows["date"] == report["date"]
    trained = [f"{name}/lora-a100" for name in cuda_check.SHAPED_PRESETS]
    for part in trained:
        what = {row["what"]: row["value"] for row in rows["figures"] if row["what"].startswith(part)}
        assert f"{report[part]['tokens_per_second']} tokens/s" in what[f"{part}: training throughput"]
        assert len(what) == 3 and all(what.values())
    assert not [row for row in rows["figures"] if "t4" in row["what"]]  # skipped parts have no figures


def test_on_a_gpu_each_way_trains_for_its_cluster_and_validates_against_it(tmp_path) -> None:
    """The settings the GPU run trains with, checked here against each way's cluster (validate() asks no GPU)."""
    import argparse

    from phi3course import data

    prepared = data.prepare("synthetic", tmp_path / "data", seed=42, subjects=2)
    args = argparse.Namespace(cpu_smoke=False, shaped_steps=3, shaped_batch=64)
    for way, (method, size) in cuda_check.WAYS.items():
        settings = cuda_check.shaped_settings(
            prepared, tmp_path / way, tmp_path / "model", "phi-4-mini-instruct", way, args
        )
        assert (settings.method, settings.cluster_size) == (method, size)
        assert settings.precision == sizes.vm_size(size).precision and settings.model_path == str(tmp_path / "model")
        assert settings.validate().name == "phi-4-mini-instruct"


def test_the_lora_profile_patches_what_training_calls() -> None:
    """profile_lora switches off one suspect at a time by replacing a recipe function; a replaced name that training
    no longer calls would make that variant measure nothing."""
    import inspect

    from phi3course import recipe, train

    source = inspect.getsource(cuda_check.part_profile_lora)
    assert "recipe.model_kwargs = " in source and "recipe.AnswerLogitsSFTTrainer.compute_loss = " in source
    assert "recipe.model_kwargs(" in inspect.getsource(train.load_base)
    assert "AnswerLogitsSFTTrainer(" in inspect.getsource(recipe.make_trainer)
