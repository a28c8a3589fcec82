"""The forgetting benchmark's variant syntax: what a reader types is what trains."""

from __future__ import annotations

import pytest

from benchmarks import forgetting


def test_a_variant_types_each_value_like_the_setting() -> None:
    name, changes = forgetting.parse_variant("gentle:learning_rate=1e-3,lora_r=8,lora_layers=0.5,replay=90")
    assert name == "gentle"
    assert changes == {"learning_rate": 0.001, "lora_r": 8, "lora_layers": 0.5, "replay": 90}
    assert isinstance(changes["lora_r"], int) and isinstance(changes["replay"], int)


def test_false_means_false() -> None:
    assert forgetting.parse_variant("x:gradient_checkpointing=False")[1] == {"gradient_checkpointing": False}
    assert forgetting.parse_variant("x:gradient_checkpointing=true")[1] == {"gradient_checkpointing": True}
    with pytest.raises(SystemExit, match="true or false"):
        forgetting.parse_variant("x:gradient_checkpointing=no")


def test_an_unknown_setting_names_the_known_ones() -> None:
    with pytest.raises(SystemExit, match=r"not a TrainSettings field.*lora_layers"):
        forgetting.parse_variant("x:lora_layer=0.5")


def test_a_new_rank_brings_alpha_twice_the_rank_as_02_maps_it() -> None:
    """A variant is what 02 would train with those parameters (alpha = 2 × rank), not the profile's alpha."""
    from phi3course import profiles

    default = forgetting.variant_settings({}, train_file="t", output_dir="o")
    assert default.lora_r == profiles.parameters("local")["lora_r"] and default.lora_alpha == 2 * default.lora_r
    for rank in (4, 16, 32):
        variant = forgetting.variant_settings({"lora_r": rank, "seed": 7}, train_file="t", output_dir="o")
        assert (variant.lora_r, variant.lora_alpha, variant.seed) == (rank, 2 * rank, 7)
