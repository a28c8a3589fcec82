"""The workspace: an ``MLClient``-shaped object whose operations are the other modules of this package.

State lives on disk under ``root`` (each notebook runs in its own kernel): ``state/`` holds entities,
``jobs/``, ``datastores/``, ``endpoints/`` hold files, and ``mlflow.db`` stands in for the workspace's MLflow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..azure import EXAMPLE_SETTINGS, AzureSettings
from ..files import read_json
from ..processes import stop_group
from . import guard
from .assets import DATASTORE, DataOperations, ModelOperations, Registry, catalog_model
from .common import RehearsalError, quiet_loggers
from .compute import ComputeOperations
from .endpoints import OnlineDeploymentOperations, OnlineEndpointOperations
from .jobs import JobOperations


class Workspace:
    """An ``MLClient``-shaped stand-in whose state lives under ``root`` (see the module's docstring)."""

    is_rehearsal = True

    def __init__(self, root: str | os.PathLike[str], settings: AzureSettings | None = None) -> None:
        quiet_loggers()
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings = settings or EXAMPLE_SETTINGS
        self.subscription_id = self.settings.subscription_id
        self.resource_group_name = self.settings.resource_group
        self.workspace_name = self.settings.workspace_name
        self.location = self.settings.location
        self.compute = ComputeOperations(self)
        self.data = DataOperations(self)
        self.jobs = JobOperations(self)
        self.models = ModelOperations(self)
        self.online_endpoints = OnlineEndpointOperations(self)
        self.online_deployments = OnlineDeploymentOperations(self)
        self._owners: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"rehearsal.Workspace({str(self.root)!r}) — a local stand-in, not Azure"

    # paths and ids -------------------------------------------------------------------------------
    @property
    def scope(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group_name}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{self.workspace_name}"
        )

    def arm_id(self, kind: str, name: str, version: str | None = None) -> str:
        tail = f"/versions/{version}" if version is not None else ""
        return f"{self.scope}/{kind}/{name}{tail}"

    def datastore_uri(self, relative: str) -> str:
        return (
            f"azureml://subscriptions/{self.subscription_id}/resourcegroups/{self.resource_group_name}"
            f"/workspaces/{self.workspace_name}/datastores/{DATASTORE}/paths/{relative}"
        )

    def state_file(self, kind: str, *names: str) -> Path:
        path = self.root / "state" / kind / ("/".join(names) + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def registry(self, name: str) -> Registry:
        """What ``MLClient(credential, registry_name=name)`` reaches: the stand-in's copy of that registry's models
        (see :class:`.assets.RegistryModelOperations`)."""
        return Registry(name)

    # resolving azureml:// URIs to files here ------------------------------------------------------
    def local_path(self, uri: str, kind: str = "") -> Path:
        """The file or folder on this machine behind a path Azure ML would resolve (see :meth:`_resolve`)."""
        path = self._resolve(str(uri))
        if not path.exists():
            raise RehearsalError(f"{uri} resolves to {path}, which does not exist{kind}.")
        return path

    def _resolve(self, uri: str) -> Path:
        if match := re.match(r"^azureml://jobs/([^/]+)/outputs/([^/]+)(?:/paths/(.*))?$", uri):
            job, output, sub = match.groups()
            return self.root / "jobs" / job / "outputs" / output / (sub or "").strip("/")
        if match := re.match(r"^azureml://(?:subscriptions/.+?/workspaces/[^/]+/)?datastores/([^/]+)/paths/(.*)$", uri):
            store, sub = match.groups()
            return self.root / "datastores" / store / sub.strip("/")
        arm = r"^(?:azureml:)?/?subscriptions/[^/]+/resource[gG]roups/[^/]+/providers/[^/]+/workspaces/[^/]+"
        if match := re.match(arm + r"/(data|models)/([^/]+)/versions/([^/]+)$", uri):  # an asset's id
            kind, name, version = match.groups()
            operations = self.data if kind == "data" else self.models
            return self._resolve(operations.get(name, version=version).path)
        if match := re.match(r"^azureml://registries/([^/]+)/models/([^/]+)/(?:labels|versions)/[^/]+$", uri):
            return catalog_model(*match.groups())
        if match := re.match(
            r"^azureml:(?://)?(?:/subscriptions/.+?/)?(?:data/)?([^:/@]+)(?::([^:/@]+)|@(\w+))?$", uri
        ):
            name, version, label = match.groups()
            if (self.root / "state" / "data" / name).is_dir():
                return self._resolve(self.data.get(name, version=version, label=label).path)
            return self._resolve(self.models._path_of(name, version, label))
        if uri.startswith(("azureml:", "http:", "https:", "wasbs:", "abfss:")):
            raise RehearsalError(f"the rehearsal cannot resolve {uri!r}.")
        return Path(uri).expanduser().resolve()

    # the import guard -------------------------------------------------------------------------------
    def guarded_env(
        self, env: dict[str, str], variables: dict[str, Any] | None, folder: Path, environment: Any, what: str, fix: str
    ) -> dict[str, str]:
        """``env`` with the entity's own ``environment_variables`` and ``environment``'s import guard on top (its
        config written); the guard's folder comes first on ``PYTHONPATH``, before one the entity sets."""
        if self._owners is None:
            self._owners = guard.cached_owners(self.root)
        user = {k: str(v) for k, v in (variables or {}).items()}
        pythonpath = user.pop("PYTHONPATH", None)
        env.update(user)
        rules = guard.guard_env(self.root, self._owners, folder, environment, what, fix)
        return guard.with_guard(env, rules, pythonpath)

    # processes -------------------------------------------------------------------------------------
    def stop_all(self) -> list[str]:
        """Stop every process the stand-in started (jobs and deployments); returns what was stopped."""
        return stop(self.root)


def stop(root: str | os.PathLike[str]) -> list[str]:
    """Stop what the stand-in under ``root`` started (for ``make clean`` or a runner's last step); no SDK import.
    A deployment's record holds two processes: its gateway's (stopped first) and its scoring container's."""
    stopped = []
    for record in sorted(Path(root, "state").glob("*/**/*.json")):
        data = read_json(record, default={})
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("gateway"), dict) and stop_group(data["gateway"]):
            stopped.append(f"{record.parent.name}/{record.stem} (gateway)")
        if data.get("pid") and stop_group(data):
            stopped.append(f"{record.parent.name}/{record.stem}")
    return stopped
