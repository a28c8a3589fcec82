from __future__ import annotations

import pytest

from phi3course import course, profiles


def test_every_profile_loads_and_names_itself() -> None:
    assert {"local", "smoke", "azureml"} <= set(profiles.available())
    for name in profiles.available():
        assert profiles.parameters(name)["profile"] == name


def test_profiles_share_one_set_of_parameters() -> None:
    keys = {name: set(profiles.parameters(name)) for name in profiles.available()}
    assert len({frozenset(k) for k in keys.values()}) == 1, keys


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(profiles.ProfileError, match=r"local.*smoke"):
        profiles.parameters("gpu")


def test_resolve_without_override_keeps_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(profiles.PROFILE_ENV, raising=False)
    values = {"profile": "local", "model": "auto", "subjects": 8}
    assert profiles.resolve(values) == (values, None)


def test_resolve_override_swaps_only_known_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(profiles.PROFILE_ENV, "smoke")
    resolved, by = profiles.resolve({"profile": "local", "model": "auto", "subjects": 8})
    assert by == "smoke"
    assert resolved == {"profile": "smoke", "model": "phi-3-tiny", "subjects": 2}


def test_start_updates_the_notebook_namespace(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv(profiles.PROFILE_ENV, "smoke")
    namespace = {"profile": "local", "run_dir": str(tmp_path), "model": "auto", "unrelated": 1}
    stage = course.start("01_data", namespace, quiet=False)
    assert namespace["model"] == "phi-3-tiny" and namespace["profile"] == "smoke"
    assert namespace["unrelated"] == 1
    assert stage.model == "phi-3-tiny" and stage.run.path == tmp_path
    summary = stage.run.summary
    assert summary["profile"] == "smoke" and summary["started"]


def test_start_needs_a_profile(tmp_path) -> None:
    with pytest.raises(ValueError, match="profile"):
        course.start("00_setup", {"run_dir": str(tmp_path)}, quiet=False)


def test_relative_run_dir_is_taken_from_the_course_folder(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = course.run_dir_for("smoke", "runs/test-relative")
    assert run.path == (course.course_root() / "runs" / "test-relative").resolve()
    run.path.rmdir()


@pytest.mark.parametrize(("name", "imports_promptflow"), [("01_data", False), ("04_prompt_flow_chat", True)])
def test_only_the_flow_notebooks_pay_for_importing_promptflow(tmp_path, name: str, imports_promptflow: bool) -> None:
    """course.start switches promptflow's telemetry off where flows run, and leaves promptflow unimported (about
    3 s a kernel on a 2-core CPU) where none do; a fresh interpreter, since this one may have imported it."""
    import subprocess
    import sys

    code = (
        "import sys; from phi3course import course; "
        f"course.start({name!r}, {{'profile': 'smoke', 'run_dir': {str(tmp_path)!r}}}); "
        "print('promptflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == str(imports_promptflow)
