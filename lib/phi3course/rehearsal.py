"""A local stand-in of an Azure ML workspace: the course's Azure path, rehearsed offline ("dry run").

:class:`Workspace` answers the calls the notebooks make on an ``MLClient`` — ``compute``, ``data``,
``jobs``, ``models``, ``online_endpoints``, ``online_deployments`` — with the same signatures and the
same azure-ai-ml entity types, and does on this machine what Azure ML does with each entity:

- every entity is validated by azure-ai-ml itself (schema validation, REST conversion, loader round trip);
- a command job runs its exact command on a snapshot of its ``code`` folder, with its inputs and outputs
  laid out under ``jobs/<name>/`` and the environment variables set as Azure ML sets them (the job's own,
  ``AZUREML_RUN_ID``, MLflow pointed at the workspace's tracking store, ``PyTorchDistribution``'s
  ``RANK``/``WORLD_SIZE``…). It runs under an import guard that allows only the standard library and the
  distributions the job's environment installs (its conda pip list and what they require): an import the
  environment would not satisfy on Azure fails here too, naming the package and the fix;
- a registered model is copied from the job's output path; a deployment serves its ``code_configuration``
  scoring script under the inference server (gunicorn on 127.0.0.1, as ``phi3course.endpoint`` runs it),
  with ``AZUREML_MODEL_DIR`` laid out as Azure lays out the model, behind the endpoint's key.

State lives on disk under ``root`` (each notebook runs in its own kernel): ``state/`` holds entities,
``jobs/``, ``datastores/``, ``endpoints/`` hold files, and ``mlflow.db`` stands in for the workspace's
MLflow. What it cannot check: quota, regional capacity, the image build, the GPU, real latency.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .azure import REHEARSAL_REGISTRY, AzureSettings, pip_requirements
from .files import atomic_write_text, read_json, write_json
from .paths import cache_dir

EXAMPLE_SETTINGS = AzureSettings(
    subscription_id="00000000-0000-0000-0000-000000000000",
    resource_group="rg-rehearsal-not-azure",
    workspace_name="rehearsal-workspace",
    location="eastus2",
    uai_name="rehearsal-identity",
    uai_client_id="00000000-0000-0000-0000-000000000001",
)
HOST = "127.0.0.1"
TERMINAL = ("Completed", "Failed", "Canceled")
DATASTORE = "workspaceblobstore"
# Azure ML compute sizes the stand-in offers in every region, with canned quota (clearly not real numbers).
CANNED_SIZES = {
    # name: (family, vCPUs, GPUs, memory GB, quota limit)
    "Standard_NC24ads_A100_v4": ("standardNCADSA100v4Family", 24, 1, 220.0, 24),
    "Standard_NC4as_T4_v3": ("standardNCASv3_T4Family", 4, 1, 28.0, 8),
    "Standard_E16s_v3": ("standardESv3Family", 16, 0, 128.0, 32),
    "Standard_E4s_v3": ("standardESv3Family", 4, 0, 32.0, 32),
    "Standard_DS3_v2": ("standardDSv2Family", 4, 0, 14.0, 32),
}
CANNED_TOTAL_VCPUS = 100


class RehearsalError(RuntimeError):
    """What Azure ML would refuse, found by the stand-in; the message says what to change."""


def _not_found(what: str) -> Exception:
    from azure.core.exceptions import ResourceNotFoundError

    return ResourceNotFoundError(f"(rehearsal) {what} was not found in the workspace.")


def _quiet() -> None:
    import logging

    for name in ("azure.ai.ml", "azure.identity", "azure.core.pipeline.policies.http_logging_policy"):
        logging.getLogger(name).setLevel(logging.ERROR)


class Poller:
    """What ``begin_*`` calls return: the result is ready at once (the work was done on this machine)."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def result(self, timeout: float | None = None) -> Any:
        return self._value

    def done(self) -> bool:
        return True

    def wait(self, timeout: float | None = None) -> None:
        return None

    def status(self) -> str:
        return "Succeeded"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


# A catalog model keeps its tokenizer in components/ only: these files beside the weights are not copied.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _fingerprint(folder: Path, leave_out: tuple[str, ...] = ()) -> list[list[Any]]:
    """Name, size and modification time of every file under ``folder`` (but ``leave_out``): what a copy was made
    from."""
    return sorted(
        [str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns]
        for path in folder.rglob("*")
        if path.is_file() and path.name not in leave_out
    )


def _copytree(src: Path, dst: Path, link: bool = False) -> None:
    """Copy a file or folder; ``link`` hard-links files where it can (model weights: no second copy on disk)."""

    def copy(a: str, b: str) -> Any:
        if link:
            try:
                os.link(a, b)
                return b
            except OSError:
                pass
        return shutil.copy2(a, b)

    if src.is_dir():
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".ipynb_checkpoints")
        shutil.copytree(src, dst, copy_function=copy, ignore=ignore, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        copy(str(src), str(dst))


def _tail(path: Path, lines: int) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- the import guard -------------------------------------------------------------------------------
GUARD_SOURCE = r'''
"""Rehearsal import guard: only the standard library and the environment's distributions import."""
import importlib.util
import json
import os
import sys


def _install():
    path = os.environ.get("REHEARSAL_IMPORT_GUARD")
    if not path:
        return
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    owners, allowed = config["owners"], set(config["allowed"])
    drop = set(config.get("drop_paths", []))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") not in drop]

    def owner(fullname):
        parts = fullname.split(".")
        for size in range(len(parts), 0, -1):
            found = owners.get(".".join(parts[:size]))
            if found:
                return found
        return None

    def blocked(fullname):
        found = owner(fullname)
        return found if found and found not in allowed else None

    def message(fullname, dist):
        return (
            f"No module named {fullname!r} in this environment: {config['environment']} does not install "
            f"{dist!r}, so on Azure ML this import fails. Fix: {config['fix']} "
            "(rehearsal import guard)"
        )

    parents = set(config.get("allowed_parents", []))

    class Guard:
        @staticmethod
        def find_spec(fullname, path=None, target=None):
            dist = blocked(fullname)
            if not dist:
                return None
            if fullname in parents:
                # A package of a distribution the environment lacks, holding one it has (azure.monitor.opentelemetry
                # holds the exporter): there it is a namespace package, so its own __init__ never runs.
                import importlib.machinery

                found = importlib.machinery.PathFinder.find_spec(fullname, path)
                if found is not None and found.submodule_search_locations:
                    spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
                    spec.submodule_search_locations = list(found.submodule_search_locations)
                    return spec
            raise ModuleNotFoundError(message(fullname, dist), name=fullname)

    original = importlib.util.find_spec

    def find_spec(name, package=None):  # a probe for an optional package sees it absent, as on Azure
        absolute = importlib.util.resolve_name(name, package) if name.startswith(".") else name
        if blocked(absolute) and absolute not in parents:
            return None
        return original(name, package)

    importlib.util.find_spec = find_spec
    sys.meta_path.insert(0, Guard())


_install()
'''


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def module_owners() -> dict[str, str]:
    """Importable module or package → the installed distribution that provides it."""
    import importlib.metadata as metadata

    owners: dict[str, str] = {}
    for dist in metadata.distributions():
        name = _normalise(dist.metadata["Name"] or "")
        for file in dist.files or []:
            parts = file.parts
            if not parts or ".." in parts or parts[0].endswith((".dist-info", ".egg-info", ".data")):
                continue
            if file.name == "__init__.py":
                module = ".".join(parts[:-1])
            elif len(parts) == 1 and file.suffix in {".py", ".so", ".pyd"}:
                module = file.name.split(".")[0]
            else:
                continue
            if module:
                owners.setdefault(module, name)
    return owners


def allowed_distributions(pip: list[str]) -> set[str]:
    """The distributions ``pip`` names and everything they require (markers evaluated here), transitively."""
    import importlib.metadata as metadata

    from packaging.requirements import InvalidRequirement, Requirement

    allowed: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = []
    for line in pip:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        todo.append((requirement.name, frozenset(requirement.extras)))
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (_normalise(name), extras) in seen:
            continue
        seen.add((_normalise(name), extras))
        allowed.add(_normalise(name))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # listed but not installed here (e.g. azureml-mlflow): allowed, nothing to walk
        for spec in requires:
            requirement = Requirement(spec)
            if requirement.marker is not None:
                contexts = [{"extra": extra} for extra in extras] or [{"extra": ""}]
                if not any(requirement.marker.evaluate(context) for context in contexts):
                    continue
            todo.append((requirement.name, frozenset(requirement.extras)))
    return allowed


def _editable_paths() -> list[str]:
    """Folders that editable installs add to sys.path (the course's own lib): not part of any environment."""
    import site

    paths = []
    for folder in {*site.getsitepackages(), site.getusersitepackages()}:
        for pth in Path(folder).glob("__editable__*.pth"):
            for line in pth.read_text(encoding="utf-8").splitlines():
                if line and not line.startswith(("import ", "#")):
                    paths.append(os.path.abspath(line.strip()))
    return paths


# --- the workspace ---------------------------------------------------------------------------------
class Workspace:
    """An ``MLClient``-shaped stand-in whose state lives under ``root`` (see the module's docstring)."""

    is_rehearsal = True

    def __init__(self, root: str | os.PathLike[str], settings: AzureSettings | None = None) -> None:
        _quiet()
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
            return self._registry_model(*match.groups())
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

    def _registry_model(self, registry: str, name: str) -> Path:
        """A catalog model as a job input, laid out as Azure ML's catalog lays out its MLflow models:
        ``mlflow_model_folder/MLmodel``, ``…/model/`` (config and weights), ``…/components/tokenizer/``.

        Only the ``rehearsal`` registry resolves here (the offline presets); Azure's own catalog needs Azure.
        """
        from . import models

        preset = models.PRESETS.get(name) if registry == REHEARSAL_REGISTRY else None
        if preset is None:
            raise RehearsalError(
                f"azureml://registries/{registry}/models/{name}: the rehearsal has no copy of Azure's model catalog. "
                "Rehearse with an offline preset (model='smollm2-135m-instruct' or 'phi-3-tiny'), whose "
                "azure.catalog_model_uri() names the rehearsal registry."
            )
        folder = cache_dir() / "rehearsal-registry" / name
        weights, tokenizer = models.ensure_cached(preset), models.preset_dir(preset) / "tokenizer"
        # what the copy is made from: when the course's copy changes (a new chat template, say), copy it again
        made_from = {"model": _fingerprint(weights, leave_out=TOKENIZER_FILES), "tokenizer": _fingerprint(tokenizer)}
        stamp = folder / "made_from.json"
        if not (folder / "mlflow_model_folder" / "MLmodel").is_file() or read_json(stamp, default={}) != made_from:
            partial = folder.with_name(f"{name}.part")
            shutil.rmtree(partial, ignore_errors=True)
            inner = partial / "mlflow_model_folder"
            _copytree(weights, inner / "model", link=True)
            _copytree(tokenizer, inner / "components" / "tokenizer", link=True)
            for stray in TOKENIZER_FILES:
                (inner / "model" / stray).unlink(missing_ok=True)  # the tokenizer lives in components/ only
            (inner / "MLmodel").write_text(
                "flavors:\n  transformers:\n    components:\n    - tokenizer\n    model_binary: model\n"
                f"    task: text-generation\nmetadata:\n  rehearsal: stands in for a catalog model ({name})\n"
            )
            write_json(partial / stamp.name, made_from)
            shutil.rmtree(folder, ignore_errors=True)
            partial.replace(folder)
        return folder

    # the import guard -------------------------------------------------------------------------------
    def guard_env(self, folder: Path, environment: Any, what: str, fix: str) -> dict[str, str]:
        """Environment variables that put ``environment``'s import guard on a process; writes its config."""
        if self._owners is None:
            cached = self.root / "guard" / "owners.json"
            if cached.is_file():
                self._owners = read_json(cached)
            else:
                self._owners = module_owners()
                write_json(cached, self._owners)
        pip = pip_requirements(environment)
        guard_dir = self.root / "guard"
        guard_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(guard_dir / "sitecustomize.py", GUARD_SOURCE)
        allowed = allowed_distributions(pip)
        parents = {
            ".".join(module.split(".")[:size])
            for module, dist in self._owners.items()
            if dist in allowed
            for size in range(1, module.count(".") + 1)
        }
        config = {
            "allowed_parents": sorted(parents),
            "environment": what if getattr(environment, "_is_anonymous", True) else f"{what} ({environment.name})",
            "allowed": sorted(allowed),
            "owners": self._owners,
            "fix": fix,
            "drop_paths": _editable_paths(),
        }
        write_json(folder / "import-guard.json", config)
        return {"REHEARSAL_IMPORT_GUARD": str(folder / "import-guard.json"), "_GUARD_DIR": str(guard_dir)}

    # processes -------------------------------------------------------------------------------------
    def stop_all(self) -> list[str]:
        """Stop every process the stand-in started (jobs and deployments); returns what was stopped."""
        return stop(self.root)


def _base_env(extra_path: str = "") -> dict[str, str]:
    """A process environment as in a fresh container: the notebook's own course/MLflow/Azure variables left out."""
    dropped = ("COURSE_", "MLFLOW_", "AZURE_", "AZUREML_", "AML_", "PYTHONPATH", "REHEARSAL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), extra_path, env.get("PATH", "")]))
    env.update({"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


def _with_guard(env: dict[str, str], guard: dict[str, str], pythonpath: str | None) -> dict[str, str]:
    guard = dict(guard)
    guard_dir = guard.pop("_GUARD_DIR")
    env.update(guard)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [guard_dir, pythonpath]))
    return env


# --- compute -----------------------------------------------------------------------------------------
class ComputeOperations:
    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def get(self, name: str) -> Any:
        from azure.ai.ml._restclient.arm_ml_service.models import ComputeResource
        from azure.ai.ml.entities import Compute

        path = self._ws.state_file("computes", name)
        if not path.is_file():
            raise _not_found(f"compute {name!r}")
        return Compute._from_rest_object(ComputeResource(read_json(path)))

    def begin_create_or_update(self, compute: Any) -> Poller:
        size = getattr(compute, "size", None)
        if size and size not in CANNED_SIZES:
            from .azure import RETIRED_SIZES

            why = RETIRED_SIZES.get(size, "not offered in this region")
            raise RehearsalError(f"compute size {size}: {why}. Offered here: {', '.join(CANNED_SIZES)}.")
        compute.location = compute.location or self._ws.location
        rest = compute._to_rest_object()
        data = rest.as_dict()
        data["id"] = self._ws.arm_id("computes", compute.name)
        data.setdefault("properties", {})["provisioningState"] = "Succeeded"
        write_json(self._ws.state_file("computes", compute.name), data)
        return Poller(self.get(compute.name))

    def list_sizes(self, *, location: str | None = None, compute_type: str | None = None) -> list[Any]:
        """The sizes the stand-in offers (every region alike: the real list depends on the region)."""
        from azure.ai.ml._restclient.arm_ml_service.models import VirtualMachineSize
        from azure.ai.ml.entities import VmSize

        return [
            VmSize._from_rest_object(
                VirtualMachineSize(
                    name=name,
                    family=family,
                    v_cp_us=vcpus,
                    gpus=gpus,
                    memory_gb=memory,
                    supported_compute_types=["AmlCompute", "ComputeInstance"],
                )
            )
            for name, (family, vcpus, gpus, memory, _) in CANNED_SIZES.items()
        ]

    def list_usage(self, *, location: str | None = None) -> list[Any]:
        """Canned quota: limits that let the course run, marked '(rehearsal: canned, not your quota)'."""
        from azure.ai.ml._restclient.arm_ml_service.models import Usage as RestUsage
        from azure.ai.ml._restclient.arm_ml_service.models import UsageName
        from azure.ai.ml.entities import Usage

        region = location or self._ws.location
        used = sum(CANNED_SIZES[c.size][1] for c in self._computes_running())
        rows = [("Total Cluster Dedicated Regional vCPUs", CANNED_TOTAL_VCPUS)]
        families: dict[str, int] = {}
        for family, _, _, _, limit in CANNED_SIZES.values():
            families[family] = limit
        rows += list(families.items())
        return [
            Usage._from_rest_object(
                RestUsage(
                    id=f"/subscriptions/{self._ws.subscription_id}/providers/Microsoft.MachineLearningServices"
                    f"/locations/{region}/usages/{name}",
                    aml_workspace_location=region,
                    type="Microsoft.MachineLearningServices/vmFamily/usages",
                    unit="Count",
                    current_value=used if name.startswith("Total") else 0,
                    limit=limit,
                    name=UsageName(value=name, localized_value=f"{name} (rehearsal: canned, not your quota)"),
                )
            )
            for name, limit in rows
        ]

    def _computes_running(self) -> list[Any]:
        return []  # clusters scale to zero; the stand-in's jobs use no cluster cores


# --- data ----------------------------------------------------------------------------------------------
class DataOperations:
    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def _versions(self, name: str) -> list[str]:
        folder = self._ws.root / "state" / "data" / name
        return sorted(
            (p.stem for p in folder.glob("*.json")), key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else v)
        )

    def create_or_update(self, data: Any) -> Any:
        """Upload a local file or folder (as the SDK does, to the workspace's blob datastore) and register it."""
        from azure.ai.ml.entities import Data

        if data.type not in ("uri_file", "uri_folder"):
            raise RehearsalError(f"data asset type {data.type!r}: the rehearsal registers uri_file and uri_folder.")
        data._to_dict()  # azure-ai-ml's schema
        source = self._ws.local_path(data.path)
        if data.type == "uri_file" and not source.is_file():
            raise RehearsalError(f"a uri_file data asset needs a file; {source} is not one.")
        digest = secrets.token_hex(16)
        relative = f"LocalUpload/{digest}/{source.name}"
        _copytree(source, self._ws.root / "datastores" / DATASTORE / relative)
        versions = self._versions(data.name)
        version = str(data.version) if data.version else str(max([int(v) for v in versions if v.isdigit()] or [0]) + 1)
        record = {
            "name": data.name,
            "version": version,
            "type": data.type,
            "path": self._ws.datastore_uri(relative),
            "description": data.description,
            "tags": data.tags or {},
            "id": self._ws.arm_id("data", data.name, version),
        }
        write_json(self._ws.state_file("data", data.name, version), record)
        return Data(**record)

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        from azure.ai.ml.entities import Data

        versions = self._versions(name)
        if not versions:
            raise _not_found(f"data asset {name!r}")
        chosen = str(version) if version is not None else versions[-1]
        path = self._ws.root / "state" / "data" / name / f"{chosen}.json"
        if not path.is_file():
            raise _not_found(f"data asset {name}:{chosen}")
        return Data(**read_json(path))


# --- models -------------------------------------------------------------------------------------------
class ModelOperations:
    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def _versions(self, name: str) -> list[str]:
        folder = self._ws.root / "state" / "models" / name
        return sorted((p.stem for p in folder.glob("*.json")), key=lambda v: int(v) if v.isdigit() else 0)

    def create_or_update(self, model: Any) -> Any:
        """Register a model from a job output (``azureml://jobs/<job>/outputs/<out>/paths/<sub>``) or a local path."""

        model._to_dict()  # azure-ai-ml's schema
        source = self._ws.local_path(model.path, " (did the job write it?)")
        if str(model.type) == "mlflow_model" and not (source / "MLmodel").is_file():
            raise RehearsalError(f"an mlflow_model needs an MLmodel file at the top of its folder; {source} has none.")
        versions = self._versions(model.name)
        version = str(model.version) if model.version else str(max([int(v) for v in versions] or [0]) + 1)
        relative = f"rehearsal-models/{model.name}/{version}/{source.name}"
        target = self._ws.root / "datastores" / DATASTORE / relative
        shutil.rmtree(target, ignore_errors=True)
        _copytree(source, target, link=True)
        job = re.match(r"^azureml://jobs/([^/]+)/", str(model.path))
        record = {
            "name": model.name,
            "version": version,
            "type": str(model.type or "custom_model"),
            "path": self._ws.datastore_uri(relative),
            "description": model.description,
            "tags": model.tags or {},
            "properties": model.properties or {},
            "id": self._ws.arm_id("models", model.name, version),
            "job_name": job.group(1) if job else None,
        }
        write_json(self._ws.state_file("models", model.name, version), record)
        return self.get(model.name, version=version)

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        from azure.ai.ml.entities import Model

        versions = self._versions(name)
        chosen = str(version) if version is not None else (versions[-1] if versions else None)
        path = self._ws.root / "state" / "models" / name / f"{chosen}.json"
        if chosen is None or not path.is_file():
            raise _not_found(f"model {name}:{version or label or 'latest'}")
        record = read_json(path)
        job_name = record.pop("job_name", None)
        model = Model(**record)
        model.job_name = job_name
        return model

    def list(self, name: str | None = None) -> list[Any]:
        folder = self._ws.root / "state" / "models"
        names = [name] if name else sorted(p.name for p in folder.glob("*") if p.is_dir())
        return [self.get(n, version=v) for n in names for v in self._versions(n)]

    def _path_of(self, name: str, version: str | None, label: str | None) -> str:
        return self.get(name, version=version, label=label).path


# --- jobs -----------------------------------------------------------------------------------------------
ADJECTIVES = ("amber", "brave", "calm", "eager", "gentle", "happy", "keen", "lively", "quiet", "swift")
NOUNS = ("apple", "brook", "cloud", "garden", "lantern", "meadow", "pepper", "river", "tiger", "willow")


def _job_name() -> str:
    return f"{secrets.choice(ADJECTIVES)}_{secrets.choice(NOUNS)}_{secrets.token_hex(4)}"


def _optional_sections(command: str, present: set[str]) -> str:
    """Azure ML's ``$[[ … ]]`` optional parts: kept when every input they use is given, dropped otherwise."""

    def keep(match: re.Match[str]) -> str:
        used = set(re.findall(r"\$\{\{inputs\.(\w+)\}\}", match.group(1)))
        return match.group(1) if used <= present else ""

    return re.sub(r"\$\[\[(.*?)\]\]", keep, command)


class JobOperations:
    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def _dir(self, name: str) -> Path:
        return self._ws.root / "jobs" / name

    def create_or_update(
        self, job: Any, *, experiment_name: str | None = None, compute: str | None = None, **_: Any
    ) -> Any:
        """Validate the job as azure-ai-ml does, lay it out under ``jobs/<name>/`` and start its command."""
        from azure.ai.ml.entities import Environment
        from azure.ai.ml.entities._builders.command import Command
        from azure.ai.ml.entities._job.to_rest_functions import to_rest_job_object

        if not isinstance(job, Command):
            raise RehearsalError(
                f"the rehearsal runs command jobs (azure.ai.ml.command(...)); got {type(job).__name__}."
            )
        if experiment_name:
            job.experiment_name = experiment_name
        if compute:
            job.compute = compute
        validation = job._validate()
        if not validation.passed:
            raise RehearsalError(f"azure-ai-ml rejects the job: {validation.error_messages}")
        if job.compute:
            self._ws.compute.get(str(job.compute).split("/")[-1])  # Azure refuses a job for a missing cluster
        environment = job.environment
        if not isinstance(environment, Environment) or not environment.conda_file:
            raise RehearsalError(
                "the rehearsal needs the job's environment inline: Environment(image=…, conda_file=…)."
            )
        name = job.name or _job_name()
        folder = self._dir(name)
        if folder.exists():
            raise RehearsalError(f"a job named {name!r} exists already: job names are unique in a workspace.")
        folder.mkdir(parents=True)
        code = Path(str(job.code)).resolve() if job.code else None
        if code is not None and not code.is_dir():
            raise RehearsalError(f"the job's code folder {job.code} does not exist.")
        if code is not None:
            _copytree(code, folder / "code")
        else:
            (folder / "code").mkdir()

        # Azure ML's view of the job: ARM ids for what it would have uploaded; the REST object it would store.
        rest_job = job._to_job()
        rest_job.name = name
        rest_job.code = self._ws.arm_id("codes", secrets.token_hex(8), "1") if code else None
        rest_job.environment = self._ws.arm_id("environments", "CliV2AnonymousEnvironment", secrets.token_hex(16))
        rest = to_rest_job_object(rest_job)
        rest.name = name
        rest.id = self._ws.arm_id("jobs", name)
        rest.properties.status = "Starting"
        rest.properties.services = {"Studio": {"endpoint": (folder / "user_logs").as_uri(), "jobServiceType": "Studio"}}
        write_json(folder / "rest.json", rest.as_dict())

        inputs, present = self._lay_out_inputs(job, folder)
        outputs = {}
        for output_name, output in (job.outputs or {}).items():
            target = folder / "outputs" / output_name
            target.mkdir(parents=True, exist_ok=True)
            kind = getattr(getattr(output, "_data", None), "type", None) or getattr(output, "type", None)
            outputs[output_name] = str(target / output_name) if kind == "uri_file" else str(target)
        command = _optional_sections(job.command, present)

        def substitute(match: re.Match[str]) -> str:
            kind, key = match.groups()
            table = inputs if kind == "inputs" else outputs
            if key not in table:
                raise RehearsalError(f"the command uses ${{{{{kind}.{key}}}}} but the job has no such {kind[:-1]}.")
            return table[key]

        command = re.sub(r"\$\{\{(inputs|outputs)\.(\w+)\}\}", substitute, command)
        env = self._environment(job, name, folder, environment)
        distribution = job.distribution
        per_node = int(getattr(distribution, "process_count_per_instance", None) or 1)
        nodes = int(job.resources.instance_count if job.resources and job.resources.instance_count else 1)
        plan = {
            "name": name,
            "command": command,
            "cwd": str(folder / "code"),
            "env": env,
            "processes": per_node * nodes,
            "per_node": per_node,
            "logs": str(folder / "user_logs"),
        }
        write_json(folder / "plan.json", plan)
        (folder / "user_logs").mkdir(exist_ok=True)
        supervisor = [sys.executable, "-m", "phi3course.rehearsal", "run-job", str(folder)]
        with (folder / "supervisor.log").open("w") as log:
            process = subprocess.Popen(
                supervisor, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_base_env()
            )
        write_json(self._ws.state_file("jobs", name), {"name": name, "pid": process.pid})
        return self.get(name)

    def _lay_out_inputs(self, job: Any, folder: Path) -> tuple[dict[str, str], set[str]]:
        inputs: dict[str, str] = {}
        for input_name, node_input in (job.inputs or {}).items():
            value = getattr(node_input, "_data", node_input)
            if value is None:
                continue
            path = getattr(value, "path", None)
            if path is None:  # a literal
                inputs[input_name] = str(value)
                continue
            source = self._ws.local_path(str(path), f" (input {input_name!r})")
            target = folder / "inputs" / input_name / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                target.symlink_to(source, target_is_directory=True)  # read-only mount
            else:
                shutil.copy2(source, target)
            inputs[input_name] = str(target)
        return inputs, set(inputs)

    def _environment(self, job: Any, name: str, folder: Path, environment: Any) -> dict[str, str]:
        """Variables as Azure ML sets them in a job's container, the job's own, and the import guard."""
        pip = pip_requirements(environment)
        has_azureml_mlflow = any(
            _normalise(re.split(r"[<>=!~\[; ]", p, maxsplit=1)[0]) == "azureml-mlflow" for p in pip
        )
        experiment = job.experiment_name or "Default"
        env = _base_env()
        env.update(
            {
                "AZUREML_RUN_ID": name,
                "AZUREML_ARM_SUBSCRIPTION": self._ws.subscription_id,
                "AZUREML_ARM_RESOURCEGROUP": self._ws.resource_group_name,
                "AZUREML_ARM_WORKSPACE_NAME": self._ws.workspace_name,
                "AZUREML_ARM_PROJECT_NAME": experiment,
                "COURSE_CACHE": str(folder / "cache"),  # a fresh node: no course cache from the learner's machine
                "REHEARSAL_WORKSPACE": str(self._ws.root),
            }
        )
        run_id, experiment_id = self._mlflow_run(experiment, name, job.display_name)
        if has_azureml_mlflow:
            # azureml-mlflow would send this to the workspace's MLflow; the rehearsal's store stands in for it.
            env["MLFLOW_TRACKING_URI"] = self._ws.mlflow_uri
        else:
            # What Azure ML sets: without azureml-mlflow installed, MLflow has no store for this scheme.
            (folder / "notes.txt").write_text(
                "rehearsal: the job's environment does not list azureml-mlflow, so MLflow calls in the job fail "
                "as they do on Azure ML (MLFLOW_TRACKING_URI is an azureml:// URI).\n"
            )
            env["MLFLOW_TRACKING_URI"] = f"azureml://{self._ws.location}.api.azureml.ms/mlflow/v1.0{self._ws.scope}"
        env.update(
            {"MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_ID": experiment_id, "MLFLOW_EXPERIMENT_NAME": experiment}
        )
        user = {k: str(v) for k, v in (job.environment_variables or {}).items()}
        pythonpath = user.pop("PYTHONPATH", None)
        env.update(user)
        guard = self._ws.guard_env(
            folder,
            environment,
            "the job environment",
            "list the package in [project.optional-dependencies] job in pyproject.toml (azure.job_environment())",
        )
        return _with_guard(env, guard, pythonpath)

    def _mlflow_run(self, experiment: str, name: str, display_name: str | None) -> tuple[str, str]:
        """The job's MLflow run in the workspace's store (Azure ML makes one per job and passes MLFLOW_RUN_ID)."""
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        client = MlflowClient(tracking_uri=self._ws.mlflow_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            artifacts = (self._ws.root / "mlartifacts").as_uri()
            experiment_id = client.create_experiment(experiment, artifact_location=artifacts)
        else:
            experiment_id = found.experiment_id
        run = client.create_run(experiment_id, run_name=display_name or name, tags={"azureml.runid": name})
        return run.info.run_id, experiment_id

    def _status(self, name: str) -> dict[str, Any]:
        folder = self._dir(name)
        status = read_json(folder / "status.json", default={})
        if status.get("status") in TERMINAL:
            return status
        from .processes import alive

        pid = read_json(self._ws.state_file("jobs", name), default={}).get("pid")
        if not alive(pid) and not (folder / "status.json").is_file():
            return {"status": "Failed", "error": "the rehearsal's job supervisor is gone (machine restarted?)"}
        if not alive(pid):  # finished between the two reads
            return read_json(folder / "status.json", default={"status": "Failed"})
        return status or {"status": "Starting"}

    def get(self, name: str) -> Any:
        """The job as azure-ai-ml returns it, status included (Starting, Running, Completed, Failed, Canceled)."""
        from azure.ai.ml._restclient.arm_ml_service.models import JobBase
        from azure.ai.ml.entities import Job

        path = self._dir(name) / "rest.json"
        if not path.is_file():
            raise _not_found(f"job {name!r}")
        data = read_json(path)
        data["properties"]["status"] = self._status(name).get("status", "Starting")
        return Job._from_rest_object(JobBase(data))

    def stream(self, name: str) -> None:
        """Print the job's log until it ends; raise ``JobException`` if it failed, as the SDK does."""
        from azure.ai.ml.exceptions import ErrorCategory, ErrorTarget, JobException

        folder = self._dir(name)
        if not folder.is_dir():
            raise _not_found(f"job {name!r}")
        print(f"RunId: {name}\nWeb View: {(folder / 'user_logs').as_uri()}  (rehearsal: logs on this machine)\n")
        if (folder / "notes.txt").is_file():
            print((folder / "notes.txt").read_text())
        log = folder / "user_logs" / "std_log.txt"
        offset = 0
        while True:
            status = self._status(name)
            if log.is_file():
                with log.open("r", errors="replace") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                    offset = handle.tell()
                if chunk:
                    print(chunk, end="", flush=True)
            if status.get("status") in TERMINAL:
                break
            time.sleep(0.5)
        print(f"\nExecution Summary\n=================\nRunId: {name}\nStatus: {status['status']}")
        if status["status"] != "Completed":
            message = f"Job {name} ended {status['status']}: {status.get('error', '')}\n{_tail(log, 15)}"
            raise JobException(
                message=message,
                no_personal_data_message="the rehearsal's job failed",
                target=ErrorTarget.JOB,
                error_category=ErrorCategory.USER_ERROR,
            )

    def begin_cancel(self, name: str) -> Poller:
        from .processes import stop_group

        pid = read_json(self._ws.state_file("jobs", name), default={}).get("pid")
        stop_group(pid)
        write_json(self._dir(name) / "status.json", {"status": "Canceled"})
        return Poller(None)

    def download(
        self,
        name: str,
        *,
        download_path: str | os.PathLike[str] = ".",
        output_name: str | None = None,
        all: bool = False,
    ) -> None:
        """Copy the job's outputs as the SDK lays them out: ``named-outputs/<name>/`` and ``artifacts/``."""
        from azure.ai.ml.exceptions import ErrorCategory, ErrorTarget, JobException

        status = self._status(name).get("status")
        if status not in TERMINAL:
            msg = f"This job is in state {status}. Download is allowed only in states {list(TERMINAL)}"
            raise JobException(
                message=msg,
                no_personal_data_message=msg,
                target=ErrorTarget.JOB,
                error_category=ErrorCategory.USER_ERROR,
            )
        folder, target = self._dir(name), Path(download_path)
        names = [output_name] if output_name else ([p.name for p in (folder / "outputs").glob("*")] if all else [])
        for output in names:
            source = folder / "outputs" / output
            if not source.exists():
                raise RehearsalError(f"job {name} has no output {output!r}.")
            _copytree(source, target / "named-outputs" / output)
        if not output_name:
            _copytree(folder / "user_logs", target / "artifacts" / "user_logs")


def run_job(folder: Path) -> int:
    """The supervisor (``python -m phi3course.rehearsal run-job <folder>``): run the plan's processes, record the end.

    Each process gets the variables Azure ML's PyTorch distribution sets (one node here, as many processes as
    ``instance_count × process_count_per_instance``). Rank 0 writes ``user_logs/std_log.txt``; the others
    ``std_log_process_<rank>.txt``.
    """
    plan = read_json(folder / "plan.json")
    write_json(folder / "status.json", {"status": "Running", "started": time.time()})
    world = int(plan["processes"])
    port = _free_port()
    children = []
    logs = Path(plan["logs"])
    for rank in range(world):
        env = dict(plan["env"])
        if world > 1:
            env.update(
                {
                    "MASTER_ADDR": HOST,
                    "MASTER_PORT": str(port),
                    "WORLD_SIZE": str(world),
                    "RANK": str(rank),
                    "LOCAL_RANK": str(rank % int(plan["per_node"])),
                    "NODE_RANK": str(rank // int(plan["per_node"])),
                    "LOCAL_WORLD_SIZE": str(plan["per_node"]),
                }
            )
        log_path = logs / ("std_log.txt" if rank == 0 else f"std_log_process_{rank}.txt")
        with log_path.open("w") as log:
            children.append(
                subprocess.Popen(
                    ["/bin/bash", "-c", plan["command"]], cwd=plan["cwd"], env=env, stdout=log, stderr=subprocess.STDOUT
                )
            )
    codes = [child.wait() for child in children]
    ok = all(code == 0 for code in codes)
    status = {"status": "Completed" if ok else "Failed", "exit_codes": codes, "ended": time.time()}
    if not ok:
        status["error"] = f"exit codes {codes} (see user_logs/std_log.txt)"
    write_json(folder / "status.json", status)
    return 0


# --- online endpoints -----------------------------------------------------------------------------------
def _region_claim(location: str, name: str) -> Path:
    """A claim on an endpoint name in a region, shared by every rehearsal on this machine (names are
    unique per region on Azure, across all subscriptions)."""
    folder = cache_dir() / "rehearsal-region" / location
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


class OnlineEndpointOperations:
    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def _dir(self, name: str) -> Path:
        return self._ws.root / "endpoints" / name

    def _record(self, name: str) -> dict[str, Any]:
        path = self._ws.state_file("endpoints", name)
        if not path.is_file():
            raise _not_found(f"online endpoint {name!r}")
        return read_json(path)

    def begin_create_or_update(self, endpoint: Any, *, local: bool = False) -> Poller:
        """Create the endpoint (a name unique in the region, keys), or update its traffic and description."""
        from .azure import ENDPOINT_NAME

        if local:
            raise RehearsalError("local=True asks for Docker; the rehearsal is already local: leave local out.")
        rest = endpoint._to_rest_online_endpoint(self._ws.location)  # azure-ai-ml's REST conversion
        name = endpoint.name
        if not ENDPOINT_NAME.match(name or ""):
            raise RehearsalError(f"endpoint name {name!r}: 3–32 letters, digits or '-', starting with a letter.")
        if str(endpoint.auth_mode).lower() != "key":
            raise RehearsalError("the rehearsal serves auth_mode='key' endpoints (the course's choice).")
        path = self._ws.state_file("endpoints", name)
        record = read_json(path) if path.is_file() else None
        if record is None:
            claim = _region_claim(self._ws.location, name)
            owner = claim.read_text().strip() if claim.is_file() else ""
            if owner and owner != str(self._ws.root) and Path(owner, "state", "endpoints", f"{name}.json").is_file():
                raise RehearsalError(
                    f"endpoint name {name!r} is already in use in {self._ws.location} (by {owner}): names are unique "
                    "per region. Use azure.endpoint_name() for a name with a random suffix."
                )
            claim.write_text(str(self._ws.root))
            folder = self._dir(name)
            folder.mkdir(parents=True, exist_ok=True)
            keys = {"primary": secrets.token_urlsafe(32), "secondary": secrets.token_urlsafe(32)}
            for which, value in keys.items():
                atomic_write_text(folder / f"{which}.key", value, mode=0o600)
            record = {"name": name, "auth_mode": "key", "traffic": {}, "description": None, "tags": {}}
        traffic = {k: int(v) for k, v in (endpoint.traffic or {}).items()}
        if traffic:
            known = set(self._ws.online_deployments._names(name))
            missing = sorted(set(traffic) - known)
            if missing:
                raise RehearsalError(f"traffic names deployments that do not exist on {name}: {missing}.")
            if sum(traffic.values()) not in (0, 100):
                raise RehearsalError(
                    f"traffic must add up to 100 (or 0); {traffic} adds up to {sum(traffic.values())}."
                )
            record["traffic"] = traffic
        record["description"] = endpoint.description or record.get("description")
        record["tags"] = endpoint.tags or record.get("tags", {})
        record["identity"] = rest.as_dict().get("identity")
        write_json(path, record)
        return Poller(self.get(name))

    def get(self, name: str) -> Any:
        """The endpoint as azure-ai-ml returns it; ``scoring_uri`` is the deployment that gets the traffic."""
        from azure.ai.ml._restclient.arm_ml_service.models import OnlineEndpoint
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        record = self._record(name)
        scoring_uri = self.scoring_uri(name)
        data = {
            "id": self._ws.arm_id("onlineEndpoints", name),
            "name": name,
            "location": self._ws.location,
            "kind": "Managed",
            "tags": record.get("tags") or {},
            "properties": {
                "authMode": "Key",
                "description": record.get("description"),
                "traffic": record.get("traffic") or {},
                "provisioningState": "Succeeded",
                "scoringUri": scoring_uri,
                "swaggerUri": scoring_uri.replace("/score", "/swagger.json") if scoring_uri else None,
            },
        }
        if record.get("identity"):
            data["identity"] = record["identity"]
        return ManagedOnlineEndpoint._from_rest_object(OnlineEndpoint(data))

    def scoring_uri(self, name: str) -> str | None:
        traffic = self._record(name).get("traffic") or {}
        live = [(share, d) for d, share in traffic.items() if share > 0]
        if not live:
            return None
        deployment = self._ws.online_deployments._record(max(live)[1], name)
        return f"http://{HOST}:{deployment['port']}/score"

    def get_keys(self, name: str) -> Any:
        """The endpoint's keys (EndpointAuthKeys), kept in 0600 files under the rehearsal's endpoints folder."""
        from azure.ai.ml.entities import EndpointAuthKeys

        self._record(name)
        folder = self._dir(name)
        return EndpointAuthKeys(
            primary_key=(folder / "primary.key").read_text().strip(),
            secondary_key=(folder / "secondary.key").read_text().strip(),
        )

    def key_file(self, name: str) -> Path:
        """Where the primary key is kept (what the local scoring script checks)."""
        self._record(name)
        return self._dir(name) / "primary.key"

    def list(self) -> list[Any]:
        folder = self._ws.root / "state" / "endpoints"
        return [self.get(p.stem) for p in sorted(folder.glob("*.json"))]

    def invoke(
        self,
        endpoint_name: str,
        *,
        request_file: str | os.PathLike[str] | None = None,
        deployment_name: str | None = None,
        **_: Any,
    ) -> str:
        """POST ``request_file`` to the endpoint with its key; returns the response text, as the SDK does."""
        import requests

        if request_file is None:
            raise RehearsalError("invoke needs request_file=<a JSON file>.")
        if deployment_name:
            uri = f"http://{HOST}:{self._ws.online_deployments._record(deployment_name, endpoint_name)['port']}/score"
        else:
            uri = self.scoring_uri(endpoint_name)
            if uri is None:
                raise RehearsalError(f"endpoint {endpoint_name} sends no traffic to any deployment: set its traffic.")
        key = self.get_keys(endpoint_name).primary_key
        response = requests.post(
            uri,
            data=Path(request_file).read_bytes(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
            timeout=300,
        )
        response.raise_for_status()
        return response.text

    def begin_delete(self, name: str) -> Poller:
        """Stop the endpoint's deployments, forget its keys and state, release its name in the region."""
        self._record(name)
        for deployment in self._ws.online_deployments._names(name):
            self._ws.online_deployments._stop(deployment, name)
        shutil.rmtree(self._dir(name), ignore_errors=True)
        shutil.rmtree(self._ws.root / "state" / "deployments" / name, ignore_errors=True)
        self._ws.state_file("endpoints", name).unlink(missing_ok=True)
        claim = _region_claim(self._ws.location, name)
        if claim.is_file() and claim.read_text().strip() == str(self._ws.root):
            claim.unlink()
        return Poller(None)


# --- online deployments -----------------------------------------------------------------------------
SERVER_TIMEOUT_S = 300.0


class OnlineDeploymentOperations:
    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def _names(self, endpoint_name: str) -> list[str]:
        folder = self._ws.root / "state" / "deployments" / endpoint_name
        return sorted(p.stem for p in folder.glob("*.json"))

    def _record(self, name: str, endpoint_name: str) -> dict[str, Any]:
        path = self._ws.state_file("deployments", endpoint_name, name)
        if not path.is_file():
            raise _not_found(f"deployment {name!r} of endpoint {endpoint_name!r}")
        return read_json(path)

    def _dir(self, name: str, endpoint_name: str) -> Path:
        return self._ws.root / "endpoints" / endpoint_name / "deployments" / name

    def _stop(self, name: str, endpoint_name: str) -> bool:
        from .processes import stop_group

        path = self._ws.state_file("deployments", endpoint_name, name)
        record = read_json(path, default={})
        stopped = stop_group(record.get("pid"))
        if record:
            record["pid"] = None
            write_json(path, record)
        return stopped

    def _validated(self, deployment: Any) -> Any:
        """azure-ai-ml's loader round trip: the deployment as YAML, loaded back through its schema."""
        import yaml
        from azure.ai.ml import load_online_deployment

        as_dict = json.loads(json.dumps(deployment._to_dict(), default=str))
        return load_online_deployment(source=io.StringIO(yaml.safe_dump(as_dict)))

    def _model_folder(self, model: Any) -> tuple[str, str, Path]:
        """(name, version, folder) of the deployment's model, registered or referenced."""
        if isinstance(model, str):
            match = re.match(r"^azureml:(?:.*/models/)?([^:/@]+)(?:[:/](?:versions/)?([^:/@]+)|@(\w+))?$", model)
            if not match:
                raise RehearsalError(f"deployment model {model!r}: use a registered model (azureml:<name>:<version>).")
            name, version, _ = match.groups()
            model = self._ws.models.get(name, version=version)
        if getattr(model, "version", None) and getattr(model, "name", None):
            registered = self._ws.models.get(model.name, version=str(model.version))
            return registered.name, str(registered.version), self._ws.local_path(registered.path).parent
        if getattr(model, "path", None):  # anonymous: Azure registers it on the fly
            registered = self._ws.models.create_or_update(model)
            return registered.name, str(registered.version), self._ws.local_path(registered.path).parent
        raise RehearsalError(
            "the deployment has no model: pass model=<the registered Model> (or azureml:<name>:<ver>)."
        )

    def begin_create_or_update(self, deployment: Any, *, local: bool = False, **_: Any) -> Poller:
        """Validate, lay out ``AZUREML_MODEL_DIR`` and the code, and start the scoring script under the
        inference server (gunicorn on 127.0.0.1), behind the endpoint's key and the serving environment's guard."""
        from azure.ai.ml.entities import Environment

        from .processes import ServerError, launch, wait_healthy

        if local:
            raise RehearsalError("local=True asks for Docker; the rehearsal is already local: leave local out.")
        endpoint_name = deployment.endpoint_name
        self._ws.online_endpoints._record(endpoint_name)
        self._validated(deployment)
        if deployment.instance_type and deployment.instance_type not in CANNED_SIZES:
            raise RehearsalError(
                f"instance_type {deployment.instance_type} is not offered here: {', '.join(CANNED_SIZES)}."
            )
        environment = deployment.environment
        if not isinstance(environment, Environment) or not environment.conda_file:
            raise RehearsalError(
                "the rehearsal needs the deployment's environment inline: Environment(image=…, conda_file=…)."
            )
        if deployment.code_configuration is None:
            raise RehearsalError(
                "the rehearsal serves a scoring script: set code_configuration=CodeConfiguration(...)."
            )
        name = deployment.name
        self._stop(name, endpoint_name)
        folder = self._dir(name, endpoint_name)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        model_name, version, model_folder = self._model_folder(deployment.model)
        model_dir = folder / "azureml-models" / model_name / version
        model_dir.parent.mkdir(parents=True)
        model_dir.symlink_to(model_folder, target_is_directory=True)
        code = Path(str(deployment.code_configuration.code)).resolve()
        script = str(deployment.code_configuration.scoring_script)
        if not (code / script).is_file():
            raise RehearsalError(f"the scoring script {script} is not in the code folder {code}.")
        _copytree(code, folder / "code")
        port = _free_port()
        env = _base_env()
        env.update(
            {
                "AML_APP_ROOT": str(folder / "code"),
                "AZUREML_ENTRY_SCRIPT": script,
                "AZUREML_MODEL_DIR": str(model_dir),
                "AML_APP_INSIGHTS_ENABLED": "false",
                # Azure's gateway checks the key; here the scoring script does (see score.py).
                "COURSE_ENDPOINT_KEY_FILE": str(self._ws.online_endpoints.key_file(endpoint_name)),
            }
        )
        user = {k: str(v) for k, v in (deployment.environment_variables or {}).items()}
        pythonpath = user.pop("PYTHONPATH", None)
        env.update(user)
        guard = self._ws.guard_env(
            folder,
            environment,
            "the serving environment",
            "list the package in [project.optional-dependencies] serve in pyproject.toml (azure.serving_environment())",
        )
        env = _with_guard(env, guard, pythonpath)
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"{HOST}:{port}",
            "--workers",
            "1",
            "--worker-class",
            "gthread",
            "--threads",
            "16",
            "--timeout",
            "600",
            "azureml_inference_server_http.server.entry:app",
        ]
        log_path = folder / "server.log"
        process = launch(command, log_path, env, cwd=folder / "code")
        record = {
            "name": name,
            "endpoint_name": endpoint_name,
            "pid": process.pid,
            "port": port,
            "log": str(log_path),
            "model": f"azureml:{model_name}:{version}",
            "instance_type": deployment.instance_type,
            "instance_count": deployment.instance_count,
            "provisioning_state": "Creating",
        }
        path = self._ws.state_file("deployments", endpoint_name, name)
        write_json(path, record)
        try:
            wait_healthy(process, f"http://{HOST}:{port}/", log_path, SERVER_TIMEOUT_S, f"deployment {name}")
        except ServerError as error:
            record.update(provisioning_state="Failed", pid=None)
            write_json(path, record)
            raise RehearsalError(
                f"deployment {name} failed: the scoring container did not become ready (Azure: 'ResourceNotReady'). "
                f"{error}\nSee ml_client.online_deployments.get_logs(name={name!r}, endpoint_name={endpoint_name!r}, "
                "lines=100)."
            ) from None
        record["provisioning_state"] = "Succeeded"
        write_json(path, record)
        return Poller(self.get(name, endpoint_name))

    def get(self, name: str, endpoint_name: str) -> Any:
        from azure.ai.ml.entities import ManagedOnlineDeployment

        record = self._record(name, endpoint_name)
        deployment = ManagedOnlineDeployment(
            name=name,
            endpoint_name=endpoint_name,
            model=record["model"],
            instance_type=record.get("instance_type"),
            instance_count=record.get("instance_count"),
        )
        deployment._provisioning_state = record.get("provisioning_state")
        return deployment

    def list(self, endpoint_name: str) -> list[Any]:
        return [self.get(n, endpoint_name) for n in self._names(endpoint_name)]

    def get_logs(self, name: str, endpoint_name: str, lines: int = 100, **_: Any) -> str:
        """The last ``lines`` of the scoring container's log (the inference server's output)."""
        record = self._record(name, endpoint_name)
        return _tail(Path(record["log"]), lines)

    def begin_delete(self, name: str, endpoint_name: str) -> Poller:
        self._stop(name, endpoint_name)
        self._ws.state_file("deployments", endpoint_name, name).unlink(missing_ok=True)
        shutil.rmtree(self._dir(name, endpoint_name), ignore_errors=True)
        return Poller(None)


def summary_note() -> dict[str, Any]:
    """What a dry run's summary.json should say about itself (``run.update_summary(rehearsal=…)``)."""
    from .azure import REHEARSAL_LIMITS

    return {
        "rehearsal": True,
        "what": "every Azure ML call answered by a local stand-in of the workspace (phi3course.rehearsal)",
        "cannot_check": list(REHEARSAL_LIMITS),
    }


def stop(root: str | os.PathLike[str]) -> list[str]:
    """Stop what the stand-in under ``root`` started (for ``make clean`` or a runner's last step); no SDK import."""
    from .processes import stop_group

    stopped = []
    for record in sorted(Path(root, "state").glob("*/**/*.json")):
        data = read_json(record, default={})
        if isinstance(data, dict) and data.get("pid") and stop_group(data["pid"]):
            stopped.append(f"{record.parent.name}/{record.stem}")
    return stopped


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "run-job":
        with contextlib.suppress(KeyboardInterrupt):
            return run_job(Path(args[1]))
        return 1
    if len(args) == 2 and args[0] == "stop":
        for what in stop(args[1]):
            print(f"stopped {what}")
        return 0
    print("usage: python -m phi3course.rehearsal run-job <job folder> | stop <rehearsal folder>", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
