"""A one-shot check of the course's CUDA path on a GPU machine: figures, not pass/fail.

    python -m benchmarks.cuda_check --out DIR [--work DIR] [--skip-full] [--skip-probe] [--budget-s 200]

What it runs, each part on its own (a failure is recorded and the next part still runs):

1. ``train.pick_precision("auto")`` and ``train.train(settings, evaluate=True)`` with ``phi-3-tiny`` on the
   synthetic data (the smoke profile's settings: lora, 12 steps, lr 0.005, batch 8, r 8, replay 8), watched
   by a callback: where the model's parameters are and in which dtype while it trains, the dtype the LM head
   computes in, the peak GPU memory; which device the base-model generation (held-out evaluation, replay rows)
   ran on; result.json/eval.json; the merged model saved, its dtypes, and that it reloads and generates.
   Then once with ``method="full"``.
2. ``phi3course.serving.score`` (the Azure ML scoring script) on the saved model: the dtype and device it serves in,
   two questions in one request, greedy twice, one question alone, one sampled request.
3. ``phi3course.memory`` (``train.check_memory``) against ``torch.cuda.max_memory_allocated``: for the tiny runs,
   and for a larger random Phi-3-shaped model (Phi-3-mini's widths and vocabulary, fewer layers) trained through
   the same ``train.train`` for a few steps, where the estimate's parts are not all dwarfed by the overhead.

Writes ``DIR/cuda_check.json`` (after every part) and copies the tiny LoRA run's result.json and eval.json there.
Needs a CUDA GPU; the models are offline (``COURSE_CACHE`` may hold ``phi-3-tiny`` already, else it is built).
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
from pathlib import Path
from typing import Any

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")  # the GPU machine has no network: fail fast instead of waiting on timeouts

GIB = 1024**3
PROBE_PRESET = "phi-3-shaped-probe"
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


def _cuda_memory() -> dict[str, float]:
    import torch

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
            torch.cuda.synchronize()
            self.info["at_train_begin"] = _cuda_memory()
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
                            "autocast_enabled": torch.is_autocast_enabled("cuda"),
                            "positions": list(output.shape),
                            "device": str(output.device),
                        }

                self.hook = head.register_forward_hook(capture)
            self._last = time.perf_counter()
            self._tokens = int(state.num_input_tokens_seen or 0)

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
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
def part_environment(out: Path) -> dict[str, Any]:
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
    ):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    import transformers

    info["transformers_from"] = str(Path(transformers.__file__).parent)
    info["cuda_available"] = torch.cuda.is_available()
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: this check is for a GPU machine")
    props = torch.cuda.get_device_properties(0)
    info.update(
        gpu=torch.cuda.get_device_name(0),
        capability=f"{props.major}.{props.minor}",
        gpu_memory_gib=_gib(props.total_memory),
        bf16_native=torch.cuda.is_bf16_supported(including_emulation=False),
        cuda_runtime=torch.version.cuda,
        cpu_count=os.cpu_count(),
    )
    torch.zeros(1, device="cuda")  # the context, so its size can be read
    free, total = torch.cuda.mem_get_info()
    info["cuda_context_gib"] = _gib(total - free - torch.cuda.memory_reserved())
    from phi3course.paths import cache_dir

    info["course_cache"] = str(cache_dir())
    info["tiny_cached"] = (cache_dir() / "phi-3-tiny" / "model" / "config.json").is_file()
    REPORT["environment"] = info
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


def _estimates(settings: Any, precision: str, tokenizer: Any, step_tokens: list[int]) -> dict[str, Any]:
    """The course's estimate as train() makes it (characters), with the tokenizer, and at the real peak step."""
    from phi3course import memory
    from phi3course.models import resolve
    from phi3course.train import check_memory, load_rows

    preset = resolve(settings.model)
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
            preset, settings.method, precision, biggest, as_train.available_gib, lora_r=settings.lora_r, device="cuda"
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
    """The merged model on disk: its dtypes, no adapter weights left, and it reloads and answers on the GPU."""
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
    model = AutoModelForCausalLM.from_pretrained(model_dir).to("cuda")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    info["reloaded_dtype"] = str(model.dtype)
    info["reloaded_parameters"] = sum(p.numel() for p in model.parameters())
    info["generation_eos"] = model.generation_config.eos_token_id
    text = tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to("cuda")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    info["reloaded_answer"] = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    del model
    torch.cuda.empty_cache()
    return info


def part_train(out: Path, prepared: Any, work: Path, method: str, evaluate: bool, name: str) -> None:
    import torch

    from phi3course.models import load_tokenizer, resolve
    from phi3course.train import train

    _watch_generation()
    GENERATION_CALLS.clear()
    settings = _settings(prepared, work / name, method=method)
    watch = _watcher()
    torch.cuda.synchronize()
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
        "peak_allocated_whole_call_gib": after["max_allocated_gib"],
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
        REPORT[name]["memory_estimate"] = _estimates(settings, result.precision, tokenizer, watch.step_tokens)
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
        peak_allocated_gib=_gib(torch.cuda.max_memory_allocated()),
    )
    REPORT["serve"] = {**REPORT.get("serve", {}), **info}
    print(json.dumps({k: v for k, v in info.items() if k != "parameters"}, indent=2, default=str))


def _make_probe_preset(layers: int) -> tuple[Any, int, Any]:
    """Register a preset for a random model with Phi-3-mini's widths and vocabulary but ``layers`` layers, saved
    (bf16) in the course cache with the tiny tokenizer: (shape, parameters, tokenizer)."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    from phi3course import models
    from phi3course.paths import cache_dir

    tokenizer = models.load_tokenizer(models.PRESETS["phi-3-tiny"])
    shape = models.Shape(layers=layers, hidden=3072, heads=32, kv_heads=32, intermediate=8192, vocab=32064, tied=False)
    folder = cache_dir() / PROBE_PRESET
    shutil.rmtree(folder, ignore_errors=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    config = Phi3Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        rope_theta=10000.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Phi3ForCausalLM(config).to(torch.bfloat16)
    counted = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder / "model")
    del model
    torch.cuda.empty_cache()
    models.PRESETS[PROBE_PRESET] = models.Preset(
        PROBE_PRESET, "tiny", "random, Phi-3-mini widths, few layers: memory probe", counted / 1e6, shape=shape
    )
    return shape, counted, tokenizer


def part_memory_probe(out: Path, prepared: Any, work: Path, layers: int, steps: int, batch: int) -> None:
    """A random model with Phi-3-mini's widths and vocabulary but ``layers`` layers, through ``train.train``."""
    import torch

    shape, counted, tokenizer = _make_probe_preset(layers)
    from phi3course import memory
    from phi3course.train import train

    results = {
        "shape": shape.__dict__,
        "parameters": counted,
        "parameters_by_memory_module": memory.total_parameters(shape),
    }
    for method in ("lora", "full"):
        settings = _settings(
            prepared,
            work / f"probe_{method}",
            model=PROBE_PRESET,
            method=method,
            max_steps=steps,
            batch_size=batch,
            lora_r=16,
            replay=0,
            test_file="",
            save_steps=10_000,
        )
        watch = _watcher()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        result = train(settings, callbacks=[watch])
        end = watch.info.get("at_train_end", {})
        estimate = _estimates(settings, result.precision, tokenizer, watch.step_tokens)
        real = estimate.get("at_largest_real_step", {})
        results[method] = {
            "precision": result.precision,
            "steps": result.steps,
            "tokens_per_second": result.tokens_per_second,
            "step_tokens": watch.step_tokens,
            "step_seconds": watch.step_seconds,
            "final_loss": result.final_loss,
            "parameters_at_train_begin": watch.info.get("parameters_at_train_begin"),
            "lm_head": watch.info.get("lm_head"),
            "optimizer": watch.info.get("optimizer"),
            "allocated_at_train_begin_gib": watch.info.get("at_train_begin", {}).get("allocated_gib"),
            "measured_max_allocated_gib": end.get("max_allocated_gib"),
            "measured_max_reserved_gib": end.get("max_reserved_gib"),
            "estimate": estimate,
            "estimate_without_overhead_vs_measured": [real.get("without_overhead_gib"), end.get("max_allocated_gib")],
        }
        REPORT["memory_probe"] = {**REPORT.get("memory_probe", {}), **results}
        _write(out)
        shutil.rmtree(work / f"probe_{method}", ignore_errors=True)
        torch.cuda.empty_cache()
    print(
        json.dumps(
            {
                m: {
                    k: results[m][k]
                    for k in (
                        "precision",
                        "tokens_per_second",
                        "measured_max_allocated_gib",
                        "estimate_without_overhead_vs_measured",
                    )
                }
                for m in ("lora", "full")
            },
            indent=2,
        )
    )


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

    import phi3course.train as train_module

    _make_probe_preset(layers)
    original_weight_dtype = train_module.weight_dtype
    original_scorer = train_module.score_answers_only
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
            model=PROBE_PRESET,
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
        if change.get("fp32_base"):
            train_module.weight_dtype = lambda method, precision, cuda: "fp32"
        if change.get("trl_loss"):
            train_module.score_answers_only = lambda trainer: trainer
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
            train_module.weight_dtype = original_weight_dtype
            train_module.score_answers_only = original_scorer
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
    probe = REPORT.get("memory_probe", {})
    for method in ("lora", "full"):
        if method in probe:
            lines.append(
                f"memory probe {method}: estimate without overhead vs max allocated (GiB) "
                f"{probe[method]['estimate_without_overhead_vs_measured']}, "
                f"{probe[method]['tokens_per_second']} tokens/s"
            )
    text = "\n".join(lines)
    REPORT["summary"] = lines
    print("\n=== summary ===\n" + text, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cuda_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for cuda_check.json (and the LoRA run's result/eval)")
    parser.add_argument("--work", default="", help="scratch folder for data, runs and models (default: a temp one)")
    parser.add_argument("--skip-full", action="store_true", help="no method='full' run of phi-3-tiny")
    parser.add_argument("--skip-probe", action="store_true", help="no memory probe with the larger random model")
    parser.add_argument(
        "--profile-lora", action="store_true", help="only profile LoRA vs full steps on the larger random model"
    )
    parser.add_argument("--probe-layers", type=int, default=4)
    parser.add_argument("--probe-steps", type=int, default=3)
    parser.add_argument("--probe-batch", type=int, default=64)
    parser.add_argument(
        "--budget-s", type=float, default=200.0, help="skip the optional parts that would start after this many seconds"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cuda_check_"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    REPORT["args"] = vars(args)

    if _section("environment", out, part_environment, out) is None:
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
        _section("profile_lora", out, part_profile_lora, out, prepared, work, args.probe_layers, args.probe_batch)
        _write(out)
        return 0 if REPORT["profile_lora"].get("ok") else 1
    _section("train_lora", out, part_train, out, prepared, work, "lora", True, "train_lora")
    _section("serve", out, part_serve, out, prepared, work)
    if not args.skip_full and time.perf_counter() - BEGAN < args.budget_s:
        _section("train_full", out, part_train, out, prepared, work, "full", False, "train_full")
    if not args.skip_probe and time.perf_counter() - BEGAN < args.budget_s:
        _section(
            "memory_probe",
            out,
            part_memory_probe,
            out,
            prepared,
            work,
            args.probe_layers,
            args.probe_steps,
            args.probe_batch,
        )
    summary()
    _write(out)
    return 0 if all(REPORT.get(k, {}).get("ok", True) for k in ("train_lora", "serve")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
