"""The pictures of notebooks in images/ show the notebooks as they are.

Each screenshot has a sidecar, ``<picture>.json``, that tests/test_browser.py writes when it takes the picture: the
notebook, the source of the cells on screen and, where the picture shows JupyterLab's file browser, the notebook list.
Here, without a browser, each sidecar is compared with the notebook today: a picture of code the course no longer
has fails, naming the command that retakes it (``make screenshots``, the `local` profile, about ten minutes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

from phi3course.paths import course_root

ROOT = course_root()
IMAGES = ROOT / "images"
RETAKE = "retake it with `make screenshots` (the browser test with the local profile writes the picture and its .json)"
# Pictures known to show an older notebook, until `make screenshots` retakes them (then drop them from here: strict,
# so a retaken picture fails until it is).
OUTDATED: dict[str, str] = {}


def pictures() -> list[str]:
    return sorted(path.name for path in IMAGES.glob("*.png"))


def differences(picture: Path) -> list[str]:
    """What the picture's sidecar records that the checkout no longer has (empty: the picture is current)."""
    sidecar = picture.with_suffix(".json")
    if not sidecar.is_file():
        return [f"no {sidecar.name} beside it: nothing says which notebook cells it shows"]
    record = json.loads(sidecar.read_text(encoding="utf-8"))
    notebook = ROOT / record["notebook"]
    if not notebook.is_file():
        return [f"it shows {record['notebook']}, which the course no longer has"]
    cells = [(c.cell_type, c.source) for c in nbformat.read(notebook, as_version=4).cells]
    shown = [(c["cell_type"], c["source"]) for c in record["cells"]]
    found = []
    if not shown:
        found.append("its sidecar lists no cells")
    elif not any(cells[i : i + len(shown)] == shown for i in range(len(cells) - len(shown) + 1)):
        missing = [source for kind, source in shown if (kind, source) not in cells]
        found.append(
            f"the cells it shows are not in {record['notebook']} as they are there (one after another); "
            f"cells gone or changed: {[source.splitlines()[0] if source else '' for source in missing]}"
        )
    if "notebook_files" in record:
        today = sorted(path.name for path in notebook.parent.glob("*.ipynb"))
        if record["notebook_files"] != today:
            found.append(f"its file browser lists {record['notebook_files']}, the course has {today}")
    return found


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=f"{OUTDATED[name]}: {RETAKE}"))
        if name in OUTDATED
        else name
        for name in pictures()
    ],
)
def test_each_picture_shows_the_notebook_as_it_is(name: str) -> None:
    found = differences(IMAGES / name)
    assert not found, f"images/{name}: " + "; ".join(found) + f"; {RETAKE}"


def test_a_changed_cell_or_notebook_list_is_found(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison itself, on a notebook of two cells: as taken, one cell edited, a notebook added."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("## Chat"), nbformat.v4.new_code_cell("chat.chat_box(session)")]
    nbformat.write(notebook, folder / "04_chat.ipynb")
    picture = tmp_path / "chat.png"
    shown = [{"id": c.id, "cell_type": c.cell_type, "source": c.source} for c in notebook.cells]
    record = {"notebook": "notebooks/04_chat.ipynb", "cells": shown, "notebook_files": ["04_chat.ipynb"]}
    picture.with_suffix(".json").write_text(json.dumps(record))
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert differences(picture) == []
    notebook.cells[1].source = "chat.chat_box(session, example=question)"
    nbformat.write(notebook, folder / "04_chat.ipynb")
    assert "cells gone or changed: ['chat.chat_box(session)']" in differences(picture)[0]
    nbformat.write(notebook, folder / "05_agents.ipynb")
    assert "the course has ['04_chat.ipynb', '05_agents.ipynb']" in differences(picture)[-1]
    picture.with_suffix(".json").unlink()
    assert "no chat.json beside it" in differences(picture)[0]


def test_every_picture_in_images_has_its_sidecar() -> None:
    assert pictures(), "images/ holds no screenshot: nothing was checked"
    assert [name for name in pictures() if not (IMAGES / name).with_suffix(".json").is_file()] == []
