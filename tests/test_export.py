"""Modules generated from notebook cells stay equal to the cells (``python -m phi3course.tools.export``)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from phi3course.paths import notebooks_dir
from phi3course.tools import export


@pytest.mark.parametrize("name", list(export.GENERATED))
def test_the_library_copy_equals_the_notebooks_export_cells(name: str) -> None:
    assert name not in export.stale(), (
        f"lib/phi3course/{name}.py differs from the export cells of {export.GENERATED[name]}: "
        "run python -m phi3course.tools.export"
    )


@pytest.mark.parametrize("name", list(export.GENERATED))
def test_a_changed_export_cell_is_noticed(name: str, tmp_path: Path) -> None:
    nb = nbformat.read(notebooks_dir() / export.GENERATED[name], as_version=4)
    cell = next(c for c in nb.cells if "export" in c.metadata.get("tags", []))
    cell.source += "\n# changed by a learner"
    changed = tmp_path / export.GENERATED[name]
    nbformat.write(nb, changed)
    current = export.module_path(name).read_text(encoding="utf-8")
    assert export.regenerated(name, changed) != current
    assert "# changed by a learner" in export.regenerated(name, changed)


def test_the_check_command_fails_while_a_copy_is_stale(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(export, "stale", lambda: ["recipe"])
    assert export.main(["--check"]) == 1
    assert "python -m phi3course.tools.export" in capsys.readouterr().out


def test_the_job_runs_the_notebooks_recipe() -> None:
    """The training module builds its configs, trainer and evaluation from the generated copy, not its own."""
    import inspect

    from phi3course import recipe, train

    source = inspect.getsource(train.train) + inspect.getsource(train.load_base)
    for name in ("sft_config", "lora_config", "make_trainer", "merge_and_save", "held_out", *train.RECIPE_NAMES):
        assert f"recipe.{name}(" in source and hasattr(recipe, name)
        if name in train.RECIPE_NAMES:  # reachable as train.<name> too: the recipe's own function, not a copy
            assert getattr(train, name) is getattr(recipe, name)
        else:
            assert not hasattr(train, name), f"train.{name} would be a second copy of the recipe"
