"""Jobs: a command job runs its exact command on a snapshot of its ``code`` folder, with its inputs and outputs
laid out under ``jobs/<name>/`` and the environment variables set as Azure ML sets them (the job's own,
``AZUREML_RUN_ID``, MLflow pointed at the workspace's tracking server, ``PyTorchDistribution``'s
``RANK``/``WORLD_SIZE``…), under the job environment's import guard. The tracking server answers as Azure ML's
does (:mod:`.tracking`); the job's supervisor runs it for as long as the job runs."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..azure import pip_requirements
from ..files import read_json, write_json
from ..models import STAND_IN_NODE
from .common import HOST, Poller, RehearsalError, base_env, copy_tree, free_port, not_found, tail
from .guard import normalise

if TYPE_CHECKING:
    from .workspace import Workspace

TERMINAL = ("Completed", "Failed", "Canceled")
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
            copy_tree(code, folder / "code")
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
        env, tracking = self._environment(job, name, folder, environment)
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
            "tracking": tracking,
        }
        write_json(folder / "plan.json", plan)
        (folder / "user_logs").mkdir(exist_ok=True)
        supervisor = [sys.executable, "-m", "phi3course.rehearsal", "run-job", str(folder)]
        own = base_env()
        own["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # the stand-in's own code, not the job's
        with (folder / "supervisor.log").open("w") as log:
            process = subprocess.Popen(
                supervisor, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=own
            )
        from ..processes import identify

        write_json(self._ws.state_file("jobs", name), {"name": name, **identify(process.pid)})
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

    def _environment(
        self, job: Any, name: str, folder: Path, environment: Any
    ) -> tuple[dict[str, str], dict[str, str] | None]:
        """Variables as Azure ML sets them in a job's container, the job's own, and the import guard; and the
        tracking server the supervisor starts (its store), or None when the job has no way to reach one."""
        pip = pip_requirements(environment)
        has_azureml_mlflow = any(normalise(re.split(r"[<>=!~\[; ]", p, maxsplit=1)[0]) == "azureml-mlflow" for p in pip)
        experiment = job.experiment_name or "Default"
        env = base_env()
        env.update(
            {
                "AZUREML_RUN_ID": name,
                "AZUREML_ARM_SUBSCRIPTION": self._ws.subscription_id,
                "AZUREML_ARM_RESOURCEGROUP": self._ws.resource_group_name,
                "AZUREML_ARM_WORKSPACE_NAME": self._ws.workspace_name,
                "AZUREML_ARM_PROJECT_NAME": experiment,
                "COURSE_CACHE": str(folder / "cache"),  # a fresh node: no course cache from the learner's machine
                "REHEARSAL_WORKSPACE": str(self._ws.root),
                STAND_IN_NODE: "1",  # this machine stands in for the cluster's node, GPU or not
            }
        )
        run_id, experiment_id = self._mlflow_run(experiment, name, job.display_name)
        tracking = None
        if has_azureml_mlflow:
            # azureml-mlflow speaks MLflow's REST API to the workspace's tracking server; the supervisor serves one
            # that answers as it does, on the workspace's store, and sets MLFLOW_TRACKING_URI to it.
            tracking = {"store": self._ws.mlflow_uri, "artifacts": (self._ws.root / "mlartifacts").as_uri()}
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
        env = self._ws.guarded_env(
            env,
            job.environment_variables,
            folder,
            environment,
            "the job environment",
            "list the package in [project.optional-dependencies] job in pyproject.toml (azure.job_environment())",
        )
        return env, tracking

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
        from ..processes import alive

        recorded = read_json(self._ws.state_file("jobs", name), default={})
        if not alive(recorded) and not (folder / "status.json").is_file():
            return {"status": "Failed", "error": "the rehearsal's job supervisor is gone (machine restarted?)"}
        if not alive(recorded):  # finished between the two reads
            return read_json(folder / "status.json", default={"status": "Failed"})
        return status or {"status": "Starting"}

    def get(self, name: str) -> Any:
        """The job as azure-ai-ml returns it, status included (Starting, Running, Completed, Failed, Canceled)."""
        from azure.ai.ml._restclient.arm_ml_service.models import JobBase
        from azure.ai.ml.entities import Job

        path = self._dir(name) / "rest.json"
        if not path.is_file():
            raise not_found(f"job {name!r}")
        data = read_json(path)
        data["properties"]["status"] = self._status(name).get("status", "Starting")
        return Job._from_rest_object(JobBase(data))

    def stream(self, name: str) -> None:
        """Print the job's log until it ends; raise ``JobException`` if it failed, as the SDK does."""
        from azure.ai.ml.exceptions import ErrorCategory, ErrorTarget, JobException

        folder = self._dir(name)
        if not folder.is_dir():
            raise not_found(f"job {name!r}")
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
            message = f"Job {name} ended {status['status']}: {status.get('error', '')}\n{tail(log, 15)}"
            raise JobException(
                message=message,
                no_personal_data_message="the rehearsal's job failed",
                target=ErrorTarget.JOB,
                error_category=ErrorCategory.USER_ERROR,
            )

    def begin_cancel(self, name: str) -> Poller:
        from ..processes import stop_group

        stop_group(read_json(self._ws.state_file("jobs", name), default={}))
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
            copy_tree(source, target / "named-outputs" / output)
        if not output_name:
            copy_tree(folder / "user_logs", target / "artifacts" / "user_logs")


def run_job(folder: Path) -> int:
    """The supervisor (``python -m phi3course.rehearsal run-job <folder>``): run the plan's processes, record the end.

    Each process gets the variables Azure ML's PyTorch distribution sets (one node here, as many processes as
    ``instance_count × process_count_per_instance``). Rank 0 writes ``user_logs/std_log.txt``; the others
    ``std_log_process_<rank>.txt``.
    """
    plan = read_json(folder / "plan.json")
    write_json(folder / "status.json", {"status": "Running", "started": time.time()})
    try:
        status = _run_with_tracking(plan) if plan.get("tracking") else _run_processes(plan)
    except Exception as error:  # the stand-in's own failure: say so, never leave the job Running
        status = {"status": "Failed", "error": f"the rehearsal could not run the job: {error!r}", "ended": time.time()}
    write_json(folder / "status.json", status)
    return 0


def _run_with_tracking(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan's processes with MLFLOW_TRACKING_URI at a tracking server that answers as Azure ML's does; what it
    refused goes at the end of the job's log, where the learner reads the job's error."""
    from .tracking import TrackingServer

    tracking = plan["tracking"]
    with TrackingServer(tracking["store"], tracking["artifacts"]) as server:
        plan["env"]["MLFLOW_TRACKING_URI"] = server.uri
        status = _run_processes(plan)
        if server.refused:
            with (Path(plan["logs"]) / "std_log.txt").open("a") as log:
                for line in server.refused:
                    log.write(
                        f"\n(rehearsal) the workspace's MLflow answered {line} with 404, as Azure ML's tracking server "
                        "does: it has no MLflow 3 logged models. Log a model with mlflow.<flavor>.save_model + "
                        "mlflow.log_artifacts instead of log_model.\n"
                    )
    return status


def _run_processes(plan: dict[str, Any]) -> dict[str, Any]:
    """Start the plan's processes, wait for them all; the job's end as status.json records it."""
    world = int(plan["processes"])
    port = free_port()
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
    return status
