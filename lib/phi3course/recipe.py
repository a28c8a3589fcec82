"""The fine-tuning recipe: the adapters, trl's configuration, the trainer, merging and saving, the held-out
evaluation.

The block between the markers is generated from ``notebooks/02_fine_tune.ipynb``, from its cells tagged
``export``: the notebook is the source the learner reads and edits, and the Azure ML job
(``python -m phi3course.train``), the benchmarks and the tests run this copy of it. Edit the notebook, then run
``python -m phi3course.tools.export`` to regenerate the block; ``tests/test_export.py`` fails while the two differ.
"""

# --- generated from notebooks/02_fine_tune.ipynb (cells tagged "export"): edit the notebook, not this ---
import math
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, set_seed
from trl import SFTConfig, SFTTrainer

from phi3course.evaluate import answer_budget, contains_answer, generate, perplexity
from phi3course.probe import probe_score
from phi3course.trainer_hooks import quiet_trainer, score_answers_only


def held_out(model, tokenizer, test_rows, label):
    """Ask every held-out question (right = the expected value appears in the reply), and the general probe."""
    graded = [row for row in test_rows if "answer" in row]  # chat rows with an expected value (not wikitext)
    # as many new tokens as the longest reference reply needs (the answer comes at the end of a sentence)
    reply_tokens = answer_budget(tokenizer, [row["messages"][-1]["content"] for row in graded])
    prompts = [row["messages"][:-1] for row in graded]
    replies = generate(model, tokenizer, prompts, reply_tokens, desc=f"held-out ({label})")
    right = [contains_answer(reply, row["answer"]) for reply, row in zip(replies, graded, strict=True)]
    general, general_answers = probe_score(model, tokenizer)  # everyday questions, keywords expected
    return {
        "label": label,
        "exact_match": round(sum(right) / len(right), 4) if graded else None,
        "perplexity": perplexity(model, tokenizer, test_rows),
        "general": general,
        "answers": [
            {"question": row["messages"][-2]["content"], "expected": row["answer"], "reply": reply, "correct": ok}
            for row, reply, ok in zip(graded, replies, right, strict=True)
        ],
        "general_answers": general_answers,
    }


# Every linear layer of the decoder but the output head, by name: Phi-3's fused projections and those of
# Llama-style models such as SmolLM2 (the names a model lacks are not looked for). peft's "all-linear" picks the
# same layers but cannot be combined with layers_to_transform, which adapts only the upper layers.
LORA_TARGETS = ["qkv_proj", "q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "gate_proj", "up_proj", "down_proj"]


def lora_config(settings, layers):
    """The adapters on the top ``settings.lora_layers`` of the model's ``layers`` decoder layers."""
    first = min(layers - 1, round((1 - settings.lora_layers) * layers))  # the lowest layer that gets adapters
    return LoraConfig(
        r=settings.lora_r,  # rank of each update: 8–64; more rank, more capacity and memory
        lora_alpha=settings.lora_alpha,  # the update is scaled by alpha / r; the course keeps alpha = 2 × r
        lora_dropout=settings.lora_dropout,  # 0 for short runs; 0.05–0.1 against overfitting on long ones
        target_modules=LORA_TARGETS,  # every attention and MLP projection
        layers_to_transform=list(range(first, layers)),  # the layers below keep their weights; backprop stops there
        task_type="CAUSAL_LM",
    )


def sft_config(settings, precision, per_epoch):
    """trl's configuration of the run; ``per_epoch``: optimizer steps in one pass over the training rows."""
    total = settings.max_steps if settings.max_steps > 0 else math.ceil(per_epoch * settings.epochs)
    return SFTConfig(
        # how long: max_steps > 0 wins over epochs
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        # how much per step: effective batch = batch × accumulation × processes
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        # how fast: LoRA tolerates ~10× the full fine-tuning rate; warmup avoids a first-step jolt
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=round(settings.warmup * total),  # transformers 5 takes steps, not a ratio
        weight_decay=0.0,  # no pull towards zero: a few epochs over a few facts
        # number format and memory: chosen in section 2; checkpointing trades compute for memory
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=settings.gradient_checkpointing,
        # what the loss sees
        completion_only_loss=True,
        padding_free=True,
        packing=False,  # rows are not cut and joined: each one is a whole question and answer
        max_length=None,  # padding-free without packing cannot truncate: longer rows are left out before training
        seed=settings.seed,
        data_seed=settings.seed,
        # where checkpoints go, what is logged, the device
        output_dir=str(Path(settings.output_dir) / "checkpoints"),
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=1,  # only the newest checkpoint: enough to resume
        logging_steps=1,
        logging_first_step=True,
        include_num_input_tokens_seen="non_padding",  # for tokens per second
        report_to="none",  # the history callback logs to MLflow
        disable_tqdm=True,  # the history callback shows one bar with the loss instead
        dataloader_num_workers=0,
        dataset_num_proc=None,
        use_cpu=not torch.cuda.is_available(),
        **settings.extra,
    )


def make_trainer(model, tokenizer, rows, settings, args, peft_config, callbacks=()):
    """The trainer over ``rows`` (prompt/completion pairs); ``peft_config`` None trains every weight."""
    set_seed(settings.seed)  # the adapters' initialisation and the data order: the same run twice
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,  # its chat template splits each row into prompt and answer
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    score_answers_only(trainer)  # trl's loss, computed on the answer positions alone
    quiet_trainer(trainer)  # the history callback's one bar instead of a line per step
    return trainer


def merge_and_save(trainer, tokenizer, folder):
    """The trained model with LoRA's adapters merged into its weights, saved with its tokenizer to ``folder``.

    After QLoRA the base is 4-bit: merged into it, the adapters would give 4-bit weights that only bitsandbytes on a
    GPU loads, and no CPU endpoint serves. So the base is loaded again, unquantised, in the run's 16-bit format, and
    the trained adapters are merged into that."""
    trained = trainer.model
    if getattr(trained.config, "quantization_config", None) is not None:  # a 4-bit base: QLoRA
        adapters = get_peft_model_state_dict(trained)  # the trained adapters' weights
        config = trained.peft_config["default"]  # the adapters' shape, and the base model's folder
        dtype = torch.bfloat16 if trainer.args.bf16 else torch.float16
        base = AutoModelForCausalLM.from_pretrained(config.base_model_name_or_path, dtype=dtype).to(trained.device)
        trained = get_peft_model(base, config)
        set_peft_model_state_dict(trained, adapters)
    merged = trained.merge_and_unload() if hasattr(trained, "merge_and_unload") else trained
    if trainer.is_world_process_zero():  # one process writes, when several train
        merged.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return merged


# --- end of generated code ---
