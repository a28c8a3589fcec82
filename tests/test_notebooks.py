"""The notebooks as files: clean, one documented parameters cell whose defaults are the local profile."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from phi3course import profiles
from phi3course.paths import course_notebooks
from phi3course.tools import notebooks

NOTEBOOKS = course_notebooks(include_cleanup=True)
IDS = [nb.stem for nb in NOTEBOOKS]


def test_the_course_has_its_first_notebooks() -> None:
    assert IDS[:2] == ["00_setup", "01_data"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_clean(path: Path) -> None:
    assert notebooks.problems(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameter_defaults_are_the_local_profile_and_documented(path: Path) -> None:
    local = profiles.parameters("local")
    declared = pm.inspect_notebook(str(path))
    assert "profile" in declared and "run_dir" in declared
    for name, info in declared.items():
        assert info["help"].strip(), f"{path.name}: parameter {name!r} needs a comment saying what it does"
        default = ast.literal_eval(info["default"])
        if name == "run_dir":
            assert default == ""
        else:
            assert name in local, f"{path.name}: {name!r} is in no profile file"
            assert default == local[name], f"{path.name}: {name} = {default!r} but local.yaml says {local[name]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_opens_and_closes_its_stage(path: Path) -> None:
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert f'course.start("{path.stem}", globals())' in code
    assert "stage.finish(" in code


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_tells_what_it_teaches_and_what_comes_next(path: Path) -> None:
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].cell_type == "markdown" and "**What you learn:**" in cells[0].source
    assert "**What you need:**" in cells[0].source
    how_long = next(line for line in cells[0].source.split("\n\n") if line.startswith("**How long:**"))
    for profile in ["`smoke`", "`local`", "`azureml`"]:
        assert profile in how_long, f"{path.name}: 'How long' says nothing about {profile}"
    assert cells[-1].cell_type == "markdown" and "**Produced:**" in cells[-1].source
    assert "**Next:**" in cells[-1].source
