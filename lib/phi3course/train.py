"""Supervised fine-tuning with trl: the one training module of the course.

The notebook calls :func:`train`; Azure ML runs the same code as a command job through the CLI
(``python -m phi3course.train --train-file … --output-dir …``), and so can ``torchrun``.

Choices, each measured on the course's machines (see ``make bench``):
- conversational rows become prompt/completion pairs, so the loss covers the answer only;
- batches are padding-free: a batch's rows are flattened into one sequence, so every token computed is
  a real token, and transformers builds a block-diagonal attention mask from the position ids;
- bf16 only where the hardware has it (Ampere GPUs; CPUs with AVX512-BF16 or AMX, and there only if a short probe
  times the recipe's step faster in bf16 than in fp32: ``phi3course.precision``), fp16 on older GPUs such as the
  T4, or the V100 the original tutorial asks bf16 of, fp32 otherwise — decided for the machine that trains: this
  one, or the Azure ML cluster's size when a job trains (``cluster_size``);
- no gradient checkpointing unless memory asks for it: it recomputes the forward pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import cache, hardware, sizes
from .data import DataError, read_jsonl
from .models import AUTO, PRESETS, STAND_IN_NODE, ModelError, Preset, load_model, local_path, resolve, shape_of
from .system import GIB

METHODS = ("lora", "full", "qlora")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


# transformers 5 renamed gradient_checkpointing; trl still uses the old name. Not the learner's concern.
warnings.filterwarnings("ignore", message=r".*checkpointing.* is deprecated and will be removed in v6.*")


class TrainError(ValueError):
    """Settings that cannot train, caught before any heavy work, with what to change."""


@dataclass
class TrainSettings:
    """Everything one training run needs; the notebook's parameters and the CLI's flags map onto it."""

    # Every recipe setting is required: its one default is notebook 02's parameters cell (the base of every
    # profile, see phi3course.profiles); settings_from_profile fills them from a profile.
    train_file: str
    output_dir: str
    model: str
    method: str
    epochs: float
    max_steps: int
    learning_rate: float
    batch_size: int
    grad_accum: int
    lora_r: int
    lora_dropout: float
    lora_layers: float  # the top fraction of the decoder layers that get adapters (0.5: the upper half)
    replay: int  # rows of the base model's own answers to everyday prompts mixed in, against forgetting
    max_length: int
    warmup: float
    scheduler: str
    precision: str
    gradient_checkpointing: bool
    seed: int
    save_steps: int
    check_every: float  # epochs between checks on the validation split (model selection); 0: train to the end
    target_facts: float  # stop once this share of the validation facts is right ...
    target_general: float  # ... and the probe's validation slice keeps this share of the base model's score
    # where the run reads and writes: no recipe, so defaults of their own
    test_file: str = ""
    validation_file: str = ""  # 01_data's validation split: "" trains to the end without model selection
    model_path: str = ""  # a folder holding the base model (the Azure ML job's catalog input); "" loads the preset
    report_dir: str = ""  # a folder that gets result.json and eval.json too (the job's small output); "": none
    cluster_size: str = ""  # the VM size of the Azure ML cluster when a job trains (sizes.VM_SIZES); "": this machine
    memory_gib: float = 0.0  # 0: this machine's (GPU memory on CUDA, RAM otherwise)

    @property
    def lora_alpha(self) -> int:
        """LoRA's scale numerator: the update is scaled by alpha / r, and the course keeps alpha = 2 × r."""
        return 2 * self.lora_r

    def trains_on(self) -> tuple[hardware.Machine, str]:
        """The facts of the machine that trains, and its name: the cluster's size (as ``sizes`` states it) when a
        job trains, else this machine. Raises :class:`TrainError` for a size the course does not offer."""
        if not self.cluster_size:
            return hardware.this_machine(), "this machine"
        try:
            size = sizes.vm_size(self.cluster_size)
        except sizes.SizeError as error:
            raise TrainError(f"cluster_size: {error}") from None
        return size.machine, f"the cluster's {size.name} ({size.gpu})"

    def validate(self) -> Preset:
        """Check everything cheap to check, against the machine that trains (:meth:`trains_on`); return the preset.
        Raises :class:`TrainError`."""
        try:
            preset = resolve(self.model) if self.model != AUTO else PRESETS["smollm2-135m-instruct"]
        except ModelError as error:
            raise TrainError(str(error)) from None
        if self.method not in METHODS:
            raise TrainError(f"Unknown method {self.method!r}: choose one of {', '.join(METHODS)}.")
        if self.precision not in PRECISIONS:
            raise TrainError(f"Unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}.")
        for name in (
            "learning_rate",
            "epochs",
            "warmup",
            "lora_dropout",
            "lora_layers",
            "check_every",
            "target_facts",
            "target_general",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise TrainError(f"{name} must be a number, got {value!r}.")
        if not 0 < self.learning_rate < 1:
            raise TrainError(f"learning_rate must be between 0 and 1, got {self.learning_rate}.")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise TrainError(f"epochs must be > 0 (got {self.epochs}), or max_steps > 0 (got {self.max_steps}).")
        if self.max_steps == 0 or self.max_steps < -1:
            raise TrainError(f"max_steps must be > 0, or -1 to train for `epochs`; got {self.max_steps}.")
        if isinstance(self.replay, bool) or not isinstance(self.replay, int) or self.replay < 0:
            raise TrainError(f"replay must be a whole number >= 0 (0: no replay rows), got {self.replay!r}.")
        for name in ("batch_size", "grad_accum", "lora_r", "max_length", "save_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise TrainError(f"{name} must be a whole number > 0, got {value!r}.")
        if not 0 < self.lora_layers <= 1:
            raise TrainError(
                f"lora_layers is the top fraction of the layers that get adapters, > 0 and <= 1 (1: all, "
                f"0.5: the upper half); got {self.lora_layers}."
            )
        if self.check_every < 0:
            raise TrainError(
                f"check_every is in epochs, >= 0 (0: no checks, train to the end); got {self.check_every}."
            )
        for name in ("target_facts", "target_general"):
            if not 0 < getattr(self, name) <= 1:
                raise TrainError(f"{name} is a share, > 0 and <= 1; got {getattr(self, name)}.")
        if not 0 <= self.warmup < 1:
            raise TrainError(f"warmup is a fraction of the steps, between 0 and 1; got {self.warmup}.")
        machine, where = self.trains_on()
        if self.method == "qlora" and not machine.cuda:
            raise TrainError(
                f"method='qlora' needs a CUDA GPU (bitsandbytes 4-bit) and {where} has none: use method='lora', or "
                "let an Azure ML job train on a GPU cluster (target='azureml', compute_size)."
            )
        pick_precision(self.precision, machine, where)  # bf16 asked of a GPU without it, fp16 of a CPU
        for name in ("train_file", "test_file", "validation_file"):
            path = getattr(self, name)
            if name == "train_file" and not path:
                raise TrainError("train_file is empty: run 01_data, or pass --train-file.")
            if path and not Path(path).is_file():
                raise TrainError(f"{name} {path} does not exist: run notebook 01_data first (same run_dir).")
        return preset


def settings_from_profile(parameters: dict[str, Any], **fields: Any) -> TrainSettings:
    """Settings from a profile's parameters (``profiles.parameters``): every parameter that is a setting, with
    ``fields`` (files, ``output_dir``, ``model``, …) on top. Notebook 02's settings cell does the same mapping."""
    values = {key: value for key, value in parameters.items() if key in TrainSettings.__dataclass_fields__}
    return TrainSettings(**{**values, **fields})


# --- hardware-dependent choices ---------------------------------------------------------------------
def pick_precision(
    requested: str = "auto",
    machine: hardware.Machine | None = None,
    where: str = "this machine",
    model: str = AUTO,
    adapters: Any = None,
) -> tuple[str, str]:
    """(precision, why) on ``machine`` (this one when None; ``TrainSettings.trains_on`` gives the cluster's). ``auto``:
    on a GPU, bf16 where it computes bf16 natively, else fp16; on a CPU without native bf16, fp32; on this machine's
    CPU with native bf16, whichever of fp32 and bf16 trains ``model`` faster, timed once and cached
    (:mod:`phi3course.precision`; ``adapters``: the run's settings, whose LoRA the probe puts on the model, default
    the local profile's); on another machine's such CPU (a CPU cluster), bf16."""
    here = machine is None
    machine = hardware.this_machine() if machine is None else machine
    if requested == "bf16" and machine.cuda and not machine.gpu_bf16:
        raise TrainError(
            f"precision='bf16' but {machine.gpu} has no native bf16 (on {where}: a T4, a V100 or older; the original "
            "tutorial asks bf16 of a V100): use precision='auto' (fp16 mixed precision there) or 'fp16'."
        )
    if requested == "fp16" and not machine.cuda:
        raise TrainError(
            f"precision='fp16' needs a CUDA GPU and {where} has none: use precision='auto' (bf16 or fp32 on a CPU)."
        )
    if requested != "auto":
        return requested, "asked for"
    precision = hardware.native_precision(machine)
    if machine.cuda:
        if precision == "bf16":
            return "bf16", f"{machine.gpu} computes bf16 natively"
        return "fp16", f"{machine.gpu} has no native bf16 (a T4, a V100 or older): fp16 mixed precision instead"
    if precision == "bf16" and here:
        from . import precision as probe  # a few training steps in each format, once per CPU, torch and model

        flags = ", ".join(hardware.cpu_bf16_flags())
        try:
            measured = probe.fastest(resolve(model).name, adapters=adapters)
        except ModelError as error:  # e.g. a stand-in of a hub model, offline: nothing to time it with here
            reason = str(error).split(" (")[0]
            return "bf16", f"this CPU has {flags}; not timed ({reason}): bf16, the format it computes natively"
        return measured.fastest, f"this CPU has {flags}; {measured.why()}"
    if precision == "bf16":
        return "bf16", f"{where} has a CPU with native bf16: bf16 matmuls"
    return "fp32", "this CPU has no native bf16 (AVX2 only): torch would only emulate bf16, so fp32"


def check_cluster_gpu(settings: TrainSettings, machine: hardware.Machine | None = None) -> None:
    """In a job on a GPU cluster (``cluster_size``), stop before any work unless this node (``machine``; this one when
    None) has a CUDA GPU: without it, training would run in fp32 on the node's CPU for hours, or never end. The usual
    cause is a CPU-only torch wheel in the job's environment."""
    if not settings.cluster_size:
        return
    size = sizes.vm_size(settings.cluster_size)
    here = hardware.this_machine() if machine is None else machine
    if not size.gpus or here.cuda:
        return
    import torch

    build = f"torch {torch.__version__}, " + (
        "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    )
    problem = f"this job's cluster is {size.name} ({size.gpus} × {size.gpu}), but torch sees no CUDA GPU ({build})"
    if os.environ.get(STAND_IN_NODE):
        print(f"{problem}: a stand-in runs the job on its own machine, so it trains here, without the GPU.")
        return
    raise TrainError(
        f"{problem}. Training on the node's CPU would take hours. Check that the job's environment installs torch "
        "from a CUDA index (azure.job_environment, its --extra-index-url) and that the job runs on the GPU cluster "
        "(compute=…)."
    )


def weight_dtype(method: str, precision: str, cuda: bool) -> str:
    """How the base weights are held: 4-bit (QLoRA), 16-bit for LoRA on a GPU, else fp32 masters."""
    from .memory import weight_dtype as held

    return held(method, precision, "cuda" if cuda else "cpu")


def available_memory_gib() -> float:
    """Free memory where a local run trains: the GPU's on CUDA, RAM otherwise."""
    import psutil
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return free / GIB
    return psutil.virtual_memory().available / GIB


def check_memory(
    settings: TrainSettings,
    preset: Preset,
    precision: str,
    rows: list[dict[str, Any]],
    tokenizer: Any = None,
    available_gib: float | None = None,
) -> Any:
    """The memory estimate of this run where it trains (``phi3course.memory``), or :class:`TrainError` with
    what would fit. ``rows``: the training rows (their real token count, padding-free); ``available_gib``:
    a cluster GPU's memory (then the device is CUDA), default this machine's free memory."""
    from .memory import MemoryBudgetError, batch_tokens, check, mean_row_tokens

    on_gpu = available_gib is not None or hardware.cuda_available()
    available = available_gib or settings.memory_gib or available_memory_gib()
    tokens = batch_tokens(settings.batch_size, mean_row_tokens(rows, tokenizer))
    try:
        return check(
            preset,
            settings.method,
            precision,
            tokens,
            available,
            lora_r=settings.lora_r,
            device="cuda" if on_gpu else "cpu",
            gradient_checkpointing=settings.gradient_checkpointing,
            where="the cluster's GPU" if available_gib is not None else "this machine",
        )
    except MemoryBudgetError as error:
        raise TrainError(str(error)) from None


def method_options(
    settings: TrainSettings, preset: Preset, precision: str, rows: list[dict[str, Any]], available_gib: float
) -> list[dict[str, Any]]:
    """Each fine-tuning method on a GPU of ``available_gib`` (the cluster's) in ``precision``: the memory it needs for
    ``rows`` with these settings (``phi3course.memory``) and whether it fits; ``chosen`` marks ``settings.method``."""
    from .memory import batch_tokens, estimate, mean_row_tokens

    tokens = batch_tokens(settings.batch_size, mean_row_tokens(rows))
    options = []
    for method in ("lora", "qlora", "full"):
        found = estimate(
            preset,
            method,
            precision,
            tokens,
            available_gib,
            lora_r=settings.lora_r,
            device="cuda",
            gradient_checkpointing=settings.gradient_checkpointing,
        )
        options.append(
            {
                "method": method,
                "precision": precision,
                "GiB needed": round(found.total_gib, 1),
                "fits": found.fits,
                "chosen": method == settings.method,
            }
        )
    return options


# --- data -------------------------------------------------------------------------------------------
# The recipe's data and loading steps are notebook 02's export cells (phi3course.recipe): to_training_rows, fit_length
# and model_kwargs. They are also reachable here, as train.<name>, without importing torch and trl before they are
# used.
RECIPE_NAMES = ("to_training_rows", "fit_length", "model_kwargs")


def __getattr__(name: str) -> Any:
    if name in RECIPE_NAMES:
        from . import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_rows(path: str) -> list[dict[str, Any]]:
    rows = read_jsonl(path)
    usable = [r for r in rows if "text" in r or (r.get("messages") and r["messages"][-1]["role"] == "assistant")]
    if not usable:
        raise TrainError(f"{path}: no usable rows (chat rows must end with an assistant message).")
    return usable


# --- training ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    output_dir: str
    model_dir: str
    seconds: float
    steps: int
    tokens: int  # non-padding tokens processed (prompt and answer), over all processes, resumed runs included
    # tokens_per_second: the tokens since this run started or resumed, over step_seconds (trainer_hooks)
    tokens_per_second: float
    final_loss: float
    precision: str
    precision_reason: str
    history: list[dict[str, float]]
    trainable_parameters: int
    total_parameters: int
    resumed_from: str | None = None
    step_seconds: float = 0.0  # the steps alone: ``seconds`` also holds loading, resuming and the last checkpoint
    checks: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # the validation checks (ModelSelection)
    best_step: int | None = None  # the step whose weights were kept (None: the last, no model selection)
    planned_steps: int = 0  # the steps the settings asked for: more than ``steps`` if the model selection stopped early

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def steps_per_epoch(settings: TrainSettings, rows: int) -> int:
    """Optimizer steps in one pass over ``rows`` rows, over every process."""
    return max(1, math.ceil(rows / (settings.batch_size * settings.grad_accum * _world_size())))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _settings_record(settings: TrainSettings) -> dict[str, Any]:
    """The settings a finished run is recognised by, with the training data's content (new facts, same path)."""
    import hashlib

    record = {k: v for k, v in asdict(settings).items() if k not in {"output_dir", "report_dir"}}
    data = Path(settings.train_file)
    record["train_sha256"] = hashlib.sha256(data.read_bytes()).hexdigest() if data.is_file() else None
    return record


def previous_result(settings: TrainSettings) -> TrainResult | None:
    """The result of a finished run with the same settings in ``output_dir``, if there is one.

    A ``result.json`` that cannot be read back (cut short, edited) is said so and counts as none: the model
    is trained again and the file rewritten.
    """
    from .files import DamagedFileError, read_json

    path = Path(settings.output_dir) / "result.json"
    try:
        stored = read_json(path, expect=dict, fix="The model is trained again and the file rewritten")
        if stored is None:
            return None
        if stored.pop("settings", None) != _settings_record(settings):
            return None
        if not Path(stored["model_dir"]).is_dir():
            return None
        return TrainResult(**stored)
    except DamagedFileError as error:
        print(error)
    except (KeyError, TypeError, ValueError) as error:
        what = f"not a training result ({error!r})"
        print(f"{path} is damaged: {what}. The model is trained again and the file rewritten.")
    return None


def _prepare_output(settings: TrainSettings) -> None:
    """Keep checkpoints only if they come from the same settings and an unfinished run: a resume must continue
    the same run. A finished run trained again (``retrain``, or a result.json that cannot be used) starts afresh."""
    import shutil

    from .files import atomic_write_text

    folder = Path(settings.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "settings.json"
    wanted = json.dumps(_settings_record(settings), sort_keys=True)
    changed = record.is_file() and record.read_text(errors="replace") != wanted
    if changed:
        print(f"Settings changed since the checkpoints in {folder} were made: starting afresh.")
        (folder / "result.json").unlink(missing_ok=True)
    if changed or (folder / "result.json").exists():  # a finished run's checkpoints are past its last step
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    atomic_write_text(record, wanted)


def base_model_folders(path: str) -> tuple[str, str]:
    """(weights folder, tokenizer folder) under ``path``, the shallowest of each.

    A plain transformers folder holds both; Azure ML's catalog MLflow models keep them apart
    (``mlflow_model_folder/model`` and ``mlflow_model_folder/components/tokenizer``).
    """
    found = []
    for marker in ("config.json", "tokenizer_config.json"):
        hits = sorted(Path(path).rglob(marker), key=lambda p: len(p.parts))
        if not hits:
            raise TrainError(f"model_path {path} holds no {marker}: pass a folder with a transformers model.")
        found.append(str(hits[0].parent))
    return found[0], found[1]


def load_base(settings: TrainSettings, preset: Preset, precision: str) -> tuple[Any, Any]:
    """(model, tokenizer) to fine-tune: from ``settings.model_path`` when set (the job's input), else the preset; loaded
    as the recipe's ``model_kwargs`` says."""
    from . import recipe

    if settings.method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TrainError("method='qlora' needs bitsandbytes on a CUDA machine: pip install bitsandbytes") from None
    kwargs = recipe.model_kwargs(settings.method, precision)
    if settings.model_path:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        weights, tokenizer_folder = base_model_folders(settings.model_path)
        model = AutoModelForCausalLM.from_pretrained(weights, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    else:
        model, tokenizer = load_model(preset, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def base_folder(settings: TrainSettings, preset: Preset) -> str:
    """The folder (or hub id) the base model's weights come from, as :func:`load_base` loads them."""
    if settings.model_path:
        return str(base_model_folders(settings.model_path)[0])
    return local_path(preset)


def train(
    settings: TrainSettings,
    mlflow_run: bool = False,
    retrain: bool = False,
    callbacks: list[Any] | None = None,
    evaluate: bool = False,
) -> TrainResult:
    """Fine-tune, save the (merged) model to ``output_dir/model`` and return what happened.

    This is what the Azure ML job (and ``torchrun``) runs; notebook 02 builds the same objects in its cells.
    A run that was interrupted resumes from its last checkpoint in ``output_dir/checkpoints`` when called
    again with the same settings; a finished one is not trained twice unless ``retrain``. With ``evaluate``
    and a test file, the base and the tuned model answer the held-out questions (``output_dir/eval.json``).
    """
    import torch
    from transformers.trainer_utils import get_last_checkpoint

    from . import recipe  # notebook 02's export cells
    from .trainer_hooks import history_callback

    preset = settings.validate()
    check_cluster_gpu(settings)  # a job that sees no GPU on a GPU cluster stops here, saying why
    # on the machine this process runs on (a job has no course folder: the probe takes the run's own LoRA settings)
    precision, why = pick_precision(settings.precision, model=settings.model, adapters=settings)
    if settings.model_path:  # the job's catalog input: the shapes of the model it holds (a rehearsal's stand-in too)
        base_model_folders(settings.model_path)
        preset = replace(preset, shape=shape_of(settings.model_path))
    check_memory(settings, preset, precision, load_rows(settings.train_file))  # where it trains: here, or the job's GPU
    if not retrain and (done := previous_result(settings)) is not None:
        print(f"Already trained with these settings: {done.model_dir} (retrain=True trains again).")
        copy_report(settings)
        return done
    _prepare_output(settings)
    train_rows = recipe.to_training_rows(load_rows(settings.train_file))
    test_rows = read_jsonl(settings.test_file) if evaluate and settings.test_file else None
    torch.manual_seed(settings.seed)
    model, tokenizer = load_base(settings, preset, precision)
    # the base model's answers are the same every run: computed once, then kept (phi3course.cache)
    asked_of = {
        "model": base_folder(settings, preset),
        "method": settings.method,
        "precision": precision,
        "device": str(model.device),
    }
    base_eval = None
    if test_rows is not None:
        base_eval = cache.remembered(
            "held-out",
            lambda: recipe.held_out(model, tokenizer, test_rows, "base"),
            code=[recipe.held_out],
            test=test_rows,
            **asked_of,
        )
    if settings.replay:  # the base model's own answers, so the fine-tune keeps them (notebook 02 shows it)
        from .probe import replay_rows

        replayed = cache.remembered(
            "replay", lambda: replay_rows(model, tokenizer, settings.replay), replay=settings.replay, **asked_of
        )
        train_rows += recipe.to_training_rows(replayed)
    try:
        train_rows, dropped = recipe.fit_length(train_rows, tokenizer, settings.max_length)
    except ValueError as error:  # every row too long
        raise TrainError(str(error)) from None
    print(f"{len(train_rows)} rows train; {dropped} longer than max_length={settings.max_length} tokens left out.")
    per_epoch = steps_per_epoch(settings, len(train_rows))
    config = recipe.sft_config(settings, precision, per_epoch)
    history = history_callback(mlflow_run)
    selection = model_selection(settings, tokenizer, per_epoch)
    if selection is not None:  # its check at step 0 is the base model: asked once, then kept
        selection.base = cache.remembered(
            "validation",
            lambda: selection.score(model),
            code=[recipe.ModelSelection.score],
            validation=selection.rows,
            **asked_of,
        )
    adapters = recipe.lora_config(settings, model.config.num_hidden_layers) if settings.method != "full" else None
    chosen = [history, *([selection] if selection else []), *(callbacks or [])]
    trainer = recipe.make_trainer(model, tokenizer, train_rows, settings, config, adapters, chosen)
    last = get_last_checkpoint(config.output_dir) if Path(config.output_dir).is_dir() else None
    began = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - began
    trained = trainer.model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trained.parameters())
    model_dir = Path(settings.output_dir) / "model"
    final = recipe.merge_and_save(trainer, tokenizer, model_dir)
    losses = [row["loss"] for row in history.rows]
    result = TrainResult(
        output_dir=settings.output_dir,
        model_dir=str(model_dir),
        seconds=round(seconds, 2),
        steps=trainer.state.global_step,
        tokens=int(trainer.state.num_input_tokens_seen or 0),
        tokens_per_second=history.tokens_per_second(trainer.state, seconds),
        step_seconds=round(history.step_seconds, 4),  # a tiny model's steps take milliseconds
        final_loss=round(losses[-1] if losses else float(output.training_loss), 4),
        precision=precision,
        precision_reason=why,
        history=history.rows,
        trainable_parameters=trainable,
        total_parameters=total,
        resumed_from=last,
        checks=selection.checks if selection else [],
        best_step=selection.best_step if selection else None,
        planned_steps=trainer.state.max_steps,
    )
    if selection and mlflow_run and trainer.is_world_process_zero():
        import mlflow

        for row in selection.checks:
            mlflow.log_metrics(
                {"validation_facts": row["facts"], "validation_general": row["general"]}, step=row["step"]
            )
    if trainer.is_world_process_zero():
        from .files import atomic_write_text  # a crash mid-write leaves the old file, never half of one

        stored = {**result.to_json(), "settings": _settings_record(settings)}
        atomic_write_text(Path(settings.output_dir) / "result.json", json.dumps(stored, indent=2))
        if base_eval is not None:
            scores = {"base": base_eval, "tuned": recipe.held_out(final, tokenizer, test_rows, "tuned")}
            atomic_write_text(Path(settings.output_dir) / "eval.json", json.dumps(scores, indent=2))
        copy_report(settings)
    return result


def check_interval(settings: TrainSettings, per_epoch: int) -> int:
    """Optimizer steps between validation checks: ``check_every`` epochs, at least one step."""
    return max(1, round(per_epoch * settings.check_every))


def model_selection(settings: TrainSettings, tokenizer: Any, per_epoch: int) -> Any:
    """The recipe's :class:`ModelSelection` over the validation split, or None without one (or ``check_every=0``)."""
    from . import recipe

    if not settings.validation_file or settings.check_every == 0:
        return None
    rows, every = read_jsonl(settings.validation_file), check_interval(settings, per_epoch)
    selection = recipe.ModelSelection(tokenizer, rows, every, settings.target_facts, settings.target_general)
    return selection if selection.rows else None  # it keeps the rows with an expected answer: text data has none


REPORT_FILES = ("result.json", "eval.json")  # what job_outcome reads back


def copy_report(settings: TrainSettings) -> None:
    """result.json and eval.json (those that exist) into ``report_dir``: the job's small output, which 02 downloads
    instead of the model and its checkpoints."""
    import shutil

    if not settings.report_dir:
        return
    Path(settings.report_dir).mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        if (Path(settings.output_dir) / name).is_file():
            shutil.copy2(Path(settings.output_dir) / name, Path(settings.report_dir) / name)


def job_outcome(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """What a finished job wrote (its ``report`` output, downloaded to ``folder``): ``result`` (result.json) and
    ``eval`` (eval.json)."""
    found = {Path(name).stem: sorted(Path(folder).rglob(name)) for name in REPORT_FILES}
    missing = [f"{name}.json" for name, paths in found.items() if not paths]
    if missing:
        what = " or ".join(missing)
        raise TrainError(f"the job's output in {folder} has no {what}: did the job run with --evaluate?")
    return {name: json.loads(paths[0].read_text()) for name, paths in found.items()}


# --- command line (the Azure ML job and torchrun run this) -------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m phi3course.train", description=__doc__.splitlines()[0])
    for f in fields(TrainSettings):
        flag = "--" + f.name.replace("_", "-")
        kind = {"str": str, "int": int, "float": float, "bool": bool}[str(f.type)]
        default = {} if f.default is MISSING else {"default": f.default}  # no default: the flag is required
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, required=not default, **default)
        else:
            parser.add_argument(flag, type=kind, required=not default, **default)
    parser.add_argument(
        "--evaluate",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="answer the test file's questions with the base and the tuned model (eval.json)",
    )
    return parser


PATH_FIELDS = ("train_file", "test_file", "validation_file", "output_dir", "model_path", "report_dir")


def job_arguments(settings: TrainSettings, paths: dict[str, str]) -> str:
    """Every setting as a flag of ``python -m phi3course.train``; ``paths`` puts job references
    (``${{inputs.train}}``) in place of the local path fields. :func:`_parser` reads it back (a test round-trips it)."""
    flags = []
    for f in fields(TrainSettings):
        value = paths.get(f.name) if f.name in PATH_FIELDS else getattr(settings, f.name)
        if value in (None, ""):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags.append(f"{flag} {value}")
    return " ".join(flags)


def log_model_to_workspace(model_dir: str, name: str) -> None:
    """In an Azure ML job: the fine-tuned model as an MLflow model among the job's run artifacts (``model/``).

    Azure ML's tracking server has no MLflow 3 logged models (``log_model`` fails there with 404), so the model is
    saved as an MLflow folder and uploaded as artifacts; 02_fine_tune registers the job's output with the workspace.
    """
    import mlflow

    from .tracking import log_model_artifacts

    if mlflow.active_run() is not None:  # the job's run (MLFLOW_RUN_ID), active once the loss curve is logged
        uri = log_model_artifacts(model_dir)
    else:
        with mlflow.start_run():  # resumes the job's run from MLFLOW_RUN_ID
            uri = log_model_artifacts(model_dir)
    print(f"logged {name} as an MLflow model: {uri.split('?')[0]}")


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    evaluate = args.pop("evaluate")
    settings = TrainSettings(**args)
    # In an Azure ML job MLFLOW_TRACKING_URI points at the workspace (azureml://, through azureml-mlflow):
    # the loss curve and the model are logged there.
    tracked = bool(os.environ.get("MLFLOW_TRACKING_URI"))
    try:
        result = train(settings, mlflow_run=tracked, evaluate=evaluate)
    except (TrainError, DataError, ModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        if tracked:
            log_model_to_workspace(result.model_dir, settings.model)
        print(json.dumps({k: v for k, v in result.to_json().items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
