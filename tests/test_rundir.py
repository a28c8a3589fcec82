from __future__ import annotations

import os
import stat

import pytest

from phi3course.files import atomic_write_text, read_json, write_json
from phi3course.rundir import SUMMARY_KEYS, RunDir, mask


def test_summary_has_every_fixed_key_from_the_start(tmp_path) -> None:
    summary = RunDir(tmp_path).summary
    assert set(SUMMARY_KEYS) <= set(summary)


def test_summary_merges_sections(tmp_path) -> None:
    run = RunDir(tmp_path)
    run.record_stage("00_setup", 1.234, True)
    run.record_stage("01_data", 2.0, False, error="boom")
    run.update_summary(data={"train_rows": 3})
    run.update_summary(data={"test_rows": 1})
    summary = RunDir(tmp_path).summary
    assert summary["stages"]["00_setup"] == {"seconds": 1.23, "ok": True}
    assert summary["stages"]["01_data"]["error"] == "boom"
    assert summary["data"] == {"train_rows": 3, "test_rows": 1}
    assert summary["finished"]


def test_state_refuses_secrets_but_takes_their_paths(tmp_path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(ValueError, match="write_secret"):
        run.remember(endpoint_key="abc")
    path = run.new_secret("endpoint-key")
    run.remember(endpoint_key_path=path)
    assert run.get("endpoint_key_path") == str(path)
    assert len(run.read_secret("endpoint-key")) >= 40
    assert run.read_secret("endpoint-key") not in run.state_path.read_text()


def test_secrets_are_private(tmp_path) -> None:
    run = RunDir(tmp_path)
    path = run.write_secret("k", "value")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with pytest.raises(ValueError):
        run.secret_path("../escape")


def test_require_names_the_notebook_to_run(tmp_path) -> None:
    with pytest.raises(KeyError, match="run 01_data first"):
        RunDir(tmp_path).require("train_path", made_by="01_data")


@pytest.mark.parametrize("fails_in", ["write", "fsync", "replace"])
def test_a_write_that_fails_midway_keeps_the_old_file(tmp_path, monkeypatch, fails_in) -> None:
    target = tmp_path / "state.json"
    write_json(target, {"old": True})
    if fails_in == "write":  # the text cannot be encoded: fails inside handle.write, after the file was opened
        text = '{"new": "\ud800"}'
    else:
        text = '{"new": true}'

        def broken(*args):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, fails_in, broken)
    with pytest.raises((OSError, UnicodeEncodeError)):
        atomic_write_text(target, text)
    monkeypatch.undo()
    assert read_json(target) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left beside it


def test_a_secret_is_never_readable_by_others_not_even_while_written(tmp_path, monkeypatch) -> None:
    seen: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the moment the value is in the file but not yet renamed into place
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    RunDir(tmp_path).write_secret("endpoint-key", "value")
    assert seen == [0o600]


def test_mask_never_shows_the_whole_secret() -> None:
    secret = "abcdefghijklmnopqrstuvwxyz"
    assert secret not in mask(secret) and mask(secret).startswith("abcd")
    assert mask("ab") == "**"
