"""The local stand-in of the Azure ML workspace (the dry run), driven as the notebooks drive MLClient."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
import requests
from azure.ai.ml import Input, Output, PyTorchDistribution, command
from azure.ai.ml.entities import (
    AmlCompute,
    CodeConfiguration,
    Data,
    Environment,
    ManagedOnlineDeployment,
    ManagedOnlineEndpoint,
    Model,
)
from azure.ai.ml.exceptions import JobException
from azure.core.exceptions import ResourceNotFoundError

from phi3course import azure, rehearsal
from phi3course.endpoint import SCORING_SCRIPT, scoring_code
from phi3course.processes import alive

JOB_SCRIPT = """
import json, os, sys
import yaml  # from the environment's list (pyyaml)

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
keys = ("AZUREML_RUN_ID", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "GREETING", "RANK", "WORLD_SIZE", "PYTHONPATH")
seen = {k: os.environ.get(k) for k in keys}
seen.update(cwd=os.getcwd(), args=args, train=open(args["--train"]).read(), yaml=yaml.__name__)
print("hello from rank", os.environ.get("RANK", "0"))
os.makedirs(args["--out"], exist_ok=True)
with open(os.path.join(args["--out"], f"seen{os.environ.get('RANK', '')}.json"), "w") as handle:
    json.dump(seen, handle)
"""


def environment(*pip: str) -> Environment:
    return Environment(
        image="mcr.microsoft.com/azureml/openmpi5.0-ubuntu24.04:latest", conda_file=azure.conda_spec("t", list(pip), [])
    )


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory):
    workspace = rehearsal.Workspace(tmp_path_factory.mktemp("dryrun") / "rehearsal")
    cluster = AmlCompute(name="gpu-cluster", size=azure.GPU_CLUSTER_SIZE, min_instances=0, max_instances=1)
    workspace.compute.begin_create_or_update(cluster).result()
    yield workspace
    workspace.stop_all()


@pytest.fixture(scope="module")
def code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("code")
    (folder / "job.py").write_text(JOB_SCRIPT)
    return folder


@pytest.fixture(scope="module")
def train_asset(ws, tmp_path_factory: pytest.TempPathFactory) -> Data:
    source = tmp_path_factory.mktemp("data") / "train.jsonl"
    source.write_text('{"text": "one"}\n')
    return ws.data.create_or_update(Data(name="course-train", path=str(source), type="uri_file"))


def job_of(code: Path, train: Data, env: Environment, **options) -> object:
    return command(
        code=str(code),
        command="python job.py --train ${{inputs.train}} --n ${{inputs.n}} --out ${{outputs.result}}",
        inputs={"train": Input(type="uri_file", path=f"azureml:{train.name}:{train.version}"), "n": 3},
        outputs={"result": Output(type="uri_folder")},
        environment=env,
        compute="gpu-cluster",
        experiment_name="rehearsal-test",
        **options,
    )


def test_compute_quota_and_retired_sizes(ws) -> None:
    cluster = ws.compute.get("gpu-cluster")
    assert isinstance(cluster, AmlCompute) and cluster.size == "Standard_NC24ads_A100_v4"
    assert cluster.provisioning_state == "Succeeded" and cluster.min_instances == 0
    with pytest.raises(ResourceNotFoundError):
        ws.compute.get("no-such-cluster")
    with pytest.raises(rehearsal.RehearsalError, match="retired"):
        ws.compute.begin_create_or_update(AmlCompute(name="old", size="Standard_NC6s_v3"))
    family, _ = azure.quota_rows(ws, azure.GPU_CLUSTER_SIZE, ws.location)
    assert family.needed == 24 and family.ok and "standardNCADSA100v4Family" in family.quota
    marked = [u for u in ws.compute.list_usage() if "rehearsal" in str(u.name)]
    assert marked, "canned quota must say it is the rehearsal's"


def test_quota_set_to_zero_stops_the_setup_naming_the_family_and_the_cores_to_request(ws, monkeypatch) -> None:
    """A new subscription's A100 quota is 0: 00_setup must stop there, not let the job queue for ever."""
    rows = azure.quota_rows(ws, azure.GPU_CLUSTER_SIZE, ws.location, serving_size="Standard_E4s_v3")
    azure.require_quota(rows, ws.location)  # the canned quota lets the course run
    monkeypatch.setenv("COURSE_REHEARSAL_QUOTA", "standardNCADSA100v4Family=0")
    rows = azure.quota_rows(ws, azure.GPU_CLUSTER_SIZE, ws.location, serving_size="Standard_E4s_v3")
    family = next(row for row in rows if row.family == "standardNCADSA100v4Family")
    assert (family.limit, family.short) == (0, True)
    assert [u for u in ws.compute.list_usage() if "set by COURSE_REHEARSAL_QUOTA" in str(u.name)]
    with pytest.raises(azure.QuotaError) as stopped:
        azure.require_quota(rows, ws.location)
    message = str(stopped.value)
    assert "standardNCADSA100v4Family in eastus2" in message and "at least 24 vCPUs" in message
    assert "Azure ML studio → Quota" in message and "standardESv3Family" not in message
    monkeypatch.setenv("COURSE_REHEARSAL_QUOTA", "standardesv3family=4, total=100")  # serving: 8 with the reserve
    with pytest.raises(azure.QuotaError, match=r"standardESv3Family.*Standard_E4s_v3 needs 8 vCPUs.*at least 8"):
        azure.require_quota(azure.quota_rows(ws, azure.GPU_CLUSTER_SIZE, serving_size="Standard_E4s_v3"))
    monkeypatch.setenv("COURSE_REHEARSAL_QUOTA", "A100=0")
    with pytest.raises(rehearsal.RehearsalError, match=r"standardNCADSA100v4Family.*e\.g\. COURSE_REHEARSAL_QUOTA="):
        ws.compute.list_usage()


def test_the_catalog_refuses_a_retired_model_with_its_date_and_the_alternative(ws, capsys) -> None:
    """The registry's records carry the real assets' retirement tags: Phi-3-mini-4k-instruct retired on 2025-08-30."""
    from datetime import date

    offline = azure.check_catalog_model(ws, "smollm2-135m-instruct")  # what the dry run trains from
    assert offline.uri == "azureml://registries/rehearsal/models/smollm2-135m-instruct/versions/1"
    assert "catalog: azureml://registries/rehearsal/" in capsys.readouterr().out
    with pytest.raises(azure.CatalogError) as refused:
        azure.check_catalog_model(ws, "phi-3-mini-4k-instruct", today=date(2026, 1, 5))
    message = str(refused.value)
    assert "Phi-3-mini-4k-instruct" in message and "version 15" in message and "2025-08-30" in message
    assert "Phi-4-mini-instruct" in message and "fine-tuning" in message
    with pytest.raises(azure.CatalogError, match="2025-08-30"):
        azure.check_catalog_model(ws, "phi-3.5-mini-instruct", today=date(2026, 1, 5))
    before = azure.check_catalog_model(ws, "phi-3-mini-4k-instruct", today=date(2025, 7, 1))  # deprecated, not gone
    assert before.version == "15" and before.tags["FinetuneRetirementDate"] == "2025-08-30"
    assert "deprecated" in capsys.readouterr().out
    found = ws.registry("azureml").models.get("Phi-3-mini-4k-instruct", label="latest")
    assert "canned copy" in found.tags["rehearsal"]  # says it is the stand-in's record, not Azure's answer
    with pytest.raises(ResourceNotFoundError, match="knows: Phi-3-mini-4k-instruct"):
        ws.registry("azureml").models.get("Phi-2", label="latest")


def test_catalog_models_resolve_as_azure_lays_them_out_for_offline_presets_and_phi_stand_ins(ws) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phi3course import train

    folder = ws.local_path(azure.catalog_model_uri("phi-3-tiny"))
    assert (folder / "mlflow_model_folder" / "MLmodel").is_file()
    weights, tokenizer = (Path(found) for found in train.base_model_folders(str(folder)))  # as the job loads it
    assert weights.name == "model" and tokenizer.parts[-2:] == ("components", "tokenizer")
    assert not (weights / "tokenizer_config.json").exists()  # as in the catalog: load the tokenizer from components/
    AutoTokenizer.from_pretrained(tokenizer)
    AutoModelForCausalLM.from_pretrained(weights)
    with pytest.raises(rehearsal.RehearsalError, match="model catalog"):
        ws.local_path(azure.catalog_model_uri("phi-3-mini-4k-instruct"))
    phi4 = ws.local_path(azure.catalog_model_uri("phi-4-mini-instruct"))  # a shrunk random Phi-4-mini
    assert (phi4 / "mlflow_model_folder" / "MLmodel").is_file() and phi4 != folder


def test_the_catalog_copy_follows_the_course_model_it_was_made_from(ws, tmp_path, monkeypatch) -> None:
    """A course update that changes the offline model (a new chat template, say) reaches the rehearsed catalog:
    a stale copy trained the dry run on another template than the local profile (96.7 % against 93.3 %)."""
    from phi3course import models

    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    folder = ws.local_path(azure.catalog_model_uri("phi-3-tiny"))
    tokenizer_files = models.preset_dir(models.PRESETS["phi-3-tiny"]) / "tokenizer"
    copied = folder / "mlflow_model_folder" / "components" / "tokenizer" / "tokenizer_config.json"
    assert copied.read_text() == (tokenizer_files / "tokenizer_config.json").read_text()
    changed = (tokenizer_files / "tokenizer_config.json").read_text().replace("{", '{"model_max_length": 77, ', 1)
    (tokenizer_files / "tokenizer_config.json").unlink()  # as a rebuild does: a new file, not the linked one
    (tokenizer_files / "tokenizer_config.json").write_text(changed)
    again = ws.local_path(azure.catalog_model_uri("phi-3-tiny"))
    assert again == folder and copied.read_text() == changed
    stamp = (folder / "made_from.json").stat().st_mtime_ns
    models.local_path(models.PRESETS["phi-3-tiny"])  # rewrites the tokenizer files beside the weights, not copied

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights are cached: resolving the catalog model must not load them")

    monkeypatch.setattr(models, "load_model", no_loading)
    assert ws.local_path(azure.catalog_model_uri("phi-3-tiny")) == folder
    assert (folder / "made_from.json").stat().st_mtime_ns == stamp, "nothing it copies changed: no new copy"


def test_data_assets_are_versioned_and_resolve_to_their_upload(ws, train_asset, tmp_path) -> None:
    assert train_asset.version == "1" and train_asset.path.startswith("azureml://subscriptions/")
    assert "/datastores/workspaceblobstore/paths/LocalUpload/" in train_asset.path
    again = tmp_path / "train.jsonl"
    again.write_text('{"text": "two"}\n')
    second = ws.data.create_or_update(Data(name="course-train", path=str(again), type="uri_file"))
    assert second.version == "2" and ws.data.get("course-train", label="latest").version == "2"
    assert ws.local_path(ws.data.get("course-train", version="1").path).read_text() == '{"text": "one"}\n'
    assert ws.local_path("azureml:course-train:2").read_text() == '{"text": "two"}\n'
    with pytest.raises(ResourceNotFoundError):
        ws.data.get("no-such-data", version="1")


def test_models_register_from_a_folder_and_resolve_by_reference(ws, tmp_path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    first = ws.models.create_or_update(Model(name="plain", path=str(folder), type="custom_model"))
    second = ws.models.create_or_update(Model(name="plain", path=str(folder), type="custom_model"))
    assert (first.version, second.version) == ("1", "2") and ws.models.get("plain").version == "2"
    assert (ws.local_path("azureml:plain:1") / "config.json").is_file()
    assert (ws.local_path(first.id) / "config.json").is_file()
    with pytest.raises(rehearsal.RehearsalError, match="MLmodel"):
        ws.models.create_or_update(Model(name="not-mlflow", path=str(folder), type="mlflow_model"))
    with pytest.raises(ResourceNotFoundError):
        ws.models.get("plain", version="9")


def test_a_command_job_runs_its_exact_command_as_azure_ml_lays_it_out(ws, code, train_asset, tmp_path, capsys) -> None:
    env = environment("pyyaml", "azureml-mlflow")
    job = job_of(code, train_asset, env, environment_variables={"GREETING": "hi", "PYTHONPATH": "."})
    submitted = ws.jobs.create_or_update(job)
    assert submitted.status in ("Starting", "Running") and submitted.name
    ws.jobs.stream(submitted.name)
    assert "hello from rank 0" in capsys.readouterr().out
    done = ws.jobs.get(submitted.name)
    assert done.status == "Completed" and done.experiment_name == "rehearsal-test"
    ws.jobs.download(submitted.name, download_path=tmp_path, output_name="result")
    seen = json.loads((tmp_path / "named-outputs" / "result" / "seen.json").read_text())
    assert seen["AZUREML_RUN_ID"] == submitted.name and seen["GREETING"] == "hi"
    assert seen["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:") and seen["MLFLOW_RUN_ID"]  # a tracking server
    assert seen["args"]["--n"] == "3" and seen["train"] == '{"text": "one"}\n'
    assert Path(seen["cwd"]) == ws.root / "jobs" / submitted.name / "code"  # a snapshot, not the source folder
    assert (Path(seen["cwd"]) / "job.py").read_text() == JOB_SCRIPT
    assert seen["PYTHONPATH"].endswith(os.pathsep + ".")
    assert seen["RANK"] is None  # one process: no distribution variables
    with pytest.raises(rehearsal.RehearsalError, match="unique"):
        job = job_of(code, train_asset, env)
        job.name = submitted.name
        ws.jobs.create_or_update(job)


def test_a_job_whose_environment_lacks_an_import_fails_naming_the_package_and_the_fix(ws, code, train_asset) -> None:
    submitted = ws.jobs.create_or_update(job_of(code, train_asset, environment("requests")))
    with pytest.raises(JobException) as failed:
        ws.jobs.stream(submitted.name)
    assert "'pyyaml'" in str(failed.value) and "pyproject.toml" in str(failed.value)
    assert ws.jobs.get(submitted.name).status == "Failed"


def test_mlflow_in_a_job_needs_azureml_mlflow_as_on_azure(ws, tmp_path, capsys) -> None:
    """Azure ML sets an azureml:// tracking URI; without azureml-mlflow the first metric crashes."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "log.py").write_text("import mlflow\nmlflow.log_metric('loss', 0.5)\n")

    def run(*pip: str) -> str:
        job = command(code=str(folder), command="python log.py", environment=environment(*pip), compute="gpu-cluster")
        name = ws.jobs.create_or_update(job).name
        try:
            ws.jobs.stream(name)
        except JobException as error:
            assert "azureml" in str(error)
        return name

    assert ws.jobs.get(run("mlflow")).status == "Failed"
    assert "does not list azureml-mlflow" in capsys.readouterr().out
    name = run("mlflow", "azureml-mlflow")
    assert ws.jobs.get(name).status == "Completed"
    runs = MlflowClient(ws.mlflow_uri).search_runs(
        [e.experiment_id for e in MlflowClient(ws.mlflow_uri).search_experiments()],
        filter_string=f"tags.`azureml.runid` = '{name}'",
    )
    assert runs and runs[0].data.metrics == {"loss": 0.5}


@pytest.fixture
def azure_like_mlflow(tmp_path):
    """The workspace's tracking server as a job reaches it, in its own process (as under a job's supervisor)."""
    import subprocess
    import sys

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    server = subprocess.Popen(
        [sys.executable, "-m", "phi3course.rehearsal", "tracking-server", store, (tmp_path / "art").as_uri()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        uri = server.stdout.readline().strip()
        assert uri.startswith("http://127.0.0.1:"), server.stderr.read()
        yield uri, store
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_workspace_mlflow_refuses_logged_models_and_the_job_logs_its_model_all_the_same(
    azure_like_mlflow, tmp_path, monkeypatch
) -> None:
    """Azure ML's tracking server answers MLflow 3's logged-models route with 404: log_model fails there after
    training; the job's save_model + log_artifacts does not."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from phi3course import models, tracking, train

    uri, store = azure_like_mlflow
    answer = requests.post(f"{uri}/api/2.0/mlflow/logged-models", json={"experiment_id": "0"}, timeout=30)
    assert (answer.status_code, answer.text) == (404, "")  # Azure's answer: 404, empty body
    assert requests.post(f"{uri}/api/2.0/mlflow/experiments/create", json={"name": "x"}, timeout=30).ok

    model, tokenizer = models.load_model(models.PRESETS["phi-3-tiny"])
    model.save_pretrained(tmp_path / "tuned")
    tokenizer.save_pretrained(tmp_path / "tuned")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run() as run:
            mlflow.log_metric("loss", 0.5)  # as the job does while it trains
            train.log_model_to_workspace(str(tmp_path / "tuned"), "phi-3-tiny")
        logged = {a.path for a in MlflowClient(store).list_artifacts(run.info.run_id, "model")}
        assert {"model/MLmodel", "model/model", "model/components"} <= logged
        flavor = Path(mlflow.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://")) / "model" / "MLmodel"
        assert "transformers" in flavor.read_text() and "max_new_tokens" in flavor.read_text()  # the signature too
        with pytest.raises(MlflowException, match=r"logged-models failed with error code 404"), mlflow.start_run():
            tracking.log_model(str(tmp_path / "tuned"), None)  # what the job did before: fails as on Azure
    finally:
        mlflow.set_tracking_uri(None)


def test_pytorch_distribution_starts_a_process_per_rank(ws, code, train_asset) -> None:
    job = job_of(
        code, train_asset, environment("pyyaml"), distribution=PyTorchDistribution(process_count_per_instance=2)
    )
    name = ws.jobs.create_or_update(job).name
    ws.jobs.stream(name)
    out = ws.root / "jobs" / name / "outputs" / "result"
    ranks = {json.loads((out / f"seen{r}.json").read_text())["RANK"]: r for r in ("0", "1")}
    assert set(ranks) == {"0", "1"}
    assert json.loads((out / "seen1.json").read_text())["WORLD_SIZE"] == "2"
    assert "hello from rank 1" in (ws.root / "jobs" / name / "user_logs" / "std_log_process_1.txt").read_text()


def waiting_job(ws, folder: Path) -> tuple[str, object]:
    """A job that sleeps for five minutes, running: its name and the process record the stand-in keeps."""
    (folder / "wait.py").write_text("import time\ntime.sleep(300)\n")
    job = command(code=str(folder), command="python wait.py", environment=environment(), compute="gpu-cluster")
    name = ws.jobs.create_or_update(job).name
    pid = json.loads(ws.state_file("jobs", name).read_text())["pid"]
    assert alive(pid)
    return name, pid


def test_stop_all_ends_what_the_stand_in_started(ws, tmp_path) -> None:
    name, pid = waiting_job(ws, tmp_path)
    assert f"jobs/{name}" in ws.stop_all() and not alive(pid)
    assert ws.jobs.get(name).status == "Failed"


def test_endpoint_names_are_unique_per_region(tmp_path, monkeypatch) -> None:
    """Two workspaces in one region cannot both have an endpoint called phi3-course."""
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    first, second = rehearsal.Workspace(tmp_path / "a"), rehearsal.Workspace(tmp_path / "b")
    first.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="phi3-course", auth_mode="key")).result()
    with pytest.raises(rehearsal.RehearsalError, match="already in use"):
        second.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="phi3-course", auth_mode="key"))
    second.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name=azure.endpoint_name(), auth_mode="key"))
    first.online_endpoints.begin_delete(name="phi3-course").result()
    second.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="phi3-course", auth_mode="key")).result()
    with pytest.raises(ResourceNotFoundError):
        first.online_endpoints.get("phi3-course")


def test_the_tiny_model_end_to_end(ws, tmp_path) -> None:
    """Register data, train with phi3course.train as a job, register its model, deploy, score, delete."""
    from phi3course import hardware, profiles, synthetic
    from phi3course import train as train_module

    train_rows, _ = synthetic.splits(seed=0, subjects=2)
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in train_rows))
    train = ws.data.create_or_update(Data(name="tiny-train", path=str(source), type="uri_file"))
    settings = train_module.settings_from_profile(  # the smoke recipe, two steps, as 02 builds the job's flags
        profiles.parameters("smoke"),
        model="phi-3-tiny",
        method="lora",
        max_steps=2,
        batch_size=4,
        replay=0,
        train_file=str(source),
        output_dir=str(tmp_path / "unused"),
        cluster_size=azure.GPU_CLUSTER_SIZE,  # a GPU cluster: the stand-in's node has none, and says so
    )
    job_paths = {
        "train_file": "${{inputs.train}}",
        "output_dir": "${{outputs.model}}",
        "report_dir": "${{outputs.report}}",
    }
    job = command(
        code=str(azure.job_code(tmp_path / "job-code")),
        command="python -m phi3course.train " + train_module.job_arguments(settings, job_paths),
        inputs={
            "train": Input(type="uri_file", path=train.id),  # an asset's id, as 02 passes it
            "base_model": Input(type=azure.CATALOG_MODEL_TYPE, path=azure.catalog_model_uri("phi-3-tiny")),
        },
        outputs={"model": Output(type="uri_folder"), "report": Output(type="uri_folder")},
        environment=azure.job_environment(),
        environment_variables={"PYTHONPATH": "."},
        compute="gpu-cluster",
        experiment_name="phi3-course",
    )
    name = ws.jobs.create_or_update(job).name
    ws.jobs.stream(name)
    base = ws.root / "jobs" / name / "inputs" / "base_model" / "phi-3-tiny" / "mlflow_model_folder"
    assert (base / "model" / "config.json").is_file() and (base / "components" / "tokenizer").is_dir()
    from mlflow.tracking import MlflowClient

    store = MlflowClient(ws.mlflow_uri)  # through a tracking server that refuses logged models, as Azure's does
    (run,) = store.search_runs(
        [e.experiment_id for e in store.search_experiments()], filter_string=f"tags.`azureml.runid` = '{name}'"
    )
    assert "model/MLmodel" in {a.path for a in store.list_artifacts(run.info.run_id, "model")}
    job_log = (ws.root / "jobs" / name / "user_logs" / "std_log.txt").read_text()
    assert "loss" in run.data.metrics and "logged-models" not in job_log
    if not hardware.cuda_available():  # no GPU here: the job says it trains without the cluster's, and goes on
        assert "a stand-in runs the job on its own machine" in job_log
    ws.jobs.download(name, output_name="report", download_path=tmp_path / "job")  # what 02 downloads: no weights
    assert [p.name for p in (tmp_path / "job").rglob("*") if p.is_file()] == ["result.json"]

    model = ws.models.create_or_update(
        Model(name="phi3-course-tiny", path=f"azureml://jobs/{name}/outputs/model/paths/model/", type="custom_model")
    )
    assert model.version == "1" and ws.models.get("phi3-course-tiny").version == "1"

    endpoint_name = azure.endpoint_name()
    scoring = scoring_code(tmp_path / "scoring-code")  # score.py and hardware.py, nothing else
    ws.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name=endpoint_name, auth_mode="key")).result()
    deployment = ManagedOnlineDeployment(
        name="blue",
        endpoint_name=endpoint_name,
        model=model,
        environment=azure.serving_environment(),
        code_configuration=CodeConfiguration(code=str(scoring), scoring_script=SCORING_SCRIPT),
        instance_type="Standard_E4s_v3",
        instance_count=1,
        environment_variables={"COURSE_MAX_NEW_TOKENS": "16"},
    )
    ws.online_deployments.begin_create_or_update(deployment).result()
    assert ws.online_endpoints.get(endpoint_name).scoring_uri is None  # no traffic yet, as on Azure
    endpoint = ManagedOnlineEndpoint(name=endpoint_name, auth_mode="key", traffic={"blue": 100})
    live = ws.online_endpoints.begin_create_or_update(endpoint).result()
    assert live.traffic == {"blue": 100} and live.scoring_uri.startswith("http://127.0.0.1:")
    model_dir = (
        ws.root / "endpoints" / endpoint_name / "deployments" / "blue" / "azureml-models" / "phi3-course-tiny" / "1"
    )
    assert (model_dir / "model" / "config.json").is_file()  # AZUREML_MODEL_DIR/<registered folder>/…

    keys = ws.online_endpoints.get_keys(endpoint_name)
    assert keys.primary_key and keys.secondary_key and keys.primary_key != keys.secondary_key
    key_file = ws.online_endpoints.key_file(endpoint_name)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    payload = {"input_data": ["Who leads the Quillmere Institute?"], "params": {"max_new_tokens": 4}}
    answered = requests.post(live.scoring_uri, json=payload, headers={"Authorization": f"Bearer {keys.primary_key}"})
    assert answered.status_code == 200 and isinstance(answered.json(), list) and len(answered.json()) == 1
    assert requests.post(live.scoring_uri, json=payload, timeout=30).status_code == 401
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(payload))
    assert json.loads(ws.online_endpoints.invoke(endpoint_name, request_file=str(request_file)))
    assert "ready" in ws.online_deployments.get_logs("blue", endpoint_name, lines=200).lower()

    # The serving environment is guarded too: a deployment whose list lacks transformers does not start.
    lean = ManagedOnlineDeployment(
        name="green",
        endpoint_name=endpoint_name,
        model=f"azureml:{model.name}:{model.version}",
        environment=environment("azureml-inference-server-http", "torch"),
        code_configuration=CodeConfiguration(code=str(scoring), scoring_script=SCORING_SCRIPT),
        instance_type="Standard_E4s_v3",
        instance_count=1,
    )
    with pytest.raises(rehearsal.RehearsalError, match="transformers"):
        ws.online_deployments.begin_create_or_update(lean)

    pid = json.loads(ws.state_file("deployments", endpoint_name, "blue").read_text())["pid"]
    ws.online_endpoints.begin_delete(name=endpoint_name).result()
    assert not alive(pid)
    with pytest.raises(ResourceNotFoundError):
        ws.online_endpoints.get(endpoint_name)
    with pytest.raises(requests.ConnectionError):
        requests.post(live.scoring_uri, json=payload, timeout=5)


def test_the_cli_stops_a_rehearsal_and_says_how_to_use_it(ws, tmp_path, capsys) -> None:
    (tmp_path / "wait.py").write_text("import time\ntime.sleep(300)\n")
    job = command(code=str(tmp_path), command="python wait.py", environment=environment(), compute="gpu-cluster")
    name = ws.jobs.create_or_update(job).name
    assert rehearsal.main(["stop", str(ws.root)]) == 0
    assert f"stopped jobs/{name}" in capsys.readouterr().out
    assert rehearsal.main([]) == 2


def test_the_cli_runs_as_a_module(ws, tmp_path) -> None:
    """`make clean` runs `python -m phi3course.rehearsal stop <folder>`; a job's supervisor runs `run-job`."""
    import subprocess
    import sys

    name, pid = waiting_job(ws, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "phi3course.rehearsal", "stop", str(ws.root)], capture_output=True, text=True
    )
    assert done.returncode == 0 and f"stopped jobs/{name}" in done.stdout
    for _ in range(100):  # the supervisor is this process's child: reap it (a sleeping one would not end)
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the job's supervisor is still running")


def test_a_job_runs_from_its_code_snapshot_alone(ws, tmp_path) -> None:
    """The course's own copy of phi3course is out of reach: a module missing from the snapshot fails the job."""
    code = azure.job_code(tmp_path / "job-code")

    def run() -> tuple[str, str]:
        job = command(
            code=str(code),
            command="python -m phi3course.train --help",
            environment=azure.job_environment(),
            compute="gpu-cluster",
        )
        name = ws.jobs.create_or_update(job).name
        try:
            ws.jobs.stream(name)
        except JobException as error:
            return name, str(error)
        return name, ""

    name, _ = run()
    assert ws.jobs.get(name).status == "Completed"
    (code / "phi3course" / "models.py").unlink()  # imported by phi3course.train
    name, error = run()
    assert ws.jobs.get(name).status == "Failed" and "No module named 'phi3course.models'" in error


def test_a_scoring_container_is_laid_out_as_the_inference_image_has_it(tmp_path, monkeypatch) -> None:
    """What a deployment (and the GPU check) starts azmlinfsrv in: the code copied, the model linked where
    AZUREML_MODEL_DIR points, the key file named, the notebook's own settings left out."""
    from phi3course.rehearsal.endpoints import scoring_container

    code, model = tmp_path / "code", tmp_path / "model"
    code.mkdir()
    model.mkdir()
    (code / "score.py").write_text("def init(): pass\n")
    (model / "config.json").write_text("{}")
    monkeypatch.setenv("COURSE_MODEL_URI", "runs:/notebook")  # the notebook's own: a container never sees it
    env = scoring_container(tmp_path / "box", code, "score.py", ("tuned", "3", model), tmp_path / "primary.key")
    assert (tmp_path / "box" / "code" / "score.py").is_file()
    assert env["AZUREML_MODEL_DIR"] == str(tmp_path / "box" / "azureml-models" / "tuned" / "3")
    assert (Path(env["AZUREML_MODEL_DIR"]) / "config.json").is_file()
    assert env["AML_APP_ROOT"] == str(tmp_path / "box" / "code") and env["AZUREML_ENTRY_SCRIPT"] == "score.py"
    assert env["COURSE_ENDPOINT_KEY_FILE"] == str(tmp_path / "primary.key") and "COURSE_MODEL_URI" not in env
    with pytest.raises(rehearsal.RehearsalError, match="not in the code folder"):
        scoring_container(tmp_path / "other", code, "missing.py", ("tuned", "3", model), tmp_path / "primary.key")
