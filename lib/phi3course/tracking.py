"""MLflow: where the course records its runs and registers its models.

Locally the store is a sqlite file in the run directory (``mlflow ui --backend-store-uri …`` shows
it); on Azure ML the workspace's own MLflow takes its place. One call differs: Azure ML's tracking server has no
MLflow 3 *logged models* (``POST /api/2.0/mlflow/logged-models`` answers 404), which every ``log_model`` starts
with; a job logs its model with :func:`log_model_artifacts` (``save_model`` + ``log_artifacts``) instead.
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


PIP_REQUIREMENTS = ["transformers", "torch", "accelerate"]


def _components(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The saved model and its tokenizer, as ``mlflow.transformers`` takes them."""
    import logging

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # It looks for a model card and a licence on the hub: a local fine-tune has neither.
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
    return {
        "model": AutoModelForCausalLM.from_pretrained(model_dir),
        "tokenizer": AutoTokenizer.from_pretrained(model_dir),
    }


def log_model(model_dir: str | os.PathLike[str], registered_name: str | None) -> Any:
    """Log the fine-tuned model as an MLflow transformers text-generation model and register it (a local store).

    Against Azure ML's tracking server this fails (its first call is MLflow 3's logged-models route, which Azure
    answers with 404): in a job, use :func:`log_model_artifacts`.
    """
    import mlflow

    return mlflow.transformers.log_model(
        transformers_model=_components(model_dir),
        name="model",
        task="text-generation",
        signature=signature(),
        registered_model_name=registered_name,
        pip_requirements=PIP_REQUIREMENTS,
    )


def log_model_artifacts(model_dir: str | os.PathLike[str], artifact_path: str = "model") -> str:
    """The fine-tuned model as an MLflow transformers folder among the active run's artifacts; returns its URI.

    What Azure ML's tracking server accepts (Azure's own examples do the same since MLflow 3): the folder is written
    locally with ``mlflow.transformers.save_model`` — signature and generation parameters as :func:`log_model`
    records them — and uploaded with ``mlflow.log_artifacts``, which uses only MLflow 2's artifact routes.
    Registering stays with the workspace (``ml_client.models.create_or_update`` in 02_fine_tune).
    """
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / artifact_path
        mlflow.transformers.save_model(
            transformers_model=_components(model_dir),
            path=str(local),
            task="text-generation",
            signature=signature(),
            pip_requirements=PIP_REQUIREMENTS,
        )
        mlflow.log_artifacts(str(local), artifact_path=artifact_path)
    return f"{mlflow.get_artifact_uri()}/{artifact_path}"


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
