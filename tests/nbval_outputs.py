"""A pytest plugin for nbval (``-p tests.nbval_outputs``): every cell's fresh outputs into the run directory.

nbval executes the notebooks but keeps their outputs in memory only; written to
``$COURSE_RUN_DIR/nbval-outputs.jsonl`` they are covered by tests/test_secrets.py, which ``make test`` runs
after nbval: no key in any notebook output, not only in the logs and JSON the run leaves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILE_NAME = "nbval-outputs.jsonl"


def outputs_file() -> Path | None:
    run_dir = os.environ.get("COURSE_RUN_DIR")
    if not run_dir:
        return None
    path = Path(run_dir)
    return (path if path.is_absolute() else ROOT / path) / FILE_NAME


def pytest_runtest_teardown(item: pytest.Item) -> None:
    outputs = getattr(item, "test_outputs", None)  # nbval's cell item keeps what the kernel sent back
    target = outputs_file()
    if outputs is None or target is None:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a", encoding="utf-8") as log:
        log.write(json.dumps({"cell": item.nodeid, "outputs": outputs}, default=str) + "\n")
