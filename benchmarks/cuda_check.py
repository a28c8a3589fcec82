"""A one-shot check of the course's CUDA path on a GPU machine: figures, not pass/fail.

    python -m benchmarks.cuda_check --out DIR [--work DIR] [--skip-full] [--skip-shaped] [--budget-s 420]
    python -m benchmarks.cuda_check --out DIR --cpu-smoke   # the same parts, tiny, on a CPU (about a minute)

What it runs, each part on its own (a failure is recorded and the next part still runs):

1. ``train.pick_precision("auto")`` and ``train.train(settings, evaluate=True)`` with ``phi-3-tiny`` on the
   synthetic data (the smoke profile's settings: lora, 12 steps, lr 0.005, batch 8, r 8, replay 8), watched
   by a callback: where the model's parameters are and in which dtype while it trains, the dtype the LM head
   computes in, the peak GPU memory; which device the base-model generation (held-out evaluation, replay rows)
   ran on; result.json/eval.json; the merged model saved, its dtypes, and that it reloads and generates.
   Then once with ``method="full"``.
2. ``phi3course.serving.score`` (the Azure ML scoring script) on the saved model, in this process: the dtype and
   device it serves in, two questions in one request, greedy twice, one question alone, one sampled request.
3. The Azure path at real width: for Phi-4-mini (the ``azureml`` profile's model) and Phi-3.5-mini (Phi-3-mini's
   shapes), a random model of the preset's architecture — its width, heads, key/value heads, MLP and vocabulary,
   its positions, ``--shaped-layers`` layers, the course's tiny tokenizer with the preset's chat template — is
   trained as the Azure ML job trains it (``train.train`` with the model folder as ``model_path``, the cluster's
   size as ``cluster_size``), once per way of training: LoRA on the A100 cluster (bf16), and the T4 option's LoRA
   and QLoRA (fp16; QLoRA only where bitsandbytes imports). Each is merged (QLoRA's through the 16-bit reload) and
   saved, then served as the rehearsed deployment serves it (the scoring folder under ``azmlinfsrv``, the model
   under ``AZUREML_MODEL_DIR``, the key checked) and asked one question. Recorded per part: the parameters' dtypes
   and devices, ``phi3course.memory``'s estimate against ``torch.cuda.max_memory_allocated``, tokens/s (the
   course's definition, ``trainer_hooks``), the saved dtypes, the served answer.

``--cpu-smoke`` runs the same parts on the CPU at the stand-ins' widths (``models.stand_in``) with a vocabulary
larger than the tokenizer's, so the check cannot rot where no GPU is at hand; what needs CUDA (bf16/fp16 training,
QLoRA, the GPU's memory figures) is recorded as skipped, with why.

Writes ``DIR/cuda_check.json`` (after every part), copies the tiny LoRA run's result.json and eval.json there, and
writes ``DIR/figures.json``: the shaped parts' figures as rows for a measurements record (``python -m
benchmarks.measurements add DIR/figures.json --cpu-class gpu ...``), with the GPU and the date.
Needs no network: every model is built here (``COURSE_CACHE`` may hold ``phi-3-tiny`` already, else it is built).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phi3course import sizes

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")  # the GPU machine has no network: fail fast instead of waiting on timeouts

GIB = 1024**3
# Presets whose architecture the shaped parts train at real width: the azureml profile's model, and Phi-3-mini's
# shapes (Phi-3.5-mini has them, and the positions a stand-in needs).
SHAPED_PRESETS = ("phi-4-mini-instruct", "phi-3.5-mini-instruct")
REPORT: dict[str, Any] = {}
BEGAN = time.perf_counter()


# --- bookkeeping -------------------------------------------------------------------------------------
def _write(out: Path) -> None:
    REPORT["elapsed_s"] = round(time.perf_counter() - BEGAN, 1)
    (out / "cuda_check.json").write_text(json.dumps(REPORT, indent=2, default=str))


def _section(name: str, out: Path, func: Any, *args: Any) -> Any:
    print(f"\n=== {name} ({time.perf_counter() - BEGAN:.0f} s) ===", flush=True)
    began = time.perf_counter()
    try:
        value = func(*args)
        REPORT.setdefault(name, {})["ok"] = True
        return value
    except BaseException as error:  # a part that breaks is a finding; the next part still runs
        if isinstance(error, KeyboardInterrupt):
            raise
        REPORT.setdefault(name, {}).update(ok=False, error=f"{type(error).__name__}: {error}")
        REPORT[name]["traceback"] = traceback.format_exc()[-4000:]
        traceback.print_exc()
        return None
    finally:
        REPORT.setdefault(name, {})["seconds"] = round(time.perf_counter() - began, 2)
        _write(out)


def _gib(n: float) -> float:
    return round(n / GIB, 4)


def _param_summary(model: Any) -> list[dict[str, Any]]:
    """Parameters grouped by (dtype, device, trainable)."""
    counts: Counter[tuple[str, str, bool]] = Counter()
    for p in model.parameters():
        counts[(str(p.dtype).replace("torch.", ""), str(p.device), bool(p.requires_grad))] += p.numel()
    return [{"dtype": d, "device": dev, "trainable": t, "parameters": n} for (d, dev, t), n in sorted(counts.items())]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _device() -> str:
    return "cuda" if _cuda() else "cpu"


def _cuda_memory() -> dict[str, float]:
    """The CUDA allocator's figures now ({} on a CPU)."""
    import torch

    if not _cuda():
        return {}
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return {
        "allocated_gib": _gib(torch.cuda.memory_allocated()),
        "reserved_gib": _gib(torch.cuda.memory_reserved()),
        "max_allocated_gib": _gib(torch.cuda.max_memory_allocated()),
        "max_reserved_gib": _gib(torch.cuda.max_memory_reserved()),
        "device_used_gib": _gib(total - free),  # what nvidia-smi shows: context + reserved + other processes
        "device_total_gib": _gib(total),
    }


# --- instrumentation ---------------------------------------------------------------------------------
GENERATION_CALLS: list[dict[str, Any]] = []


def _watch_generation() -> None:
    """Record the device and dtype of every ``evaluate.generate`` call (held-out answers, replay rows, probe)."""
    import phi3course.evaluate as evaluate_module
    import phi3course.probe as probe_module

    original = evaluate_module.generate
    if getattr(original, "_watched", False):
        return

    def generate(model: Any, tokenizer: Any, prompts: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        replies = original(model, tokenizer, prompts, *args, **kwargs)
        first = next(model.parameters())
        GENERATION_CALLS.append(
            {
                "desc": kwargs.get("desc", args[2] if len(args) > 2 else "generating"),
                "device": str(model.device),
                "dtype": str(first.dtype).replace("torch.", ""),
                "prompts": len(prompts),
                "seconds": round(time.perf_counter() - began, 3),
            }
        )
        return replies

    generate._watched = True  # type: ignore[attr-defined]
    evaluate_module.generate = generate
    probe_module.generate = generate


def _watcher() -> Any:
    """A trainer callback: parameters' dtype/device, the LM head's compute dtype, step times, peak memory."""
    import torch
    from transformers import TrainerCallback

    class Watch(TrainerCallback):
        def __init__(self) -> None:
            self.info: dict[str, Any] = {}
            self.step_tokens: list[int] = []
            self.step_seconds: list[float] = []
            self.hook: Any = None
            self._last = 0.0
            self._tokens = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            self.info["at_train_begin"] = _cuda_memory()
            if _cuda():
                torch.cuda.reset_peak_memory_stats()
            self.info["model_class"] = type(model).__name__
            self.info["parameters_at_train_begin"] = _param_summary(model)
            optimizer = kwargs.get("optimizer")
            self.info["optimizer"] = type(optimizer).__name__ if optimizer is not None else None
            self.info["args"] = {
                "bf16": args.bf16,
                "fp16": args.fp16,
                "device": str(args.device),
                "optim": str(args.optim),
                "n_gpu": args.n_gpu,
            }
            head = next((m for n, m in model.named_modules() if n.endswith("lm_head")), None)
            if head is not None:

                def capture(module: Any, inputs: Any, output: Any) -> None:
                    if "lm_head" not in self.info:
                        self.info["lm_head"] = {
                            "weight_dtype": str(module.weight.dtype).replace("torch.", ""),
                            "input_dtype": str(inputs[0].dtype).replace("torch.", ""),
                            "output_dtype": str(output.dtype).replace("torch.", ""),
                            "autocast_enabled": torch.is_autocast_enabled(_device()),
                            "positions": list(output.shape),
                            "device": str(output.device),
                        }

                self.hook = head.register_forward_hook(capture)
            self._last = time.perf_counter()
            self._tokens = int(state.num_input_tokens_seen or 0)

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if _cuda():
                torch.cuda.synchronize()
            now = time.perf_counter()
            self.step_seconds.append(round(now - self._last, 4))
            self._last = now
            seen = int(state.num_input_tokens_seen or 0)
            self.step_tokens.append(seen - self._tokens)
            self._tokens = seen
            if state.global_step == 1:
                self.info["parameters_after_step_1"] = _param_summary(model)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.info["at_train_end"] = _cuda_memory()
            self.info["step_seconds"] = self.step_seconds
            self.info["step_tokens"] = self.step_tokens
            if self.hook is not None:
                self.hook.remove()

    return Watch()


# --- parts -------------------------------------------------------------------------------------------
def part_environment(out: Path, cpu_smoke: bool) -> dict[str, Any]:
    import importlib.metadata as metadata

    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in (
        "transformers",
        "trl",
        "peft",
        "datasets",
        "accelerate",
        "tokenizers",
        "huggingface-hub",
        "safetensors",
        "fsspec",
        "pyarrow",
        "werkzeug",
        "flask",
        "azureml-inference-server-http",
        "bitsandbytes",
    ):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    import transformers

    info["transformers_from"] = str(Path(transformers.__file__).parent)
    info["cuda_available"] = torch.cuda.is_available()
    info["cpu_smoke"] = cpu_smoke
    info["cpu_count"] = os.cpu_count()
    from phi3course.paths import cache_dir

    info["course_cache"] = str(cache_dir())
    info["tiny_cached"] = (cache_dir() / "phi-3-tiny" / "model" / "config.json").is_file()
    REPORT["environment"] = info
    if cpu_smoke:
        print(json.dumps(info, indent=2))
        return info
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: this check is for a GPU machine (--cpu-smoke runs it on a CPU)")
    props = torch.cuda.get_device_properties(0)
    info.update(
        gpu=torch.cuda.get_device_name(0),
        capability=f"{props.major}.{props.minor}",
        gpu_memory_gib=_gib(props.total_memory),
        bf16_native=torch.cuda.is_bf16_supported(including_emulation=False),
        cuda_runtime=torch.version.cuda,
    )
    torch.zeros(1, device="cuda")  # the context, so its size can be read
    free, total = torch.cuda.mem_get_info()
    info["cuda_context_gib"] = _gib(total - free - torch.cuda.memory_reserved())
    print(json.dumps(info, indent=2))
    return info


def part_precision(out: Path) -> None:
    from phi3course.train import pick_precision, weight_dtype

    precision, why = pick_precision("auto")
    REPORT["precision"] = {
        "auto": precision,
        "why": why,
        "weights_lora": weight_dtype("lora", precision, True),
        "weights_full": weight_dtype("full", precision, True),
    }
    print(REPORT["precision"])


def part_data(out: Path, work: Path) -> Any:
    from phi3course import data

    prepared = data.prepare("synthetic", work / "data", seed=42, subjects=2)
    REPORT["data"] = {
        "train_rows": len(prepared.train),
        "test_rows": len(prepared.test),
        "train_path": str(prepared.train_path),
        "test_path": str(prepared.test_path),
    }
    print(REPORT["data"])
    return prepared


def _settings(prepared: Any, folder: Path, **overrides: Any) -> Any:
    """The smoke profile's training settings (lora, 12 steps, …) with the tiny model, on ``prepared``."""
    from phi3course import profiles
    from phi3course.train import settings_from_profile

    files = dict(train_file=str(prepared.train_path), test_file=str(prepared.test_path), output_dir=str(folder))
    return settings_from_profile(profiles.parameters("smoke"), **{**files, "model": "phi-3-tiny", **overrides})


def _estimates(settings: Any, preset: Any, precision: str, tokenizer: Any, step_tokens: list[int]) -> dict[str, Any]:
    """The course's estimate for ``preset`` (its shapes) as train() makes it (characters), with the tokenizer, and at
    the real peak step."""
    from phi3course import memory
    from phi3course.train import check_memory, load_rows

    rows = load_rows(settings.train_file)
    as_train = check_memory(settings, preset, precision, rows)
    exact = check_memory(settings, preset, precision, rows, tokenizer) if tokenizer is not None else None
    found: dict[str, Any] = {
        "as_train_checks": {"tokens": as_train.tokens, **as_train.parts()},
        "as_train_checks_total_gib": round(as_train.total_gib, 4),
        "as_train_checks_without_overhead_gib": round(as_train.total_gib - as_train.overhead_gib, 4),
    }
    if exact is not None:
        found["with_tokenizer"] = {"tokens": exact.tokens, "total_gib": round(exact.total_gib, 4)}
    if step_tokens:
        biggest = max(step_tokens)
        real = memory.estimate(
            preset,
            settings.method,
            precision,
            biggest,
            as_train.available_gib,
            lora_r=settings.lora_r,
            device=_device(),
            gradient_checkpointing=settings.gradient_checkpointing,
        )
        found["at_largest_real_step"] = {
            "tokens": biggest,
            "weights_gib": round(real.weights_gib, 4),
            "training_state_gib": round(real.training_state_gib, 4),
            "activations_gib": round(real.activations_gib, 4),
            "logits_gib": round(real.logits_gib, 4),
            "total_gib": round(real.total_gib, 4),
            "without_overhead_gib": round(real.total_gib - real.overhead_gib, 4),
        }
    return found


def _check_saved(model_dir: Path, question: list[dict[str, str]]) -> dict[str, Any]:
    """The merged model on disk: its dtypes, no adapter weights left, and it reloads and answers (on the GPU)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info: dict[str, Any] = {"files": sorted(p.name for p in model_dir.iterdir())}
    dtypes: Counter[str] = Counter()
    keys = []
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                keys.append(key)
                dtypes[f.get_slice(key).get_dtype()] += 1
    info["tensor_dtypes"] = dict(dtypes)
    info["adapter_keys_left"] = [k for k in keys if "lora" in k.lower()][:5]
    config = json.loads((model_dir / "config.json").read_text())
    info["config_dtype"] = config.get("dtype", config.get("torch_dtype"))
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(_device())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    info["reloaded_dtype"] = str(model.dtype)
    info["reloaded_parameters"] = sum(p.numel() for p in model.parameters())
    info["generation_eos"] = model.generation_config.eos_token_id
    text = tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(_device())
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    info["reloaded_answer"] = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    del model
    if _cuda():
        torch.cuda.empty_cache()
    return info


def part_train(out: Path, prepared: Any, work: Path, method: str, evaluate: bool, name: str, replay: bool) -> None:
    """phi-3-tiny through ``train.train`` with the smoke profile's settings (without its replay rows unless
    ``replay``), watched; then its saved model checked."""
    import torch

    from phi3course.models import load_tokenizer, resolve
    from phi3course.train import train

    _watch_generation()
    GENERATION_CALLS.clear()
    settings = _settings(prepared, work / name, method=method, **({} if replay else {"replay": 0}))
    watch = _watcher()
    if _cuda():
        torch.cuda.reset_peak_memory_stats()
    before = _cuda_memory()
    began = time.perf_counter()
    result = train(settings, callbacks=[watch], evaluate=evaluate)
    wall = time.perf_counter() - began
    after = _cuda_memory()
    folder = Path(settings.output_dir)
    info: dict[str, Any] = {
        "settings": {
            k: getattr(settings, k)
            for k in ("method", "max_steps", "learning_rate", "batch_size", "lora_r", "replay", "precision")
        },
        "precision": result.precision,
        "precision_reason": result.precision_reason,
        "steps": result.steps,
        "tokens": result.tokens,
        "train_seconds": result.seconds,
        "tokens_per_second": result.tokens_per_second,
        "final_loss": result.final_loss,
        "first_loss": result.history[0]["loss"] if result.history else None,
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "train_call_wall_s": round(wall, 2),
        "watch": watch.info,
        "generation_calls": list(GENERATION_CALLS),
        "memory_before_train_call": before,
        "memory_after_train_call": after,
        "peak_allocated_whole_call_gib": after.get("max_allocated_gib"),
        "result_json": (folder / "result.json").is_file(),
        "eval_json": (folder / "eval.json").is_file(),
    }
    if info["eval_json"]:
        scores = json.loads((folder / "eval.json").read_text())
        info["eval"] = {
            label: {k: v for k, v in part.items() if k != "answers"} | {"answers": part.get("answers", [])[:3]}
            for label, part in scores.items()
        }
    REPORT[name] = {**REPORT.get(name, {}), **info}
    _write(out)
    tokenizer = load_tokenizer(resolve(settings.model))
    try:
        preset = resolve(settings.model)
        REPORT[name]["memory_estimate"] = _estimates(settings, preset, result.precision, tokenizer, watch.step_tokens)
        peak = watch.info.get("at_train_end", {}).get("max_allocated_gib")
        REPORT[name]["memory_measured_during_training"] = {
            "max_allocated_gib": peak,
            "max_reserved_gib": watch.info.get("at_train_end", {}).get("max_reserved_gib"),
            "cuda_context_gib": REPORT.get("environment", {}).get("cuda_context_gib"),
        }
    except Exception as error:
        REPORT[name]["memory_estimate_error"] = f"{type(error).__name__}: {error}"
    question = [m for m in prepared.test[0]["messages"][:-1]]
    REPORT[name]["saved_model"] = _check_saved(Path(result.model_dir), question)
    if out.is_dir() and name == "train_lora":
        for file in ("result.json", "eval.json"):
            if (folder / file).is_file():
                shutil.copy(folder / file, out / f"lora_{file}")
    print(json.dumps({k: v for k, v in REPORT[name].items() if k not in {"watch"}}, indent=2, default=str)[:6000])


def _install_server_stub() -> str:
    """Only if azureml-inference-server-http (or flask) cannot be imported: a stand-in with the same two names."""
    try:
        from azureml_inference_server_http.api.aml_request import rawhttp  # noqa: F401
        from azureml_inference_server_http.api.aml_response import AMLResponse

        return "azureml-inference-server-http (real)"
    except Exception as error:
        import types

        from werkzeug.wrappers import Response

        class AMLResponse(Response):
            def __init__(
                self,
                message: Any,
                status_code: int,
                response_headers: Any = None,
                json_str: bool = False,
                run_function_failed: bool = False,
            ) -> None:
                body = json.dumps(message) if json_str else message
                super().__init__(body, status=status_code, mimetype="application/json")

        package = types.ModuleType("azureml_inference_server_http")
        api = types.ModuleType("azureml_inference_server_http.api")
        request_module = types.ModuleType("azureml_inference_server_http.api.aml_request")
        response_module = types.ModuleType("azureml_inference_server_http.api.aml_response")
        request_module.rawhttp = lambda func: func  # type: ignore[attr-defined]
        response_module.AMLResponse = AMLResponse  # type: ignore[attr-defined]
        sys.modules.update(
            {
                "azureml_inference_server_http": package,
                "azureml_inference_server_http.api": api,
                "azureml_inference_server_http.api.aml_request": request_module,
                "azureml_inference_server_http.api.aml_response": response_module,
            }
        )
        return f"stub (import failed: {type(error).__name__}: {error})"


def part_serve(out: Path, prepared: Any, work: Path) -> None:
    import torch
    from werkzeug.test import EnvironBuilder

    model_dir = work / "train_lora" / "model"
    if not (model_dir / "config.json").is_file():
        raise RuntimeError(f"no saved model at {model_dir} (the LoRA run failed)")
    os.environ["AZUREML_MODEL_DIR"] = str(model_dir)
    os.environ.pop("COURSE_MODEL_URI", None)
    os.environ.pop("COURSE_ENDPOINT_KEY_FILE", None)
    info: dict[str, Any] = {"server_package": _install_server_stub()}
    from phi3course.serving import score

    if _cuda():
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    score.init()
    info["init_seconds"] = round(time.perf_counter() - began, 3)
    info["serving_dtype"] = str(score.serving_dtype())
    info["model_dtype"] = str(score._model.dtype)
    info["model_device"] = str(score._model.device)
    info["parameters"] = _param_summary(score._model)
    info["generation_eos"] = score._model.generation_config.eos_token_id

    def post(body: dict[str, Any]) -> tuple[int, Any, float]:
        request = EnvironBuilder(method="POST", data=json.dumps(body), content_type="application/json").get_request()
        t = time.perf_counter()
        response = score.run(request)
        return response.status_code, json.loads(response.get_data(as_text=True)), round(time.perf_counter() - t, 3)

    questions = [row["messages"][-2]["content"] for row in prepared.test[:2]]
    expected = [row.get("answer") for row in prepared.test[:2]]
    body = {"input_data": questions, "params": {"max_new_tokens": 32}}
    first = post(body)
    second = post(body)
    alone = post({"input_data": [questions[0]], "params": {"max_new_tokens": 32}})
    sampled = post({"input_data": questions, "params": {"max_new_tokens": 16, "do_sample": True, "temperature": 0.7}})
    bad = post({"input_data": [], "params": {}})
    info.update(
        questions=questions,
        expected=expected,
        status=[first[0], second[0], alone[0], sampled[0]],
        answers=first[1],
        answers_again=second[1],
        two_answers=isinstance(first[1], list) and len(first[1]) == 2,
        greedy_twice_equal=first[1] == second[1],
        alone_answer=alone[1],
        alone_equals_batched=isinstance(alone[1], list) and isinstance(first[1], list) and alone[1][0] == first[1][0],
        sampled=sampled[1],
        bad_request=[bad[0], bad[1]],
        request_seconds=[first[2], second[2], alone[2], sampled[2]],
        peak_allocated_gib=_gib(torch.cuda.max_memory_allocated()) if _cuda() else None,
    )
    REPORT["serve"] = {**REPORT.get("serve", {}), **info}
    print(json.dumps({k: v for k, v in info.items() if k != "parameters"}, indent=2, default=str))


# --- the Azure path at real width ------------------------------------------------------------------------
# The ways the Azure ML job trains, by the cluster it trains on: (method, cluster size). The size's record
# (phi3course.sizes) gives the precision the job's precision="auto" resolves to there.
WAYS = {
    "lora-a100": ("lora", sizes.GPU_CLUSTER_SIZE),  # the azureml profile's cluster
    "lora-t4": ("lora", sizes.SMALL_GPU_CLUSTER_SIZE),  # the T4 option
    "qlora-t4": ("qlora", sizes.SMALL_GPU_CLUSTER_SIZE),  # the T4 option with a 4-bit base
}


def shaped_model(name: str, layers: int, work: Path, cpu_smoke: bool) -> tuple[Any, Path]:
    """A random model of preset ``name``'s architecture with ``layers`` layers, saved (bf16, as the catalog's
    checkpoints are) with the tiny tokenizer and the preset's chat template to a folder the job takes as
    ``model_path``: (the preset with these shapes, the folder).

    At real width it keeps the preset's width, heads, key/value heads, MLP and vocabulary (the tokenizer uses only the
    first ids of that vocabulary; the memory is the real one's); ``cpu_smoke`` takes the stand-in's widths instead, and
    a vocabulary twice the tokenizer's, so that ids the tokenizer lacks are generated and decoded there too."""
    from dataclasses import replace

    import torch
    from transformers import Phi3ForCausalLM

    from phi3course import models

    preset = models.resolve(name)
    stand_in = models.stand_in(preset)  # the preset's positions and chat template on the tiny tokenizer
    tokenizer = models.load_tokenizer(stand_in)
    assert preset.shape is not None
    base = replace(stand_in.shape, vocab=2 * len(tokenizer)) if cpu_smoke else preset.shape
    shape = replace(base, layers=layers)
    shaped = replace(preset, shape=shape)
    config = models.stand_in_config(shaped, tokenizer)
    config.vocab_size = shape.vocab
    folder = work / "shaped" / name
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        with torch.device(_device()):
            model = Phi3ForCausalLM(config).to(torch.bfloat16)
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")]
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model
        if _cuda():
            torch.cuda.empty_cache()
    return shaped, folder


def skip_reason(method: str, size_name: str, cpu_smoke: bool) -> str:
    """Why a way of training cannot run here ("" when it can)."""
    precision = sizes.vm_size(size_name).precision
    if method == "qlora" and cpu_smoke:
        return "QLoRA needs a CUDA GPU (bitsandbytes 4-bit): skipped on the CPU"
    if cpu_smoke and precision == "fp16":
        return f"{precision} training needs a CUDA GPU: skipped on the CPU (lora-a100 ran the same code in its format)"
    if method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except Exception as error:  # not installed, or built for another CUDA
            return f"bitsandbytes does not import ({type(error).__name__}: {error}): pip install bitsandbytes"
    if not cpu_smoke and precision == "bf16":
        import torch

        if not torch.cuda.is_bf16_supported(including_emulation=False):
            return f"this GPU has no native bf16, which {size_name} trains in"
    return ""


def shaped_settings(
    prepared: Any, output: Path, model_folder: Path, name: str, way: str, args: argparse.Namespace
) -> Any:
    """The job's settings for preset ``name`` trained the ``way`` it names: the smoke profile's recipe on the model in
    ``model_folder`` (the job's ``model_path``), for the way's cluster (its size and precision; none on the CPU)."""
    method, size_name = WAYS[way]
    size = sizes.vm_size(size_name)
    on_cluster = {} if args.cpu_smoke else {"cluster_size": size.name, "precision": size.precision}
    return _settings(
        prepared,
        output,
        model=name,
        model_path=str(model_folder),
        method=method,
        max_steps=args.shaped_steps,
        batch_size=args.shaped_batch,
        lora_r=16,
        replay=0,
        test_file="",
        save_steps=10_000,
        **on_cluster,
    )


def part_shaped(out: Path, prepared: Any, work: Path, name: str, way: str, args: argparse.Namespace, part: str) -> None:
    """Train, merge, save and serve a random model of preset ``name``'s architecture the ``way`` the job would."""
    import torch

    from phi3course.train import train

    method, size_name = WAYS[way]
    size = sizes.vm_size(size_name)
    why = skip_reason(method, size_name, args.cpu_smoke)
    if why:
        REPORT[part] = {"skipped": why}
        print(f"skipped: {why}")
        return
    shaped, folder = shaped_model(name, args.shaped_layers, work, args.cpu_smoke)
    settings = shaped_settings(prepared, work / "runs" / part.replace("/", "_"), folder, name, way, args)
    from phi3course.memory import total_parameters

    assert shaped.shape is not None
    info: dict[str, Any] = {
        "shape": shaped.shape.__dict__,
        "parameters": total_parameters(shaped.shape),
        "cluster": {"size": size.name, "gpu": size.gpu, "precision": size.precision},
        "settings": {
            k: getattr(settings, k) for k in ("method", "precision", "cluster_size", "max_steps", "batch_size")
        },
    }
    if args.cpu_smoke:
        info["cpu_smoke"] = f"trained on the CPU in its own format, not {size.name}'s {size.precision}"
    REPORT[part] = info
    watch = _watcher()
    if _cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    result = train(settings, callbacks=[watch])
    end = watch.info.get("at_train_end", {})
    from transformers import AutoTokenizer

    estimate = _estimates(settings, shaped, result.precision, AutoTokenizer.from_pretrained(folder), watch.step_tokens)
    real = estimate.get("at_largest_real_step", {})
    info.update(
        precision=result.precision,
        precision_reason=result.precision_reason,
        steps=result.steps,
        tokens=result.tokens,
        tokens_per_second=result.tokens_per_second,
        final_loss=result.final_loss,
        trainable_parameters=result.trainable_parameters,
        parameters_at_train_begin=watch.info.get("parameters_at_train_begin"),
        lm_head=watch.info.get("lm_head"),
        step_tokens=watch.step_tokens,
        step_seconds=watch.step_seconds,
        memory_estimate=estimate,
        memory={
            "estimate_without_overhead_gib": real.get("without_overhead_gib"),
            "estimate_total_gib": real.get("total_gib"),
            "measured_max_allocated_gib": end.get("max_allocated_gib"),
            "measured_max_reserved_gib": end.get("max_reserved_gib"),
            "allocated_at_train_begin_gib": watch.info.get("at_train_begin", {}).get("allocated_gib"),
        }
        if _cuda()
        else {
            "estimate_without_overhead_gib": real.get("without_overhead_gib"),
            "estimate_total_gib": real.get("total_gib"),
            "measured": "skipped: torch.cuda.max_memory_allocated needs CUDA",
        },
    )
    _write(out)
    question = [m for m in prepared.test[0]["messages"][:-1]]
    info["saved_model"] = _check_saved(Path(result.model_dir), question)
    _write(out)
    info["served"] = serve_as_deployed(Path(result.model_dir), work / "deployments" / part.replace("/", "_"), question)
    shutil.rmtree(settings.output_dir, ignore_errors=True)
    print(
        json.dumps(
            {k: info.get(k) for k in ("precision", "tokens_per_second", "parameters_at_train_begin", "memory")}
            | {"served": {k: v for k, v in info["served"].items() if k != "log_tail"}},
            indent=2,
            default=str,
        )
    )


def serve_as_deployed(model_dir: Path, folder: Path, question: list[dict[str, str]]) -> dict[str, Any]:
    """Serve ``model_dir`` as the rehearsed deployment does (``rehearsal.endpoints.scoring_container``: the scoring
    folder, the model under ``AZUREML_MODEL_DIR``, the key; ``azmlinfsrv`` with its default single sync worker, on
    loopback), POST one question with the key and one without, then stop the server."""
    import secrets

    import requests

    from phi3course.endpoint import SCORING_SCRIPT, scoring_code
    from phi3course.files import atomic_write_text
    from phi3course.processes import identify, launch, stop_group, wait_healthy
    from phi3course.rehearsal.common import HOST, free_port
    from phi3course.rehearsal.endpoints import SERVER_TIMEOUT_S, inference_server_command, scoring_container

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    key_file = folder / "primary.key"
    atomic_write_text(key_file, secrets.token_urlsafe(32), mode=0o600)
    code = scoring_code(folder / "scoring-code")
    container = folder / "container"
    env = scoring_container(container, code, SCORING_SCRIPT, ("shaped", "1", model_dir), key_file)
    if os.environ.get("PYTHONPATH"):  # where this interpreter's packages were installed (wheels brought along)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    port = free_port()
    log_path = folder / "server.log"
    before = _cuda_memory()
    began = time.perf_counter()
    process = launch(inference_server_command(SCORING_SCRIPT, port), log_path, env, cwd=container / "code")
    recorded = identify(process.pid)
    from phi3course import hardware

    info: dict[str, Any] = {
        "command": "azmlinfsrv --entry_script score.py (sync worker, WORKER_COUNT unset: 1)",
        # score.serving_dtype()'s rule on this machine (the server runs here): the format the model is served in
        "serving_precision": hardware.native_precision(),
    }
    try:
        wait_healthy(process, f"http://{HOST}:{port}/", log_path, SERVER_TIMEOUT_S, "the scoring container")
        info["ready_seconds"] = round(time.perf_counter() - began, 2)
        if before:
            info["gpu_used_by_server_gib"] = round(_cuda_memory()["device_used_gib"] - before["device_used_gib"], 3)
        uri = f"http://{HOST}:{port}/score"
        body = {"input_data": [question], "params": {"max_new_tokens": 16}}
        key = key_file.read_text().strip()
        t = time.perf_counter()
        answered = requests.post(uri, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300)
        info.update(
            status=answered.status_code, answer=answered.json(), request_seconds=round(time.perf_counter() - t, 3)
        )
        info["status_without_key"] = requests.post(uri, json=body, timeout=60).status_code
    finally:
        stop_group(recorded)
        log = log_path.read_text(errors="replace") if log_path.is_file() else ""
        info["log_tail"] = log[-3000:]
    if info.get("status") != 200 or info.get("status_without_key") != 401:
        raise RuntimeError(
            f"the deployment answered {info.get('status')} (with key), {info.get('status_without_key')} "
            f"(without): {info.get('answer')}"
        )
    return info


def _profiler_callback(step: int) -> Any:
    """A trainer callback that profiles optimizer step ``step`` (torch.profiler and cProfile) and times every step."""
    import cProfile
    import io
    import pstats

    import torch
    from transformers import TrainerCallback

    class Profile(TrainerCallback):
        def __init__(self) -> None:
            self.info: dict[str, Any] = {"step_seconds": []}
            self.torch_profile: Any = None
            self.python_profile: Any = None
            self._last = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            torch.cuda.synchronize()
            self._last = time.perf_counter()
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            self.info["attn_implementation"] = getattr(base.config, "_attn_implementation", None)
            self.info["gradient_checkpointing"] = getattr(base, "is_gradient_checkpointing", None)
            self.info["training_mode"] = model.training
            self.info["parameters"] = _param_summary(model)
            kinds: Counter[str] = Counter(type(m).__name__ for m in model.modules())
            self.info["module_types"] = {k: v for k, v in kinds.items() if "lora" in k.lower() or "Linear" in k}

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == step - 1:
                torch.cuda.synchronize()
                activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                self.torch_profile = torch.profiler.profile(activities=activities)
                self.torch_profile.__enter__()
                self.python_profile = cProfile.Profile()
                self.python_profile.enable()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            torch.cuda.synchronize()
            now = time.perf_counter()
            self.info["step_seconds"].append(round(now - self._last, 4))
            self._last = now
            if self.torch_profile is not None and state.global_step == step:
                self.python_profile.disable()
                self.torch_profile.__exit__(None, None, None)
                averages = self.torch_profile.key_averages()
                for key in ("self_cpu_time_total", "self_device_time_total", "self_cuda_time_total"):
                    try:
                        self.info[f"top_by_{key}"] = averages.table(sort_by=key, row_limit=18, max_name_column_width=60)
                    except Exception as error:  # the sort key's name changed between torch versions
                        self.info[f"top_by_{key}"] = f"{type(error).__name__}: {error}"
                text = io.StringIO()
                pstats.Stats(self.python_profile, stream=text).sort_stats("cumulative").print_stats(30)
                self.info["cprofile_cumulative"] = text.getvalue()[-9000:]
                text = io.StringIO()
                pstats.Stats(self.python_profile, stream=text).sort_stats("tottime").print_stats(20)
                self.info["cprofile_tottime"] = text.getvalue()[-6000:]
                self.torch_profile = None

    return Profile()


def part_profile_lora(out: Path, prepared: Any, work: Path, layers: int, batch: int) -> None:
    """Why a LoRA step is slow on CUDA: the same random model, 4 steps each, step 3 profiled; variants that
    switch off one suspect at a time (cuDNN attention; 16-bit base weights; the course's answer-only loss), and the
    full fine-tune as the baseline."""
    import torch
    from trl import SFTTrainer

    import phi3course.train as train_module
    from phi3course import recipe

    shaped, folder = shaped_model(SHAPED_PRESETS[1], layers, work, cpu_smoke=False)
    original_model_kwargs = recipe.model_kwargs
    original_loss = recipe.AnswerLogitsSFTTrainer.compute_loss
    variants = [
        ("lora", {}),
        ("lora_without_cudnn_sdp", {"cudnn_sdp": False}),
        ("lora_fp32_base", {"fp32_base": True}),
        ("lora_trl_loss", {"trl_loss": True}),
        ("full", {}),
    ]
    found: dict[str, Any] = {}
    for name, change in variants:
        method = "full" if name == "full" else "lora"
        settings = _settings(
            prepared,
            work / f"profile_{name}",
            model=shaped.name,
            model_path=str(folder),
            method=method,
            max_steps=4,
            batch_size=batch,
            lora_r=16,
            replay=0,
            test_file="",
            save_steps=10_000,
        )
        callback = _profiler_callback(3)
        if change.get("cudnn_sdp") is False:
            torch.backends.cuda.enable_cudnn_sdp(False)
        if change.get("fp32_base"):  # the frozen base weights load in fp32 instead of the 16-bit format
            recipe.model_kwargs = lambda method, precision: {
                **original_model_kwargs(method, precision),
                "dtype": torch.float32,
            }
        if change.get("trl_loss"):  # trl's own loss: the output layer's logits at every position
            recipe.AnswerLogitsSFTTrainer.compute_loss = SFTTrainer.compute_loss
        began = time.perf_counter()
        try:
            result = train_module.train(settings, callbacks=[callback])
            found[name] = {
                "wall_s": round(time.perf_counter() - began, 2),
                "train_seconds": result.seconds,
                "tokens": result.tokens,
                "tokens_per_second": result.tokens_per_second,
                **callback.info,
            }
        except Exception as error:
            found[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
        finally:
            torch.backends.cuda.enable_cudnn_sdp(True)
            recipe.model_kwargs = original_model_kwargs
            recipe.AnswerLogitsSFTTrainer.compute_loss = original_loss
            shutil.rmtree(work / f"profile_{name}", ignore_errors=True)
            torch.cuda.empty_cache()
        REPORT["profile_lora"] = {**REPORT.get("profile_lora", {}), **found}
        _write(out)
        print(name, found[name].get("step_seconds"), found[name].get("error", ""), flush=True)
        print(found[name].get("top_by_self_device_time_total", "")[:3000], flush=True)
        print(found[name].get("top_by_self_cpu_time_total", "")[:3000], flush=True)
        print(found[name].get("cprofile_tottime", "")[:2500], flush=True)


def summary() -> None:
    env = REPORT.get("environment", {})
    lines = [
        f"GPU: {env.get('gpu')} (capability {env.get('capability')}, {env.get('gpu_memory_gib')} GiB); "
        f"torch {env.get('torch')}, transformers {env.get('transformers')}, trl {env.get('trl')}, "
        f"peft {env.get('peft')}, datasets {env.get('datasets')}"
    ]
    if "precision" in REPORT:
        lines.append(f"precision auto: {REPORT['precision'].get('auto')} ({REPORT['precision'].get('why')})")
    for name in ("train_lora", "train_full"):
        part = REPORT.get(name, {})
        if not part:
            lines.append(f"{name}: skipped")
            continue
        if not part.get("ok"):
            lines.append(f"{name}: FAILED {part.get('error')}")
            continue
        params = part.get("watch", {}).get("parameters_at_train_begin", [])
        held = ", ".join(
            f"{p['dtype']}@{p['device']}{'(trained)' if p['trainable'] else ''}={p['parameters']}" for p in params
        )
        gens = ", ".join(
            f"{g['desc']}: {g['device']} {g['dtype']} {g['seconds']} s" for g in part.get("generation_calls", [])
        )
        est = part.get("memory_estimate", {}).get("as_train_checks_total_gib")
        lines.append(
            f"{name}: {part.get('steps')} steps, {part.get('tokens_per_second')} tokens/s, loss "
            f"{part.get('first_loss')} -> {part.get('final_loss')}; params {held}; lm_head "
            f"{part.get('watch', {}).get('lm_head')}; result.json {part.get('result_json')}, eval.json "
            f"{part.get('eval_json')}; saved {part.get('saved_model', {}).get('tensor_dtypes')} reloads as "
            f"{part.get('saved_model', {}).get('reloaded_dtype')}; generation: {gens}; memory estimate {est} GiB vs "
            f"peak allocated {part.get('memory_measured_during_training', {}).get('max_allocated_gib')} GiB"
        )
    serve = REPORT.get("serve", {})
    if serve.get("ok"):
        lines.append(
            f"serve: {serve.get('model_dtype')} on {serve.get('model_device')} "
            f"(serving_dtype {serve.get('serving_dtype')}); answers {serve.get('answers')}; greedy twice "
            f"equal {serve.get('greedy_twice_equal')}; alone == batched {serve.get('alone_equals_batched')}"
        )
    else:
        lines.append(f"serve: FAILED {serve.get('error')}")
    for part in shaped_parts():
        found = REPORT.get(part, {})
        if not found:
            lines.append(f"{part}: not run (budget, or --skip-shaped)")
        elif found.get("skipped"):
            lines.append(f"{part}: skipped: {found['skipped']}")
        elif not found.get("ok"):
            lines.append(f"{part}: FAILED {found.get('error')}")
        else:
            held = ", ".join(
                f"{p['dtype']}@{p['device']}{'(trained)' if p['trainable'] else ''}={p['parameters']}"
                for p in found.get("parameters_at_train_begin") or []
            )
            memory, served = found.get("memory", {}), found.get("served", {})
            lines.append(
                f"{part}: {found.get('precision')}, {found.get('tokens_per_second')} tokens/s; params {held}; memory "
                f"estimate {memory.get('estimate_without_overhead_gib')} GiB (without overhead) vs max allocated "
                f"{memory.get('measured_max_allocated_gib', memory.get('measured'))}; saved "
                f"{found.get('saved_model', {}).get('tensor_dtypes')}; served in {served.get('serving_precision')}: "
                f"{served.get('status')} {served.get('answer')}"
            )
    text = "\n".join(lines)
    REPORT["summary"] = lines
    print("\n=== summary ===\n" + text, flush=True)


def figures() -> dict[str, Any]:
    """The shaped parts' figures as a ``figures`` record's rows (benchmarks/measurements.py), with the GPU and date."""
    env = REPORT.get("environment", {})
    rows = []
    for part in shaped_parts():
        found = REPORT.get(part, {})
        if not found.get("ok") or found.get("skipped"):
            continue
        memory = found.get("memory", {})
        held = ", ".join(
            f"{p['dtype']} on {p['device']}{' (trained)' if p['trainable'] else ''}"
            for p in found.get("parameters_at_train_begin") or []
        )
        measured = memory.get("measured_max_allocated_gib")
        rows += [
            {"what": f"{part}: training throughput", "value": f"{found.get('tokens_per_second')} tokens/s"},
            {
                "what": f"{part}: memory estimate (without overhead) vs peak allocated",
                "value": f"{memory.get('estimate_without_overhead_gib')} vs {measured} GiB"
                if measured is not None
                else f"{memory.get('estimate_without_overhead_gib')} GiB, peak not measured",
            },
            {
                "what": f"{part}: weights while training, saved, served",
                "value": f"{held}; saved {found.get('saved_model', {}).get('tensor_dtypes')}; served in "
                f"{found.get('served', {}).get('serving_precision')}",
            },
        ]
    return {"gpu": env.get("gpu"), "date": REPORT.get("date"), "figures": rows}


def shaped_parts() -> list[str]:
    """The shaped parts' names, in the order they run: ``<preset>/<way>``."""
    return [f"{name}/{way}" for name in SHAPED_PRESETS for way in WAYS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cuda_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for cuda_check.json (and the LoRA run's result/eval)")
    parser.add_argument("--work", default="", help="scratch folder for data, runs and models (default: a temp one)")
    parser.add_argument("--cpu-smoke", action="store_true", help="the same parts, tiny, on the CPU (no CUDA needed)")
    parser.add_argument("--skip-full", action="store_true", help="no method='full' run of phi-3-tiny")
    parser.add_argument("--skip-shaped", action="store_true", help="no Phi-4-mini- and Phi-3-mini-shaped parts")
    parser.add_argument(
        "--profile-lora", action="store_true", help="only profile LoRA vs full steps on a Phi-3-mini-shaped model"
    )
    parser.add_argument(
        "--shaped-layers", type=int, default=0, help="layers of the shaped models (default 4; 2 on CPU)"
    )
    parser.add_argument("--shaped-steps", type=int, default=3)
    parser.add_argument("--shaped-batch", type=int, default=0, help="rows per step (default 64; 8 on CPU)")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="skip the parts that would start after this many seconds"
    )
    args = parser.parse_args(argv)
    args.shaped_layers = args.shaped_layers or (2 if args.cpu_smoke else 4)
    args.shaped_batch = args.shaped_batch or (8 if args.cpu_smoke else 64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cuda_check_"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    REPORT["date"] = datetime.now(UTC).date().isoformat()  # a measurements record's date (with the GPU, below)
    REPORT["args"] = vars(args)

    if _section("environment", out, part_environment, out, args.cpu_smoke) is None:
        summary()
        _write(out)
        return 1
    _section("precision", out, part_precision, out)
    prepared = _section("data", out, part_data, out, work)
    if prepared is None:
        summary()
        _write(out)
        return 1
    if args.profile_lora:
        _section("profile_lora", out, part_profile_lora, out, prepared, work, args.shaped_layers, args.shaped_batch)
        _write(out)
        return 0 if REPORT["profile_lora"].get("ok") else 1
    replay = not args.cpu_smoke  # the replay rows' generation is the held-out one's code: seconds saved on a CPU
    _section("train_lora", out, part_train, out, prepared, work, "lora", True, "train_lora", replay)
    _section("serve", out, part_serve, out, prepared, work)
    if not args.skip_full and time.perf_counter() - BEGAN < args.budget_s:
        _section("train_full", out, part_train, out, prepared, work, "full", False, "train_full", replay)
    for part in [] if args.skip_shaped else shaped_parts():
        if time.perf_counter() - BEGAN >= args.budget_s:
            REPORT[part] = {"skipped": f"not started: past the budget of {args.budget_s:.0f} s"}
            continue
        name, way = part.split("/")
        _section(part, out, part_shaped, out, prepared, work, name, way, args, part)
    summary()
    _write(out)
    (out / "figures.json").write_text(json.dumps(figures(), indent=2, default=str))
    checked = ["train_lora", "serve", *([] if args.skip_shaped else shaped_parts())]
    return 0 if all(REPORT.get(k, {}).get("ok", True) for k in checked) else 1


if __name__ == "__main__":
    raise SystemExit(main())
