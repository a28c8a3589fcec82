"""A hook on trl's ``SFTTrainer`` that changes what a learner sees, never what it learns.

:func:`history_callback`: the loss curve kept for the plot and MLflow, one progress bar, the step time. The recipe's
``make_trainer`` (notebook 02) removes transformers' own printer and bar when it is given.
"""

from __future__ import annotations

import time
from typing import Any


def history_callback(mlflow_run: bool) -> Any:
    """A trainer callback that keeps the loss curve, logs it to MLflow and shows one quiet progress bar.

    It replaces the trainer's own progress printer, which prints every log line (once per step here).
    """
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class History(TrainerCallback):
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []
            self.bar: Any = None
            self.tokens_at_start: int | None = None  # tokens seen before this run started or resumed
            self.step_began: float | None = None
            self.seconds_in_steps = 0.0

        @property
        def step_seconds(self) -> float:
            """The optimizer steps' own time, summed from each step's start to its end: what happens between steps
            is not counted — checkpoints (with a full fine-tune, weights and optimizer state, which can outlast the
            steps on a GPU) and the model selection's checks on the validation split."""
            return self.seconds_in_steps

        def tokens_per_second(self, state: Any, seconds: float) -> float:
            """Training throughput as 02 and the Azure ML job report it: non-padding tokens the run trained
            since it started or resumed, over :attr:`step_seconds` (``seconds``, the wall time of ``train()``, if no
            step ran). A resumed run's earlier tokens are left out; so is the checkpoint saved after the last step."""
            tokens = int(state.num_input_tokens_seen or 0) - (self.tokens_at_start or 0)
            spent = self.step_seconds or seconds
            return round(tokens / spent, 1) if spent else 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step")

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # Not in on_train_begin: the trainer restores a checkpoint's state after calling it.
            if self.tokens_at_start is None:
                self.tokens_at_start = int(state.num_input_tokens_seen or 0)
            self.step_began = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.step_began is not None:
                self.seconds_in_steps += time.perf_counter() - self.step_began
                self.step_began = None
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if not logs or "loss" not in logs:
                return
            row = {"step": state.global_step, "loss": float(logs["loss"])}
            for key in ("learning_rate", "grad_norm", "mean_token_accuracy"):
                if key in logs:
                    row[key] = float(logs[key])
            self.rows.append(row)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{row['loss']:.3f}")
            if mlflow_run and state.is_world_process_zero:
                import mlflow

                mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=state.global_step)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.close()

    return History()
