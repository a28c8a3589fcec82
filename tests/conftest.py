"""Shared test setup: everything offline, caches and Prompt flow's home in temporary folders."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Before any library reads them at import time. Prompt flow keeps its connections (and their keys) in its home
# (PF_HOME_DIRECTORY, else ~/.promptflow): the tests get one of their own, whatever the environment names, so they
# never replace the learner's connection of the same name.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
PF_HOME = tempfile.mkdtemp(prefix="pf-home-")
os.environ["PF_HOME_DIRECTORY"] = PF_HOME
atexit.register(shutil.rmtree, PF_HOME, ignore_errors=True)
os.environ.pop("COURSE_PROFILE", None)
os.environ.pop("COURSE_RUN_DIR", None)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_azure_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AZURE_* values from the machine leak into a test."""
    for key in list(os.environ):
        if key.startswith("AZURE_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def registered(tmp_path_factory: pytest.TempPathFactory):
    """The tiny model registered in a scratch MLflow store: (run directory, model URI)."""
    from phi3course import models, tracking
    from phi3course.rundir import RunDir

    run = RunDir(tmp_path_factory.mktemp("registry") / "run")
    model, tokenizer = models.load_model(models.PRESETS["phi-3-tiny"])
    uri = tracking.register_pretrained(run.path, model, tokenizer, "endpoint-test")
    run.remember(mlflow_tracking_uri=tracking.store_uri(run.path))
    return run, uri
