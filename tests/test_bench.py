"""make bench's arithmetic checked against independent measures: torch's FLOP counter, trl's packing."""

from __future__ import annotations

import pytest

from benchmarks import bench
from phi3course import data, models, profiles, recipe


def counted_flops_per_token(model, tokens: int = 64) -> float:
    """Matmul FLOPs of one forward and backward pass as torch's own counter sees them, per token."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.set_attn_implementation("eager")  # attention as matmuls the counter sees (every position: no causal skip)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return counter.get_total_flops() / tokens


def test_flop_estimate_equals_torchs_count_for_a_full_fine_tune() -> None:
    model, _ = models.load_model(models.PRESETS["phi-3-tiny"])
    counted = counted_flops_per_token(model, tokens=64)
    trained = bench.matmul_weights(model, trained_only=True)
    # the counter's attention covers all 64 positions, so c = 64 here (under a causal mask the bench uses 65/2)
    assert bench.flops_per_token(model, trained=trained, attended=64) == pytest.approx(counted, rel=1e-6)


def test_flop_estimate_counts_loras_adapters() -> None:
    from peft import LoraConfig, get_peft_model

    base, _ = models.load_model(models.PRESETS["phi-3-tiny"])
    model, _ = models.load_model(models.PRESETS["phi-3-tiny"])
    tuned = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    adapters = sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    counted = counted_flops_per_token(tuned, tokens=64)
    # The one matmul autograd leaves out: the input gradient of the first layer's qkv projection and its adapter's
    # A (nothing before them is trained). 3.6 % of this 2-layer model, 0.1 % of the bench's 30-layer SmolLM2.
    first = ("layers.0.self_attn.qkv_proj.base_layer.", "layers.0.self_attn.qkv_proj.lora_A.")
    skipped = 2 * sum(w.numel() for name, w in tuned.named_parameters() if any(f in name for f in first))
    estimate = bench.flops_per_token(base, adapters, attended=64, added=adapters)
    assert estimate - skipped == pytest.approx(counted, rel=1e-6)


def test_flop_estimate_stops_the_backward_pass_at_the_first_adapted_layer() -> None:
    """The course's recipe: adapters on the upper layers only (02's lora_layers); below them nothing trains."""
    from peft import get_peft_model

    from phi3course import train

    base, _ = models.load_model(models.PRESETS["phi-3-tiny"])
    model, _ = models.load_model(models.PRESETS["phi-3-tiny"])
    settings = train.settings_from_profile(
        profiles.parameters("smoke"), train_file="x", output_dir="y", lora_layers=0.5
    )
    config = recipe.lora_config(settings, base.config.num_hidden_layers)
    first = config.layers_to_transform[0]
    assert first == 1
    tuned = get_peft_model(model, config)
    adapters = sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    counted = counted_flops_per_token(tuned, tokens=64)
    # adapters on the MLP only: the first adapted layer's attention is out of the backward pass, and its first adapted
    # projection (gate_up) and that adapter's A need no input gradient
    assert "gate_up_proj" in config.target_modules and "qkv_proj" not in config.target_modules
    skipped = 2 * sum(
        w.numel()
        for name, w in tuned.named_parameters()
        if any(f"layers.{first}.mlp.gate_up_proj.{part}" in name for part in ("base_layer.", "lora_A."))
    )
    estimate = bench.flops_per_token(
        base, adapters, attended=64, added=adapters, first_layer=first, attention_trained=False
    )
    assert estimate - skipped == pytest.approx(counted, rel=1e-6)
    assert estimate < bench.flops_per_token(base, adapters, attended=64, added=adapters, first_layer=first)


def test_the_denominator_is_the_training_precisions_matmul_rate() -> None:
    timed: list[str] = []

    def measure(name: str) -> float:
        timed.append(name)
        return {"fp32": 50.0, "bf16": 400.0, "fp16": 300.0}[name]

    avx2 = bench.machine_section("fp32", "no native bf16", {"fp32"}, measure, cpus=2)
    assert timed == ["fp32"], "bf16 must not be timed where it is only emulated (minutes on an AVX2 CPU)"
    assert avx2["matmul_gflops"] == 50.0 and "no native bf16" in avx2["matmul_gflops_by_precision"]["bf16"]
    timed.clear()
    amx = bench.machine_section("bf16", "AMX", {"fp32", "bf16"}, measure, cpus=2)
    assert amx["matmul_gflops"] == 400.0 and set(timed) == {"fp32", "bf16"}
    v100 = bench.machine_section("fp16", "no native bf16", {"fp32", "fp16"}, measure, cpus=2)
    assert v100["matmul_gflops"] == 300.0 and v100["matmul_precision"] == "fp16"


def test_the_tutorials_recipe_trains_packed_2048_token_text_with_loss_on_every_token(tmp_path) -> None:
    prepared = data.prepare("synthetic", tmp_path / "data", subjects=10)
    preset = models.PRESETS["phi-3-tiny"]
    model, _ = models.load_model(preset)
    tokenizer = models.load_tokenizer(preset)
    trainer = bench.tutorial_recipe_trainer(model, tokenizer, prepared.train, tmp_path / "out", "fp32", steps=2)
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    assert len(lengths) >= 2 and set(lengths[:-1]) == {2048} and lengths[-1] <= 2048  # rows wrapped across packs
    assert sum(lengths) > 2048 * (len(lengths) - 1)
    assert all(-100 not in labels for labels in trainer.train_dataset["labels"])  # no masked prompt: every token
    assert model.config._attn_implementation == "eager"
    assert trainer.args.gradient_checkpointing and trainer.args.per_device_train_batch_size == 4
    on_cpu = bench.tutorial_recipe_config(tmp_path, "fp32", steps=2, micro_batch=1)
    assert on_cpu.per_device_train_batch_size * on_cpu.gradient_accumulation_steps == 4  # the same optimizer step


def test_the_tutorials_passes_are_timed_one_sequence_each_within_the_budget(monkeypatch) -> None:
    from types import SimpleNamespace

    from transformers import TrainerControl

    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock.now)
    timer, times = bench.step_timer(budget_s=90)
    state, control = SimpleNamespace(num_input_tokens_seen=0), TrainerControl()
    timer.on_step_begin(None, state, control)
    for seconds, end in [(100, timer.on_substep_end), (80, timer.on_substep_end), (80, timer.on_substep_end)]:
        clock.now += seconds
        state.num_input_tokens_seen += 2048
        end(None, state, control)
        if control.should_training_stop:
            break
    assert times.seconds == [100, 80] and times.tokens == [2048, 2048]  # stopped after the second pass
    assert times.total() == (180, 4096)  # every pass, the first too: tokens per second as 02 counts them


def test_matmul_throughput_is_measured() -> None:
    assert bench.matmul_gflops("fp32", size=256, repeats=2) > 0
