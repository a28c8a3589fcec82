"""Hooks on trl's ``SFTTrainer`` that change what a learner sees and what a step costs, never what it learns.

- :func:`history_callback`: the loss curve kept for the plot and MLflow, one progress bar, the step time;
- :func:`quiet_trainer`: the trainer's own printer and bar removed (they print a line per step);
- :func:`score_answers_only`: trl's completion-only loss computed on the answer positions alone.
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
            self.first_step_began: float | None = None
            self.last_step_ended: float | None = None

        @property
        def step_seconds(self) -> float:
            """From the first step's start to the last step's end: the checkpoint saved after it not counted
            (with a full fine-tune that save, weights and optimizer state, can outlast the steps on a GPU)."""
            if self.first_step_began is None or self.last_step_ended is None:
                return 0.0
            return self.last_step_ended - self.first_step_began

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
                self.first_step_began = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.last_step_ended = time.perf_counter()
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


def quiet_trainer(trainer: Any) -> Any:
    """Drop the trainer's own printer and bar (they print every log line); :func:`history_callback` shows one bar."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    return trainer


def score_answers_only(trainer: Any) -> Any:
    """Make an ``SFTTrainer`` project only the answer positions through the LM head; returns the trainer.

    The loss is trl's completion-only loss, unchanged (a test compares the two). What changes is the
    work: trl scores every position through an fp32, chunked LM head (and its entropy) unless Triton is
    present; on a CPU that was ~45 % of a step here. With padding-free batches (one flattened sequence)
    ``logits_to_keep`` asks the model for the logits of the answer positions alone, in the training
    precision, through the model's own forward (so DDP and peft still apply).
    """
    import types

    import torch

    parent = trainer.compute_loss

    def compute_loss(self: Any, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None):
        labels = inputs["labels"]
        if labels.shape[0] != 1 or return_outputs:  # not a padding-free batch: trl's own path
            return parent(model, inputs, return_outputs, num_items_in_batch)
        targets = labels[0, 1:]
        keep = (targets != -100).nonzero().squeeze(-1)
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**forward, use_cache=False, logits_to_keep=keep)
        logits = outputs.logits[0].float()
        wanted = targets[keep]
        count = num_items_in_batch if num_items_in_batch is not None else wanted.numel()
        loss = torch.nn.functional.cross_entropy(logits, wanted, reduction="sum") / max(int(count), 1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        correct = self.accelerator.gather_for_metrics((logits.argmax(-1) == wanted).sum()).sum()
        valid = self.accelerator.gather_for_metrics(torch.tensor(wanted.numel(), device=logits.device)).sum()
        self._metrics["train"]["mean_token_accuracy"].append((correct / valid.clamp(min=1)).item())
        local = torch.tensor(inputs["input_ids"].size(1), device=logits.device)
        self._total_train_tokens += int(self.accelerator.gather_for_metrics(local).sum().item())
        self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return loss

    trainer.compute_loss = types.MethodType(compute_loss, trainer)
    return trainer
