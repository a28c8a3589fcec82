"""Keep the course quiet: no telemetry, offline mode when no hub answers, and no library chatter in outputs.

What a notebook shows is the course's own output, the libraries' warnings and errors, and one progress bar per
long step; the libraries' INFO lines and the bars of their sub-steps stay out (tests/test_noise.py scans for them).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
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
    # mlflow: warnings only, not INFO lines such as "Creating initial MLflow database tables..." on a new store.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # datasets: no bar per `map` (trl's "Tokenizing train dataset", "Building labels…" while the trainer is built);
    # the course shows its own bar for the step that takes long, training.
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "AML_APP_INSIGHTS_ENABLED": "false",  # azureml-inference-server-http's Application Insights
    "TOKENIZERS_PARALLELISM": "false",  # avoids fork warnings in notebooks, not telemetry
}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# Loggers of libraries that log INFO lines when a notebook configures them (or their parent) for INFO: warnings
# and errors only. promptflow's and mlflow's are set by their own switches above (see :func:`quiet_logs`).
LIBRARY_LOGGERS = ("azure", "urllib3", "httpx", "httpcore", "transformers", "datasets", "huggingface_hub", "peft")


def quiet_logs() -> None:
    """Apply the logging switches of :data:`QUIET_ENV` to libraries imported before they were set.

    A notebook imports promptflow or mlflow before ``course.start`` sets the variables, and both read them at
    import: promptflow's loggers would keep INFO (each ``pf.test`` printing its executor's four "execution.flow"
    lines, each ``pf.run`` its run_submitter line with a path under the home folder) and its connection's
    WARNING "Please use connection.secrets[key] to access secrets." — promptflow's own connection manager reads
    every secret as an attribute to scrub it from logs; the flow's tool reads ``connection.secrets["key"]``.
    Nothing is imported here: a library not yet imported reads the variables itself.
    """
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:  # NOTSET included: never louder than the root's default
            logger.setLevel(logging.WARNING)
    if "mlflow" in sys.modules:
        logging.getLogger("mlflow").setLevel(QUIET_ENV["MLFLOW_LOGGING_LEVEL"])
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "promptflow._utils.logger_utils" in sys.modules:
        logger_utils = sys.modules["promptflow._utils.logger_utils"]
        level = QUIET_ENV["PF_LOGGING_LEVEL"]
        # The executor's loggers are made with logging.Logger(name), outside logging's registry: reach them
        # through the list promptflow keeps of its loggers, with those registered under "promptflow".
        known = list(getattr(getattr(logger_utils, "LoggerFactory", None), "_existing_loggers", []))
        known += [logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict) if n.startswith("promptflow")]
        for logger in known:
            logger.setLevel(level)
            # setLevel forgets what each registered logger cached of its level; these are not registered, and
            # one that logged at INFO before would keep logging INFO from its cache.
            logger.__dict__.get("_cache", {}).clear()


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
    quiet_logs()
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
