"""``make bench``: figures, not pass/fail. Writes ``runs/bench.json`` and prints a table.

Training FLOPs per token (the usual estimate, stated with the figure):
    F = 2·N (forward) + 2·N (backward through activations) + 2·N_trained (weight gradients)
        + 12·L·d·c (attention: QKᵀ and AV, forward and backward, over c attended positions on average)
with N the model's parameters (the tied embedding counted once, as the LM head's matmul), L layers,
d the attention width, c = (row length + 1) / 2 under a causal mask, or (2048 + 1) / 2 for the seed's
packed 2048-token sequences, whose rows attend across their boundaries.
Efficiency = achieved training FLOP/s ÷ matmul FLOP/s measured in the same run at the training precision.
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
from phi3course.train import TrainSettings, pick_precision

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

    def steady(self, skip: int = 1) -> tuple[float, int]:
        """Seconds and tokens of the steps after the first ``skip`` (warm-up)."""
        return sum(self.seconds[skip:]), sum(self.tokens[skip:])


def step_timer() -> tuple[Any, StepTimes]:
    from transformers import TrainerCallback

    times = StepTimes([], [])

    class Timer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began = time.perf_counter()
            self.seen = int(state.num_input_tokens_seen or 0)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            times.seconds.append(time.perf_counter() - self.began)
            times.tokens.append(int(state.num_input_tokens_seen or 0) - self.seen)

    return Timer(), times


def flops_per_token(model: Any, trained: int, attended: float) -> float:
    config = model.config
    n = sum(p.numel() for p in model.parameters())  # the base model: tied embedding counted once
    layers = config.num_hidden_layers
    width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    return 4 * n + 2 * trained + 12 * layers * width * attended


def bench_ours(train_file: str, out: Path, steps: int) -> dict[str, Any]:
    """The course's recipe (LoRA, answer-only loss, padding-free, hardware precision)."""
    from phi3course.train import train

    timer, times = step_timer()
    settings = TrainSettings(
        train_file=train_file,
        output_dir=str(out),
        model=BENCH_MODEL,
        max_steps=steps,
        save_steps=10_000,
        learning_rate=2e-3,
        batch_size=8,
    )
    result = train(settings, retrain=True, callbacks=[timer])
    seconds, tokens = times.steady()
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_second": tokens / seconds,
        "trainable": result.trainable_parameters,
        "precision": result.precision,
    }


def seed_recipe_config(out: Path, precision: str, steps: int) -> Any:
    """The original tutorial's recipe, with today's trl.

    trl 0.8.6 was given rows padded to 512 tokens *and* ``packing=True, max_seq_length=2048``; it then
    packed the *text* field into constant 2048-token sequences (ConstantLengthDataset), so what trained
    was packed text, not the padded rows. Today's equivalent is ``packing_strategy="wrapped"`` over a
    ``text`` field (the chat rows rendered with the chat template), loss on every token.
    """
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=1e-4,
        lr_scheduler_type="linear",
        warmup_steps=round(0.2 * steps),  # the seed's warmup_ratio=0.2 (gone from transformers 5)
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


def bench_seed(train_rows: list[dict[str, Any]], out: Path, steps: int) -> dict[str, Any]:
    """Full fine-tune, eager attention, gradient checkpointing, batch 4 × 2048 packed tokens."""
    from datasets import Dataset
    from trl import SFTTrainer

    preset = PRESETS[BENCH_MODEL]
    precision, _ = pick_precision("auto")
    import torch

    tokenizer = load_tokenizer(preset)
    model, _ = load_model(preset, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)  # as the seed
    model.set_attn_implementation("eager")  # the seed's attn_implementation="eager"
    texts = [{"text": tokenizer.apply_chat_template(row["messages"], tokenize=False)} for row in train_rows]
    timer, times = step_timer()
    trainer = SFTTrainer(
        model=model,
        args=seed_recipe_config(out, precision, steps),
        train_dataset=Dataset.from_list(texts),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    seconds, tokens = times.steady()
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_second": tokens / seconds,
        "precision": precision,
        "trainable": sum(p.numel() for p in model.parameters()),
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
    """Latency ``pf flow serve`` adds over calling the endpoint directly with the same payload (p50 of ``calls``).

    Uses the local profile's fine-tuned model (run ``make course`` first): its short answers keep
    the run short; the base model rambles to the flow's 128-token limit.
    """
    import statistics

    import requests

    from phi3course import endpoint, flow
    from phi3course.rundir import RunDir

    local = RunDir(runs_dir() / "local")
    model_uri = local.require("model_uri", made_by="make course (02_fine_tune, local profile)")
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
        direct, served = [], []
        for _ in range(3):  # warm-up
            live.score(tool)
            server.ask(question)
        for _ in range(calls):  # interleaved, so drift hits both alike
            began = time.perf_counter()
            requests.post(live.scoring_uri, json=tool, headers=live.headers(), timeout=120).raise_for_status()
            direct.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            server.ask(question)
            served.append((time.perf_counter() - began) * 1000)
    finally:
        flow.stop_serving(run)
        endpoint.stop_all(run)
        flow.stop_pf_service()
    direct_p50, served_p50 = statistics.median(direct), statistics.median(served)
    return {
        "calls": calls,
        "direct_p50_ms": round(direct_p50, 1),
        "served_p50_ms": round(served_p50, 1),
        "overhead_ms": round(served_p50 - direct_p50, 1),
        "overhead_ratio": round(served_p50 / direct_p50 - 1, 3),
    }


SECTIONS = ("train", "endpoint", "flow")


def run(seed_steps: int = 2, our_steps: int = 12, sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    import os

    work = Path(tempfile.mkdtemp(prefix="phi3course-bench-"))
    results: dict[str, Any] = {}
    try:
        precision, why = pick_precision("auto")
        gflops = {name: matmul_gflops(name) for name in ("fp32", "bf16")}
        results["machine"] = {
            "cpus": os.cpu_count(),
            "matmul_gflops": gflops[precision if precision in gflops else "fp32"],
            "matmul_gflops_by_precision": gflops,
            "precision": precision,
            "precision_reason": why,
        }
        if "train" in sections:
            results["train"] = bench_train(work, results["machine"]["matmul_gflops"], seed_steps, our_steps)
        if "endpoint" in sections:
            results["endpoint"] = bench_endpoint(work)
        if "flow" in sections:
            results["flow"] = bench_flow(work)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_train(work: Path, peak: float, seed_steps: int, our_steps: int) -> dict[str, Any]:
    """Ours against the seed's recipe, same model and data, same run."""
    prepared = data.prepare("synthetic", work / "data", subjects=10)  # enough text for 2048-token packs
    ours = bench_ours(str(prepared.train_path), work / "ours", our_steps)
    seed = bench_seed(prepared.train, work / "seed", seed_steps)
    model, tokenizer = load_model(PRESETS[BENCH_MODEL])
    lengths = data.token_lengths(prepared.train, tokenizer)
    mean_row = sum(lengths) / len(lengths)
    ours_f = flops_per_token(model, ours["trainable"], (mean_row + 1) / 2)
    seed_f = flops_per_token(model, seed["trainable"], (2048 + 1) / 2)
    ours_gflops = ours["tokens_per_second"] * ours_f / 1e9
    seed_gflops = seed["tokens_per_second"] * seed_f / 1e9
    return {
        "model": BENCH_MODEL,
        "tokens_per_second": round(ours["tokens_per_second"], 1),
        "achieved_gflops": round(ours_gflops, 1),
        "efficiency": round(ours_gflops / peak, 3),
        "matmul_gflops": peak,  # the denominator of both efficiencies, measured in the same run
        "flops_per_token": round(ours_f),
        "seed_recipe_tokens_per_second": round(seed["tokens_per_second"], 1),
        "seed_recipe_achieved_gflops": round(seed_gflops, 1),
        "seed_recipe_efficiency": round(seed_gflops / peak, 3),
        "vs_seed_recipe": round(ours["tokens_per_second"] / seed["tokens_per_second"], 2),
        "measured": {"ours": ours, "seed_recipe": seed, "mean_row_tokens": round(mean_row, 1)},
        "formula": "F = 4·N + 2·N_trained + 12·L·d·c per token (see benchmarks/bench.py)",
    }


def print_table(results: dict[str, Any]) -> None:
    machine = results["machine"]
    rows = [
        ("machine", "cpus", machine["cpus"]),
        ("machine", f"matmul GFLOP/s ({machine['precision']})", machine["matmul_gflops"]),
    ]
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
    parser.add_argument("--seed-steps", type=int, default=2, help="seed recipe's optimizer steps (first: warm-up)")
    parser.add_argument("--our-steps", type=int, default=12, help="optimizer steps of the course's recipe")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/bench.json")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only this section (repeatable)")
    args = parser.parse_args(argv)
    results = run(args.seed_steps, args.our_steps, tuple(args.only or SECTIONS))
    out = args.out or runs_dir() / "bench.json"
    previous = read_json(out, default={}) if args.only else {}
    write_json(out, {**previous, **results})
    print_table(results)
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
