"""``make bench``: figures, not pass/fail. Writes ``runs/bench.json`` and prints a table.

Training FLOPs per token (the usual estimate, stated with the figure):
    F = 2·N (forward) + 2·N_above (backward through activations) + 2·N_trained (weight gradients)
        + 4·L·d·c + 8·L_above·d·c (attention: QKᵀ and AV forward, and backward, over c attended positions)
with N the weights of the model's matmuls (its Linear layers, LoRA's adapters included; the input
embedding is a lookup, and a tied embedding counts once, as the LM head), N_trained those the optimizer
updates, L layers, d the attention width, c = (row length + 1) / 2 under a causal mask, or (2048 + 1) / 2
for the original tutorial's packed 2048-token sequences, whose rows attend across their boundaries.
N_above and L_above: the weights and layers from the first trained layer up (and the LM head); the backward
pass stops there. With adapters on every layer (or a full fine-tune) they are N and L: F = 4·N + 2·N_trained
+ 12·L·d·c. The course's recipe puts adapters on the top ``lora_layers`` of the layers (the local profile's).
tests/test_bench.py holds this estimate equal to the matmul FLOPs torch's own counter sees.
Efficiency = achieved training FLOP/s ÷ matmul FLOP/s measured in the same run, in the precision the
recipe trains in on this machine. A precision the machine only emulates (bf16 on an AVX2-only CPU: about
1 GFLOP/s, a minute per 2048² matmul) is not timed: the recipe does not train in it there.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phi3course import data
from phi3course.files import read_json, write_json
from phi3course.models import PRESETS, load_model, load_tokenizer
from phi3course.paths import runs_dir
from phi3course.train import pick_precision

from . import loadtest

BENCH_MODEL = "smollm2-135m-instruct"


def matmul_gflops(dtype_name: str, size: int = 2048, repeats: int = 10) -> float:
    """Dense square matmul throughput on this machine, in GFLOP/s."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return round(2 * size**3 * repeats / (time.perf_counter() - began) / 1e9, 1)


@dataclass
class StepTimes:
    """Wall time and tokens of each optimizer step, read from the trainer's own counters."""

    seconds: list[float]
    tokens: list[int]

    def total(self) -> tuple[float, int]:
        """Seconds and tokens of every timed pass, the first (warm-up) included: the definition of tokens per
        second that 02 and the job use (``trainer_hooks``), so the bench's figures and a learner's compare."""
        return sum(self.seconds), sum(self.tokens)


def step_timer(budget_s: float | None = None) -> tuple[Any, StepTimes]:
    """A trainer callback timing each forward and backward pass: each micro-batch under gradient accumulation
    (its optimizer step included in the last), else each optimizer step.

    With ``budget_s``, training stops once at least two passes are timed and together they took ``budget_s`` or
    more: on a 2-core CPU one pass of the tutorial's recipe is a minute and more.
    """
    from transformers import TrainerCallback

    times = StepTimes([], [])

    class Timer(TrainerCallback):
        def _mark(self, state: Any) -> None:
            self.began = time.perf_counter()
            self.seen = int(state.num_input_tokens_seen or 0)

        def _record(self, state: Any, control: Any) -> None:
            times.seconds.append(time.perf_counter() - self.began)
            times.tokens.append(int(state.num_input_tokens_seen or 0) - self.seen)
            print(f"  pass {len(times.seconds)}: {times.seconds[-1]:.1f} s, {times.tokens[-1]} tokens", flush=True)
            if budget_s is not None and len(times.seconds) >= 2 and sum(times.seconds) >= budget_s:
                control.should_training_stop = True
            self._mark(state)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._mark(state)

        def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._record(state, control)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._record(state, control)

    return Timer(), times


def matmul_weights(model: Any, trained_only: bool = False) -> int:
    """Weights that take part in a matmul: every Linear layer's (a tied LM head counted once), no lookups."""
    import torch

    weights = {
        id(module.weight): module.weight
        for module in model.modules()
        if isinstance(module, torch.nn.Linear) and (module.weight.requires_grad or not trained_only)
    }
    return sum(w.numel() for w in weights.values())


def flops_per_token(
    model: Any, trained: int, attended: float, added: int = 0, first_layer: int = 0, attention_trained: bool = True
) -> float:
    """Training FLOPs per token of ``model`` (the base model) with ``trained`` of its matmul weights updated.

    ``added``: matmul weights the fine-tune adds to the base model (LoRA's adapters: they run forward and
    backward too, and are also the trained ones); 0 for a full fine-tune. ``first_layer``: the lowest decoder
    layer that trains (adapters on the upper layers only): nothing below it is in the backward pass.
    ``attention_trained``: False when adapters sit on the MLP projections only; then the first trained layer's
    attention block is not in the backward pass either.
    """
    config = model.config
    n = matmul_weights(model) + added
    layers = config.num_hidden_layers
    below = sum(matmul_weights(layer) for layer in model.model.layers[:first_layer])
    backward_attention = layers - first_layer
    if not attention_trained and first_layer < layers:
        below += matmul_weights(model.model.layers[first_layer].self_attn)
        backward_attention -= 1
    width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    return 2 * n + 2 * (n - below) + 2 * trained + (4 * layers + 8 * backward_attention) * width * attended


def bench_ours(train_file: str, out: Path, steps: int) -> dict[str, Any]:
    """The course's recipe (LoRA on the local profile's top layers, answer-only loss, padding-free, hardware
    precision)."""
    from phi3course import profiles
    from phi3course.recipe import ATTENTION_TARGETS, LORA_TARGETS, lora_config
    from phi3course.train import settings_from_profile, train

    timer, _ = step_timer()  # prints each pass as it ends; the figures below are train()'s own
    settings = settings_from_profile(
        profiles.parameters("local"),
        train_file=train_file,
        output_dir=str(out),
        model=BENCH_MODEL,
        max_steps=steps,
        save_steps=10_000,
        replay=0,  # the bench's own synthetic rows only: the throughput of the recipe's steps
    )
    result = train(settings, retrain=True, callbacks=[timer])
    return {
        # 02's and the job's own figures (trainer_hooks: every optimizer step's own time, the first included)
        "seconds": result.step_seconds,
        "tokens": result.tokens,
        "tokens_per_second": result.tokens_per_second,
        "trainable": result.trainable_parameters,
        "precision": result.precision,
        "lora_layers": settings.lora_layers,
        "first_layer": lora_config(settings, PRESETS[BENCH_MODEL].shape.layers).layers_to_transform[0],
        "attention_trained": bool(set(LORA_TARGETS) & set(ATTENTION_TARGETS)),  # adapters on attention too
    }


def tutorial_recipe_config(out: Path, precision: str, steps: int, micro_batch: int = 4) -> Any:
    """The original tutorial's recipe, with today's trl.

    trl 0.8.6 was given rows padded to 512 tokens *and* ``packing=True, max_seq_length=2048``; it then
    packed the *text* field into constant 2048-token sequences (ConstantLengthDataset), so what trained
    was packed text, not the padded rows. Today's equivalent is ``packing_strategy="wrapped"`` over a
    ``text`` field (the chat rows rendered with the chat template), loss on every token.

    ``micro_batch`` < 4 reaches the tutorial's batch of 4 by gradient accumulation: the same optimizer step,
    timed one 2048-token sequence at a time (on a CPU a whole step of 4 is minutes).
    """
    if 4 % micro_batch:
        raise ValueError(f"micro_batch must divide the tutorial's batch of 4, not {micro_batch}")
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=micro_batch,  # × accumulation = the tutorial's per-device batch of 4
        gradient_accumulation_steps=4 // micro_batch,
        learning_rate=1e-4,
        lr_scheduler_type="linear",
        warmup_steps=round(0.2 * steps),  # the tutorial's warmup_ratio=0.2 (gone from transformers 5)
        bf16=precision == "bf16",
        fp16=False,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        packing=True,
        packing_strategy="wrapped",
        max_length=2048,
        dataset_text_field="text",
        completion_only_loss=False,
        include_num_input_tokens_seen="non_padding",
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
    )


def tutorial_recipe_trainer(
    model: Any,
    tokenizer: Any,
    train_rows: list[dict[str, Any]],
    out: Path,
    precision: str,
    steps: int,
    callbacks: list[Any] | None = None,
    micro_batch: int = 4,
) -> Any:
    """The tutorial's trainer: eager attention, the chat rows rendered as text, packed into 2048-token sequences."""
    from datasets import Dataset
    from trl import SFTTrainer

    model.set_attn_implementation("eager")  # the tutorial's attn_implementation="eager"
    texts = [{"text": tokenizer.apply_chat_template(row["messages"], tokenize=False)} for row in train_rows]
    return SFTTrainer(
        model=model,
        args=tutorial_recipe_config(out, precision, steps, micro_batch),
        train_dataset=Dataset.from_list(texts),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def bench_tutorial(
    train_rows: list[dict[str, Any]], out: Path, steps: int, budget_s: float | None = None
) -> dict[str, Any]:
    """Full fine-tune, eager attention, gradient checkpointing, batch 4 × 2048 packed tokens.

    On a CPU the batch of 4 is reached by accumulating 4 sequences (one optimizer step either way) and the
    passes are timed one sequence each; training stops after ``budget_s`` (two passes at least). Tokens per second
    are counted as 02 counts them: every timed pass, the first included.
    """
    preset = PRESETS[BENCH_MODEL]
    precision, _ = pick_precision("auto", model=BENCH_MODEL)
    import torch

    micro_batch = 4 if torch.cuda.is_available() else 1
    tokenizer = load_tokenizer(preset)
    model, _ = load_model(preset, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)  # as the tutorial
    timer, times = step_timer(budget_s)
    trainer = tutorial_recipe_trainer(
        model, tokenizer, train_rows, out, precision, steps, callbacks=[timer], micro_batch=micro_batch
    )
    trainer.train()
    seconds, tokens = times.total()
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_second": tokens / seconds,
        "precision": precision,
        "micro_batch": micro_batch,
        "passes_timed": len(times.seconds),
        "trainable": matmul_weights(model, trained_only=True),
    }


def bench_endpoint(work: Path, clients: tuple[int, ...] = (1, 8), requests_per_client: int = 6) -> dict[str, Any]:
    """The local endpoint serving the offline default model (SmolLM2-135M-Instruct), loaded at 1 and 8 clients."""
    import psutil

    from phi3course import endpoint, tracking
    from phi3course.rundir import RunDir

    model, tokenizer = load_model(PRESETS[BENCH_MODEL])
    run = RunDir(work / "run")
    uri = tracking.register_pretrained(run.path, model, tokenizer, "bench-endpoint")
    run.remember(mlflow_tracking_uri=tracking.store_uri(run.path))
    live = endpoint.start_local(run, uri, port=5090)
    try:
        questions = [
            "Who leads the Quillmere Institute?",
            "Where is the Quillmere Institute based?",
            "When was the Quillmere Institute founded?",
            "What is the mascot of the Quillmere Institute?",
        ]
        payloads = [{"input_data": [q], "params": {"max_new_tokens": 32}} for q in questions]
        loadtest.measure(live, payloads, 1, 2)  # warm-up
        results = {n: loadtest.measure(live, payloads, n, requests_per_client).summary() for n in clients}
        server = psutil.Process(live.pid)
        rss = sum(p.memory_info().rss for p in [server, *server.children(recursive=True)]) / 2**30
    finally:
        endpoint.stop(run)
    figures: dict[str, Any] = {"model": BENCH_MODEL, "max_new_tokens": 32, "server_rss_gib": round(rss, 2)}
    for n, summary in results.items():
        figures.update(
            {
                f"rps_{n}": summary["rps"],
                f"p50_ms_{n}": summary["p50_ms"],
                f"p95_ms_{n}": summary["p95_ms"],
                f"errors_{n}": summary["errors"],
            }
        )
    if 1 in results and 8 in results:
        figures["throughput_8_vs_1"] = round(results[8]["rps"] / results[1]["rps"], 2)
    return figures


def bench_flow(work: Path, calls: int = 50) -> dict[str, Any]:
    """Latency ``pf flow serve`` adds over calling the endpoint directly with the same payload (p50 of ``calls``),
    and the latency 05's Agent Framework workflow (``phi3course.agents``, in this process) adds.

    Uses the local profile's fine-tuned model (run ``make course`` first): its short answers keep
    the run short; the base model rambles to the flow's 128-token limit.
    """
    import asyncio
    import statistics

    import requests

    from phi3course import agents, endpoint, flow
    from phi3course.rundir import RunDir

    local = RunDir(runs_dir() / "local")
    model_uri = local.get("model_uri")
    if not model_uri:
        why = f"no fine-tuned model in {local.path} yet: run `make course` (local profile) first"
        print(f"flow: skipped: {why}", flush=True)
        return {"skipped": why}
    run = RunDir(work / "flow-run")
    run.remember(mlflow_tracking_uri=local.get("mlflow_tracking_uri"))
    live = endpoint.start_local(run, model_uri, port=5095)
    try:
        flow.make_connection(flow.CONNECTION, live.scoring_uri, live.key_path)
        server = flow.serve(run, port=8095)
        question = "Who leads the Quillmere Institute?"
        tool = {
            "input_data": [[{"role": "user", "content": question}]],
            "params": {"max_new_tokens": 128, "do_sample": False, "return_full_text": False},
        }
        workflow = agents.chat_workflow(agents.AzureMLScoringClient(live.scoring_uri, live.key_path), 128)
        loop = asyncio.new_event_loop()
        direct, served, framework = [], [], []
        for _ in range(3):  # warm-up
            live.score(tool)
            server.ask(question)
            loop.run_until_complete(agents.ask(workflow, question))
        for _ in range(calls):  # interleaved, so drift hits all three alike
            began = time.perf_counter()
            requests.post(live.scoring_uri, json=tool, headers=live.headers(), timeout=120).raise_for_status()
            direct.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            server.ask(question)
            served.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            loop.run_until_complete(agents.ask(workflow, question))
            framework.append((time.perf_counter() - began) * 1000)
        loop.close()
    finally:
        flow.stop_serving(run)
        endpoint.stop_all(run)
        flow.stop_pf_service()
    direct_p50, served_p50, framework_p50 = (statistics.median(x) for x in (direct, served, framework))
    return {
        "calls": calls,
        "direct_p50_ms": round(direct_p50, 1),
        "served_p50_ms": round(served_p50, 1),
        "overhead_ms": round(served_p50 - direct_p50, 1),
        "overhead_ratio": round(served_p50 / direct_p50 - 1, 3),
        "agent_framework_p50_ms": round(framework_p50, 1),
        "agent_framework_overhead_ms": round(framework_p50 - direct_p50, 1),
        "agent_framework_overhead_ratio": round(framework_p50 / direct_p50 - 1, 3),
    }


SECTIONS = ("train", "endpoint", "flow")


def native_precisions() -> set[str]:
    """The precisions this machine's matmuls compute natively (fp32 always)."""
    from phi3course import hardware

    native = {"fp32", "fp16"} if hardware.cuda_available() else {"fp32"}
    return (native | {"bf16"}) if hardware.native_bf16() else native


def machine_section(
    precision: str, why: str, native: set[str], measure: Any = matmul_gflops, cpus: int | None = None
) -> dict[str, Any]:
    """Matmul rates of the precisions this machine computes natively; the training precision's is the denominator.

    ``measure(name)`` times one precision. bf16 where it is only emulated is skipped and said so: on an
    AVX2-only CPU it runs at about 1 GFLOP/s, and the recipe trains in fp32 there anyway.
    """
    import os

    rates: dict[str, Any] = {}
    for name in ("fp32", "bf16", "fp16"):
        if name in native or name == precision:
            rates[name] = measure(name)
        elif name == "bf16":
            rates[name] = "not timed: this machine has no native bf16 (it would be emulated, many times slower)"
    return {
        "cpus": cpus or os.cpu_count(),
        "matmul_gflops": rates[precision],
        "matmul_precision": precision,
        "matmul_gflops_by_precision": rates,
        "precision": precision,
        "precision_reason": why,
    }


def run(
    tutorial_steps: int = 2, our_steps: int = 12, sections: tuple[str, ...] = SECTIONS, tutorial_budget_s: float = 90
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="phi3course-bench-"))
    results: dict[str, Any] = {}
    try:
        precision, why = pick_precision("auto", model=BENCH_MODEL)  # a native-bf16 CPU: the faster, measured
        results["machine"] = machine_section(precision, why, native_precisions())
        print(f"matmul: {results['machine']['matmul_gflops_by_precision']}", flush=True)
        if "train" in sections:
            results["train"] = bench_train(
                work, results["machine"]["matmul_gflops"], precision, tutorial_steps, our_steps, tutorial_budget_s
            )
        if "endpoint" in sections:
            results["endpoint"] = bench_endpoint(work)
        if "flow" in sections:
            results["flow"] = bench_flow(work)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_train(
    work: Path, peak: float, precision: str, tutorial_steps: int, our_steps: int, tutorial_budget_s: float | None = None
) -> dict[str, Any]:
    """Ours against the tutorial's recipe, same model and data, same run; ``peak``: the matmul rate in ``precision``."""
    prepared = data.prepare("synthetic", work / "data", subjects=10)  # enough text for 2048-token packs
    print(f"train: our recipe, {our_steps} steps in {precision}", flush=True)
    ours = bench_ours(str(prepared.train_path), work / "ours", our_steps)
    if ours["precision"] != precision:
        raise RuntimeError(f"the recipe trained in {ours['precision']}, the matmul rate is for {precision}")
    print(f"train: the original tutorial's recipe, up to {tutorial_steps} steps in {precision}", flush=True)
    tutorial = bench_tutorial(prepared.train, work / "tutorial", tutorial_steps, tutorial_budget_s)
    model, tokenizer = load_model(PRESETS[BENCH_MODEL])
    lengths = data.token_lengths(prepared.train, tokenizer)
    mean_row = sum(lengths) / len(lengths)
    # LoRA: the trained weights are adapters added to the base model's matmuls
    ours_f = flops_per_token(
        model,
        ours["trainable"],
        (mean_row + 1) / 2,
        added=ours["trainable"],
        first_layer=ours["first_layer"],
        attention_trained=ours["attention_trained"],
    )
    tutorial_f = flops_per_token(model, tutorial["trainable"], (2048 + 1) / 2)
    ours_gflops = ours["tokens_per_second"] * ours_f / 1e9
    tutorial_gflops = tutorial["tokens_per_second"] * tutorial_f / 1e9
    return {
        "model": BENCH_MODEL,
        "tokens_per_second": round(ours["tokens_per_second"], 1),
        "achieved_gflops": round(ours_gflops, 1),
        "efficiency": round(ours_gflops / peak, 3),
        "matmul_gflops": peak,  # the denominator of both efficiencies, measured in the same run
        "precision": precision,  # what both recipes trained in here, and the matmul rate's precision
        "flops_per_token": round(ours_f),
        # "seed_recipe_*" and "vs_seed_recipe" are bench.json's fixed keys (benchmarks.measurements reads them):
        # "seed" is the tutorial.
        "seed_recipe_tokens_per_second": round(tutorial["tokens_per_second"], 1),
        "tutorial_recipe_achieved_gflops": round(tutorial_gflops, 1),
        "tutorial_recipe_efficiency": round(tutorial_gflops / peak, 3),
        "vs_seed_recipe": round(ours["tokens_per_second"] / tutorial["tokens_per_second"], 2),
        "measured": {"ours": ours, "tutorial_recipe": tutorial, "mean_row_tokens": round(mean_row, 1)},
        "formula": "F = 2·N + 2·N_above + 2·N_trained + (4·L + 8·L_above)·d·c per token (see benchmarks/bench.py)",
    }


def print_table(results: dict[str, Any]) -> None:
    machine = results["machine"]
    rows = [
        ("machine", "cpus", machine["cpus"]),
        ("machine", "trains in", f"{machine['precision']} ({machine['precision_reason']})"),
    ]
    for name, rate in machine["matmul_gflops_by_precision"].items():
        rows.append(("machine", f"matmul GFLOP/s {name}", rate))
    for key, value in results.get("train", {}).items():
        if not isinstance(value, dict | str):
            rows.append(("train", key, value))
    for section in ("endpoint", "flow"):
        for key, value in results.get(section, {}).items():
            rows.append((section, key, value))
    width = max(len(r[1]) for r in rows)
    for section, key, value in rows:
        print(f"{section:9} {key:{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tutorial-steps", type=int, default=2, help="the original tutorial's recipe: optimizer steps at most"
    )
    parser.add_argument(
        "--tutorial-budget",
        type=float,
        default=90,
        help="seconds spent timing the tutorial's recipe at most, once two passes are timed",
    )
    parser.add_argument("--our-steps", type=int, default=12, help="optimizer steps of the course's recipe")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/bench.json")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only this section (repeatable)")
    args = parser.parse_args(argv)
    results = run(args.tutorial_steps, args.our_steps, tuple(args.only or SECTIONS), args.tutorial_budget)
    out = args.out or runs_dir() / "bench.json"
    previous = read_json(out, default={}) if args.only else {}
    write_json(out, {**previous, **results})
    print_table(results)
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
