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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dotenv import dotenv_values

from .paths import course_root

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import AmlCompute

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
PLACEHOLDER = re.compile(r"^(your[_\- ].*|<.*>|\{.*\}|x{3,}.*|.*changeme.*|.*placeholder.*|todo|tbd|\.\.\.)$", re.I)
GPU_CLUSTER_SIZE = "Standard_NC6s_v3"  # the seed's choice: V100, 16 GB, no bf16
CPU_CLUSTER_SIZE = "Standard_E16s_v3"
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
    Field(
        "AZURE_UAI_CLIENT_ID",
        "user-assigned identity client id",
        GUID,
        "a GUID",
        "`az identity show -g <group> -n <identity name> --query clientId -o tsv`",
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
    uai_client_id: str

    @property
    def uai_resource_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{self.uai_name}"
        )

    @property
    def group_scope(self) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"


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


def load(env_file: str | os.PathLike[str] | None = ".env") -> AzureSettings:
    """Read and validate the Azure settings (see :func:`read_values`)."""
    values, source = read_values(env_file)
    return validate(values, source)


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


def compute_spec(
    settings: AzureSettings | None,
    name: str = "gpu-cluster",
    size: str = GPU_CLUSTER_SIZE,
    max_instances: int = 1,
) -> AmlCompute:
    """The training cluster: scales to zero when idle, runs as the user-assigned identity."""
    from azure.ai.ml.entities import AmlCompute

    return AmlCompute(
        name=name,
        size=size,
        min_instances=0,
        max_instances=max_instances,
        idle_time_before_scale_down=120,
        tier="dedicated",
        identity=user_assigned_identity(settings),
    )


def ensure_compute(client: MLClient, spec: AmlCompute) -> Any:
    """Create the cluster unless it exists; return the workspace's copy either way."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return client.compute.get(spec.name)
    except ResourceNotFoundError:
        return client.compute.begin_create_or_update(spec).result()


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
    """The `az` commands that give the identity what the course needs.

    Contributor on the resource group (jobs and endpoints), Storage Blob Data Reader on the
    workspace's storage account (read data and models), AcrPull on its container registry
    (pull the environment's image). With no settings, placeholders show the shape.
    """
    s = settings
    group = s.resource_group if s else "<resource-group>"
    workspace = s.workspace_name if s else "<workspace>"
    identity = s.uai_name if s else "<identity-name>"
    location = s.location if s else "<region>"
    scope = s.group_scope if s else "/subscriptions/<subscription-id>/resourceGroups/<resource-group>"
    principal = f"$(az identity show -g {group} -n {identity} --query principalId -o tsv)"
    show_ws = f"az ml workspace show -g {group} -n {workspace}"
    assign = f"az role assignment create --assignee-object-id {principal} --assignee-principal-type ServicePrincipal"
    return [
        f"az identity create -g {group} -n {identity} -l {location}",
        f'{assign} --role "Contributor" --scope {scope}',
        f'{assign} --role "Storage Blob Data Reader" --scope $({show_ws} --query storage_account -o tsv)',
        f'{assign} --role "AcrPull" --scope $({show_ws} --query container_registry -o tsv)',
    ]


# --- the training job ----------------------------------------------------------------------------
GPU_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04:latest"
# Flags of ``python -m phi3course.train`` that the job passes from the notebook's settings.
JOB_FLAGS = (
    "model",
    "method",
    "epochs",
    "max_steps",
    "learning_rate",
    "batch_size",
    "lora_r",
    "lora_alpha",
    "max_length",
    "precision",
    "seed",
)


def quiet_sdk() -> None:
    """azure-ai-ml logs a line per experimental schema class it touches; learners need none of them."""
    import logging

    for name in ("azure.ai.ml", "azure.identity", "azure.core.pipeline.policies.http_logging_policy"):
        logging.getLogger(name).setLevel(logging.ERROR)


def course_dependencies() -> list[str]:
    """The course's one dependency list (with its GPU extra), read from pyproject.toml, for the job."""
    import tomllib

    project = tomllib.loads((course_root() / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["gpu"]]


def training_environment() -> Any:
    from azure.ai.ml.entities import Environment

    conda = {
        "name": "phi3-course",
        "channels": ["conda-forge"],
        "dependencies": ["python=3.11", "pip", {"pip": course_dependencies()}],
    }
    return Environment(name="phi3-course-train", image=GPU_IMAGE, conda_file=conda)


class JobSpecError(ValueError):
    """A training job that Azure ML would reject, found offline."""


def training_job(
    settings: Any,
    compute: str,
    instance_count: int = 1,
    processes_per_instance: int = 1,
    experiment: str = "phi3-course",
) -> Any:
    """The Azure ML command job that runs ``phi3course.train`` — the module the notebook runs locally.

    ``settings`` is a :class:`phi3course.train.TrainSettings`; its data files become ``uri_file``
    inputs, the model folder the job's output. More than one process uses ``PyTorchDistribution``
    (``torchrun`` on each node: instance_count × processes_per_instance workers).
    """
    from azure.ai.ml import Input, Output, PyTorchDistribution, command

    quiet_sdk()
    if instance_count < 1 or processes_per_instance < 1:
        raise JobSpecError("instance_count and processes_per_instance must be at least 1.")
    inputs = {"train": Input(type="uri_file", path=str(Path(settings.train_file).resolve()))}
    flags = ["--train-file ${{inputs.train}}", "--output-dir ${{outputs.model}}"]
    if settings.test_file:
        inputs["test"] = Input(type="uri_file", path=str(Path(settings.test_file).resolve()))
        flags.append("--test-file ${{inputs.test}}")
    flags += [f"--{name.replace('_', '-')} {getattr(settings, name)}" for name in JOB_FLAGS]
    workers = instance_count * processes_per_instance
    job = command(
        code=str(course_root() / "lib"),
        command="python -m phi3course.train " + " ".join(flags),
        inputs=inputs,
        outputs={"model": Output(type="uri_folder")},
        environment=training_environment(),
        environment_variables={"PYTHONPATH": ".", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "true"},
        compute=compute,
        instance_count=instance_count,
        distribution=PyTorchDistribution(process_count_per_instance=processes_per_instance) if workers > 1 else None,
        experiment_name=experiment,
        display_name=f"phi3-course-{settings.model}-{settings.method}",
        description="Fine-tune with trl SFT: the course's phi3course.train module, as in notebook 02_fine_tune.",
    )
    validate_job(job)
    return job


def validate_job(job: Any) -> None:
    """Offline checks: azure-ai-ml's own schema validation, and every ${{…}} reference is defined."""
    result = job._validate()
    if not result.passed:
        raise JobSpecError(f"the job spec is invalid: {result.error_messages}")
    for kind, names in (("inputs", set(job.inputs)), ("outputs", set(job.outputs))):
        for name in re.findall(r"\$\{\{" + kind + r"\.(\w+)\}\}", job.command):
            if name not in names:
                raise JobSpecError(f"the command uses ${{{{{kind}.{name}}}}} but the job has no such {kind[:-1]}.")
    if not (Path(job.code) / "phi3course" / "train.py").is_file():
        raise JobSpecError(f"the job's code folder {job.code} does not hold phi3course/train.py.")


def submit_training(client: MLClient, job: Any, stream: bool = True) -> Any:
    """Submit the job, stream its logs until it ends, and return the finished job."""
    submitted = client.jobs.create_or_update(job)
    if stream:
        client.jobs.stream(submitted.name)
    return client.jobs.get(submitted.name)


# --- the online endpoint ---------------------------------------------------------------------------
INFERENCE_IMAGE = "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cpu-inference:latest"
ENDPOINT_INSTANCE_TYPE = "Standard_E4s_v3"  # the original tutorial's choice: 4 vCPU, 32 GiB


def model_from_job(job_name: str, name: str) -> Any:
    """The model folder the training job wrote (``outputs/model/model``), as a registrable asset."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    return Model(
        path=f"azureml://jobs/{job_name}/outputs/model/paths/model/",
        name=name,
        type=AssetTypes.CUSTOM_MODEL,
        description=f"Fine-tuned by the course's training job {job_name}.",
    )


def endpoint_spec(settings: AzureSettings | None, name: str) -> Any:
    """A managed online endpoint with key auth, running as the user-assigned identity."""
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    quiet_sdk()
    identity = user_assigned_identity(settings)
    return ManagedOnlineEndpoint(
        name=name, auth_mode="key", identity=identity, description="The course's fine-tuned Phi-3 model"
    )


def deployment_spec(
    endpoint_name: str, model: Any, instance_type: str = ENDPOINT_INSTANCE_TYPE, name: str = "blue"
) -> Any:
    """The deployment: the course's scoring script as code configuration, the original tutorial's
    request settings and probes, the same limits the local endpoint enforces."""
    from azure.ai.ml.entities import (
        CodeConfiguration,
        Environment,
        ManagedOnlineDeployment,
        OnlineRequestSettings,
        ProbeSettings,
    )

    quiet_sdk()
    conda = {
        "name": "phi3-course-serve",
        "channels": ["conda-forge"],
        "dependencies": ["python=3.11", "pip", {"pip": course_dependencies()}],
    }
    probe = ProbeSettings(failure_threshold=30, success_threshold=1, period=100, initial_delay=500)
    return ManagedOnlineDeployment(
        name=name,
        endpoint_name=endpoint_name,
        model=model,
        code_configuration=CodeConfiguration(code=str(course_root() / "lib"), scoring_script="phi3course/score.py"),
        environment=Environment(name="phi3-course-serve", image=INFERENCE_IMAGE, conda_file=conda),
        instance_type=instance_type,
        instance_count=1,
        environment_variables={
            "COURSE_MAX_NEW_TOKENS": "256",
            "COURSE_MAX_PROMPT_TOKENS": "1024",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        },
        request_settings=OnlineRequestSettings(
            max_concurrent_requests_per_instance=3, request_timeout_ms=180000, max_queue_wait_ms=120000
        ),
        liveness_probe=probe,
        readiness_probe=probe,
    )


def deploy(client: MLClient, endpoint: Any, deployment: Any) -> tuple[str, str]:
    """Create the endpoint and deployment, send it all traffic; returns (scoring URI, primary key)."""
    client.online_endpoints.begin_create_or_update(endpoint).result()
    client.online_deployments.begin_create_or_update(deployment).result()
    endpoint.traffic = {deployment.name: 100}
    live = client.online_endpoints.begin_create_or_update(endpoint).result()
    keys = client.online_endpoints.get_keys(endpoint.name)
    return live.scoring_uri, keys.primary_key


def delete_endpoint(client: MLClient, name: str) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        client.online_endpoints.begin_delete(name=name).result()
    except ResourceNotFoundError:
        return False
    return True
