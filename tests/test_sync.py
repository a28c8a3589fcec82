"""One source for the recipe and its settings (d2l's #@save idea).

The recipe (``LoraConfig``, ``SFTConfig``, the trainer, merging, the held-out evaluation) is written once, in
notebook 02's ``export`` cells; ``phi3course.recipe`` is their generated copy (tests/test_export.py holds the two
equal) and the Azure ML job runs it. Here: every setting reaches the job under its one name, and each default is
written once, so changing it is a one-line change in one file.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nbformat
import pytest

from phi3course import data, paths, profiles, train
from phi3course.paths import notebooks_dir

NOTEBOOK = notebooks_dir() / "02_fine_tune.ipynb"


def cell(predicate: Any) -> str:
    cells = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code" and predicate(c)]
    assert len(cells) == 1, "02_fine_tune must have exactly one such cell"
    return cells[0].source


def required_field(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def tagged(tag: str) -> str:
    return cell(lambda c: tag in c.metadata.get("tags", []))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> data.Prepared:
    return data.prepare("synthetic", tmp_path_factory.mktemp("sync"), subjects=2)


def test_the_settings_cell_passes_every_setting_from_its_parameter() -> None:
    """02's TrainSettings(...) call names every recipe setting, each from the parameter of the same name."""
    source = cell(lambda c: "train.TrainSettings(" in c.source)
    call = next(
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "TrainSettings"
    )
    passed = {kw.arg: kw.value for kw in call.keywords}
    required = [f.name for f in dataclasses.fields(train.TrainSettings) if required_field(f)]
    declared = profiles.parameters_cell(NOTEBOOK)
    for name in required:
        assert name in passed, f"02's settings cell does not pass {name}"
        if name in declared and name != "model":  # model: 'auto' is resolved against 00's choice first
            value = passed[name]
            assert isinstance(value, ast.Name) and value.id == name, f"{name} must come from the {name} parameter"
    assert set(required) - {"train_file", "output_dir"} <= set(declared), "a recipe setting without a parameter"


def test_the_job_command_carries_every_setting_back(files, tmp_path) -> None:
    """The notebook's command(...) job, parsed by the module's own parser, gives back the notebook's settings."""
    from phi3course import azure, tracking

    changed = dict(
        model="phi-3-tiny",
        method="full",
        epochs=2.5,
        max_steps=7,
        learning_rate=1e-4,
        batch_size=4,
        grad_accum=2,
        lora_r=8,
        lora_dropout=0.05,
        lora_layers=0.5,
        max_length=256,
        warmup=0.2,
        scheduler="linear",
        precision="bf16",
        gradient_checkpointing=True,
        seed=7,
        save_steps=3,
        replay=5,
    )
    local = profiles.parameters("local")
    assert all(local[k] != v for k, v in changed.items()), "every value must differ from its default"
    settings = train.settings_from_profile(
        local,
        train_file=str(files.train_path),
        test_file=str(files.test_path),
        output_dir=str(tmp_path),
        memory_gib=12.0,
        cluster_size="Standard_NC4as_T4_v3",  # as 02's settings cell sets it when the job trains
    )
    settings = dataclasses.replace(settings, **changed)
    space: dict[str, Any] = {
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
        "stage": SimpleNamespace(run=SimpleNamespace(path=tmp_path)),
    }
    exec(compile(tagged("azure-job"), "02_fine_tune[azure-job]", "exec"), space)
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
        "report_dir": "${{outputs.report}}",
    }
    for name, reference in references.items():
        assert parsed.pop(name) == reference
    expected = {k: v for k, v in dataclasses.asdict(settings).items() if k not in references}
    assert parsed == expected and parsed["cluster_size"] == "Standard_NC4as_T4_v3"  # the job checks its GPU
    assert set(job.inputs) == {"train", "test", "base_model"} and set(job.outputs) == {"model", "report"}
    uploaded = azure.code_files(job.code)
    assert "phi3course/recipe.py" in uploaded and "phi3course/train.py" in uploaded
    assert not any(name.startswith("phi3course/rehearsal") or "serving" in name for name in uploaded)


def test_the_jobs_parser_has_no_default_of_its_own_for_a_recipe_setting() -> None:
    """A flag left out fails the job instead of training with a second, forgotten default."""
    parser = train._parser()
    for f in dataclasses.fields(train.TrainSettings):
        if required_field(f):
            action = next(a for a in parser._actions if a.dest == f.name)
            assert action.required, f"--{f.name.replace('_', '-')} has a default of its own"


@pytest.fixture
def course_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The course's notebooks and profiles in a folder of their own, which the course then reads."""
    root = tmp_path / "course"
    shutil.copytree(notebooks_dir() / "profiles", root / "notebooks" / "profiles")
    for notebook in notebooks_dir().glob("*.ipynb"):  # the notebooks alone: a running kernel leaves sockets here
        shutil.copy2(notebook, root / "notebooks" / notebook.name)
    monkeypatch.setenv("COURSE_ROOT", str(root))
    for cached in (profiles.defaults, profiles._deltas, profiles._load):
        cached.cache_clear()
    yield root
    for cached in (profiles.defaults, profiles._deltas, profiles._load):
        cached.cache_clear()


def test_a_recipe_default_is_one_line_in_one_file(course_copy: Path, files, tmp_path) -> None:
    """LoRA rank 16 → 4 in 02's parameters cell alone: the local profile, the profiles that keep the default, the
    benchmarks' settings and the job's flags all follow; a profile that sets its own rank keeps it."""
    notebook = course_copy / "notebooks" / "02_fine_tune.ipynb"
    nb = json.loads(notebook.read_text())
    parameters = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    lines = [line for line in parameters["source"] if line.startswith("lora_r: int = ")]
    assert len(lines) == 1
    parameters["source"] = [line.replace("lora_r: int = 16", "lora_r: int = 4") for line in parameters["source"]]
    notebook.write_text(json.dumps(nb))
    assert profiles.parameters("local")["lora_r"] == 4
    assert profiles.parameters("azureml")["lora_r"] == 4 and profiles.parameters("azureml-dryrun")["lora_r"] == 4
    assert profiles.parameters("smoke")["lora_r"] == 8  # the smoke profile names its own
    settings = train.settings_from_profile(
        profiles.parameters("azureml"), train_file=str(files.train_path), output_dir=str(tmp_path)
    )
    assert settings.lora_r == 4 and settings.lora_alpha == 8
    flags = train.job_arguments(settings, {"train_file": "t", "output_dir": "o"})
    assert train._parser().parse_args(shlex.split(flags)).lora_r == 4


def test_two_notebooks_with_two_defaults_for_one_setting_are_refused(course_copy: Path) -> None:
    notebook = course_copy / "notebooks" / "01_data.ipynb"
    text = notebook.read_text()
    assert "seed: int = 42" in text
    notebook.write_text(text.replace("seed: int = 42", "seed: int = 7"))
    with pytest.raises(profiles.ProfileError, match="one default"):
        profiles.defaults()
