"""Notebook 02 and the training module that the Azure ML job runs build the same objects (d2l's #@save idea).

The cells tagged ``lora-config``, ``sft-config`` and ``azure-job`` are executed here against fixture settings and
compared with what ``phi3course.train`` builds from the same settings. A setting changed on one side only fails.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

import nbformat
import pytest

from phi3course import data, train
from phi3course.paths import notebooks_dir

NOTEBOOK = notebooks_dir() / "02_fine_tune.ipynb"


def cell(tag: str) -> str:
    cells = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"02_fine_tune must have exactly one cell tagged {tag!r}"
    return cells[0].source


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> data.Prepared:
    return data.prepare("synthetic", tmp_path_factory.mktemp("sync"), subjects=2)


VARIANTS = {
    "lora-fp32-epochs": dict(method="lora", epochs=3.0, lora_r=16, lora_alpha=32),
    "full-bf16-steps": dict(method="full", max_steps=7, learning_rate=1e-4, batch_size=4, lora_r=8, lora_alpha=16),
    "lora-fp32-warm": dict(method="lora", warmup=0.2, scheduler="linear", lora_dropout=0.05, seed=7, save_steps=3),
    "lora-upper-half": dict(method="lora", model="smollm2-135m-instruct", lora_layers=0.5),
}
PRECISION = {"lora-fp32-epochs": "fp32", "full-bf16-steps": "bf16", "lora-fp32-warm": "fp32", "lora-upper-half": "fp32"}


def notebook_settings(files: data.Prepared, tmp_path: Path, **changes: Any) -> train.TrainSettings:
    return train.TrainSettings(
        train_file=str(files.train_path), test_file=str(files.test_path), output_dir=str(tmp_path), **changes
    )


def run_cell(tag: str, namespace: dict[str, Any]) -> dict[str, Any]:
    exec(compile(cell(tag), f"02_fine_tune[{tag}]", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_notebooks_lora_and_sft_configs_are_the_jobs(files, tmp_path, variant, capsys) -> None:
    from peft import LoraConfig
    from trl import SFTConfig

    settings = notebook_settings(files, tmp_path, **VARIANTS[variant])
    rows = train.to_training_rows(train.load_rows(settings.train_file))
    precision = PRECISION[variant]
    preset = settings.validate()
    space = run_cell(
        "lora-config",
        {"settings": settings, "train": train, "LoraConfig": LoraConfig, "preset": preset},
    )
    space = run_cell(
        "sft-config",
        {**space, "SFTConfig": SFTConfig, "precision_used": precision, "rows": rows},
    )
    assert space["lora_config"].to_dict() == train.lora_config(settings, preset.shape.layers).to_dict()
    job_config = train.sft_config(settings, precision, train.steps_per_epoch(settings, len(rows)))
    assert space["sft_config"].to_dict() == job_config.to_dict()


def test_a_setting_changed_on_one_side_only_is_caught(files, tmp_path) -> None:
    from trl import SFTConfig

    settings = notebook_settings(files, tmp_path)
    rows = train.to_training_rows(train.load_rows(settings.train_file))
    space = run_cell(
        "sft-config",
        {"settings": settings, "train": train, "SFTConfig": SFTConfig, "precision_used": "fp32", "rows": rows},
    )
    drifted = train.sft_config(dataclasses.replace(settings, learning_rate=settings.learning_rate / 2), "fp32", 1)
    assert space["sft_config"].to_dict() != drifted.to_dict()


def test_the_job_command_carries_every_setting_back(files, tmp_path) -> None:
    """The notebook's command(...) job, parsed by the module's own parser, gives back the notebook's settings."""
    from phi3course import azure, paths, tracking

    changed = dict(
        model="phi-3-tiny",
        method="full",
        epochs=2.5,
        max_steps=7,
        learning_rate=1e-4,
        batch_size=4,
        grad_accum=2,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        lora_layers=0.5,
        max_length=256,
        warmup=0.2,
        scheduler="linear",
        precision="bf16",
        gradient_checkpointing=True,
        seed=7,
        save_steps=3,
        memory_gib=12.0,
        replay=5,
    )
    defaults = train.TrainSettings(train_file="", output_dir="")
    assert all(getattr(defaults, k) != v for k, v in changed.items()), "every value must differ from its default"
    settings = notebook_settings(files, tmp_path, **changed)
    space = run_cell(
        "azure-job",
        {
            "settings": settings,
            "train": train,
            "azure": azure,
            "paths": paths,
            "tracking": tracking,
            "compute_name": "gpu-cluster",
            "compute_size": "Standard_NC24ads_A100_v4",
            "instance_count": 1,
            "processes_per_instance": 1,
            "target": "local",
            "env_file": ".env",
            "dry_run": False,
        },
    )
    job = space["job"]
    program, _, arguments = job.command.partition(" --")
    assert program == "python -m phi3course.train"
    parsed = vars(train._parser().parse_args(shlex.split("--" + arguments)))
    assert parsed.pop("evaluate") is True
    references = {
        "train_file": "${{inputs.train}}",
        "test_file": "${{inputs.test}}",
        "output_dir": "${{outputs.model}}",
        "model_path": "${{inputs.base_model}}",
    }
    for name, reference in references.items():
        assert parsed.pop(name) == reference
    expected = {k: v for k, v in dataclasses.asdict(settings).items() if k not in references and k != "extra"}
    assert parsed == expected
    assert set(job.inputs) == {"train", "test", "base_model"} and set(job.outputs) == {"model"}
