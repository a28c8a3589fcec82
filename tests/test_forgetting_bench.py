"""The forgetting benchmark's variant syntax: what a reader types is what trains."""

from __future__ import annotations

from pathlib import Path

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


def test_the_test_is_asked_at_the_steps_the_selection_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--test-at-checks`` scores the test beside each validation check: the same steps, or the table misleads."""
    from types import SimpleNamespace

    from phi3course import recipe

    settings = forgetting.variant_settings({"epochs": 3.0, "check_every": 0.5}, train_file="t", output_dir="o")
    selection = recipe.ModelSelection(None, [], every=12, target_facts=0.95, target_general=0.9)
    checked: list[int] = []
    monkeypatch.setattr(
        selection, "check", lambda model, state: checked.append(state.global_step) or {"targets met": False}
    )
    tested: list[int] = []
    monkeypatch.setattr(
        recipe,
        "held_out",
        lambda model, tokenizer, rows, label: (
            tested.append(int(label.split()[-1])) or {"exact_match": 1.0, "general": 0.5}
        ),
    )
    (tmp_path / "test.jsonl").write_text('{"text": "a test row"}\n')
    watch = forgetting.TestAtChecks(str(tmp_path / "test.jsonl"), settings)
    model = SimpleNamespace(eval=lambda: None, train=lambda: None)
    state = SimpleNamespace(max_steps=72, global_step=0, epoch=0.0)
    control = SimpleNamespace(should_training_stop=False)
    watch.on_train_begin(None, state, control)
    for step in range(1, 73):
        state.global_step = step
        selection.on_step_end(None, state, control, model=model)
        watch.on_step_end(None, state, control, model=model, processing_class=None)
    assert checked == tested == [12, 24, 36, 48, 60, 72]
    assert set(watch.scores) == set(tested)


def test_the_check_table_puts_the_base_model_at_step_0_and_leaves_untested_steps_blank() -> None:
    checks = [
        {"step": s, "facts": f, "general_vs_base": g, "epoch": 0}
        for s, f, g in ((0, 0.0, 1.0), (12, 0.5, 0.9), (24, 1.0, 0.8))
    ]
    table = forgetting.check_table(checks, {12: {"facts": 0.6, "general": 0.4}}, {"exact_match": 0.1, "general": 0.8})
    assert table[0] == {"step": 0, "facts": 0.0, "general_vs_base": 1.0, "test_facts": 0.1, "test_general_vs_base": 1.0}
    assert table[1] == {
        "step": 12,
        "facts": 0.5,
        "general_vs_base": 0.9,
        "test_facts": 0.6,
        "test_general_vs_base": 0.5,
    }
    assert table[2] == {"step": 24, "facts": 1.0, "general_vs_base": 0.8}
