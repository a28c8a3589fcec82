"""Keep the course quiet on the network: no telemetry, and offline mode when no hub answers."""

from __future__ import annotations

import os
import socket
from typing import Any

HUB_HOST = "huggingface.co"

# Environment switches that each library reads at import or first use. azure-ai-ml has none: its
# telemetry is off because :func:`phi3course.azure.ml_client` passes ``enable_telemetry=False``.
QUIET_ENV = {
    "HF_HUB_DISABLE_TELEMETRY": "1",  # huggingface_hub, transformers, datasets
    "DO_NOT_TRACK": "true",  # mlflow and others that honour the convention
    "MLFLOW_DISABLE_TELEMETRY": "true",  # mlflow 3's usage telemetry
    "PF_DISABLE_TRACING": "true",  # promptflow: no tracing in the executor
    # promptflow: no line-by-line INFO logs from batch runs, nor the WARNING its batch executor prints for
    # every worker process it ends normally ("Process N had been terminated"), which read like failures.
    "PF_LOGGING_LEVEL": "ERROR",
    "AML_APP_INSIGHTS_ENABLED": "false",  # azureml-inference-server-http's Application Insights
    "TOKENIZERS_PARALLELISM": "false",  # avoids fork warnings in notebooks, not telemetry
}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers; ``HF_HUB_OFFLINE=1`` means no without asking."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def disable_promptflow_telemetry() -> bool:
    """``pf config set telemetry.enabled=false trace.destination=none``.

    promptflow ignores environment switches for telemetry, and unless its trace destination is
    ``none`` every flow test starts a local trace service on port 23333 that outlives the call.
    """
    try:
        from promptflow._sdk._configuration import Configuration
    except ImportError:  # promptflow not installed: nothing to switch off
        return False
    config = Configuration.get_instance()
    if config.get_telemetry_consent() is not False:
        config.set_telemetry_consent(False)
    if config.get_config(Configuration.TRACE_DESTINATION) != "none":
        config.set_config(Configuration.TRACE_DESTINATION, "none")
    return True


def quiet(check_hub: bool = True, promptflow: bool = True) -> dict[str, Any]:
    """Turn telemetry off for this process and set offline mode when no hub is reachable.

    Returns what was set, for the notebook to show.
    """
    applied: dict[str, Any] = {}
    for key, value in QUIET_ENV.items():
        os.environ[key] = value
        applied[key] = value
    if promptflow:
        applied["promptflow telemetry.enabled"] = (
            False if disable_promptflow_telemetry() else "promptflow not installed"
        )
    if check_hub:
        online = hub_reachable()
        applied["hub reachable"] = online
        if not online:
            os.environ.update(OFFLINE_ENV)
            applied.update(OFFLINE_ENV)
    return applied
