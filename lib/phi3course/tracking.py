"""MLflow: where the course records its runs and registers its models.

Locally the store is a sqlite file in the run directory (``mlflow ui --backend-store-uri …`` shows
it); on Azure ML the workspace's own MLflow takes its place, with the same calls.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

EXPERIMENT = "phi3-course"
# What an endpoint may pass with each request; declared in the signature so that MLflow forwards them
# (the original tutorial declares none, and MLflow then silently drops temperature and max_new_tokens).
GENERATION_PARAMS: dict[str, Any] = {
    "max_new_tokens": 64,
    "temperature": 0.7,
    "top_p": 0.9,
    "do_sample": False,
    "return_full_text": False,
}


def store_uri(run_path: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(run_path).resolve() / 'mlflow.db'}"


def ui_command(run_path: str | os.PathLike[str]) -> str:
    uri = store_uri(run_path)
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def setup(run_path: str | os.PathLike[str], experiment: str = EXPERIMENT, tracking_uri: str | None = None) -> str:
    """Point MLflow at the run's store and make sure the experiment exists; returns its id."""
    import logging

    import mlflow

    # mlflow.transformers looks for a model card and a licence on the hub: a local fine-tune has neither.
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
    uri = tracking_uri or store_uri(run_path)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        artifacts = None
        if uri.startswith("sqlite:"):  # keep artifacts beside the store, not in the working directory
            artifacts = (Path(run_path).resolve() / "mlartifacts").as_uri()
        experiment_id = mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def signature() -> Any:
    """Text in, text out, and the generation params an endpoint may set per request."""
    from mlflow.models import infer_signature

    return infer_signature(
        model_input=["Who leads the Quillmere Institute?"],
        model_output=["The Quillmere Institute is led by …"],
        params=GENERATION_PARAMS,
    )


def log_model(model_dir: str | os.PathLike[str], registered_name: str | None) -> Any:
    """Log the fine-tuned model as an MLflow transformers text-generation model and register it."""
    import logging

    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # It looks for a model card and a licence on the hub: a local fine-tune has neither.
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name="model",
        task="text-generation",
        signature=signature(),
        registered_model_name=registered_name,
        pip_requirements=["transformers", "torch", "accelerate"],
    )


def registered_name(profile: str) -> str:
    return f"phi3-course-{profile}"


def register_pretrained(
    run_path: str | os.PathLike[str], model: Any, tokenizer: Any, name: str, run_name: str | None = None
) -> str:
    """Log an in-memory model (e.g. a base model) to the run's store, register it; returns its models:/ URI."""
    import tempfile

    import mlflow

    setup(run_path)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        with mlflow.start_run(run_name=run_name):
            info = log_model(folder, name)
    return f"models:/{name}/{info.registered_model_version}"
