"""02's recipe, copied out of the notebook, trains without the course.

A reader copies the cells tagged ``export`` (all but the evaluation's two, which score with the course's helpers) into
a notebook of their own, adds the few lines a reader writes (the settings, the run's ``train.jsonl``, the model's
folder) and trains. Here that file runs in a fresh Python whose ``import phi3course`` fails, offline, on the smoke
model, and trains as the course's own ``python -m phi3course.train`` does: the same losses, step by step.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from phi3course import data, models, profiles, recipe, train
from phi3course.paths import notebooks_dir

NOTEBOOK = notebooks_dir() / "02_fine_tune.ipynb"
# what the copied cells may import besides Python's standard library: the libraries the recipe is written with
LIBRARIES = {"torch", "datasets", "peft", "transformers", "trl", "mlflow"}

# Run first in the fresh Python: any import of the course's library fails, as where it is not installed.
NO_COURSE = """
import importlib.abc
import runpy
import sys


class NoCourse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "phi3course" or name.startswith("phi3course."):
            raise ImportError(f"No module named {name!r} (the course's library is not installed here)")
        return None


sys.meta_path.insert(0, NoCourse())
runpy.run_path(sys.argv[1], run_name="__main__")
"""

# The reader's own cell after the recipe's: settings as 02's parameters set them, the run's training rows, the
# model's folder; then the steps 02 takes between its recipe cells.
READER = """
# %% the reader's own cell
import json
from types import SimpleNamespace

from transformers import AutoTokenizer

settings = SimpleNamespace(**{settings!r})
model_folder = {model_folder!r}
with open({train_file!r}) as lines:
    rows = to_training_rows([json.loads(line) for line in lines])
tokenizer = AutoTokenizer.from_pretrained(model_folder)
model = AutoModelForCausalLM.from_pretrained(model_folder, **model_kwargs(settings.method, settings.precision))
rows, dropped = fit_length(rows, tokenizer, settings.max_length)
print(f"{{len(rows)}} rows train; {{dropped}} longer than max_length={{settings.max_length}} tokens left out")
per_epoch = math.ceil(len(rows) / (settings.batch_size * settings.grad_accum))
args = sft_config(settings, settings.precision, per_epoch)
adapters = lora_config(settings, model.config.num_hidden_layers)
trainer = make_trainer(model, tokenizer, rows, settings, args, adapters)
trainer.train()
trainer.save_model(str(Path(settings.output_dir) / "adapters"))  # the LoRA adapters alone
merge_and_save(trainer, tokenizer, Path(settings.output_dir) / "model")  # merged into the weights, to serve
losses = [[entry["step"], entry["loss"]] for entry in trainer.state.log_history if "loss" in entry]
print("losses:", json.dumps(losses))
"""


def recipe_cells() -> list[str]:
    """02's export cells a reader copies to train: every one but the evaluation's (held_out, and the model selection
    that asks the validation split with the same helpers)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and "export" in c.metadata.get("tags", [])]
    evaluation = [source for source in cells if "phi3course" in source]
    assert len(evaluation) == 2, "only the evaluation's cells may use the course"
    assert "def held_out(" in evaluation[0] and "class ModelSelection(" in evaluation[1]
    return [source for source in cells if source not in evaluation]


def imported(code: str) -> set[str]:
    """The top-level packages ``code`` imports."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_recipe_cells_import_only_the_libraries_they_are_written_with() -> None:
    outside = imported("\n\n".join(recipe_cells())) - set(sys.stdlib_module_names)
    assert outside <= LIBRARIES, f"a copied cell imports {outside - LIBRARIES}"


def test_the_copied_cells_train_as_the_course_does_without_the_course(tmp_path: Path) -> None:
    prepared = data.prepare("synthetic", tmp_path / "run", subjects=2)
    preset = models.PRESETS["phi-3-tiny"]  # the smoke profile's model
    folder = models.local_path(preset)
    tokenizer = models.load_tokenizer(preset)
    lengths = sorted(data.token_lengths(prepared.train, tokenizer))
    course = train.settings_from_profile(
        profiles.parameters("smoke"),
        train_file=str(prepared.train_path),
        output_dir=str(tmp_path / "course"),
        model=preset.name,
        replay=0,  # replay rows are the base model's answers to the course's own prompts: a data set of the course
        precision="fp32",
        max_steps=8,
        max_length=lengths[3 * len(lengths) // 4],  # about a quarter of the rows are longer: left out, and counted
    )
    kept, dropped = recipe.fit_length(recipe.to_training_rows(prepared.train), tokenizer, course.max_length)
    assert dropped > 0
    expected = train.train(course)  # the course's run: what the Azure ML job runs

    copy = dataclasses.replace(course, output_dir=str(tmp_path / "copy"))
    reader = READER.format(settings=dataclasses.asdict(copy), model_folder=folder, train_file=copy.train_file)
    notebook = "\n\n# %%\n".join([*recipe_cells(), reader])
    (tmp_path / "my_notebook.py").write_text(notebook)
    (tmp_path / "no_course.py").write_text(NO_COURSE)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        [sys.executable, "no_course.py", "my_notebook.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    said = done.stdout
    assert f"{len(kept)} rows train; {dropped} longer than max_length={course.max_length} tokens left out" in said
    losses = json.loads(said.split("losses:", 1)[1].splitlines()[0])
    assert [step for step, _ in losses] == list(range(1, 9))
    assert losses[-1][1] < losses[0][1] - 0.1, "the loss falls"
    assert [step for step, _ in losses] == [row["step"] for row in expected.history]
    assert [loss for _, loss in losses] == pytest.approx([row["loss"] for row in expected.history], rel=1e-4)
    adapters, merged = tmp_path / "copy" / "adapters", tmp_path / "copy" / "model"
    assert (adapters / "adapter_model.safetensors").is_file()
    assert json.loads((adapters / "adapter_config.json").read_text())["r"] == course.lora_r
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer_config.json").is_file()
