"""What every notebook does first and last: settle its parameters, open the run, record the stage."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import profiles, telemetry
from .paths import course_root, runs_dir
from .rundir import RunDir, now

RUN_DIR_ENV = "COURSE_RUN_DIR"


@dataclass
class Stage:
    """One notebook's run: its name, the parameters in effect and the run directory."""

    name: str
    params: dict[str, Any]
    run: RunDir
    overridden_by: str | None = None
    started_at: float = field(default_factory=time.perf_counter)

    @property
    def profile(self) -> str:
        return self.params["profile"]

    def __getattr__(self, key: str) -> Any:
        params = self.__dict__.get("params", {})
        if key in params:
            return params[key]
        raise AttributeError(key)

    def table(self) -> list[tuple[str, Any]]:
        return [(key, value) for key, value in self.params.items()]

    def finish(self, **extra: Any) -> None:
        """Record this notebook as done in ``summary.json`` (``extra`` goes into its entry)."""
        seconds = time.perf_counter() - self.started_at
        self.run.record_stage(self.name, seconds, True, **extra)
        print(f"✓ {self.name} finished in {seconds:.1f} s — recorded in {self.run.summary_path}")


def run_dir_for(profile: str, run_dir: str | os.PathLike[str] | None = None) -> RunDir:
    """``run_dir`` if given, else ``$COURSE_RUN_DIR``, else ``runs/<profile>`` in the course folder.

    A relative ``run_dir`` is taken from the course folder, so notebooks, papermill and tests agree.
    """
    chosen = str(run_dir or "") or os.environ.get(RUN_DIR_ENV, "") or str(runs_dir() / profile)
    path = Path(chosen).expanduser()
    return RunDir(path if path.is_absolute() else course_root() / path)


# The notebooks that run Prompt flow (00_setup switches its telemetry off for the machine in its own cell).
FLOW_NOTEBOOKS = frozenset({"04_prompt_flow_chat", "05_agent_framework"})


def start(name: str, namespace: dict[str, Any], quiet: bool = True) -> Stage:
    """Begin notebook ``name`` from the variables of its ``parameters`` cell.

    ``namespace`` is the notebook's ``globals()``. Under ``COURSE_PROFILE`` the profile's values
    replace the defaults, in the notebook's variables too, so every later cell sees them.
    """
    known = profiles.parameter_names()
    values = {key: namespace[key] for key in known if key in namespace}
    if "profile" not in values:
        raise ValueError("The parameters cell must set 'profile' (local, smoke or azureml).")
    resolved, overridden_by = profiles.resolve(values)
    namespace.update(resolved)
    if quiet:  # promptflow's own switches only where flows run: importing promptflow costs seconds
        telemetry.quiet(check_hub=False, promptflow=name in FLOW_NOTEBOOKS)
    run = run_dir_for(resolved["profile"], resolved.get("run_dir"))
    summary = run.summary
    updates: dict[str, Any] = {"profile": resolved["profile"]}
    if not summary.get("started"):
        updates["started"] = now()
    if resolved.get("target") == "rehearsal":
        from .azure import rehearsal_note

        updates["rehearsal"] = rehearsal_note()  # says in summary.json that this was a rehearsal, and its limits
    run.update_summary(**updates)
    ordered = dict(sorted(resolved.items(), key=lambda item: (item[0] != "profile", item[0])))
    return Stage(name=name, params=ordered, run=run, overridden_by=overridden_by)
