"""The client every Azure cell talks to: Azure ML's ``MLClient``, the local stand-in of the workspace, or None.

The choice sits above both: :mod:`phi3course.azure` knows Azure ML (settings, sizes, environments),
:mod:`phi3course.rehearsal` imitates it and builds on that knowledge, and this module picks one of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import azure
from .azure import REHEARSAL_LIMITS, AzureSettings


def connect(
    settings: AzureSettings | None,
    target: str,
    run_path: str | os.PathLike[str] | None = None,
) -> Any:
    """The gate of every Azure section: an ``MLClient``, the local rehearsal workspace, or None.

    ``target="rehearsal"`` returns :class:`phi3course.rehearsal.Workspace` under ``<run_path>/rehearsal``: the
    same calls as ``MLClient``, answered on this machine. ``target="azureml"`` returns a real ``MLClient`` when the
    settings are valid and a sign-in works; else None, with one line saying why.
    """
    azure.check_target(target)
    if target == "rehearsal":
        from . import rehearsal

        if run_path is None:
            raise ValueError("a rehearsal keeps its workspace in the run directory: pass run_path.")
        workspace = rehearsal.Workspace(Path(run_path) / "rehearsal", settings or azure.EXAMPLE_SETTINGS)
        print(
            "REHEARSAL: the Azure cells talk to a local stand-in of the workspace in "
            f"{workspace.root}, not to Azure. It validates every entity with azure-ai-ml, runs the job's "
            "command and serves the deployment here. It cannot check:\n"
            + "\n".join(f"  - {limit}" for limit in REHEARSAL_LIMITS)
        )
        return workspace
    if target == "local":
        print("Target 'local': the Azure ML cells skip (target='rehearsal' runs them against a local stand-in).")
        return None
    if settings is None:
        print("The Azure ML cells skip: the Azure settings above are not usable yet (fix .env, re-run 00_setup).")
        return None
    if not azure.has_credentials():
        print("The Azure ML cells skip: no Azure sign-in found. Run `az login` in a terminal, then re-run this cell.")
        return None
    azure.quiet_sdk()
    return azure.ml_client(settings)
