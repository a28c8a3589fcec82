"""Training on the tiny Phi-3: the real trl/peft path, in seconds."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from phi3course import cache, data, evaluate, hardware, models, profiles, recipe, schema, sizes, train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> data.Prepared:
    return data.prepare("synthetic", tmp_path_factory.mktemp("data"), subjects=2)


def settings(tiny_data: data.Prepared, out: Path, **changes) -> train.TrainSettings:
    base = dict(
        train_file=str(tiny_data.train_path),
        test_file=str(tiny_data.test_path),
        output_dir=str(out),
        model="phi-3-tiny",
        max_steps=6,
        batch_size=8,
        learning_rate=5e-3,
        lora_r=8,
        save_steps=2,
    )
    # the smoke profile, with every layer adapted and no replay rows unless a test asks
    return train.settings_from_profile(
        profiles.parameters("smoke"), **{"lora_layers": 1.0, "replay": 0, **base, **changes}
    )


def test_presets_load_offline() -> None:
    model, tokenizer = models.load_model(models.PRESETS["phi-3-tiny"])
    assert type(model).__name__ == "Phi3ForCausalLM" and model.config.vocab_size == len(tokenizer)
    with pytest.raises(models.ModelError, match="smollm2-135m-instruct"):
        models.load_model(models.PRESETS["phi-3-mini-4k-instruct"])


def test_smollm2_converts_once_and_reloads_as_a_plain_model() -> None:
    model, _ = models.load_model(models.PRESETS["smollm2-135m-instruct"])
    assert getattr(model.config, "quantization_config", None) is None
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 134.5
    assert (models.model_dir(models.PRESETS["smollm2-135m-instruct"]) / "config.json").is_file()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"model": "gpt-5"}, "Unknown model preset"),
        ({"method": "dora"}, "Unknown method"),
        ({"learning_rate": "fast"}, "learning_rate must be a number"),
        ({"learning_rate": float("nan")}, "learning_rate must be a number"),
        ({"learning_rate": 3.0}, "between 0 and 1"),
        ({"max_steps": 0}, "max_steps must be > 0"),
        ({"max_steps": -1, "epochs": 0}, "epochs must be > 0"),
        ({"batch_size": 0}, "batch_size must be a whole number"),
        ({"train_file": "/nowhere/train.jsonl"}, "run notebook 01_data first"),
        ({"method": "qlora"}, "needs a CUDA GPU"),
        ({"lora_layers": 0.0}, "lora_layers is the top fraction"),
        ({"lora_layers": 1.5}, "lora_layers is the top fraction"),
    ],
)
def test_bad_settings_fail_before_heavy_work(tiny_data, tmp_path, change, words) -> None:
    with pytest.raises(train.TrainError, match=words):
        settings(tiny_data, tmp_path, **change).validate()


def test_a_data_set_without_usable_rows_is_refused(tmp_path) -> None:
    path = data.write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(train.TrainError, match="no usable rows"):
        train.load_rows(str(path))


def test_memory_is_checked_where_the_training_runs(tiny_data) -> None:
    """A full fine-tune of Phi-3-mini is refused on a 16 GB cluster GPU, with what would fit; LoRA on an A100 fits."""
    phi3 = models.PRESETS["phi-3-mini-4k-instruct"]
    rows = train.load_rows(str(tiny_data.train_path))
    full = train.settings_from_profile(
        profiles.parameters("local"), train_file="x", output_dir="y", model=phi3.name, method="full"
    )
    with pytest.raises(train.TrainError, match=r"method='lora'"):
        train.check_memory(full, phi3, "fp16", rows, available_gib=15.0)
    lora = dataclasses.replace(full, method="lora")
    estimate = train.check_memory(lora, phi3, "bf16", rows, available_gib=80.0)
    assert estimate.fits and estimate.available_gib == 80.0 and estimate.where == "the cluster's GPU"


def test_chat_rows_become_prompt_and_completion() -> None:
    row = schema.chat_row("Q?", "A.")
    assert recipe.to_training_rows([row]) == [
        {"prompt": [{"role": "user", "content": "Q?"}], "completion": [{"role": "assistant", "content": "A."}]}
    ]
    assert recipe.to_training_rows([{"text": "t"}]) == [{"text": "t"}]
    with pytest.raises(ValueError, match="must end with the assistant's answer"):
        recipe.to_training_rows([{"messages": [{"role": "user", "content": "Q?"}]}])


def test_rows_too_long_are_left_out_and_counted(tiny_data, tmp_path, capsys) -> None:
    """fit_length leaves out the rows longer than max_length (trl does not cut them: padding-free, no packing) and
    says how many; the run trains on the others. Rows all too long stop the run, naming the setting to raise."""
    tokenizer = models.load_tokenizer(models.PRESETS["phi-3-tiny"])
    rows = recipe.to_training_rows(tiny_data.train)
    lengths = sorted(len(tokenizer.apply_chat_template(r["prompt"] + r["completion"])["input_ids"]) for r in rows)
    limit = lengths[len(lengths) // 2]  # the median: about half the rows are longer
    kept, dropped = recipe.fit_length(rows, tokenizer, limit)
    assert dropped == sum(length > limit for length in lengths) > 0 and len(kept) + dropped == len(rows)
    result = train.train(settings(tiny_data, tmp_path / "out", max_length=limit, max_steps=2))
    assert (
        f"{len(kept)} rows train; {dropped} longer than max_length={limit} tokens left out." in capsys.readouterr().out
    )
    assert result.steps == 2
    with pytest.raises(train.TrainError, match=r"every row is longer than max_length=2 tokens: raise max_length"):
        train.train(settings(tiny_data, tmp_path / "none", max_length=2, max_steps=2))


def test_adapters_on_the_upper_layers_leave_the_lower_ones_as_they_were(tiny_data, tmp_path) -> None:
    """lora_layers=0.5 on the two-layer tiny model: the merged model's layer 0 is the base model's, bit for bit,
    and layer 1 changed (02's recipe keeps SmolLM2's lower 15 layers this way)."""
    import torch
    from transformers import AutoModelForCausalLM

    assert recipe.lora_config(settings(tiny_data, tmp_path, lora_layers=0.5), 30).layers_to_transform == list(
        range(15, 30)
    )
    result = train.train(settings(tiny_data, tmp_path / "out", lora_layers=0.5, max_steps=4))
    base, _ = models.load_model(models.PRESETS["phi-3-tiny"])
    before, after = base.state_dict(), AutoModelForCausalLM.from_pretrained(result.model_dir).state_dict()
    lower = [name for name in before if ".layers.0." in name]
    upper = [name for name in before if ".layers.1." in name and name.endswith("proj.weight")]
    assert lower and upper
    assert all(torch.equal(before[name], after[name]) for name in lower)
    assert not all(torch.equal(before[name], after[name]) for name in upper)


def test_training_lowers_the_loss_on_a_repeated_batch(tiny_data, tmp_path) -> None:
    """The overfit test: a few steps on the same eight rows must lower their loss."""
    rows = tiny_data.train[:8]
    small = data.write_jsonl(tmp_path / "eight.jsonl", rows)
    model, tokenizer = models.load_model(models.PRESETS["phi-3-tiny"])
    before = evaluate.perplexity(model, tokenizer, rows)
    result = train.train(settings(tiny_data, tmp_path / "out", train_file=str(small), max_steps=8, method="full"))
    from transformers import AutoModelForCausalLM

    tuned = AutoModelForCausalLM.from_pretrained(result.model_dir)
    after = evaluate.perplexity(tuned, tokenizer, rows)
    assert after < 0.8 * before
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.steps == 8 and result.tokens > 0 and result.tokens_per_second > 0


def test_throughput_leaves_out_the_checkpoint_saved_after_the_last_step(tiny_data, tmp_path) -> None:
    """tokens/s measures the steps: a save after the last one (weights and optimizer state) is not training."""
    import time

    from transformers import TrainerCallback

    class SlowSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            time.sleep(1.0)

    result = train.train(settings(tiny_data, tmp_path, max_steps=2), callbacks=[SlowSave()])
    assert result.seconds > 1.0, "the wall time holds the save"
    assert 0 < result.step_seconds < result.seconds - 0.9
    assert result.tokens_per_second == pytest.approx(result.tokens / result.step_seconds, rel=0.1)  # rounded


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_data, tmp_path) -> None:
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:
                raise KeyboardInterrupt("the learner pressed stop")

    s = settings(tiny_data, tmp_path, max_steps=6, save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train.train(s, callbacks=[Interrupt()])
    assert (tmp_path / "checkpoints" / "checkpoint-4").is_dir()
    result = train.train(s)
    assert result.resumed_from and result.resumed_from.endswith("checkpoint-4")
    assert result.steps == 6 and [row["step"] for row in result.history] == [5, 6]
    # throughput counts this session's two steps only, not the four done before the interruption
    assert result.tokens_per_second * result.step_seconds < 0.6 * result.tokens
    again = train.train(s)  # finished with the same settings: not trained twice
    assert again.model_dir == result.model_dir and again.history == result.history
    changed = train.train(dataclasses.replace(s, learning_rate=1e-3))  # new settings: starts afresh
    assert changed.resumed_from is None and changed.history[0]["step"] == 1


def test_the_jobs_config_scores_answers_only_without_padding_or_recomputation() -> None:
    """What the job trains with on a CPU: the notebook's recipe (phi3course.recipe) with the local profile."""
    settings = train.settings_from_profile(profiles.parameters("local"), train_file="x", output_dir="/tmp/y")
    config = recipe.sft_config(settings, "fp32", 10)
    assert config.padding_free and config.completion_only_loss
    assert not config.gradient_checkpointing and not config.bf16 and not config.fp16
    assert config.warmup_steps == round(0.05 * 30)  # 3 epochs of 10 steps


@pytest.mark.parametrize("profile", ["local", "smoke", "azureml"])
def test_every_setting_that_differs_from_trls_default_is_written_in_sft_config(profile) -> None:
    """Nothing reaches SFTConfig but the keywords 02's sft_config cell writes out: each value that differs from trl's
    default is one of them (no keywords passed through from elsewhere)."""
    import ast
    import dataclasses
    import inspect

    from trl import SFTConfig

    settings = train.settings_from_profile(profiles.parameters(profile), train_file="x", output_dir="/tmp/y")
    config = recipe.sft_config(settings, "fp32", 10)
    call = next(
        node
        for node in ast.walk(ast.parse(inspect.getsource(recipe.sft_config)))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "SFTConfig"
    )
    written = {keyword.arg for keyword in call.keywords}
    assert None not in written, "SFTConfig(**...) would pass keywords the cell does not show"
    default = SFTConfig(output_dir=config.output_dir, use_cpu=config.use_cpu)
    # set by transformers from what the cell writes: logging_dir from output_dir, activation_checkpointing (the new
    # name) from gradient_checkpointing
    derived = {"logging_dir", "activation_checkpointing"}
    differ = {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(default, f.name)}
    assert differ - derived <= written, differ - derived - written
    assert {"optim", "max_grad_norm", "loss_type", "weight_decay", "learning_rate", "bf16", "fp16"} <= written


def test_the_model_loads_in_the_format_the_memory_estimate_assumes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe's model_kwargs: fp32 on a CPU and for what trains; a 16-bit frozen base for LoRA on a GPU; QLoRA's
    4-bit NF4 base computing in the run's 16-bit format. phi3course.memory estimates with the same formats."""
    import torch

    from phi3course import memory

    formats = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", lambda on: None)
    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        for method in ("lora", "full", "qlora"):
            for precision in ("fp32", "bf16", "fp16"):
                kwargs = recipe.model_kwargs(method, precision)
                held = memory.weight_dtype(method, precision, "cuda" if cuda else "cpu")
                if method == "qlora":
                    quantization = kwargs["quantization_config"]
                    assert held == "nf4" and quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"
                    # what stays unquantised (embeddings, norms, output layer) in the run's 16-bit format too
                    assert kwargs["dtype"] == quantization.bnb_4bit_compute_dtype
                    assert quantization.bnb_4bit_compute_dtype == (
                        torch.bfloat16 if precision == "bf16" else torch.float16
                    )
                else:
                    assert formats[kwargs["dtype"]] == held, (method, precision, cuda)


def test_mlflow_forwards_the_generation_params_a_request_sets() -> None:
    """Without params in the signature MLflow drops them with a warning (the original tutorial's bug)."""
    from mlflow.exceptions import MlflowException
    from mlflow.models.utils import _enforce_params_schema  # what pyfunc's predict(params=...) applies

    from phi3course import tracking

    schema = tracking.signature().params
    sent = {"max_new_tokens": 5, "temperature": 0.1, "top_p": 0.5, "do_sample": True, "return_full_text": True}
    forwarded = _enforce_params_schema(dict(sent), schema)
    assert forwarded == sent and isinstance(forwarded["max_new_tokens"], int)  # generate() takes no 5.0
    with pytest.raises(MlflowException, match="max_new_tokens"):
        _enforce_params_schema({"max_new_tokens": "many"}, schema)


def test_the_module_runs_under_torchrun_on_two_cpu_processes(tiny_data, tmp_path) -> None:
    out = tmp_path / "ddp"
    job = settings(tiny_data, out, test_file="", max_steps=4, batch_size=4)
    # every setting as a flag, as the Azure ML job's command passes them
    paths = {"train_file": str(tiny_data.train_path), "output_dir": str(out), "report_dir": str(tmp_path / "report")}
    flags = shlex.split(train.job_arguments(job, paths))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "phi3course.train", *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 4 and (out / "model" / "config.json").is_file()
    # the job's small output: the result alone, which 02 downloads instead of the model and its checkpoints
    assert [p.name for p in (tmp_path / "report").iterdir()] == ["result.json"]
    assert json.loads((tmp_path / "report" / "result.json").read_text()) == result
    lengths = data.token_lengths(tiny_data.train, models.load_tokenizer(models.PRESETS["phi-3-tiny"]))
    expected = 4 * (2 * 4) * sum(lengths) / len(lengths)  # steps × (two processes × batch 4) × mean row length
    assert 0.75 * expected < result["tokens"] < 1.25 * expected  # both processes' tokens are counted


def test_cli_reports_bad_input_without_a_traceback(tmp_path) -> None:
    job = train.settings_from_profile(profiles.parameters("smoke"), train_file="", output_dir=str(tmp_path / "out"))
    flags = train.job_arguments(job, {"train_file": str(tmp_path / "none.jsonl"), "output_dir": str(tmp_path / "out")})
    command = [sys.executable, "-m", "phi3course.train", *shlex.split(flags)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error: train_file" in done.stderr and "Traceback" not in done.stderr
    missing = [sys.executable, "-m", "phi3course.train", "--train-file", str(tmp_path / "none.jsonl")]
    done = subprocess.run(missing, capture_output=True, text=True, timeout=120)  # a recipe setting left out
    assert done.returncode == 2 and "--lora-r" in done.stderr and "Traceback" not in done.stderr


def test_precision_follows_the_hardware_and_refuses_bf16_on_a_v100(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from phi3course import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Tesla V100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert train.pick_precision("auto")[0] == "fp16"
    with pytest.raises(train.TrainError, match=r"V100-PCIE-16GB has no native bf16.*precision='auto'"):
        train.pick_precision("bf16")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert train.pick_precision("auto") == ("bf16", "NVIDIA A100-SXM4-80GB computes bf16 natively")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(train.TrainError, match="fp16' needs a CUDA GPU"):
        train.pick_precision("fp16")
    assert train.pick_precision("fp32") == ("fp32", "asked for")


def test_on_cuda_the_model_loads_onto_this_process_gpu_without_cudnn_attention(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Base evaluation and replay answers run on the GPU (not the CPU before the trainer moves the model), and
    cuDNN's attention, which replans for every new sequence length, is off (seen costing 3 s a step on an H200)."""
    import torch

    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", lambda on: calls.append(on))
    calls: list[bool] = []
    assert "device_map" not in recipe.model_kwargs("lora", "fp32"), "on a CPU the model stays where it loads"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's second process on a node
    assert recipe.model_kwargs("lora", "bf16") == {"dtype": torch.bfloat16, "device_map": {"": 1}}
    assert recipe.model_kwargs("full", "bf16")["device_map"] == {"": 1}
    assert calls == [False, False]
    from phi3course.serving import score

    score.steady_attention()  # the scoring script's own copy (it travels without the course)
    assert calls == [False, False, False]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    recipe.model_kwargs("lora", "fp32")
    score.steady_attention()
    assert calls == [False, False, False], "on a CPU, torch's settings are left alone"


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_answer_only_loss_equals_trls_own(tiny_data, tmp_path, method) -> None:
    """The recipe's trainer changes the work, not the number: on a batch of the course's rows its loss and its
    gradients are those of trl's own completion-only loss."""
    import torch
    from trl import SFTTrainer

    s = settings(tiny_data, tmp_path, method=method, batch_size=4)
    rows = recipe.to_training_rows(train.load_rows(s.train_file))[:4]
    model, tokenizer = models.load_model(models.PRESETS["phi-3-tiny"])
    adapters = recipe.lora_config(s, model.config.num_hidden_layers) if method == "lora" else None
    trainer = recipe.make_trainer(model, tokenizer, rows, s, recipe.sft_config(s, "fp32", 1), adapters)
    assert type(trainer) is recipe.AnswerLogitsSFTTrainer
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert batch["labels"].shape[0] == 1  # padding-free: one flattened sequence
    count = int((batch["labels"][0, 1:] != -100).sum())
    assert 0 < count < batch["labels"].shape[1] - 1  # the questions are not scored, the answers and the text are

    def loss_and_gradients(compute_loss):
        trainer.model.zero_grad()
        # the step's answer tokens over two batches of this size (gradient accumulation): the sum is divided by them
        loss = compute_loss(trainer, trainer.model, dict(batch), num_items_in_batch=torch.tensor(2 * count))
        loss.backward()
        trained = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
        return loss.detach(), {n: p.grad.clone() for n, p in trained}

    ours, our_gradients = loss_and_gradients(recipe.AnswerLogitsSFTTrainer.compute_loss)
    theirs, their_gradients = loss_and_gradients(SFTTrainer.compute_loss)
    assert torch.isclose(ours, theirs, rtol=1e-5), (float(ours), float(theirs))
    assert our_gradients.keys() == their_gradients.keys() and len(our_gradients) > 0
    for name, gradient in their_gradients.items():
        torch.testing.assert_close(our_gradients[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_qlora_adapters_train_in_fp32_under_fp16_loss_scaling(tiny_data, tmp_path, precision) -> None:
    """trl casts a 4-bit model's adapters to bf16; fp16 training (the T4 option, which has no bf16) scales its loss
    and can unscale fp32 gradients only ("_amp_foreach_non_finite_check_and_unscale_cuda not implemented for
    'BFloat16'" at the first step, seen on a GPU). So the recipe keeps them in fp32 there, and leaves trl's bf16 alone
    under bf16. A CPU cannot load 4-bit weights: the tiny model says it is 4-bit, which is what trl looks at."""
    import torch

    s = settings(tiny_data, tmp_path, method="lora", batch_size=4)
    rows = recipe.to_training_rows(train.load_rows(s.train_file))[:4]
    model, tokenizer = models.load_model(models.PRESETS["phi-3-tiny"])
    model.is_loaded_in_4bit = True
    adapters = recipe.lora_config(s, model.config.num_hidden_layers)
    trainer = recipe.make_trainer(model, tokenizer, rows, s, recipe.sft_config(s, precision, 1), adapters)
    trained = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    assert trained == ({torch.float32} if precision == "fp16" else {torch.bfloat16}), trained


def test_new_data_in_the_same_file_trains_again(tiny_data, tmp_path) -> None:
    """A learner who swaps in their own facts (same path, new content) gets a new model, not the old one."""
    rows = data.write_jsonl(tmp_path / "train.jsonl", tiny_data.train[:8])
    s = settings(tiny_data, tmp_path / "out", train_file=str(rows), max_steps=2)
    train.train(s)
    assert train.previous_result(s) is not None
    data.write_jsonl(rows, tiny_data.train[8:16])
    assert train.previous_result(s) is None


def test_settings_from_a_profile_take_every_setting_it_names_and_alpha_twice_the_rank() -> None:
    """What the benchmarks train with is the profile's recipe, mapped as notebook 02's settings cell maps it."""
    for name in profiles.available():
        parameters = profiles.parameters(name)
        settings = train.settings_from_profile(parameters, train_file="x", output_dir="y", model="phi-3-tiny")
        named = {k: v for k, v in parameters.items() if k in train.TrainSettings.__dataclass_fields__ and k != "model"}
        assert named and {k: getattr(settings, k) for k in named} == named, name
        assert settings.lora_alpha == 2 * parameters["lora_r"] and settings.model == "phi-3-tiny"


@pytest.mark.parametrize("damage", ["empty", "cut short", "a list", "no model_dir"])
def test_a_damaged_result_json_is_said_and_trained_again(tiny_data, tmp_path, capsys, damage) -> None:
    """A result.json cut short or edited (a crash, an editor) leads to a message naming it and a new result,
    not a JSONDecodeError; the new one is a whole JSON file again."""
    out = tmp_path / "out"
    s = settings(tiny_data, out, max_steps=2, save_steps=2)
    first = train.train(s)
    whole = (out / "result.json").read_text()
    text = {
        "empty": "",
        "cut short": whole[: len(whole) // 2],
        "a list": "[]",
        "no model_dir": json.dumps({"settings": train._settings_record(s)}),
    }[damage]
    (out / "result.json").write_text(text)
    capsys.readouterr()
    assert train.previous_result(s) is None
    said = capsys.readouterr().out
    assert f"{out / 'result.json'} is damaged" in said and "trained again" in said
    again = train.train(s)
    assert "Already trained" not in capsys.readouterr().out
    assert again.steps == first.steps and Path(again.model_dir).is_dir()
    assert json.loads((out / "result.json").read_text())["model_dir"] == again.model_dir
    assert train.previous_result(s) == again


def test_result_json_is_replaced_whole(tiny_data, tmp_path, monkeypatch) -> None:
    """result.json is written to a temporary file and renamed over the old one: a write that fails midway
    leaves the previous result as it was, and no half file."""
    out = tmp_path / "out"
    s = settings(tiny_data, out, max_steps=2, save_steps=2)
    train.train(s)
    before = (out / "result.json").read_bytes()
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        if Path(target).name == "result.json":
            raise OSError("disk full")
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        train.train(s, retrain=True)
    assert (out / "result.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir() if "result" in p.name) == ["result.json"]


def test_after_qlora_the_adapters_are_merged_into_an_unquantised_base(tmp_path) -> None:
    """merge_and_save after QLoRA: the base is loaded again in 16 bit, unquantised, and the trained adapters merged into
    it, so the saved model has no quantization config (a CPU endpoint cannot load 4-bit weights) and equals the
    adapters merged into the base. The stand-in for a 4-bit base is the tiny model marked as one."""
    import copy
    from types import SimpleNamespace

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base, tokenizer = models.load_model(models.PRESETS["phi-3-tiny"])
    adapters = recipe.lora_config(SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_layers=1.0), 2)
    model = get_peft_model(base, adapters)
    with torch.no_grad():  # trained adapters: B is zero until training moves it
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    base.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}  # as a 4-bit base says
    trainer = SimpleNamespace(model=model, args=SimpleNamespace(bf16=False), is_world_process_zero=lambda: True)
    merged = recipe.merge_and_save(trainer, tokenizer, tmp_path / "model")
    assert "quantization_config" not in json.loads((tmp_path / "model" / "config.json").read_text())
    assert merged.dtype == torch.float16  # the run's 16-bit format (fp16 here: bf16=False)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    assert set(saved) == set(expected)
    for name, weight in expected.items():
        torch.testing.assert_close(saved[name].float(), weight.float(), atol=2e-3, rtol=1e-2)


CPU_LAPTOP = hardware.Machine(cpu_bf16=False)  # no GPU, an AVX2 CPU


def test_a_job_is_validated_against_its_clusters_gpu_not_this_machine(tiny_data, tmp_path, monkeypatch) -> None:
    """From a CPU laptop, QLoRA is refused for training here and accepted for a job on a T4 cluster; bf16 is refused
    on the T4 (no native bf16) and accepted on the A100; fp16 is refused where no GPU trains."""
    monkeypatch.setattr(hardware, "this_machine", lambda: CPU_LAPTOP)
    with pytest.raises(train.TrainError, match="this machine has none"):
        settings(tiny_data, tmp_path, method="qlora").validate()
    settings(tiny_data, tmp_path, method="qlora", cluster_size="Standard_NC4as_T4_v3").validate()
    settings(tiny_data, tmp_path, method="qlora", precision="fp16", cluster_size="Standard_NC4as_T4_v3").validate()
    with pytest.raises(train.TrainError, match=r"T4 16GB has no native bf16 \(on the cluster's Standard_NC4as_T4_v3"):
        settings(tiny_data, tmp_path, precision="bf16", cluster_size="Standard_NC4as_T4_v3").validate()
    settings(tiny_data, tmp_path, precision="bf16", cluster_size="Standard_NC24ads_A100_v4").validate()
    with pytest.raises(train.TrainError, match="precision='fp16' needs a CUDA GPU and this machine has none"):
        settings(tiny_data, tmp_path, precision="fp16").validate()
    with pytest.raises(train.TrainError, match=r"cluster_size: Standard_NC6s_v3: NCv3 .* retired"):
        settings(tiny_data, tmp_path, cluster_size="Standard_NC6s_v3").validate()


@pytest.mark.parametrize(
    ("size", "precision"),
    [("Standard_NC4as_T4_v3", "fp16"), ("Standard_NC24ads_A100_v4", "bf16")],
)
def test_auto_precision_on_a_cluster_follows_its_gpu(size, precision) -> None:
    chosen, why = train.pick_precision("auto", sizes.vm_size(size).machine)
    assert chosen == precision == sizes.vm_size(size).precision and sizes.vm_size(size).gpu in why


def test_a_job_that_sees_no_gpu_on_a_gpu_cluster_stops_saying_why(tiny_data, tmp_path, monkeypatch, capsys) -> None:
    """A CPU torch wheel on a T4 node would train in fp32 on the CPU for hours: the job stops first, naming the
    torch build and the fix. A stand-in running the job on its own machine (the rehearsal) says so and goes on."""
    monkeypatch.delenv(train.STAND_IN_NODE, raising=False)
    job = settings(tiny_data, tmp_path, cluster_size="Standard_NC4as_T4_v3")
    with pytest.raises(train.TrainError, match=r"T4 16GB\), but torch sees no CUDA GPU \(torch .*job_environment"):
        train.check_cluster_gpu(job, CPU_LAPTOP)
    train.check_cluster_gpu(job, hardware.Machine(gpu="Tesla T4"))  # the node's GPU is there
    train.check_cluster_gpu(settings(tiny_data, tmp_path), CPU_LAPTOP)  # training here: nothing to expect
    monkeypatch.setenv(train.STAND_IN_NODE, "1")
    train.check_cluster_gpu(job, CPU_LAPTOP)
    assert "a stand-in runs the job on its own machine" in capsys.readouterr().out


class ScriptedSelection(recipe.ModelSelection):
    """The recipe's model selection, its two scores read from a script instead of generated (one pair per check)."""

    def __init__(self, script, every, wrapped=False, **kwargs):
        super().__init__(None, [{"answer": "x", **({"wrapped": True} if wrapped else {})}], every, **kwargs)
        self.script = iter(script)

    def score(self, model):
        return next(self.script)


def _select_over_six_steps(script, max_steps, wrapped=False):
    """The recipe's model selection (every 2 steps, targets facts 0.95 and general 0.9 × base) through six optimizer
    steps as the trainer calls it, the scores read from ``script``; after step ``n`` every weight is ``n``, so the
    kept weights tell the kept step. Returns (selection, model, state, control)."""
    import torch
    from transformers import TrainerControl, TrainerState

    model = torch.nn.Linear(2, 2)
    selection = ScriptedSelection(script, every=2, wrapped=wrapped, target_facts=0.95, target_general=0.9)
    state, control = TrainerState(max_steps=max_steps), TrainerControl()
    selection.on_train_begin(None, state, control, model=model)
    for step in range(1, 7):
        with torch.no_grad():
            model.weight.fill_(float(step))
        state.global_step = step
        selection.on_step_end(None, state, control, model=model)
        if control.should_training_stop:
            break
    return selection, model, state, control


def test_model_selection_keeps_the_best_checks_weights_and_stops_once_both_targets_are_met() -> None:
    import torch

    # base (step 0), then every 2 steps: facts rise; general falls below 0.9 × base at step 4, recovers at step 6
    script = [(0.0, 0.8), (0.5, 0.8), (0.9, 0.6), (0.96, 0.76)]
    selection, model, state, control = _select_over_six_steps(script, max_steps=10)
    assert [check["step"] for check in selection.checks] == [0, 2, 4, 6]
    assert control.should_training_stop and state.global_step == 6, "facts 96 %, general 0.95 × base: stop"
    assert [check["targets met"] for check in selection.checks] == [False, False, False, True]
    assert selection.checks[2]["general_vs_base"] == 0.75
    with torch.no_grad():
        model.weight.fill_(99.0)  # whatever came after the kept step
    selection.on_train_end(None, state, control, model=model)
    assert selection.best_step == 6 and torch.all(model.weight == 6.0)


@pytest.mark.parametrize(
    ("script", "kept"),
    [
        # step 2: facts 0.6, general kept; step 4: facts 0.9, general 0.5 × base; step 6: facts 0.7, general kept
        ([(0.0, 0.8), (0.6, 0.8), (0.9, 0.4), (0.7, 0.75)], 6),
        # step 2: few facts (0.4) with general kept; steps 4 and 6: every fact, general just under target (0.86 ×)
        # and further under (0.81 ×): the nearest to both is step 4, not the one check that keeps general alone
        ([(0.0, 0.78), (0.4, 0.72), (1.0, 0.67), (1.0, 0.63)], 4),
        # steps 2 and 4 equal on the lower share (general 0.85 × base, below its target); step 4 knows more facts
        ([(0.0, 0.8), (0.9, 0.68), (1.0, 0.68), (0.5, 0.8)], 4),
    ],
)
def test_without_meeting_the_targets_the_check_nearest_to_both_is_kept(script, kept) -> None:
    import torch

    selection, model, state, control = _select_over_six_steps(script, max_steps=6)
    assert not control.should_training_stop and not any(check["targets met"] for check in selection.checks)
    selection.on_train_end(None, state, control, model=model)
    assert selection.best_step == kept and torch.all(model.weight == float(kept))


@pytest.mark.parametrize("wrapped", [False, True], ids=["new-phrasings", "own-facts-wrapped"])
def test_validation_of_either_kind_stops_at_the_first_check_that_meets_both(wrapped) -> None:
    import torch

    # both targets met at step 2 and again at step 4; own facts' validation (the trained question in new wrappers,
    # marked "wrapped" by 01) follows the same rule: their test phrasings peak early while the probe drifts on
    script = [(0.0, 0.8), (1.0, 0.8), (1.0, 0.76), (1.0, 0.6)]
    selection, model, state, control = _select_over_six_steps(script, max_steps=6, wrapped=wrapped)
    assert control.should_training_stop and state.global_step == 2
    assert [check["targets met"] for check in selection.checks] == [False, True]
    with torch.no_grad():
        model.weight.fill_(99.0)
    selection.on_train_end(None, state, control, model=model)
    assert selection.best_step == 2 and torch.all(model.weight == 2.0), "the first check that meets both targets"
    if wrapped:
        from phi3course import facts

        rows = facts.split(facts.read_facts("examples/minimal_facts.yaml"), templates=2)[1]
        assert rows and all(row["wrapped"] for row in rows)  # 01 marks them so


def test_training_with_a_validation_split_checks_it_from_the_base_model_on(tiny_data, tmp_path) -> None:
    chosen = settings(
        tiny_data, tmp_path / "out", validation_file=str(tiny_data.validation_path), max_steps=4, check_every=0.25
    )
    every = train.check_interval(chosen, train.steps_per_epoch(chosen, len(tiny_data.train)))
    result = train.train(chosen)
    assert result.checks[0]["step"] == 0 and result.checks[0]["general_vs_base"] == 1.0
    assert [check["step"] for check in result.checks][1:] == sorted({*range(every, 5, every), 4})
    assert result.best_step in [check["step"] for check in result.checks[1:]]
    assert result.planned_steps == 4  # what max_steps asked for, whether or not the selection stopped earlier
    assert json.loads((tmp_path / "out" / "result.json").read_text())["checks"] == result.checks
    assert train.train(dataclasses.replace(chosen, output_dir=str(tmp_path / "none"), check_every=0)).checks == []


def test_a_second_training_asks_the_base_model_nothing(tiny_data, tmp_path, monkeypatch, capsys) -> None:
    """The base model's held-out answers, its replay answers and its validation check (step 0) are asked in the
    first training and read back in the next, with the same results."""
    from phi3course import probe

    monkeypatch.setattr(cache, "answers_dir", lambda: tmp_path / "answers")
    monkeypatch.delenv("COURSE_ANSWER_CACHE", raising=False)
    asked = []  # one entry per batch of questions put to a model

    def counting(*args, **kwargs):
        asked.append(1)
        return evaluate.generate(*args, **kwargs)

    for module in (recipe, probe):
        monkeypatch.setattr(module, "generate", counting)
    first_settings = settings(
        tiny_data, tmp_path / "one", validation_file=str(tiny_data.validation_path), replay=4, max_steps=2
    )
    first = train.train(first_settings, evaluate=True)
    assert sorted(entry.name.rsplit("-", 1)[0] for entry in (tmp_path / "answers").iterdir()) == [
        "held-out",
        "replay",
        "validation",
    ]
    assert "from an earlier run" not in capsys.readouterr().out
    first_asked, asked[:] = len(asked), []
    second = train.train(dataclasses.replace(first_settings, output_dir=str(tmp_path / "two")), evaluate=True)
    # the base model is asked nothing: the model is asked at the checks after step 0 (validation facts and probe
    # slice) and, tuned, the held-out test and probe; the first training also asked the base model's replay prompts
    assert len(asked) == 2 * (len(second.checks) - 1) + 2
    assert first_asked == len(asked) + 2 + 1 + 2
    said = capsys.readouterr().out
    for kind in ("held-out", "replay", "validation"):
        assert f"{kind}: the base model's answers from an earlier run" in said
    assert second.checks[0] == first.checks[0]
    base = [json.loads((tmp_path / run / "eval.json").read_text())["base"] for run in ("one", "two")]
    assert base[0] == base[1]
