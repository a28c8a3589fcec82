"""Online endpoints and their deployments: an endpoint is a name unique in its region and two keys; a
deployment serves its ``code_configuration`` scoring script as Azure's inference image starts it (``azmlinfsrv``:
gunicorn with ``WORKER_COUNT`` sync workers, ``GUNICORN_CMD_ARGS`` honoured; only bound to 127.0.0.1), with
``AZUREML_MODEL_DIR`` laid out as Azure lays out the model, under the serving environment's import guard, behind
a gateway (:mod:`.gateway`) that checks the endpoint's key and the deployment's ``request_settings``. The scoring
URI is the gateway's."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import atomic_write_text, read_json, write_json
from ..paths import cache_dir
from .common import HOST, Poller, RehearsalError, base_env, copy_tree, free_port, not_found, tail
from .compute import CANNED_SIZES
from .gateway import GatewaySettings, wait_listening

if TYPE_CHECKING:
    from .workspace import Workspace


def _region_claim(location: str, name: str) -> Path:
    """A claim on an endpoint name in a region, shared by every rehearsal on this machine (names are
    unique per region on Azure, across all subscriptions)."""
    folder = cache_dir() / "rehearsal-region" / location
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


KEY_TYPES = ("primary", "secondary")  # an endpoint's two keys (azure-ai-ml's EndpointKeyType)


class OnlineEndpointOperations:
    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def _dir(self, name: str) -> Path:
        return self._ws.root / "endpoints" / name

    def _record(self, name: str) -> dict[str, Any]:
        path = self._ws.state_file("endpoints", name)
        if not path.is_file():
            raise not_found(f"online endpoint {name!r}")
        return read_json(path)

    def begin_create_or_update(self, endpoint: Any, *, local: bool = False) -> Poller:
        """Create the endpoint (a name unique in the region, keys), or update its traffic and description."""
        from ..azure import ENDPOINT_NAME

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
            keys = {which: secrets.token_urlsafe(32) for which in KEY_TYPES}
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
        return self._ws.online_deployments.scoring_uri(max(live)[1], name)

    def get_keys(self, name: str) -> Any:
        """The endpoint's keys (EndpointAuthKeys), kept in 0600 files under the rehearsal's endpoints folder."""
        from azure.ai.ml.entities import EndpointAuthKeys

        self._record(name)
        folder = self._dir(name)
        return EndpointAuthKeys(
            primary_key=(folder / "primary.key").read_text().strip(),
            secondary_key=(folder / "secondary.key").read_text().strip(),
        )

    def key_file(self, name: str, which: str = "primary") -> Path:
        """Where the ``primary`` (or ``secondary``) key is kept: the gateway accepts both (the scoring container sees
        neither: it checks its deployment's own key, which the gateway sends)."""
        self._record(name)
        if which not in KEY_TYPES:
            raise RehearsalError(f"key type {which!r}: an endpoint has a {' and a '.join(KEY_TYPES)} key.")
        return self._dir(name) / f"{which}.key"

    def begin_regenerate_keys(self, name: str, *, key_type: str = "primary", **_: Any) -> Poller:
        """A new ``primary`` or ``secondary`` key, as Azure's ``begin_regenerate_keys`` makes one: the old one is
        refused from then on, the other key keeps working (rotate one while clients use the other)."""
        path = self.key_file(name, str(key_type).lower())
        atomic_write_text(path, secrets.token_urlsafe(32), mode=0o600)
        return Poller(None)

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
            uri = self._ws.online_deployments.scoring_uri(deployment_name, endpoint_name)
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
# What the inference image runs: azmlinfsrv (azureml_inference_server_http.amlserver), which reads WORKER_COUNT
# (default 1), WORKER_TIMEOUT, WORKER_PRELOAD and starts gunicorn with sync workers (gunicorn itself adds
# GUNICORN_CMD_ARGS). Its one fixed choice the rehearsal changes is the address: 0.0.0.0 becomes 127.0.0.1.
INFERENCE_SERVER = (
    "import sys\n"
    "import azureml_inference_server_http.constants as constants\n"
    f"constants.DEFAULT_HOST = {HOST!r}\n"
    "from azureml_inference_server_http.amlserver import run\n"
    "sys.argv[0] = 'azmlinfsrv'\n"
    "run()\n"
)


def inference_server_command(entry_script: str, port: int) -> list[str]:
    """``azmlinfsrv --entry_script <script> --port <port>``, as the inference image starts it, bound to loopback."""
    return [sys.executable, "-c", INFERENCE_SERVER, "--entry_script", entry_script, "--port", str(port)]


def scoring_container(
    folder: Path, code: Path, script: str, model: tuple[str, str, Path], key_file: Path
) -> dict[str, str]:
    """Lay out ``folder`` as the inference image has a deployment's container, and return the environment its scoring
    script starts in (start it with :func:`inference_server_command`, in ``folder/code``).

    ``code``/``script``: the code configuration, copied to ``folder/code``; ``model``: the registered model's (name,
    version, folder), linked at ``folder/azureml-models/<name>/<version>``, which ``AZUREML_MODEL_DIR`` names, as
    Azure lays it out; ``key_file``: the key the scoring script checks (``COURSE_ENDPOINT_KEY_FILE``): the deployment's
    own, which its gateway sends once it has checked the endpoint's (either of its two).
    """
    if not (code / script).is_file():
        raise RehearsalError(f"the scoring script {script} is not in the code folder {code}.")
    name, version, model_folder = model
    model_dir = folder / "azureml-models" / name / version
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    model_dir.symlink_to(model_folder, target_is_directory=True)
    copy_tree(code, folder / "code")
    env = base_env()
    env.update(
        {
            "AML_APP_ROOT": str(folder / "code"),
            "AZUREML_ENTRY_SCRIPT": script,
            "AZUREML_MODEL_DIR": str(model_dir),
            "AML_APP_INSIGHTS_ENABLED": "false",
            # The gateway checks the endpoint's keys, as Azure's does; the script checks the one the gateway sends.
            "COURSE_ENDPOINT_KEY_FILE": str(key_file),
        }
    )
    return env


class OnlineDeploymentOperations:
    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def _names(self, endpoint_name: str) -> list[str]:
        folder = self._ws.root / "state" / "deployments" / endpoint_name
        return sorted(p.stem for p in folder.glob("*.json"))

    def _record(self, name: str, endpoint_name: str) -> dict[str, Any]:
        path = self._ws.state_file("deployments", endpoint_name, name)
        if not path.is_file():
            raise not_found(f"deployment {name!r} of endpoint {endpoint_name!r}")
        return read_json(path)

    def _dir(self, name: str, endpoint_name: str) -> Path:
        return self._ws.root / "endpoints" / endpoint_name / "deployments" / name

    def _stop(self, name: str, endpoint_name: str) -> bool:
        """Stop the deployment's gateway, then its scoring container; whether the container was running."""
        from ..processes import stop_group

        path = self._ws.state_file("deployments", endpoint_name, name)
        record = read_json(path, default={})
        stop_group(record.get("gateway"))
        stopped = stop_group(record)
        if record:
            record.update(pid=None, gateway=None)
            write_json(path, record)
        return stopped

    def scoring_uri(self, name: str, endpoint_name: str) -> str:
        """The deployment's scoring URI: its gateway's."""
        return f"http://{HOST}:{self._record(name, endpoint_name)['gateway_port']}/score"

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
        """Validate, lay out ``AZUREML_MODEL_DIR`` and the code, start the scoring script as the inference image
        does (under the serving environment's guard), and its gateway in front of it."""
        from azure.ai.ml.entities import Environment

        from ..processes import ServerError, identify, launch, stop_group, wait_healthy

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
        port = free_port()
        while (gateway_port := free_port()) == port:  # two ports: the scoring container's and its gateway's
            pass
        keys = [self._ws.online_endpoints.key_file(endpoint_name, which) for which in KEY_TYPES]
        gateway = GatewaySettings.of(deployment, gateway_port, port, keys)  # refuses request settings Azure refuses
        self._stop(name, endpoint_name)
        folder = self._dir(name, endpoint_name)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        model_name, version, model_folder = self._model_folder(deployment.model)
        code = Path(str(deployment.code_configuration.code)).resolve()
        script = str(deployment.code_configuration.scoring_script)
        container_key = folder / "container.key"  # the deployment's own: the gateway sends it, the container checks it
        atomic_write_text(container_key, secrets.token_urlsafe(32), mode=0o600)
        gateway = replace(gateway, container_key_file=str(container_key))
        env = scoring_container(folder, code, script, (model_name, version, model_folder), container_key)
        env = self._ws.guarded_env(
            env,
            deployment.environment_variables,
            folder,
            environment,
            "the serving environment",
            "list the package in [project.optional-dependencies] serve in pyproject.toml (azure.serving_environment())",
        )
        log_path = folder / "server.log"
        process = launch(inference_server_command(script, port), log_path, env, cwd=folder / "code")
        record = {
            "name": name,
            "endpoint_name": endpoint_name,
            **identify(process.pid),  # pid, start time and command line: only that process is ever signalled
            "port": port,
            "gateway": None,  # the gateway's process, identified the same way, once it runs
            "gateway_port": gateway_port,
            "log": str(log_path),
            "model": f"azureml:{model_name}:{version}",
            "instance_type": deployment.instance_type,
            "instance_count": deployment.instance_count,
            "request_settings": {
                "max_concurrent_requests_per_instance": gateway.max_concurrent_requests_per_instance,
                "request_timeout_ms": gateway.request_timeout_ms,
            },
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
        try:
            record["gateway"] = self._start_gateway(gateway, folder)
        except RehearsalError:
            stop_group(record)
            record.update(provisioning_state="Failed", pid=None)
            write_json(path, record)
            raise
        record["provisioning_state"] = "Succeeded"
        write_json(path, record)
        return Poller(self.get(name, endpoint_name))

    def _start_gateway(self, settings: GatewaySettings, folder: Path) -> dict[str, Any]:
        """Start the deployment's gateway (``python -m phi3course.rehearsal gateway``); what identifies its process."""
        from ..processes import identify, launch, stop_group

        config = folder / "gateway.json"
        settings.write(config)
        env = base_env()
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # the stand-in's own code
        log_path = folder / "gateway.log"
        process = launch([sys.executable, "-m", "phi3course.rehearsal", "gateway", str(config)], log_path, env)
        recorded = identify(process.pid)
        try:
            wait_listening(process, settings.port, log_path)
        except RehearsalError:
            stop_group(recorded)
            raise
        return recorded

    def get(self, name: str, endpoint_name: str) -> Any:
        from azure.ai.ml.entities import ManagedOnlineDeployment, OnlineRequestSettings

        record = self._record(name, endpoint_name)
        deployment = ManagedOnlineDeployment(
            name=name,
            endpoint_name=endpoint_name,
            model=record["model"],
            instance_type=record.get("instance_type"),
            instance_count=record.get("instance_count"),
            request_settings=OnlineRequestSettings(**record.get("request_settings", {})),
        )
        deployment._provisioning_state = record.get("provisioning_state")
        return deployment

    def list(self, endpoint_name: str) -> list[Any]:
        return [self.get(n, endpoint_name) for n in self._names(endpoint_name)]

    def get_logs(self, name: str, endpoint_name: str, lines: int = 100, **_: Any) -> str:
        """The last ``lines`` of the scoring container's log (the inference server's output)."""
        record = self._record(name, endpoint_name)
        return tail(Path(record["log"]), lines)

    def begin_delete(self, name: str, endpoint_name: str) -> Poller:
        self._stop(name, endpoint_name)
        self._ws.state_file("deployments", endpoint_name, name).unlink(missing_ok=True)
        shutil.rmtree(self._dir(name, endpoint_name), ignore_errors=True)
        return Poller(None)
