"""Assets: data assets uploaded to the workspace's blob datastore, registered models, the model catalog's offline
presets laid out as Azure ML's catalog lays out its MLflow models, and the registries' answers about their models."""

from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..azure import CATALOG_RECORDS, REHEARSAL_REGISTRY
from ..files import read_json, write_json
from ..paths import cache_dir
from .common import RehearsalError, copy_tree, not_found

if TYPE_CHECKING:
    from .workspace import Workspace

DATASTORE = "workspaceblobstore"
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


def catalog_preset(registry: str, name: str) -> Any:
    """The course model a catalog URI resolves to here, or None: an offline preset in the ``rehearsal`` registry;
    for a model of Azure's catalog that :data:`CANNED_CATALOG` knows, the stand-in of the hub preset the course names
    it for (``models.stand_in``: that architecture, shrunk, random weights)."""
    from .. import models
    from ..azure import CATALOG_MODELS

    if registry == REHEARSAL_REGISTRY:
        return models.PRESETS.get(name)
    if name not in CANNED_CATALOG.get(registry, {}):
        return None
    for preset_name, entry in CATALOG_MODELS.items():
        preset = models.PRESETS.get(preset_name)
        if entry == (registry, name) and preset is not None and preset.positions is not None:
            return models.stand_in(preset)
    return None


def catalog_model(registry: str, name: str) -> Path:
    """A catalog model as a job input, laid out as Azure ML's catalog lays out its MLflow models:
    ``mlflow_model_folder/MLmodel``, ``…/model/`` (config and weights), ``…/components/tokenizer/``.

    The ``rehearsal`` registry resolves to the offline presets; Azure's ``azureml`` registry to the stand-ins of the
    Phi models the course names (:func:`catalog_preset`): no weights of Azure's models are here.
    """
    from .. import models

    preset = catalog_preset(registry, name)
    if preset is None:
        from ..azure import CATALOG_MODELS

        stand_ins = [n for r, n in CATALOG_MODELS.values() if r == registry and catalog_preset(r, n) is not None]
        raise RehearsalError(
            f"azureml://registries/{registry}/models/{name}: the rehearsal has no copy of this model of Azure's model "
            f"catalog (it has shrunk random copies of {' and '.join(stand_ins) or 'none of that registry'}). "
            "Rehearse with one of those, or an offline preset (model='smollm2-135m-instruct' or 'phi-3-tiny'), whose "
            "azure.catalog_model_uri() names the rehearsal registry."
        )
    subfolder = name if registry == REHEARSAL_REGISTRY else f"{registry}/{name}"
    folder = cache_dir() / "rehearsal-registry" / subfolder
    weights, tokenizer = models.ensure_cached(preset), models.preset_dir(preset) / "tokenizer"
    # what the copy is made from: when the course's copy changes (a new chat template, say), copy it again
    made_from = {"model": _fingerprint(weights, leave_out=TOKENIZER_FILES), "tokenizer": _fingerprint(tokenizer)}
    stamp = folder / "made_from.json"
    if not (folder / "mlflow_model_folder" / "MLmodel").is_file() or read_json(stamp, default={}) != made_from:
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = folder.with_name(f"{name}.part")
        shutil.rmtree(partial, ignore_errors=True)
        inner = partial / "mlflow_model_folder"
        copy_tree(weights, inner / "model", link=True)
        copy_tree(tokenizer, inner / "components" / "tokenizer", link=True)
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
        copy_tree(source, self._ws.root / "datastores" / DATASTORE / relative)
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
            raise not_found(f"data asset {name!r}")
        chosen = str(version) if version is not None else versions[-1]
        path = self._ws.root / "state" / "data" / name / f"{chosen}.json"
        if not path.is_file():
            raise not_found(f"data asset {name}:{chosen}")
        return Data(**read_json(path))


# --- models --------------------------------------------------------------------------------------------
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
        copy_tree(source, target, link=True)
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
            raise not_found(f"model {name}:{version or label or 'latest'}")
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


# --- the model catalog (registries) ----------------------------------------------------------------------
# What Azure's `azureml` registry says of the models the course names: the course's copy of the catalog's records
# (azure.CATALOG_RECORDS, read from Azure/azureml-assets), served as the registry's answers. Metadata only: no weights
# of Azure's models are here (the rehearsal trains from stand-ins, models.stand_in).
CANNED_CATALOG = CATALOG_RECORDS


CANNED_NOTE = "rehearsal: a canned copy of this asset's catalog record (Azure/azureml-assets), not Azure's answer"


class Registry:
    """A registry as ``MLClient(credential, registry_name=…)`` reaches it: only ``models``."""

    def __init__(self, name: str) -> None:
        self.registry_name = name
        self.models = RegistryModelOperations(name)


class RegistryModelOperations:
    """``models.get``/``models.list`` on a registry: the ``rehearsal`` registry holds the offline presets (version 1,
    no retirement date); ``azureml`` answers from :data:`CANNED_CATALOG` and for nothing else."""

    def __init__(self, registry: str) -> None:
        self._registry = registry

    def _records(self) -> dict[str, dict[str, Any]]:
        from .. import models
        from ..azure import CATALOG_MODELS

        if self._registry == REHEARSAL_REGISTRY:
            offline = [name for registry, name in CATALOG_MODELS.values() if registry == REHEARSAL_REGISTRY]
            return {
                name: {"version": "1", "tags": {"rehearsal": "an offline preset of the course, in no Azure registry"}}
                for name in offline
                if name in models.PRESETS
            }
        return {
            name: {**record, "tags": {**record["tags"], "rehearsal": CANNED_NOTE}}
            for name, record in CANNED_CATALOG.get(self._registry, {}).items()
        }

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        from azure.ai.ml.entities import Model

        records = self._records()
        record = records.get(name)
        if record is None or (version is not None and str(version) != record["version"]):
            known = ", ".join(records) or "none"
            raise not_found(
                f"model {name}:{version or label or 'latest'} in registry {self._registry!r} (the stand-in's copy "
                f"of it knows: {known})"
            )
        chosen = record["version"]
        uri = f"azureml://registries/{self._registry}/models/{name}/versions/{chosen}"
        return Model(name=name, version=chosen, type="mlflow_model", path=uri, tags=dict(record["tags"]))

    def list(self, name: str | None = None) -> list[Any]:
        return [self.get(n) for n in ([name] if name else list(self._records()))]
