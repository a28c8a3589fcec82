"""Notebook 02's steps, each one call: settings from the run, evaluation, tracking, recording."""

from __future__ import annotations

import gc
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from .evaluate import EvalResult, evaluate
from .rundir import RunDir
from .tracking import store_uri
from .train import TrainResult, TrainSettings


def settings_for(params: dict[str, Any], run: RunDir) -> TrainSettings:
    """Training settings from the notebook's parameters and the data 01_data wrote."""
    return TrainSettings(
        train_file=run.require("train_path", made_by="01_data"),
        test_file=run.get("test_path", ""),
        output_dir=str(run.path / "train"),
        model=params["model"] if params["model"] != "auto" else run.get("model", "smollm2-135m-instruct"),
        method=params["method"],
        epochs=params["epochs"],
        max_steps=params["max_steps"],
        learning_rate=params["learning_rate"],
        batch_size=params["batch_size"],
        lora_r=params["lora_r"],
        lora_alpha=2 * params["lora_r"],
        precision=params["precision"],
        seed=params["seed"],
    )


def evaluate_dir(model_dir: str | Path | None, preset: Any, rows: list[dict[str, Any]], label: str) -> EvalResult:
    """Load a model (a saved folder, or the preset's base model), evaluate it, and free its memory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models import load_model

    if model_dir is None:
        model, tokenizer = load_model(preset)
    else:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    try:
        return evaluate(model, tokenizer, rows, label)
    finally:
        del model
        gc.collect()


def comparison(base: EvalResult, tuned: EvalResult) -> pd.DataFrame:
    """Base and tuned side by side."""
    rows = {"perplexity (answers)": (base.perplexity, tuned.perplexity)}
    if base.exact_match is not None and tuned.exact_match is not None:
        rows["held-out exact-match"] = (base.exact_match, tuned.exact_match)
    return pd.DataFrame(rows, index=["base", "tuned"]).T


def answers_table(base: EvalResult, tuned: EvalResult, limit: int = 8) -> pd.DataFrame:
    """A few held-out questions with the base and the tuned model's replies."""
    rows = [
        {
            "question": b["question"],
            "expected": b["expected"],
            "base": b["reply"],
            "tuned": t["reply"],
            "tuned right": t["correct"],
        }
        for b, t in zip(base.rows[:limit], tuned.rows[:limit], strict=True)
    ]
    return pd.DataFrame(rows)


def start_tracking(run: RunDir, settings: TrainSettings, run_name: str) -> Any:
    """An MLflow run for this fine-tune (a run left open by an interrupted cell is closed first)."""
    import mlflow

    from .tracking import setup

    setup(run.path)
    if mlflow.active_run() is not None:
        mlflow.end_run(status="KILLED")
    active = mlflow.start_run(run_name=run_name)
    mlflow.log_params({k: v for k, v in asdict(settings).items() if k != "extra"})
    return active


def finish_tracking(
    run: RunDir, result: TrainResult, base: EvalResult, tuned: EvalResult, figures: dict[str, Any], profile: str
) -> str:
    """Log results, figures and the model (registered); record everything in the run. Returns the model URI."""
    import mlflow

    from .tracking import log_model, registered_name

    mlflow.log_metrics(
        {
            "train_seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second,
            "final_loss": result.final_loss,
            "base_perplexity": base.perplexity,
            "tuned_perplexity": tuned.perplexity,
            **({"base_exact_match": base.exact_match} if base.exact_match is not None else {}),
            **({"tuned_exact_match": tuned.exact_match} if tuned.exact_match is not None else {}),
        }
    )
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"{name}.png")
    if tuned.rows:
        mlflow.log_table(pd.DataFrame(tuned.rows), "eval/tuned_answers.json")
    info = log_model(result.model_dir, registered_name(profile))
    version = getattr(info, "registered_model_version", None)
    model_uri = f"models:/{registered_name(profile)}/{version}" if version else info.model_uri
    mlrun = mlflow.active_run()
    run.remember(
        model_dir=result.model_dir,
        model_uri=model_uri,
        mlflow_run_id=mlrun.info.run_id if mlrun else None,
        mlflow_tracking_uri=mlflow.get_tracking_uri(),
    )
    mlflow.end_run()
    record(run, result, base, tuned)
    return model_uri


def record(run: RunDir, result: TrainResult, base: EvalResult, tuned: EvalResult) -> None:
    run.update_summary(
        train={
            "seconds": result.seconds,
            "tokens": result.tokens,
            "tokens_per_second": result.tokens_per_second,
            "final_loss": result.final_loss,
            "steps": result.steps,
            "precision": result.precision,
        },
        eval={"base": base.summary(), "tuned": tuned.summary()},
    )


def register_base(run: RunDir, preset: Any, profile: str) -> str:
    """Log and register the *base* model too (once per run), so it can be served for comparison."""
    from .models import load_model
    from .tracking import register_pretrained, registered_name

    if uri := run.get("base_model_uri"):
        return uri
    model, tokenizer = load_model(preset)
    uri = register_pretrained(
        run.path, model, tokenizer, registered_name(profile) + "-base", run_name=f"{profile}-{preset.name}-base"
    )
    run.remember(base_model_uri=uri, mlflow_tracking_uri=store_uri(run.path))
    return uri
