"""Azure ML settings, validation and the workspace's shared resources (``azureml`` target).

Values come from the environment or a ``.env`` file (``.env.example`` lists them). Each value is
checked offline first, so a placeholder or a typo gets one clear message that says where to find
the real value, before anything talks to Azure.
"""

from __future__ import annotations

import copy
import io
import os
import re
import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dotenv import dotenv_values

from . import snapshot
from .paths import course_root
from .sizes import GPU_CLUSTER_SIZE as GPU_CLUSTER_SIZE
from .sizes import GPU_SERVING_SIZE as GPU_SERVING_SIZE
from .sizes import RETIRED_SIZES as RETIRED_SIZES
from .sizes import SERVING_SIZE as SERVING_SIZE
from .sizes import SERVING_SIZES as SERVING_SIZES
from .sizes import SMALL_GPU_CLUSTER_SIZE as SMALL_GPU_CLUSTER_SIZE
from .sizes import TORCH_CPU_INDEX as TORCH_CPU_INDEX
from .sizes import TORCH_CUDA_INDEX as TORCH_CUDA_INDEX
from .sizes import VM_SIZES as VM_SIZES
from .sizes import SizeError as SizeError
from .sizes import VmSize as VmSize
from .sizes import serving_size as serving_size
from .sizes import vm_size as vm_size
from .sizes import vm_size_table as vm_size_table

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
PLACEHOLDER = re.compile(r"^(your[_\- ].*|<.*>|\{.*\}|x{3,}.*|.*changeme.*|.*placeholder.*|todo|tbd|\.\.\.)$", re.I)
ARM_SCOPE = "https://management.azure.com/.default"


@dataclass(frozen=True)
class Field:
    env: str
    label: str
    pattern: re.Pattern[str]
    rule: str
    where: str


FIELDS = (
    Field(
        "AZURE_SUBSCRIPTION_ID",
        "subscription id",
        GUID,
        "a GUID such as 12345678-1234-1234-1234-123456789abc",
        "Azure portal → Subscriptions → Subscription ID, or `az account show --query id -o tsv`",
    ),
    Field(
        "AZURE_RESOURCE_GROUP",
        "resource group",
        re.compile(r"^[\w\-.()]{1,89}[\w\-()]$"),
        "1–90 letters, digits, '-', '_', '.', '(' or ')', not ending with '.'",
        "Azure portal → Resource groups, or `az group list -o table`",
    ),
    Field(
        "AZURE_ML_WORKSPACE_NAME",
        "workspace name",
        re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,32}$"),
        "3–33 letters, digits, '-' or '_', starting with a letter or digit",
        "Azure portal → Azure Machine Learning → your workspace, or `az ml workspace list -g <group> -o table`",
    ),
    Field(
        "AZURE_LOCATION",
        "region",
        re.compile(r"^[a-z]+[a-z0-9]*$"),
        "a region's short name in lower case, such as eastus2 or westeurope",
        "`az group show -n <group> --query location -o tsv` (the workspace's region)",
    ),
    Field(
        "AZURE_UAI_NAME",
        "user-assigned identity name",
        re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,127}$"),
        "3–128 letters, digits, '-' or '_'",
        "Azure portal → Managed Identities, or `az identity list -g <group> -o table`",
    ),
)
# Names the original tutorial used that mean one of ours: a helpful hint, never a silent alias.
RENAMED = {"AZURE_WORKSPACE_NAME": "AZURE_ML_WORKSPACE_NAME", "AZURE_ML_WORKSPACE": "AZURE_ML_WORKSPACE_NAME"}


class AzureConfigError(ValueError):
    """One or more Azure settings are missing or wrong; ``problems`` has one line per value."""

    def __init__(self, problems: list[str], source: str) -> None:
        self.problems = problems
        super().__init__(
            f"Azure settings from {source} are not usable yet:\n" + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass(frozen=True)
class AzureSettings:
    subscription_id: str
    resource_group: str
    workspace_name: str
    location: str
    uai_name: str

    @property
    def uai_resource_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{self.uai_name}"
        )


# The rehearsal's settings when .env has none: valid in shape, fake in value (no such subscription exists).
EXAMPLE_SETTINGS = AzureSettings(
    subscription_id="00000000-0000-0000-0000-000000000000",
    resource_group="rg-rehearsal-not-azure",
    workspace_name="rehearsal-workspace",
    location="eastus2",
    uai_name="rehearsal-identity",
)


def read_values(env_file: str | os.PathLike[str] | None = ".env", environ: bool = True) -> tuple[dict[str, str], str]:
    """Settings from ``env_file`` overlaid by the environment, and where they came from.

    A relative ``env_file`` is taken from the course folder; ``environ=False`` reads the file alone.
    """
    values: dict[str, str] = {}
    sources = []
    if env_file:
        path = Path(env_file)
        path = path if path.is_absolute() else course_root() / path
        if path.is_file():
            values.update({k: v for k, v in dotenv_values(path).items() if v is not None})
            sources.append(path.name)
    wanted = {f.env for f in FIELDS} | set(RENAMED)
    from_env = {k: v for k, v in os.environ.items() if k in wanted} if environ else {}
    if from_env:
        sources.append("the environment")
    values.update(from_env)
    return values, " and ".join(sources) or "nowhere (no .env file, no AZURE_* variables)"


def validate(values: dict[str, str], source: str = "the given values") -> AzureSettings:
    """Check every value offline; raise one :class:`AzureConfigError` that lists each problem."""
    problems = []
    for f in FIELDS:
        value = (values.get(f.env) or "").strip()
        if not value:
            old = next((o for o, n in RENAMED.items() if n == f.env and values.get(o)), None)
            if old:
                problems.append(f"{f.env} ({f.label}) is empty, but {old} is set: rename {old} to {f.env}.")
            else:
                problems.append(f"{f.env} ({f.label}) is empty. Find it in: {f.where}.")
        elif PLACEHOLDER.match(value):
            problems.append(f"{f.env} ({f.label}) is still the placeholder {value!r}. Find it in: {f.where}.")
        elif not f.pattern.match(value):
            problems.append(f"{f.env} ({f.label}) {value!r} is malformed: expected {f.rule}. Find it in: {f.where}.")
    if problems:
        raise AzureConfigError(problems, source)
    return AzureSettings(*(values[f.env].strip() for f in FIELDS))


def check(target: str, env_file: str | os.PathLike[str] | None = ".env") -> AzureSettings | None:
    """The settings when they are usable; otherwise print why (one line per value) and return None.

    For the ``local`` target nothing is required, so this only says how far the settings are.
    """
    values, source = read_values(env_file)
    try:
        settings = validate(values, source)
    except AzureConfigError as error:
        if target == "azureml":
            print(error)
            print("The Azure cells below will skip until these are fixed (edit .env, then re-run this notebook).")
        else:
            print(
                f"Target {target!r}: no Azure account needed. ({len(error.problems)} of {len(FIELDS)} "
                "Azure settings are not set; fill .env from .env.example to use the azureml profile.)"
            )
        return None
    print(
        f"Azure settings from {source}: workspace {settings.workspace_name!r} in {settings.resource_group!r} "
        f"({settings.location}), identity {settings.uai_name!r}."
    )
    return settings


def has_credentials(timeout: float = 20.0) -> bool:
    """Whether ``DefaultAzureCredential`` yields a token within ``timeout`` seconds.

    The attempt runs in a daemon thread so that a slow credential chain never hangs a notebook.
    """
    from azure.identity import DefaultAzureCredential

    result: dict[str, bool] = {}

    def attempt() -> None:
        try:
            DefaultAzureCredential(exclude_interactive_browser_credential=True).get_token(ARM_SCOPE)
            result["ok"] = True
        except Exception:
            result["ok"] = False

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return result.get("ok", False)


def ml_client(settings: AzureSettings) -> MLClient:
    """An MLClient for the workspace, signed in by ``DefaultAzureCredential`` (``az login`` locally)."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    return MLClient(
        DefaultAzureCredential(exclude_interactive_browser_credential=True),
        subscription_id=settings.subscription_id,
        resource_group_name=settings.resource_group,
        workspace_name=settings.workspace_name,
        enable_telemetry=False,
    )


def user_assigned_identity(settings: AzureSettings | None) -> Any:
    """The course's user-assigned identity as azure-ai-ml wants it (None without settings)."""
    from azure.ai.ml.entities import IdentityConfiguration, ManagedIdentityConfiguration

    if settings is None:
        return None
    return IdentityConfiguration(
        type="user_assigned",
        user_assigned_identities=[ManagedIdentityConfiguration(resource_id=settings.uai_resource_id)],
    )


def to_yaml(entity: Any) -> str:
    """An azure-ai-ml entity as the YAML the CLI (`az ml ... --file`) would accept."""
    import json

    import yaml

    def fresh() -> Any:
        # Dumping rewrites an endpoint's identity in place: dump a copy, keep the original deployable.
        try:
            return copy.deepcopy(entity)
        except (KeyError, TypeError, AttributeError):  # command jobs refuse deepcopy; their dump is harmless
            return entity

    buffer = io.StringIO()
    fresh().dump(buffer)
    if buffer.getvalue().strip():
        return buffer.getvalue()
    # Endpoints dump nothing to a stream; their dict form (OrderedDicts → plain via JSON) says the same.
    return yaml.safe_dump(json.loads(json.dumps(fresh()._to_dict())), sort_keys=False)


def role_assignment_commands(settings: AzureSettings | None) -> list[str]:
    """The `az` commands that give the identity what the course needs, and no more, in an order that works.

    The identity runs the training cluster's nodes and the online deployment's container. Both pull the
    workspace's environment images (AcrPull on its container registry) and read from its storage account: the
    deployment its model, the nodes their inputs (Storage Blob Data Reader). Creating jobs, models and endpoints is
    done by you, signed in, not by the identity: it needs no Contributor role anywhere.

    AcrPull goes on the workspace's container registry, which Azure ML creates lazily, on the workspace's first image
    build (the first job of 02_fine_tune): right after `az ml workspace create` the registry does not exist and the
    assignment has no scope. The last command therefore looks the registry up and assigns AcrPull only when it
    exists, saying otherwise to run it again after the first job has started. Lines starting with '#' explain.
    With no settings, placeholders show the shape.
    """
    s = settings
    group = s.resource_group if s else "<resource-group>"
    workspace = s.workspace_name if s else "<workspace>"
    identity = s.uai_name if s else "<identity-name>"
    location = s.location if s else "<region>"
    principal = f"$(az identity show -g {group} -n {identity} --query principalId -o tsv)"
    show_ws = f"az ml workspace show -g {group} -n {workspace}"
    assign = f"az role assignment create --assignee-object-id {principal} --assignee-principal-type ServicePrincipal"
    return [
        f"az identity create -g {group} -n {identity} -l {location}",
        "# Storage Blob Data Reader: the deployment reads its model, the cluster's nodes their inputs.",
        f'{assign} --role "Storage Blob Data Reader" --scope $({show_ws} --query storage_account -o tsv)',
        "# AcrPull: the nodes and the deployment pull the environment images. The workspace's container registry"
        " appears with its first image build (the first job of 02_fine_tune): run the next line after that job has"
        " started; until then it only says so.",
        f"ACR=$({show_ws} --query container_registry -o tsv); "
        f'if [ -n "$ACR" ]; then {assign} --role "AcrPull" --scope "$ACR"; '
        'else echo "No container registry yet: run this again once the first job of 02_fine_tune has started."; fi',
    ]


# --- the SDK's own logging -------------------------------------------------------------------------
def quiet_sdk() -> None:
    """azure-ai-ml logs a line per experimental schema class it touches; learners need none of them."""
    import logging

    import azure.ai.ml  # noqa: F401  (its import sets its loggers' levels: quiet them after it)

    for name in ("azure.ai.ml", "azure.identity", "azure.core.pipeline.policies.http_logging_policy"):
        logging.getLogger(name).setLevel(logging.ERROR)


# === the Azure offering the course builds on ===================================================
# What the notebooks build their inline entities from: sizes, quota, names, the catalog, environments.


# --- quota -----------------------------------------------------------------------------------------
# Managed online deployments reserve 20 % extra cores for upgrades: an instance count n needs ceil(1.2 × n) VMs' cores.
SERVING_UPGRADE_RESERVE_PERCENT = 20
TOTAL_QUOTA = "Total Cluster Dedicated Regional vCPUs"
QUOTA_WHERE = (
    "Azure ML studio → Quota (or the Azure portal: your Machine Learning workspace → Usage + quotas), select the "
    "subscription and region, tick the family, Request quota"
)


class QuotaError(RuntimeError):
    """A quota the course needs is below what one node (or deployment) takes; the message names the family, the
    limit to request and where."""


@dataclass
class QuotaRow:
    """One quota the chosen size draws on: what it needs against what the region allows."""

    quota: str
    needed: int
    used: int | None
    limit: int | None
    family: str = ""  # the quota's name as list_usage gives it (the VM family, or the regional total)
    purpose: str = "training"  # training (the cluster's node) or serving (the online deployment)
    size: str = ""

    @property
    def free(self) -> int | None:
        return None if self.limit is None or self.used is None else self.limit - self.used

    @property
    def ok(self) -> bool:
        return self.free is not None and self.free >= self.needed

    @property
    def short(self) -> bool:
        """Known to be too low (an unread quota is not short: it is unknown)."""
        return self.free is not None and self.free < self.needed


def family_key(text: str) -> str:
    """'standardNCADSA100v4Family' and 'Standard NCADSA100v4 Family Cluster Dedicated vCPUs' → one key."""
    key = re.sub(r"[^a-z0-9]", "", text.lower())
    return key.removesuffix("clusterdedicatedvcpus")


def _usage_name(usage: Any) -> str:
    """Usage.name as azure-ai-ml returns it: a dict {'value', 'localized_value'} (from as_dict()) or an object."""
    name = getattr(usage, "name", None)
    if isinstance(name, dict):
        return str(name.get("value") or name.get("localizedValue") or name.get("localized_value") or "")
    return str(getattr(name, "value", None) or getattr(name, "localized_value", None) or name or "")


def _field(entity: Any, *names: str) -> Any:
    """An attribute of an SDK entity under any of its names.

    azure-ai-ml 1.35's ``VmSize``/``Usage._from_rest_object`` copy the REST model's ``as_dict()`` into the
    entity, which keys by the wire names: ``VmSize.v_cp_us`` stays None and the cores are in ``vCPUs``;
    ``Usage.current_value`` stays None and the use is in ``currentValue``.
    """
    for name in names:
        value = getattr(entity, name, None)
        if value is None and isinstance(getattr(entity, "__dict__", None), dict):
            value = entity.__dict__.get(name)
        if value is not None:
            return value
    return None


def serving_cores(vcpus: int, instances: int = 1) -> int:
    """The cores a managed online deployment of ``instances`` VMs of ``vcpus`` cores needs free: Azure reserves
    20 % more instances (rounded up) for upgrades."""
    return -(-instances * (100 + SERVING_UPGRADE_RESERVE_PERCENT) // 100) * vcpus  # ceil, in integers


def quota_rows(
    client: Any,
    size: str,
    location: str | None = None,
    instances: int = 1,
    serving_size: str | None = None,
    serving_instances: int = 1,
) -> list[QuotaRow]:
    """The Azure ML compute quota the training cluster (and, with ``serving_size``, the online deployment) needs,
    read with the SDK (not ``az vm list-usage``, which shows VM quota: Azure ML compute has its own).

    ``client.compute.list_sizes(location=…)`` gives each size's family and cores (``VmSize.family``,
    ``VmSize.v_cp_us``); ``client.compute.list_usage(location=…)`` the family's and the region's dedicated-core
    limits and use. Rows: the training family and the regional total for ``instances`` nodes; then the same two for
    the serving size, whose need includes the 20 % upgrade reserve. Raises :class:`SizeError` if the region does not
    offer a size.
    """
    sizes = {str(s.name).lower(): s for s in client.compute.list_sizes(location=location)}
    usages = list(client.compute.list_usage(location=location))
    wanted = [(size, "training", instances)] + ([(serving_size, "serving", serving_instances)] if serving_size else [])
    rows = []
    for name, purpose, count in wanted:
        found = sizes.get(name.lower())
        if found is None:
            raise SizeError(f"{name} is not offered for Azure ML compute in {location or 'the workspace region'}.")
        vcpus = int(_field(found, "v_cp_us", "vCPUs") or 0)
        cores = vcpus * count if purpose == "training" else serving_cores(vcpus, count)
        for quota, label in (
            (str(found.family), f"{found.family} (the family of {name}, {purpose})"),
            (TOTAL_QUOTA, f"{TOTAL_QUOTA} ({purpose})"),
        ):
            match = next((u for u in usages if family_key(_usage_name(u)) == family_key(quota)), None)
            used = None if match is None else int(_field(match, "current_value", "currentValue") or 0)
            limit = None if match is None else int(_field(match, "limit") or 0)
            rows.append(QuotaRow(label, cores, used, limit, quota, purpose, name))
    return rows


def quota_report(rows: list[QuotaRow]) -> str:
    """A line per quota and what to do when one is short."""
    lines = []
    for row in rows:
        state = "ok" if row.ok else ("TOO LOW" if row.short else "unknown (not in the workspace's usage list)")
        lines.append(f"{row.quota}: need {row.needed} vCPUs, {row.used} of {row.limit} in use → {state}")
    if any(row.short for row in rows):
        lines.append(
            "Request more in Azure ML studio → Quota (or the portal's 'Usage + quotas' for Machine Learning), "
            "or choose the other size (azure.VM_SIZES)."
        )
    return "\n".join(lines)


def require_quota(rows: list[QuotaRow], location: str | None = None) -> None:
    """Raise :class:`QuotaError` when a quota has fewer free cores than the size needs, naming the family, the
    limit to request and where. Without it a training job waits in the queue for ever (``jobs.stream`` never
    returns) and a deployment fails after minutes of provisioning."""
    short = [row for row in rows if row.short]
    if not short:
        return
    where = f" in {location}" if location else ""
    effect = {
        "training": "a job on this cluster would wait in the queue for ever",
        "serving": "03_deploy's deployment would fail (Azure keeps 20 % extra cores for upgrades)",
    }
    lines = []
    for row in short:
        assert row.used is not None and row.limit is not None
        what = "one node" if row.purpose == "training" else "one instance and the upgrade reserve"
        lines.append(
            f"{row.family}{where}: {row.purpose} on {row.size} needs {row.needed} vCPUs ({what}), "
            f"{row.limit - row.used} are free ({row.used} of {row.limit} in use) — {effect[row.purpose]}. "
            f"Request a limit of at least {row.used + row.needed} vCPUs for {row.family}."
        )
    raise QuotaError(
        "Not enough Azure ML quota for the course:\n"
        + "\n".join(f"  - {line}" for line in lines)
        + f"\nWhere: {QUOTA_WHERE}. Approval can take from minutes to days; re-run this notebook after it, or choose "
        "another size (compute_size; azure.VM_SIZES lists what each fits)."
    )


# --- names -----------------------------------------------------------------------------------------
ENDPOINT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")


def endpoint_name(base: str = "phi3-course", suffix: str | None = None) -> str:
    """A managed online endpoint name: ``base`` plus 8 hex characters, as Azure's own examples do,
    because endpoint names must be unique in the whole region. Keep it in the run directory."""
    import secrets

    name = f"{base}-{suffix if suffix is not None else secrets.token_hex(4)}"
    if not ENDPOINT_NAME.match(name):
        raise ValueError(
            f"endpoint name {name!r}: 3–32 letters, digits or '-', starting with a letter, not ending with '-'."
        )
    return name


# --- the rehearsal: what a dry run cannot check ------------------------------------------------------
REHEARSAL_LIMITS = (
    "your real quota and regional capacity: the stand-in's quota is canned (COURSE_REHEARSAL_QUOTA="
    "<family>=<vCPUs>,… sets it), and GPU sizes are often out of stock or at 0 cores on new subscriptions",
    "the environment image build (conda/pip resolution on Azure's builder, the CUDA torch wheel)",
    "the GPU itself (the job runs on this machine's CPU or GPU), role assignments and network access",
    "real latency and cost: a deployment runs on this machine, not on its instance_type, and its instance_count "
    "instances are one server here (the gateway's limit on requests in flight still counts them)",
    "the rest of Azure's gateway: its own checks are rehearsed (key 401, in-flight limit 429, request_timeout_ms "
    "408), but the scoring script's other answers pass as they are, where Azure turns a non-200 answer into 424 "
    "(the script's code in the ms-azureml-model-error-statuscode header); nor the endpoint's rate and bandwidth "
    "limits, TLS, Microsoft Entra tokens, the probe settings or autoscaling",
    "the model catalog beyond the records the stand-in holds (canned copies of the real assets' tags, retirement "
    "dates included; no weights of Azure's models: a job trains from an offline preset, or from a shrunk random copy "
    "of the Phi model's architecture)",
    "the Hugging Face hub: a job that downloads a retired Phi model from it trains the same shrunk copy here, so the "
    "download, its size and the node's internet access are not rehearsed",
    "Azure ML's tracking server beyond what it lacks (404 on MLflow 3's logged models): the stand-in serves MLflow's "
    "own server, whose other answers may differ from Azure's",
)


def rehearsal_note() -> dict[str, Any]:
    """What a dry run's summary.json says about itself (``course.start`` records it): the stand-in answered every
    Azure ML call, and what it cannot check."""
    return {
        "rehearsal": True,
        "what": "every Azure ML call answered by a local stand-in of the workspace (phi3course.rehearsal)",
        "cannot_check": list(REHEARSAL_LIMITS),
    }


def is_rehearsal(client: Any) -> bool:
    """Whether ``client`` is the local stand-in rather than a real MLClient."""
    return bool(getattr(client, "is_rehearsal", False))


# --- the base model from the model catalog ----------------------------------------------------------------
# Azure ML's model catalog (the `azureml` registry) names the models as below. The offline presets are in no
# catalog: their URIs name the registry "rehearsal", which exists nowhere on Azure; only the stand-in resolves it.
CATALOG_MODELS = {
    "phi-4-mini-instruct": ("azureml", "Phi-4-mini-instruct"),  # what Azure's fine-tuning samples use today
    "phi-3-mini-4k-instruct": ("azureml", "Phi-3-mini-4k-instruct"),  # retired 2025-08-30 (its catalog tags)
    "phi-3.5-mini-instruct": ("azureml", "Phi-3.5-mini-instruct"),  # retired 2025-08-30 (its catalog tags)
    "smollm2-135m-instruct": ("rehearsal", "smollm2-135m-instruct"),
    "phi-3-tiny": ("rehearsal", "phi-3-tiny"),
}
# The course's copy of what the `azureml` registry says of those models, copied from the assets' spec.yaml in
# Azure/azureml-assets (assets/models/system/phi-3-mini-4k-instruct and phi-3.5-mini-128k-instruct): the version and
# the lifecycle tags (retirement dates among them). Azure/azureml-assets holds no spec of the registry's
# Phi-4-mini-instruct (Azure/azureml-examples' fine-tuning sample looks it up by name, label "latest"): its record's
# version is a placeholder ("1"; on Azure the pre-flight pins whatever version "latest" resolves to), its tags are
# what is known of it (the hub model card: MIT, Microsoft; the sample's task), and it has no retirement date.
# base_model() builds the job from these records; check_base_model() asks the live catalog before anything bills; the
# rehearsal's registry answers with them.
CATALOG_RECORDS: dict[str, dict[str, dict[str, Any]]] = {
    "azureml": {
        "Phi-3-mini-4k-instruct": {
            "version": "15",
            "tags": {
                "InferenceLegacyDate": "2025-06-09",
                "InferenceDeprecationDate": "2025-06-30",
                "InferenceRetirementDate": "2025-08-30",
                "FinetuneDeprecationDate": "2025-06-30",
                "FinetuneRetirementDate": "2025-08-30",
                "displayName": "Phi-3-mini instruct (4k)",
                "task": "chat-completion",
                "license": "mit",
                "author": "Microsoft",
            },
        },
        "Phi-3.5-mini-instruct": {
            "version": "6",
            "tags": {
                "InferenceLegacyDate": "2025-06-09",
                "InferenceDeprecationDate": "2025-06-30",
                "InferenceRetirementDate": "2025-08-30",
                "FinetuneDeprecationDate": "2025-06-30",
                "FinetuneRetirementDate": "2025-08-30",
                "displayName": "Phi-3.5-mini instruct (128k)",
                "task": "chat-completion",
                "license": "mit",
                "author": "Microsoft",
            },
        },
        "Phi-4-mini-instruct": {
            "version": "1",
            "tags": {"task": "chat-completion", "license": "mit", "author": "Microsoft"},
        },
    },
}
CATALOG_MODEL_TYPE = "mlflow_model"  # how the catalog stores the Phi models: an MLflow folder (model, tokenizer)
REHEARSAL_REGISTRY = "rehearsal"


def catalog_model_uri(preset_name: str, label: str = "latest", version: str | None = None) -> str:
    """The job's base-model input: ``azureml://registries/azureml/models/Phi-3-mini-4k-instruct/labels/latest``.

    ``catalog_model_uri("phi-4-mini-instruct")`` is the model Azure's fine-tuning samples use since the catalog
    retired Phi-3-mini and Phi-3.5-mini. The offline presets get a ``registries/rehearsal`` URI that only a dry run
    resolves; on Azure it fails, by design.
    """
    if preset_name not in CATALOG_MODELS:
        raise ValueError(f"no catalog entry for {preset_name!r}: choose one of {', '.join(CATALOG_MODELS)}.")
    registry, name = CATALOG_MODELS[preset_name]
    tail = f"versions/{version}" if version else f"labels/{label}"
    return f"azureml://registries/{registry}/models/{name}/{tail}"


def rehearsal_only(uri: str) -> bool:
    """Whether a model URI exists only in the rehearsal (an offline preset), not in Azure's catalog."""
    return uri.startswith(f"azureml://registries/{REHEARSAL_REGISTRY}/")


# --- the pre-flight: is the base model still in the catalog? ------------------------------------------------
# The catalog's model assets carry their own retirement dates as tags (Azure/azureml-assets, spec.yaml of each model);
# after them a model is no longer offered for fine-tuning or inference.
RETIREMENT_TAGS = {"FinetuneRetirementDate": "fine-tuning", "InferenceRetirementDate": "inference"}
DEPRECATION_TAGS = {"FinetuneDeprecationDate": "fine-tuning", "InferenceDeprecationDate": "inference"}
# What Azure's current fine-tuning samples use in place of the retired Phi-3 models: Phi-4-mini-instruct, the same
# Phi3ForCausalLM architecture (32 layers × 3072, grouped-query attention, a ~200k vocabulary, 128k context).
CATALOG_ALTERNATIVE = "Phi-4-mini-instruct"


class CatalogError(RuntimeError):
    """The job's base model is not usable from the catalog (retired or absent); the message says what to choose.

    ``retired``: the retirement dates that have passed ({"fine-tuning": date, …}); empty when the model is absent."""

    def __init__(self, message: str, retired: dict[str, date] | None = None) -> None:
        super().__init__(message)
        self.retired = dict(retired or {})


@dataclass(frozen=True)
class CatalogModel:
    """What the catalog says of the job's base model: its registry, name, the version ``labels/latest`` resolves
    to, and the asset's tags (retirement dates among them)."""

    registry: str
    name: str
    version: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        """The version pinned: ``azureml://registries/<registry>/models/<name>/versions/<version>``."""
        return f"azureml://registries/{self.registry}/models/{self.name}/versions/{self.version}"


def registry_client(client: Any, registry: str) -> Any:
    """A client for registry ``registry`` with the workspace client's sign-in: ``MLClient(credential,
    registry_name=…)`` on Azure, the stand-in's copy of the catalog in a rehearsal."""
    if is_rehearsal(client):
        return client.registry(registry)
    from azure.ai.ml import MLClient

    return MLClient(client._credential, registry_name=registry, enable_telemetry=False)


def _dates(tags: dict[str, str], names: dict[str, str]) -> dict[str, date]:
    found = {}
    for tag, what in names.items():
        value = str(tags.get(tag) or "").strip()
        if value:
            try:
                found[what] = date.fromisoformat(value[:10])
            except ValueError:
                continue  # a tag that is no date says nothing about retirement
    return found


def _system_lifecycle(found: Any) -> dict[str, str]:
    """The lifecycle dates a catalog model carries in its system metadata, named as the tags name them.

    Azure/azureml-assets' newer specs keep them there (``system_metadata.deprecation.finetuneRetirementDate:
    '2025-08-30T00:00:00.000000Z'``) rather than as tags; azure-ai-ml's ``Model`` holds that as ``_system_metadata``.
    """
    system = getattr(found, "_system_metadata", None)
    lifecycle = system.get("deprecation") if isinstance(system, dict) else None
    if not isinstance(lifecycle, dict):
        return {}
    return {str(key)[:1].upper() + str(key)[1:]: str(value) for key, value in lifecycle.items() if value}


def _alternative() -> str:
    preset = next((p for p, (_, name) in CATALOG_MODELS.items() if name == CATALOG_ALTERNATIVE), None)
    choose = f"model={preset!r}" if preset else "in the azureml registry (no preset of this course names it yet)"
    return (
        f"Choose a model the catalog still offers: Azure's current fine-tuning samples use {CATALOG_ALTERNATIVE} "
        f"(the same Phi3ForCausalLM architecture), {choose}. Or rehearse offline: target='rehearsal' with an offline "
        "preset."
    )


def check_catalog_model(client: Any, preset_name: str, today: date | None = None) -> CatalogModel:
    """The pre-flight before a job bills: look the base model up in its registry (``models.get(name,
    label="latest")``) and refuse one the catalog has retired, with its date and what to choose instead.

    Returns what the catalog answered (the version ``labels/latest`` resolves to today, and the asset's tags);
    prints one line, and a warning when a deprecation date has passed. Raises :class:`CatalogError` when a
    retirement date (``FinetuneRetirementDate``, ``InferenceRetirementDate``) is today or earlier, or when the
    registry has no such model.
    """
    from azure.core.exceptions import ResourceNotFoundError

    if preset_name not in CATALOG_MODELS:
        raise ValueError(f"no catalog entry for {preset_name!r}: choose one of {', '.join(CATALOG_MODELS)}.")
    registry, name = CATALOG_MODELS[preset_name]
    today = today or date.today()
    try:
        found = registry_client(client, registry).models.get(name, label="latest")
    except ResourceNotFoundError as error:
        raise CatalogError(
            f"{name} is not in the {registry!r} registry (retired models leave the catalog): {error}. {_alternative()}"
        ) from error
    tags = {str(k): str(v) for k, v in (found.tags or {}).items()}
    model = CatalogModel(registry, name, str(found.version), {**tags, **_system_lifecycle(found)})
    retired = {what: day for what, day in _dates(model.tags, RETIREMENT_TAGS).items() if day <= today}
    if retired:
        when = " and ".join(f"for {what} on {day.isoformat()}" for what, day in retired.items())
        raise CatalogError(
            f"{name} (registry {registry!r}, version {model.version}) was retired {when} — the dates its catalog "
            f"entry carries (FinetuneRetirementDate/InferenceRetirementDate); a job or deployment that starts from it "
            f"would fail or stop working. {_alternative()}",
            retired,
        )
    deprecated = {what: day for what, day in _dates(model.tags, DEPRECATION_TAGS).items() if day <= today}
    retiring = _dates(model.tags, RETIREMENT_TAGS)
    line = f"catalog: {model.uri} (labels/latest today)"
    if retiring:
        line += "; retires " + ", ".join(f"for {what} on {day.isoformat()}" for what, day in retiring.items())
    print(line)
    if deprecated:
        since = ", ".join(f"for {what} since {day.isoformat()}" for what, day in deprecated.items())
        print(f"warning: {name} is deprecated {since}; it still runs until its retirement date. {_alternative()}")
    return model


# --- where the job takes its base model from: the catalog, else the hub --------------------------------------
CATALOG, HUB = "catalog", "hub"
BASE_MODEL_INPUT = "${{inputs.base_model}}"  # the job's --model-path when the catalog's copy is its input


@dataclass(frozen=True)
class BaseModel:
    """Where the job gets its base model.

    ``catalog``: the model catalog's MLflow copy, the job's ``base_model`` input (``uri``), passed as
    ``--model-path``. ``hub``: no model input; ``--model <preset>`` names a preset whose Hugging Face hub id and pinned
    revision travel in the job's code (``models.PRESETS``), and the job downloads it from the hub — for a model the
    catalog retired or lacks (``reason`` says which). Only the weights' source differs: the fine-tuned model the job
    registers is the workspace's own, so the catalog's inference retirement does not stop its deployment.
    """

    preset: str
    source: str  # CATALOG | HUB
    uri: str = ""  # the catalog model (labels/latest from the course's records; the version pinned once looked up)
    hub_id: str = ""
    revision: str = ""
    reason: str = ""  # why the hub

    @property
    def from_catalog(self) -> bool:
        return self.source == CATALOG

    @property
    def model_path(self) -> str:
        """The job's ``model_path`` (``train.job_arguments``): the catalog input, or "" (then ``--model`` loads it)."""
        return BASE_MODEL_INPUT if self.from_catalog else ""

    @property
    def where(self) -> str:
        if self.from_catalog:
            return self.uri
        return f"https://huggingface.co/{self.hub_id}/tree/{self.revision}"


def _on_the_hub(preset_name: str, reason: str) -> BaseModel | None:
    """The hub route for a preset with a hub id and a pinned revision, else None (nothing the job could download)."""
    from .models import PRESETS

    preset = PRESETS.get(preset_name)
    if preset is None or preset.source != "hub" or not preset.hub_id or not preset.revision:
        return None
    return BaseModel(preset_name, HUB, hub_id=preset.hub_id, revision=preset.revision, reason=reason)


def _retired_on(retired: dict[str, date]) -> str:
    return " and ".join(f"for {what} on {day.isoformat()}" for what, day in retired.items())


def base_model(preset_name: str, today: date | None = None) -> BaseModel:
    """Where the job of ``preset_name`` takes its base model, from the course's copy of the catalog's records
    (:data:`CATALOG_RECORDS`; no call to Azure, so any target can build the job): the catalog's model
    (``labels/latest``) unless its record has a retirement date that has passed, and then the hub at the preset's
    pinned revision. A retired model without a hub revision stays on the catalog route: :func:`check_base_model`
    refuses it before anything bills. Raises ValueError for a preset with no catalog entry."""
    uri = catalog_model_uri(preset_name)
    registry, name = CATALOG_MODELS[preset_name]
    record = CATALOG_RECORDS.get(registry, {}).get(name)
    if record is not None:
        retired = {k: v for k, v in _dates(record["tags"], RETIREMENT_TAGS).items() if v <= (today or date.today())}
        hub = _on_the_hub(preset_name, f"the catalog retired {name} {_retired_on(retired)}") if retired else None
        if hub is not None:
            return hub
    return BaseModel(preset_name, CATALOG, uri=uri)


def _hub_answers(chosen: BaseModel, client: Any) -> None:
    """From a machine that reaches the hub, check that the hub has the model at its revision (a CatalogError if not);
    say so when it cannot be checked from here (the job's node reaches the hub all the same)."""
    if is_rehearsal(client):
        print(
            "Rehearsal: the stand-in's job has no hub either; it trains the preset's stand-in (a random copy of the "
            "model's architecture, shrunk), from the same command."
        )
        return
    from .telemetry import hub_reachable

    if not hub_reachable():
        print(f"(The hub does not answer from here, so {chosen.hub_id} was not checked; the job's node downloads it.)")
        return
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().model_info(chosen.hub_id, revision=chosen.revision, timeout=20)
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise CatalogError(
            f"{chosen.preset} is neither in the catalog ({chosen.reason}) nor on the hub at {chosen.where} "
            f"({type(error).__name__}). {_alternative()}"
        ) from error
    except Exception as error:  # the hub's answer is not needed to submit: the job's node asks it again
        print(f"(The hub did not answer for {chosen.hub_id} from here: {type(error).__name__}; the job asks it again.)")


def check_base_model(
    client: Any, preset_name: str, planned: BaseModel | None = None, today: date | None = None
) -> BaseModel:
    """The pre-flight before a job bills: look the base model up in the catalog (:func:`check_catalog_model`), else
    on the hub (:func:`base_model`'s route for a model the catalog retired or lacks), and print where the job takes it.

    Returns the catalog's model with its version pinned, or the hub's at the preset's pinned revision. Raises
    :class:`CatalogError` for a model neither offers (its message says what to choose), and when ``planned`` (the
    job's route, built from the course's records) is not the catalog's answer today.
    """
    try:
        chosen = BaseModel(preset_name, CATALOG, uri=check_catalog_model(client, preset_name, today).uri)
    except CatalogError as error:
        registry, name = CATALOG_MODELS[preset_name]
        reason = (
            f"the catalog retired {name} {_retired_on(error.retired)}"
            if error.retired
            else f"the {registry!r} registry has no {name}"
        )
        hub = _on_the_hub(preset_name, reason)
        if hub is None:
            raise
        chosen = hub
        print(
            f"base model: {chosen.preset} — {reason}. The job downloads it from the Hugging Face hub instead: "
            f"{chosen.hub_id} at revision {chosen.revision} ({chosen.where}); the cluster's node needs internet "
            "access. The deployment serves the fine-tuned copy the job registers in your workspace, so the catalog's "
            "retirement does not stop serving it."
        )
        _hub_answers(chosen, client)
    if planned is not None and planned.source != chosen.source:
        raise CatalogError(
            f"The job above takes {preset_name} from the {planned.source} ({planned.where}), but the pre-flight finds "
            f"it on the {chosen.source} today ({chosen.where}; {chosen.reason or 'the catalog offers it'}): the "
            "course's copy of the catalog's records (azure.CATALOG_RECORDS) is out of date. Build the job with "
            f"base = azure.check_base_model(ml_client, {preset_name!r}) instead of azure.base_model(...), or choose "
            "another model."
        )
    return chosen


# --- lean environments from one place ----------------------------------------------------------------------
JOB_IMAGE = "mcr.microsoft.com/azureml/openmpi5.0-cuda12.6-ubuntu24.04:latest"
SERVE_IMAGE = "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cpu-inference:latest"
# The GPU flavour of the same inference image. torch's CUDA wheels bring their own CUDA libraries: the image's CUDA
# version does not bind them, the node's driver does.
SERVE_GPU_IMAGE = "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cuda11.8-gpu-inference:latest"


def _project() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((course_root() / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def requirements(group: str) -> list[str]:
    """The pip requirements of optional-dependency group ``group`` (``job`` or ``serve``) in pyproject.toml.

    The group names packages; a bare name takes its pin from the course's main dependency list, so every
    version lives in one place and each environment gets only what its code imports.
    """
    from packaging.requirements import Requirement

    project = _project()
    pins = {Requirement(spec).name.lower(): spec for spec in project["dependencies"]}
    groups = project.get("optional-dependencies", {})
    if group not in groups:
        raise KeyError(f"pyproject.toml has no [project.optional-dependencies] {group!r}.")
    resolved = []
    for spec in groups[group]:
        requirement = Requirement(spec)
        bare = not requirement.specifier and not requirement.extras and requirement.marker is None
        resolved.append(pins.get(requirement.name.lower(), spec) if bare else spec)
    return resolved


def conda_spec(name: str, pip: list[str], index_lines: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "channels": ["conda-forge"],
        "dependencies": ["python=3.11", "pip", {"pip": [*index_lines, *pip]}],
    }


def job_environment(size: str = GPU_CLUSTER_SIZE) -> Any:
    """The training job's environment: the ``job`` group (with ``azureml-mlflow``, which the job needs because
    Azure ML points MLflow at an ``azureml://`` URI), torch from the CUDA index with kernels for ``size``'s GPU."""
    from azure.ai.ml.entities import Environment

    index = VM_SIZES[size].torch_index if size in VM_SIZES else TORCH_CUDA_INDEX
    conda = conda_spec("phi3-course-job", requirements("job"), [f"--extra-index-url {index}"])
    return Environment(
        name="phi3-course-job",
        image=JOB_IMAGE,
        conda_file=conda,
        description="Fine-tuning job: pyproject.toml [job], CUDA torch.",
    )


def serving_environment(size: str = SERVING_SIZE) -> Any:
    """The deployment's environment for serving size ``size`` (``sizes.SERVING_SIZES``): the ``serve`` group and
    nothing else (no JupyterLab, papermill or promptflow), on Azure's inference image — CPU torch on a CPU size,
    torch's CUDA wheel and the GPU image on a GPU size. An unknown size raises ``SizeError`` naming the offered ones."""
    from azure.ai.ml.entities import Environment

    record = serving_size(size)
    kind = "CUDA" if record.gpus else "CPU"
    name = "phi3-course-serve-gpu" if record.gpus else "phi3-course-serve"
    conda = conda_spec(name, requirements("serve"), [f"--extra-index-url {record.torch_index}"])
    return Environment(
        name=name,
        image=SERVE_GPU_IMAGE if record.gpus else SERVE_IMAGE,
        conda_file=conda,
        description=f"Online deployment on {record.name}: pyproject.toml [serve], {kind} torch.",
    )


def pip_requirements(environment: Any) -> list[str]:
    """The requirement lines of an Environment's conda pip section (index options left out)."""
    conda = environment.conda_file if not isinstance(environment, dict) else environment
    if isinstance(conda, str | os.PathLike):
        import yaml

        conda = yaml.safe_load(Path(conda).read_text(encoding="utf-8"))
    pip: list[str] = []
    for item in (conda or {}).get("dependencies", []):
        if isinstance(item, dict) and "pip" in item:
            pip += [line for line in item["pip"] if not line.strip().startswith("-")]
    return pip


# --- code snapshots ---------------------------------------------------------------------------------------
JOB_MODULE = "phi3course.train"  # the job runs `python -m phi3course.train` in its code folder


def job_code(dest: str | os.PathLike[str]) -> Path:
    """Folder ``dest`` holding only the course modules the job's ``python -m phi3course.train`` imports (read from
    their source, imports inside functions included), laid out as the package: the job's ``command(code=…)``."""
    return snapshot.copy_package([JOB_MODULE], Path(dest))


def code_files(folder: str | os.PathLike[str]) -> list[str]:
    """The files a code folder holds: what ``command(code=…)`` or ``CodeConfiguration(code=…)`` uploads."""
    return snapshot.files(Path(folder))


TARGETS = ("local", "rehearsal", "azureml")  # where the notebooks' work runs: here, the stand-in, Azure ML


def check_target(target: str) -> str:
    """``target`` if it is one of :data:`TARGETS`, else a ValueError naming them."""
    if target not in TARGETS:
        raise ValueError(
            f"target={target!r}: choose local (this machine), rehearsal (the Azure cells against a local stand-in "
            "of the workspace) or azureml (an Azure ML workspace)."
        )
    return target


def settings_for(target: str, env_file: str | os.PathLike[str] | None = ".env") -> Any:
    """The Azure settings a notebook builds its entities with: ``.env``'s, checked, on the azureml target.

    The rehearsal target uses ``.env``'s values when they are valid, and otherwise the stand-in's example values
    (fake ids), so the entities still carry an identity and validate as they would on Azure.
    """
    check_target(target)
    quiet_sdk()  # before the notebook builds entities: no "experimental class" log line per schema
    if target == "rehearsal":
        values, source = read_values(env_file)
        try:
            settings = validate(values, source)
        except AzureConfigError:
            print("Rehearsal: no usable .env, so the entities carry example Azure settings (fake ids).")
            return EXAMPLE_SETTINGS
        print(f"Rehearsal with the settings from {source}: nothing reaches Azure all the same.")
        return settings
    return check(target, env_file) if target == "azureml" else None
