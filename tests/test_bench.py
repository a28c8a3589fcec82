from __future__ import annotations

from benchmarks import bench
from phi3course import models


def test_flops_per_token_follows_the_stated_formula() -> None:
    model, _ = models.load_model(models.PRESETS["phi-3-tiny"])
    n = sum(p.numel() for p in model.parameters())
    config = model.config
    attention = 12 * config.num_hidden_layers * config.hidden_size * 10.0
    assert bench.flops_per_token(model, trained=100, attended=10.0) == 4 * n + 200 + attention


def test_seed_recipe_is_the_tutorials_settings_in_todays_trl(tmp_path) -> None:
    config = bench.seed_recipe_config(tmp_path, "bf16", steps=10)
    assert config.packing and config.packing_strategy == "wrapped" and config.max_length == 2048
    assert config.per_device_train_batch_size == 4 and config.learning_rate == 1e-4
    assert config.lr_scheduler_type == "linear" and config.warmup_steps == 2
    assert config.gradient_checkpointing and config.bf16 and not config.completion_only_loss


def test_matmul_throughput_is_measured() -> None:
    assert bench.matmul_gflops("fp32", size=256, repeats=2) > 0
