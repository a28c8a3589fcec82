from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from phi3course import azure, models

GOOD = {
    "AZURE_SUBSCRIPTION_ID": "12345678-1234-1234-1234-123456789abc",
    "AZURE_RESOURCE_GROUP": "rg-phi3-course",
    "AZURE_ML_WORKSPACE_NAME": "phi3-ws",
    "AZURE_LOCATION": "eastus2",
    "AZURE_UAI_NAME": "phi3-identity",
}


def problems_of(values: dict[str, str]) -> list[str]:
    with pytest.raises(azure.AzureConfigError) as caught:
        azure.validate(values)
    return caught.value.problems


def test_good_values_validate() -> None:
    settings = azure.validate(GOOD)
    assert settings.workspace_name == "phi3-ws"
    expected = "/resourceGroups/rg-phi3-course/providers/Microsoft.ManagedIdentity/userAssignedIdentities/phi3-identity"
    assert settings.uai_resource_id.endswith(expected)


def test_the_seed_placeholders_give_one_problem_per_value(clean_azure_env) -> None:
    values, _ = azure.read_values(".env.example", environ=False)
    found = problems_of(values)
    assert len(found) == len(azure.FIELDS)
    for field, line in zip(azure.FIELDS, found, strict=True):
        assert line.startswith(field.env) and "placeholder" in line and field.where in line


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("AZURE_SUBSCRIPTION_ID", "1234", "malformed: expected a GUID"),
        ("AZURE_SUBSCRIPTION_ID", "<subscription-id>", "placeholder"),
        ("AZURE_RESOURCE_GROUP", "", "is empty"),
        ("AZURE_ML_WORKSPACE_NAME", "my workspace!", "malformed"),
        ("AZURE_LOCATION", "East US 2", "lower case"),
        ("AZURE_UAI_NAME", "   ", "is empty"),
    ],
)
def test_each_bad_value_is_named_with_where_to_find_it(key: str, value: str, words: str) -> None:
    found = problems_of({**GOOD, key: value})
    assert len(found) == 1
    assert found[0].startswith(key) and words in found[0] and "Find it in" in found[0]


def test_the_seeds_old_variable_name_gets_a_rename_hint() -> None:
    values = {k: v for k, v in GOOD.items() if k != "AZURE_ML_WORKSPACE_NAME"}
    values["AZURE_WORKSPACE_NAME"] = "phi3-ws"
    (line,) = problems_of(values)
    assert "rename AZURE_WORKSPACE_NAME to AZURE_ML_WORKSPACE_NAME" in line


def test_environment_overrides_the_env_file(tmp_path, clean_azure_env, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in GOOD.items()))
    monkeypatch.setenv("AZURE_LOCATION", "westeurope")
    values, source = azure.read_values(env_file)
    assert values["AZURE_LOCATION"] == "westeurope" and values["AZURE_RESOURCE_GROUP"] == "rg-phi3-course"
    assert source == ".env and the environment"


def test_check_for_local_target_needs_nothing(tmp_path, clean_azure_env, capsys) -> None:
    assert azure.check("local", tmp_path / "missing.env") is None
    assert "no Azure account needed" in capsys.readouterr().out


def test_check_for_azureml_lists_every_problem(tmp_path, clean_azure_env, capsys) -> None:
    assert azure.check("azureml", tmp_path / "missing.env") is None
    out = capsys.readouterr().out
    assert out.count(" is empty.") == len(azure.FIELDS) and "will skip" in out


def test_role_commands_give_the_identity_what_its_nodes_and_deployment_need_and_no_more() -> None:
    """The identity pulls images and reads blobs (AcrPull, Storage Blob Data Reader on the workspace's resources);
    it creates nothing, so no Contributor, and no role on the whole resource group or subscription."""
    commands = azure.role_assignment_commands(azure.validate(GOOD))
    text = "\n".join(commands)
    roles = re.findall(r'--role "([^"]+)"', text)
    assert sorted(roles) == ["AcrPull", "Storage Blob Data Reader"]
    assert "Contributor" not in text and "--scope /subscriptions/" not in text
    assert "--query storage_account" in text and "--query container_registry" in text
    assert "az identity create -g rg-phi3-course -n phi3-identity -l eastus2" in commands[0]
    assert "<" not in text


def test_the_identity_client_id_is_no_setting_of_the_course() -> None:
    """Nothing uses the identity's client id (the resource id names it), so .env does not ask for it."""
    from conftest import ROOT

    assert "AZURE_UAI_CLIENT_ID" not in {field.env for field in azure.FIELDS}
    assert "AZURE_UAI_CLIENT_ID" not in (ROOT / ".env.example").read_text(encoding="utf-8")
    assert azure.validate(GOOD).uai_resource_id.endswith("/userAssignedIdentities/phi3-identity")


# --- the Azure offering the course builds on ---------------------------------------------------------------
RETIRED = "Standard_NC6s_v3"


def test_no_retired_vm_size_in_the_azure_path() -> None:
    """NCv3 was retired on 2025-09-30; nothing the learner reads or runs may offer it."""
    from conftest import ROOT

    assert azure.GPU_CLUSTER_SIZE not in azure.RETIRED_SIZES
    paths = ["lib/phi3course/azure.py", "README.md", "docs/workshop.md", ".env.example"]
    paths += [str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").rglob("*") if p.suffix in {".ipynb", ".yaml"}]
    for path in paths:
        text = (ROOT / path).read_text(encoding="utf-8")
        offered = [line for line in text.splitlines() if RETIRED in line and "retired" not in line.lower()]
        assert not offered, f"{path} still offers {RETIRED}: {offered}"


def test_sizes_say_what_fits_which() -> None:
    default, small = azure.vm_size(azure.GPU_CLUSTER_SIZE), azure.vm_size(azure.SMALL_GPU_CLUSTER_SIZE)
    assert (default.name, default.bf16, default.method, default.precision) == (
        "Standard_NC24ads_A100_v4",
        True,
        "lora",
        "bf16",
    )
    assert (small.name, small.bf16, small.method, small.precision) == ("Standard_NC4as_T4_v3", False, "lora", "fp16")
    assert small.capability == (7, 5) and default.capability == (8, 0)  # bf16 follows from the compute capability
    assert small.gpu_gib <= 16 and default.gpu_gib >= 80
    with pytest.raises(azure.SizeError, match="retired on 2025-09-30"):
        azure.vm_size(RETIRED)


class _Sizes:
    """An MLClient-shaped fake whose answers are built by azure-ai-ml itself from REST models, as the service's are."""

    def __init__(self, limit: int, used: int) -> None:
        from azure.ai.ml._restclient.arm_ml_service.models import Usage as RestUsage
        from azure.ai.ml._restclient.arm_ml_service.models import UsageName, VirtualMachineSize
        from azure.ai.ml.entities import Usage, VmSize

        self.sizes = [
            VmSize._from_rest_object(VirtualMachineSize(name=n, family=f, v_cp_us=c, gpus=1))
            for n, f, c in (
                ("Standard_NC24ads_A100_v4", "standardNCADSA100v4Family", 24),
                ("Standard_NC4as_T4_v3", "standardNCASv3_T4Family", 4),
            )
        ]
        self.usages = [
            Usage._from_rest_object(RestUsage(current_value=u, limit=lim, name=UsageName(value=v, localized_value=v)))
            for v, u, lim in (
                ("Standard NCADSA100v4 Family Cluster Dedicated vCPUs", used, limit),
                ("standardNCASv3_T4Family", 0, 8),
                ("Total Cluster Dedicated Regional vCPUs", used, 100),
            )
        ]
        self.compute = self
        self.asked: list[str | None] = []

    def list_sizes(self, *, location: str | None = None) -> list:
        self.asked.append(location)
        return self.sizes

    def list_usage(self, *, location: str | None = None) -> list:
        self.asked.append(location)
        return self.usages


def test_quota_comes_from_azure_ml_compute_usage_with_the_family_and_cores_the_size_needs() -> None:
    """Azure ML compute quota (not `az vm list-usage`), read from list_sizes/list_usage."""
    client = _Sizes(limit=24, used=0)
    family, total = azure.quota_rows(client, "Standard_NC24ads_A100_v4", "eastus2")
    assert client.asked == ["eastus2", "eastus2"]
    assert "standardNCADSA100v4Family" in family.quota and family.needed == 24
    assert (family.used, family.limit, family.ok) == (0, 24, True)
    assert total.limit == 100 and total.ok
    short = azure.quota_rows(_Sizes(limit=24, used=12), "Standard_NC24ads_A100_v4", "eastus2")
    assert not short[0].ok and "TOO LOW" in azure.quota_report(short) and "Quota" in azure.quota_report(short)
    (t4, _) = azure.quota_rows(client, "Standard_NC4as_T4_v3", "eastus2")
    assert (t4.needed, t4.limit, t4.ok) == (4, 8, True)
    with pytest.raises(azure.SizeError):
        azure.quota_rows(client, RETIRED, "eastus2")
    for path in ("README.md", "docs/workshop.md"):
        from conftest import ROOT

        lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
        assert not [line for line in lines if line.strip().startswith("az vm list-usage")], f"{path} checks VM quota"


class _WithServing(_Sizes):
    """The fake above with the serving size too, and quota chosen per family."""

    def __init__(self, a100: int, esv3: int, esv3_used: int = 0) -> None:
        from azure.ai.ml._restclient.arm_ml_service.models import Usage as RestUsage
        from azure.ai.ml._restclient.arm_ml_service.models import UsageName, VirtualMachineSize
        from azure.ai.ml.entities import Usage, VmSize

        super().__init__(limit=a100, used=0)
        self.sizes.append(
            VmSize._from_rest_object(VirtualMachineSize(name="Standard_E4s_v3", family="standardESv3Family", v_cp_us=4))
        )
        self.usages.append(
            Usage._from_rest_object(
                RestUsage(current_value=esv3_used, limit=esv3, name=UsageName(value="standardESv3Family"))
            )
        )


def test_quota_stops_the_setup_when_a_family_has_fewer_cores_than_one_node_needs() -> None:
    """Quota 0 made the job wait in the queue for ever: require_quota raises, naming the family, the limit to request
    and where; the serving size is checked too, with the 20 % Azure keeps for upgrades."""
    assert [azure.serving_cores(4, n) for n in (1, 2, 5, 10)] == [8, 12, 24, 48]  # ceil(1.2 × n) × vCPUs
    rows = azure.quota_rows(_WithServing(24, 8), azure.GPU_CLUSTER_SIZE, "eastus2", serving_size="Standard_E4s_v3")
    assert [(r.purpose, r.family, r.needed) for r in rows] == [
        ("training", "standardNCADSA100v4Family", 24),
        ("training", azure.TOTAL_QUOTA, 24),
        ("serving", "standardESv3Family", 8),
        ("serving", azure.TOTAL_QUOTA, 8),
    ]
    azure.require_quota(rows, "eastus2")  # enough everywhere: nothing raised
    rows = azure.quota_rows(_WithServing(0, 8, esv3_used=4), azure.GPU_CLUSTER_SIZE, serving_size="Standard_E4s_v3")
    with pytest.raises(azure.QuotaError) as stopped:
        azure.require_quota(rows, "eastus2")
    message = str(stopped.value)
    assert "standardNCADSA100v4Family in eastus2" in message and "needs 24 vCPUs" in message
    assert "Request a limit of at least 24 vCPUs for standardNCADSA100v4Family" in message
    assert "Request a limit of at least 12 vCPUs for standardESv3Family" in message  # 4 in use + 8
    assert "queue" in message and "Azure ML studio → Quota" in message
    unread = [azure.QuotaRow("someFamily", 24, None, None, "someFamily")]
    azure.require_quota(unread)  # a quota the workspace did not list is unknown, not short
    assert "unknown" in azure.quota_report(unread) and "TOO LOW" not in azure.quota_report(unread)


class _Registry:
    """A registry client's models.get, answering with azure-ai-ml's Model as the catalog does."""

    def __init__(self, tags: dict[str, str] | None, asked: list) -> None:
        self.tags, self.asked, self.models = tags, asked, self

    def get(self, name: str, version: str | None = None, label: str | None = None):
        from azure.ai.ml.entities import Model
        from azure.core.exceptions import ResourceNotFoundError

        self.asked.append((name, version, label))
        if self.tags is None:
            raise ResourceNotFoundError("not found")
        return Model(name=name, version="15", type="mlflow_model", tags=self.tags)


def test_the_preflight_refuses_a_model_the_catalog_retired(monkeypatch, capsys) -> None:
    from datetime import date

    asked: list = []
    retiring = {"FinetuneRetirementDate": "2025-08-30", "InferenceRetirementDate": "2025-08-30"}
    monkeypatch.setattr(azure, "registry_client", lambda client, registry: _Registry(retiring, asked))
    with pytest.raises(azure.CatalogError) as refused:
        azure.check_catalog_model(object(), "phi-3-mini-4k-instruct", today=date(2025, 8, 30))
    assert asked == [("Phi-3-mini-4k-instruct", None, "latest")]  # looked up as the job's URI names it
    message = str(refused.value)
    assert "retired for fine-tuning on 2025-08-30 and for inference on 2025-08-30" in message
    assert "Phi-4-mini-instruct" in message
    found = azure.check_catalog_model(object(), "phi-3-mini-4k-instruct", today=date(2025, 8, 29))
    assert found.uri == "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/15"
    assert "retires for fine-tuning on 2025-08-30" in capsys.readouterr().out
    monkeypatch.setattr(azure, "registry_client", lambda client, registry: _Registry(None, asked))
    with pytest.raises(azure.CatalogError, match="not in the 'azureml' registry"):
        azure.check_catalog_model(object(), "phi-3-mini-4k-instruct")
    monkeypatch.setattr(azure, "registry_client", lambda client, registry: _Registry({"Finetune": "x"}, asked))
    assert azure.check_catalog_model(object(), "phi-3.5-mini-instruct").version == "15"  # no date: nothing to refuse
    with pytest.raises(ValueError, match="no catalog entry"):
        azure.check_catalog_model(object(), "gpt-2")


def test_the_preflight_takes_a_retired_model_from_the_hub_at_its_pinned_revision(monkeypatch, capsys) -> None:
    """Retired (or absent) in the catalog, with a hub id and a pinned revision: the job downloads it from the hub, and
    the pre-flight says so plainly. Phi-4-mini keeps the catalog; a model neither offers is refused."""
    from datetime import date

    from huggingface_hub import HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    from phi3course import telemetry

    today, asked = date(2026, 1, 5), []
    retiring = {"FinetuneRetirementDate": "2025-08-30", "InferenceRetirementDate": "2025-08-30"}
    monkeypatch.setattr(azure, "registry_client", lambda client, registry: _Registry(retiring, asked))
    monkeypatch.setattr(telemetry, "hub_reachable", lambda timeout=3.0: False)
    phi35 = models.PRESETS["phi-3.5-mini-instruct"]
    found = azure.check_base_model(object(), "phi-3.5-mini-instruct", today=today)
    assert (found.source, found.hub_id, found.revision) == (azure.HUB, phi35.hub_id, phi35.revision)
    assert found.model_path == "" and phi35.revision and len(phi35.revision) == 40
    said = " ".join(capsys.readouterr().out.split())
    assert "the catalog retired Phi-3.5-mini-instruct for fine-tuning on 2025-08-30" in said
    assert f"downloads it from the Hugging Face hub instead: {phi35.hub_id} at revision {phi35.revision}" in said
    assert "serves the fine-tuned copy" in said and "was not checked" in said
    monkeypatch.setattr(azure, "registry_client", lambda client, registry: _Registry(None, asked))  # absent
    assert azure.check_base_model(object(), "phi-3.5-mini-instruct").reason == "the 'azureml' registry has no " + (
        "Phi-3.5-mini-instruct"
    )
    with pytest.raises(azure.CatalogError, match="not in the 'azureml' registry"):  # no revision to download
        azure.check_base_model(object(), "phi-3-mini-4k-instruct")
    with pytest.raises(azure.CatalogError, match="not in the 'rehearsal' registry"):  # an offline preset: no hub id
        azure.check_base_model(object(), "smollm2-135m-instruct")
    monkeypatch.setattr(telemetry, "hub_reachable", lambda timeout=3.0: True)

    def no_such_revision(self, repo_id, revision=None, timeout=None):
        import httpx

        answer = httpx.Response(404, request=httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}"))
        raise RevisionNotFoundError(f"{repo_id}@{revision}", response=answer)

    monkeypatch.setattr(HfApi, "model_info", no_such_revision)
    with pytest.raises(azure.CatalogError, match=r"neither in the catalog .* nor on the hub"):
        azure.check_base_model(object(), "phi-3.5-mini-instruct")
    monkeypatch.setattr(azure, "registry_client", lambda client, registry: _Registry({}, asked))  # offered today
    phi4 = azure.check_base_model(object(), "phi-4-mini-instruct", today=today)
    assert phi4.from_catalog and phi4.uri.endswith("/models/Phi-4-mini-instruct/versions/15")
    assert phi4.model_path == "${{inputs.base_model}}"
    with pytest.raises(azure.CatalogError, match="out of date"):  # the job was built for the hub; the catalog has it
        azure.check_base_model(object(), "phi-3.5-mini-instruct", planned=azure.base_model("phi-3.5-mini-instruct"))


def test_the_job_is_built_from_the_courses_copy_of_the_catalogs_records() -> None:
    """No call to Azure: the route any target's job is built with. Retired with a pinned revision → the hub."""
    from datetime import date

    assert azure.base_model("phi-3.5-mini-instruct").source == azure.HUB
    assert azure.base_model("phi-3.5-mini-instruct", today=date(2025, 8, 29)).source == azure.CATALOG
    phi4 = azure.base_model("phi-4-mini-instruct")
    assert phi4.from_catalog and phi4.uri == azure.catalog_model_uri("phi-4-mini-instruct")
    assert azure.base_model("phi-3-mini-4k-instruct").from_catalog  # no revision to download: the pre-flight refuses
    assert azure.base_model("phi-3-tiny").uri == azure.catalog_model_uri("phi-3-tiny")
    with pytest.raises(ValueError, match="no catalog entry"):
        azure.base_model("gpt-2")


def test_the_preflight_reads_retirement_dates_from_the_system_metadata_too(monkeypatch) -> None:
    """Azure/azureml-assets' newer specs keep the lifecycle dates in system_metadata.deprecation, not in the tags."""
    from datetime import date

    from azure.ai.ml.entities import Model

    deprecation = {"finetuneRetirementDate": "2025-08-30T00:00:00.000000Z", "inferenceRetirementDate": ""}

    class Archived(_Registry):
        def get(self, name: str, version: str | None = None, label: str | None = None):
            return Model(
                name=name, version="15", type="mlflow_model", tags={}, system_metadata={"deprecation": deprecation}
            )

    monkeypatch.setattr(azure, "registry_client", lambda client, registry: Archived({}, []))
    with pytest.raises(azure.CatalogError, match="retired for fine-tuning on 2025-08-30"):
        azure.check_catalog_model(object(), "phi-3-mini-4k-instruct", today=date(2026, 1, 5))


def test_the_catalog_offers_phi4_mini_today_and_refuses_the_retired_phi3_models(tmp_path, capsys) -> None:
    """Against the stand-in's copy of the catalog: the azureml profile's model passes its pre-flight today; the
    retired two are refused with the date their catalog entries carry."""
    from datetime import date

    from phi3course import profiles, rehearsal

    ws = rehearsal.Workspace(tmp_path / "rehearsal")
    today = date.today()
    assert profiles.parameters("azureml")["model"] == "phi-4-mini-instruct"
    found = azure.check_catalog_model(ws, "phi-4-mini-instruct", today=today)
    assert found.uri == "azureml://registries/azureml/models/Phi-4-mini-instruct/versions/1"
    assert "retire" not in capsys.readouterr().out
    for retired in ("phi-3-mini-4k-instruct", "phi-3.5-mini-instruct"):
        with pytest.raises(azure.CatalogError, match="retired for fine-tuning on 2025-08-30") as refused:
            azure.check_catalog_model(ws, retired, today=today)
        assert "model='phi-4-mini-instruct'" in str(refused.value)


@pytest.mark.parametrize("model", ["phi-4-mini-instruct", "phi-3.5-mini-instruct"])
def test_the_job_path_rehearses_each_phi_model_on_its_shrunk_stand_in(tmp_path, monkeypatch, model, capsys) -> None:
    """02's job for ``model`` at smoke size (the azureml-dryrun-smoke profile, the model overridden), built as 02 builds
    it: Phi-4-mini from the catalog (its URI resolves to a random Phi-4-mini architecture, shrunk); Phi-3.5-mini, which
    the catalog retired, from the hub (no model input; ``--model`` names it and the stand-in's node resolves it to its
    shrunk random copy). Either way the job fine-tunes the real architecture's shape."""
    import json

    from azure.ai.ml import Input, Output, command
    from azure.ai.ml.entities import AmlCompute, Data

    from phi3course import profiles, rehearsal, synthetic
    from phi3course import train as train_module

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ws = rehearsal.Workspace(tmp_path / "rehearsal")
    cluster = AmlCompute(name="gpu-cluster", size=azure.GPU_CLUSTER_SIZE, min_instances=0, max_instances=1)
    ws.compute.begin_create_or_update(cluster).result()
    train_rows, _ = synthetic.splits(seed=0, subjects=2)
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in train_rows))
    train = ws.data.create_or_update(Data(name="phi-train", path=str(source), type="uri_file"))
    settings = train_module.settings_from_profile(
        {**profiles.parameters("azureml-dryrun-smoke"), "model": model},
        max_steps=2,
        replay=0,
        memory_gib=4.0,  # the job checks the memory of what it loads: the stand-in fits, a 3.8 B Phi would not
        train_file=str(source),
        output_dir=str(tmp_path / "unused"),
    )
    settings.validate()
    base = azure.base_model(settings.model)
    found = azure.check_base_model(ws, settings.model, planned=base)  # the pre-flight, before anything bills
    assert found.source == base.source
    job_paths = {"train_file": "${{inputs.train}}", "output_dir": "${{outputs.model}}", "model_path": base.model_path}
    job = command(
        code=str(azure.job_code(tmp_path / "job-code")),
        command="python -m phi3course.train " + train_module.job_arguments(settings, job_paths),
        inputs={
            "train": Input(type="uri_file", path=train.id),
            **({"base_model": Input(type=azure.CATALOG_MODEL_TYPE, path=base.uri)} if base.from_catalog else {}),
        },
        outputs={"model": Output(type="uri_folder")},
        environment=azure.job_environment(),
        compute="gpu-cluster",
        experiment_name="phi3-course",
    )
    if model == "phi-4-mini-instruct":
        assert base.uri == "azureml://registries/azureml/models/Phi-4-mini-instruct/labels/latest"
        assert "--model-path ${{inputs.base_model}}" in job.command
    else:
        assert not base.from_catalog and base.revision == models.PRESETS[model].revision
        assert "--model-path" not in job.command and "base_model" not in job.inputs
        assert "downloads it from the Hugging Face hub" in capsys.readouterr().out
    name = ws.jobs.create_or_update(job).name
    ws.jobs.stream(name)
    outputs = ws.root / "jobs" / name / "outputs" / "model"
    result = json.loads((outputs / "result.json").read_text())
    assert result["steps"] == 2 and result["total_parameters"] < 1_000_000
    tuned = json.loads((outputs / "model" / "config.json").read_text())
    real = models.PRESETS[model]
    assert tuned["num_attention_heads"] / tuned["num_key_value_heads"] == real.shape.heads / real.shape.kv_heads
    assert tuned["partial_rotary_factor"] == real.positions.partial_rotary_factor
    assert tuned["tie_word_embeddings"] == real.shape.tied
    assert tuned["rope_parameters"]["rope_type"] == real.positions.rope_scaling


def test_acr_pull_is_assigned_only_once_the_registry_exists() -> None:
    """The workspace's registry appears with its first image build; AcrPull comes last, guarded."""
    commands = azure.role_assignment_commands(azure.validate(GOOD))
    acr = [c for c in commands if "AcrPull" in c and not c.startswith("#")]
    assert len(acr) == 1 and commands[-1] == acr[0]
    assert 'if [ -n "$ACR" ]' in acr[0] and "--query container_registry" in acr[0]
    explained = "\n".join(c for c in commands if c.startswith("#"))
    assert "first image build" in explained and "02_fine_tune" in explained


def test_endpoint_names_get_a_suffix_unique_in_the_region() -> None:
    """Names are unique per region; like Azure's examples, a short random suffix."""
    import re

    names = {azure.endpoint_name() for _ in range(20)}
    assert len(names) == 20
    assert all(re.fullmatch(r"phi3-course-[0-9a-f]{8}", n) for n in names)
    assert azure.endpoint_name("phi3", suffix="0badcafe") == "phi3-0badcafe"
    with pytest.raises(ValueError, match="3–32"):
        azure.endpoint_name("x" * 30)


def _names(requirements: list[str]) -> set[str]:
    from packaging.requirements import Requirement

    return {Requirement(r).name.lower() for r in requirements}


def test_job_environment_has_what_the_job_needs_and_cuda_torch() -> None:
    """Azureml-mlflow (Azure ML sets an azureml:// tracking URI) and torch with GPU kernels."""
    environment = azure.job_environment()
    pip = azure.pip_requirements(environment)
    names = _names(pip)
    assert {"azureml-mlflow", "mlflow", "torch", "transformers", "trl", "peft", "bitsandbytes"} <= names
    assert not names & {"jupyterlab", "papermill", "promptflow", "playwright", "nbval"}
    lines = environment.conda_file["dependencies"][-1]["pip"]
    assert any(line.startswith("--extra-index-url https://download.pytorch.org/whl/cu12") for line in lines)
    assert "cuda12" in environment.image


def test_the_size_table_covers_the_training_and_the_serving_sizes() -> None:
    """00's table: each training size and each serving size (CPU and T4), with its quota family and number format."""
    rows = azure.vm_size_table()
    assert [(r["size"], r["for"]) for r in rows] == [(n, "training") for n in azure.VM_SIZES] + [
        (n, "serving") for n in azure.SERVING_SIZES
    ]
    serving = {r["size"]: r for r in rows if r["for"] == "serving"}
    assert serving["Standard_E4s_v3"]["quota family"] == "standardESv3Family"
    assert serving["Standard_E4s_v3"]["Phi-3-mini"] == "serves in fp32"
    assert serving["Standard_NC4as_T4_v3"]["quota family"] == "standardNCASv3_T4Family"
    assert serving["Standard_NC4as_T4_v3"]["Phi-3-mini"] == "serves in fp16"
    with pytest.raises(azure.SizeError, match=r"Standard_E4s_v3 .*Standard_NC4as_T4_v3"):
        azure.serving_size("Standard_E2s_v3")


def test_a_gpu_serving_size_gets_cuda_torch_and_the_gpu_image() -> None:
    """The T4 deployment: the same lean serve group, torch from the CUDA index, Azure's GPU inference image."""
    environment = azure.serving_environment("Standard_NC4as_T4_v3")
    names = _names(azure.pip_requirements(environment))
    assert {"azureml-inference-server-http", "torch", "transformers"} <= names
    assert not names & {"jupyterlab", "papermill", "promptflow", "trl", "peft", "bitsandbytes"}
    lines = environment.conda_file["dependencies"][-1]["pip"]
    assert any(line.startswith("--extra-index-url https://download.pytorch.org/whl/cu12") for line in lines)
    assert not any(line.endswith("/whl/cpu") for line in lines)
    assert "gpu-inference" in environment.image and environment.name != azure.serving_environment().name


def test_serving_environment_is_lean_with_cpu_torch() -> None:
    """The deployment's CPU image gets the serve group only: no CUDA torch, no JupyterLab/papermill/promptflow."""
    environment = azure.serving_environment()
    names = _names(azure.pip_requirements(environment))
    assert {"azureml-inference-server-http", "torch", "transformers"} <= names
    assert not names & {"jupyterlab", "papermill", "promptflow", "trl", "peft", "bitsandbytes", "azureml-mlflow"}
    lines = environment.conda_file["dependencies"][-1]["pip"]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert "cpu-inference" in environment.image


def test_environment_versions_come_from_the_one_dependency_list() -> None:
    import tomllib

    from packaging.requirements import Requirement

    from conftest import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = {Requirement(spec).name.lower(): spec for spec in project["dependencies"]}
    for group in ("job", "serve"):
        for spec in azure.requirements(group):
            name = Requirement(spec).name.lower()
            if name in pinned:
                assert spec == pinned[name], f"[{group}] {spec} differs from the dependency list's {pinned[name]}"


def imports_of(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports (relative imports left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0)
        for alias in node.names
    }


def test_the_scoring_folder_holds_score_and_what_it_imports_each_in_the_serving_environment(tmp_path) -> None:
    """The deployment uploads score.py and hardware.py alone: every import in them is the standard library, a file
    beside them, or a distribution the serving environment installs."""
    from phi3course import endpoint, rehearsal

    folder = endpoint.scoring_code(tmp_path / "code")
    assert azure.code_files(folder) == ["hardware.py", "score.py"]
    assert (folder / endpoint.SCORING_SCRIPT).is_file()
    beside = {path.stem for path in folder.glob("*.py")}
    modules = set().union(*(imports_of(path) for path in folder.glob("*.py")))
    assert "phi3course" not in modules and "hardware" in modules
    third_party = modules - set(sys.stdlib_module_names) - beside - {"__future__"}
    owners = rehearsal.module_owners()
    allowed = rehearsal.allowed_distributions(azure.pip_requirements(azure.serving_environment()))
    missing = {m: owners.get(m) for m in third_party if owners.get(m) not in allowed}
    assert not missing, f"the scoring folder imports what the serving environment lacks: {missing}"


def test_the_job_snapshot_holds_exactly_what_the_job_module_imports(tmp_path) -> None:
    """Computed from the source, imports inside functions included; no stand-in, notebook tooling or serving."""
    from phi3course import snapshot

    folder = azure.job_code(tmp_path / "job")
    files = azure.code_files(folder)
    wanted = snapshot.closure([azure.JOB_MODULE])
    assert files == sorted({"phi3course/__init__.py"} | {f"{m.replace('.', '/')}.py" for m in wanted})
    assert "phi3course/train.py" in files and "phi3course/probe.py" in files  # train imports probe in a function
    assert not [f for f in files if f.startswith(("phi3course/rehearsal", "phi3course/serving"))]
    assert not [f for f in files if f.startswith("phi3course/tools/")]
    for module in ("course", "endpoint", "exercises", "mlclient"):
        assert f"phi3course/{module}.py" not in files
    (folder / "phi3course" / "stray.txt").write_text("left from before")
    assert "phi3course/stray.txt" not in azure.code_files(azure.job_code(folder))  # a fresh folder each time
    check = (  # every module imports from the snapshot alone (the job's working directory comes first on sys.path)
        "import importlib, sys\n"
        f"for name in {sorted(wanted)!r}:\n"
        "    assert importlib.import_module(name).__file__.startswith(sys.argv[1]), name\n"
    )
    ran = subprocess.run([sys.executable, "-c", check, str(folder)], cwd=folder, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr


def test_catalog_model_uris() -> None:
    assert (
        azure.catalog_model_uri("phi-3-mini-4k-instruct")
        == "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/labels/latest"
    )
    assert azure.catalog_model_uri("phi-3.5-mini-instruct", version="3") == (
        "azureml://registries/azureml/models/Phi-3.5-mini-instruct/versions/3"
    )
    offline = azure.catalog_model_uri("smollm2-135m-instruct")
    assert azure.rehearsal_only(offline) and not azure.rehearsal_only(azure.catalog_model_uri("phi-3-mini-4k-instruct"))
    assert azure.rehearsal_only(azure.catalog_model_uri("phi-3-tiny"))
    with pytest.raises(ValueError, match="no catalog entry"):
        azure.catalog_model_uri("gpt-2")


def test_connect_gate(tmp_path, capsys) -> None:
    from phi3course import mlclient, rehearsal

    workspace = mlclient.connect(None, "rehearsal", run_path=tmp_path)
    out = capsys.readouterr().out
    assert isinstance(workspace, rehearsal.Workspace) and azure.is_rehearsal(workspace)
    assert workspace.root == (tmp_path / "rehearsal").resolve()
    assert workspace.subscription_id == azure.EXAMPLE_SETTINGS.subscription_id
    assert out.startswith("REHEARSAL") and "quota" in out and "image build" in out and "latency" in out
    fields = zip(azure.FIELDS, azure.AzureSettings.__annotations__, strict=True)
    assert azure.validate({f.env: getattr(azure.EXAMPLE_SETTINGS, name) for f, name in fields})
    assert mlclient.connect(None, "local") is None
    assert "skip" in capsys.readouterr().out
    assert mlclient.connect(None, "azureml") is None
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and ".env" in line
    with pytest.raises(ValueError, match=r"local.*rehearsal.*azureml"):
        mlclient.connect(None, "dry-run")


def test_a_dry_runs_summary_note_names_what_it_cannot_check() -> None:
    note = azure.rehearsal_note()
    assert note["rehearsal"] is True and note["cannot_check"] == list(azure.REHEARSAL_LIMITS)
    assert any("quota" in line for line in note["cannot_check"])
    assert any("COURSE_REHEARSAL_QUOTA" in line for line in note["cannot_check"])  # says how to rehearse quota 0
    assert any("catalog" in line for line in note["cannot_check"]) and any(
        "logged" in line for line in azure.REHEARSAL_LIMITS
    )
    limits = " ".join(azure.REHEARSAL_LIMITS)
    assert all(word in limits for word in ("regional capacity", "image build", "latency", "424"))  # not rehearsed
    assert "no gateway" not in limits  # the gateway's key check, 429 and 408 are (rehearsal.gateway)


# --- serving in the dtype the hardware computes ----------------------------------------------
def test_score_defaults_match_the_model_signature() -> None:
    from phi3course import tracking
    from phi3course.serving import score

    assert score.DEFAULTS == tracking.GENERATION_PARAMS


def test_score_loads_a_bf16_checkpoint_in_the_dtype_this_hardware_computes(tmp_path, monkeypatch) -> None:
    """Transformers 5 keeps a checkpoint's saved dtype; on a CPU, serve in fp32: without native bf16 (emulated, slow)
    and with it (in bf16 a batch's other prompts changed a prompt's greedy answer)."""
    import torch

    from phi3course import hardware, models
    from phi3course.serving import score

    model, tokenizer = models.load_model(models.PRESETS["phi-3-tiny"])
    model.to(torch.bfloat16).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path))
    monkeypatch.delenv("COURSE_ENDPOINT_KEY_FILE", raising=False)
    assert score.hardware is hardware  # the one answer to "is bf16 native here?"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "fma"})  # emulates bf16: not native
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    score.init()
    assert score._model.dtype == torch.float32
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512_bf16", "amx_bf16"})
    assert hardware.native_precision() == "bf16"  # training may take bf16 here (measured); serving does not
    score.init()
    assert score._model.dtype == torch.float32


@pytest.mark.parametrize(("size", "dtype"), [("Standard_E4s_v3", "float32"), ("Standard_NC4as_T4_v3", "float16")])
def test_score_serves_in_the_format_the_serving_size_computes(size, dtype) -> None:
    """The serving hardware's facts decide: fp16 on the T4 (no native bf16), fp32 on the CPU size (AVX2 cores)."""
    import torch

    from phi3course import hardware
    from phi3course.serving import score

    assert score.serving_dtype(azure.serving_size(size).machine) == getattr(torch, dtype)
    assert score.serving_dtype(hardware.Machine(gpu="NVIDIA A100 80GB PCIe", gpu_bf16=True)) == torch.bfloat16


def test_the_stand_in_offers_every_size_the_course_offers_as_the_course_records_it() -> None:
    """The rehearsal's canned sizes (Azure's answer to list_sizes) agree with the course's records: family, cores,
    GPUs; so 00's quota check rehearses the families the course names, the T4 serving size among them."""
    from phi3course.rehearsal.compute import CANNED_SIZES

    for size in [*azure.VM_SIZES.values(), *azure.SERVING_SIZES.values()]:
        family, vcpus, gpus, _, _ = CANNED_SIZES[size.name]
        assert (family, vcpus, gpus) == (size.family, size.vcpus, size.gpus), size.name
