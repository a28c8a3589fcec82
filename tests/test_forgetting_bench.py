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


def test_lora_targets_reach_the_lora_config_and_unknown_names_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``--lora-targets`` is a lever that is not a setting: the adapters of every variant of the run go on the
    projections named, and a name the recipe does not know stops the run before anything trains."""
    import json

    from phi3course import recipe

    monkeypatch.setattr(recipe, "LORA_TARGETS", list(recipe.LORA_TARGETS))  # main() replaces it for its run
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text(json.dumps({"train_path": "t", "test_path": "x", "validation_path": "v"}))
    (run / "summary.json").write_text(json.dumps({"eval": {"base": {"exact_match": 0.0, "general": 0.8}}}))
    adapted = []

    def train(settings, callbacks=None):  # what the variant would train with, then stop
        adapted.append(sorted(recipe.lora_config(settings, 30).target_modules))
        raise RuntimeError("stop here")

    monkeypatch.setattr(forgetting.train, "train", train)
    every = ",".join(recipe.ATTENTION_TARGETS + recipe.MLP_TARGETS)  # the recipe's own list is the MLP's
    with pytest.raises(RuntimeError, match="stop here"):
        forgetting.main(["--run", str(run), "--variant", "every:seed=7", "--lora-targets", every])
    assert adapted == [sorted(every.split(","))]
    assert recipe.LORA_TARGETS == recipe.MLP_TARGETS  # the recipe's list is back after the run
    with pytest.raises(SystemExit, match=r"--lora-targets 'gate,mlp'.*q_proj"):
        forgetting.main(["--run", str(run), "--lora-targets", "gate,mlp"])
    assert adapted == [sorted(every.split(","))]  # nothing trained


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


def test_the_answer_loss_is_transformers_own_loss_batched_or_alone_and_moves_with_the_model() -> None:
    """The drift's loss per answer is transformers' own loss of the answer after the chat prompt, row by row, however
    the rows are batched and padded; and a changed model moves it."""
    import torch

    from phi3course import models

    model, tokenizer = models.load_model(models.PRESETS["phi-3-tiny"])
    model.eval()
    pairs = [("What is the capital of France?", "Paris."), ("Name a colour.", "Blue is a colour of the sky.")]
    pairs.append(("Say nothing.", ""))  # an empty reply scores its end of turn, not nothing

    def reference(question: str, answer: str) -> float:
        chat = [{"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        asked = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        replied = tokenizer(answer, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        labels = torch.tensor([[-100] * len(asked) + replied])
        with torch.no_grad():
            return float(model(input_ids=torch.tensor([asked + replied]), labels=labels).loss)

    together = forgetting.answer_loss(model, tokenizer, pairs)
    assert len(together) == 3 and all(value > 0 for value in together)
    expected = torch.tensor([reference(*pair) for pair in pairs])
    torch.testing.assert_close(torch.tensor(together), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.tensor(forgetting.answer_loss(model, tokenizer, pairs, batch_size=1)), expected)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(0.0)  # every token equally likely: the loss of any answer is log V
    flat = forgetting.answer_loss(model, tokenizer, pairs)
    vocabulary = model.get_output_embeddings().weight.shape[0]
    torch.testing.assert_close(torch.tensor(flat), torch.full((3,), float(torch.log(torch.tensor(vocabulary)))))


def test_the_drift_is_zero_for_the_base_model_and_the_check_table_carries_it(tmp_path: Path) -> None:
    """At train begin the watched model is the base model: its drift is 0, and the table shows step 0 as 0."""
    from types import SimpleNamespace

    from phi3course import models, probe

    model, tokenizer = models.load_model(models.PRESETS["phi-3-tiny"])
    settings = forgetting.variant_settings({"epochs": 1.0}, train_file="t", output_dir="o")
    (tmp_path / "test.jsonl").write_text('{"text": "a test row"}\n')
    watch = forgetting.TestAtChecks(str(tmp_path / "test.jsonl"), settings)
    watch.drift_questions = {"validation_drift": probe.VALIDATION_PROBE[:3], "test_drift": probe.PROBE[:2]}
    state = SimpleNamespace(max_steps=4, global_step=0, epoch=0.0)
    watch.on_train_begin(None, state, SimpleNamespace(), model=model, processing_class=tokenizer)
    assert [len(pairs) for pairs in watch.base_answers.values()] == [3, 2]
    assert watch.drift(model, tokenizer) == {"validation_drift": 0.0, "test_drift": 0.0}
    checks = [{"step": s, "facts": 0.0, "general_vs_base": 1.0} for s in (0, 2, 4)]
    tested = {2: {"facts": 0.5, "general": 0.4, "validation_drift": 0.12, "test_drift": 0.2}}
    table = forgetting.check_table(checks, tested, {"exact_match": 0.0, "general": 0.8})
    assert (table[0]["validation_drift"], table[0]["test_drift"]) == (0.0, 0.0)
    assert (table[1]["validation_drift"], table[1]["test_drift"]) == (0.12, 0.2)
    assert "test_drift" not in table[2]
