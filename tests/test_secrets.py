"""The README's promise: no key ever enters notebook outputs, logs, state.json or summary.json.

The scan looks for the *values* of the keys a run made (the files under ``<run>/secrets/``) in every other
file of the run directory — executed notebooks (under nbval, the outputs tests/nbval_outputs.py records), server
logs, JSON, MLflow's store — and in any notebooks given beside it. ``make test`` runs it over nbval's run
directory after nbval (``COURSE_SCAN_RUN_DIR``); tests/test_browser.py runs it over the run it drives in
JupyterLab, executed notebooks included.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import nbformat
import pytest

from phi3course.rundir import RunDir, mask

ROOT = Path(__file__).resolve().parents[1]
LARGEST_SCANNED = 256 * 2**20  # model weights beyond this size are skipped (a key is text; weights are floats)


def keys_of(run_path: Path) -> dict[str, str]:
    """Every key a run keeps, by file name: the values to look for."""
    folder = run_path / "secrets"
    found = {p.name: p.read_text(encoding="utf-8").strip() for p in sorted(folder.glob("*")) if p.is_file()}
    return {name: value for name, value in found.items() if len(value) >= 16}  # long enough never to match by chance


def leaks(run_path: Path, also: Iterable[Path] = ()) -> list[str]:
    """``file: key name`` for each file under ``run_path`` (its secrets/ aside) or in ``also`` holding a key."""
    keys = {name: value.encode() for name, value in keys_of(run_path).items()}
    secrets_dir = (run_path / "secrets").resolve()
    files = [p for p in run_path.rglob("*") if p.is_file() and secrets_dir not in p.resolve().parents]
    found = []
    for path in [*files, *also]:
        if path.stat().st_size > LARGEST_SCANNED:
            continue
        content = path.read_bytes()
        found += [f"{path}: {name}" for name, key in keys.items() if key in content]
    return found


def test_the_scan_finds_a_key_in_an_output_a_log_and_state_but_not_its_mask(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    key = run.read_secret(run.new_secret("endpoint-key").name)
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(endpoint.key)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"masked: {mask(key)}\n")]
    nb.cells = [cell]
    nbformat.write(nb, run.path / "03_deploy.ipynb")
    (run.path / "endpoint.log").write_text("GET /score 200\n")
    assert leaks(run.path) == []  # the key file itself and a masked key are fine
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{key}\n")]
    nbformat.write(nb, run.path / "03_deploy.ipynb")
    (run.path / "endpoint.log").write_text(f"Authorization: Bearer {key}\n")
    saved = tmp_path / "04_saved.ipynb"
    saved.write_text(json.dumps({"outputs": [key]}))
    assert sorted(leaks(run.path, [saved])) == sorted(
        f"{p}: endpoint-key" for p in [run.path / "03_deploy.ipynb", run.path / "endpoint.log", saved]
    )


@pytest.mark.skipif(
    not os.environ.get("COURSE_SCAN_RUN_DIR"),
    reason="runs in `make test` after nbval, over its run directory (COURSE_SCAN_RUN_DIR=runs/nbval)",
)
def test_no_key_in_the_nbval_run() -> None:
    run_path = Path(os.environ["COURSE_SCAN_RUN_DIR"])
    run_path = run_path if run_path.is_absolute() else ROOT / run_path  # relative to the course, as COURSE_RUN_DIR
    assert keys_of(run_path), f"{run_path}/secrets holds no key: 03_deploy did not run there, nothing was checked"
    outputs = run_path / "nbval-outputs.jsonl"  # what the notebooks showed (tests/nbval_outputs.py writes it)
    assert outputs.is_file(), f"no {outputs}: run nbval with -p tests.nbval_outputs, as make test does"
    assert leaks(run_path) == []
