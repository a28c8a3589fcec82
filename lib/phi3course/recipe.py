"""The fine-tuning recipe: the adapters, trl's configuration, the trainer, merging and saving, the held-out
evaluation.

The block between the markers is generated from ``notebooks/02_fine_tune.ipynb``, from its cells tagged
``export``: the notebook is the source the learner reads and edits, and the Azure ML job
(``python -m phi3course.train``), the benchmarks and the tests run this copy of it. Edit the notebook, then run
``python -m phi3course.tools.export`` to regenerate the block; ``tests/test_export.py`` fails while the two differ.

The training cells import torch, datasets, peft, transformers and trl alone, so they run copied into a notebook of
one's own (``tests/test_recipe_copy.py`` does that); the evaluation's cell imports the course's scoring helpers
beside ``held_out``, below the training's imports.
"""

# ruff: noqa: E402

# --- generated from notebooks/02_fine_tune.ipynb (cells tagged "export"): edit the notebook, not this ---
# torch, datasets, peft, transformers and trl alone: the recipe's cells train without the course's library (only the
# evaluation, held_out below, scores with its helpers)
import math
import os
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from trl import SFTConfig, SFTTrainer


def model_kwargs(method, precision):
    """What ``from_pretrained`` gets to load the base model for ``method`` trained in ``precision``: the number format
    its weights are held in, 4-bit quantisation for QLoRA, and on a GPU the device of this process."""
    cuda = torch.cuda.is_available()
    place = {"device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}} if cuda else {}  # torchrun: a GPU per process
    if cuda:  # cuDNN's attention plans anew for every sequence length, and padding-free batches change length each step
        torch.backends.cuda.enable_cudnn_sdp(False)
    half = torch.bfloat16 if precision == "bf16" else torch.float16
    if method == "qlora":  # QLoRA: the frozen base held in 4-bit NF4, dequantised to 16 bit for each matrix product
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=half)
        # what is not quantised (embeddings, norms, output layer) in the same 16-bit format, not the checkpoint's
        return {"quantization_config": quantization, "dtype": half, **place}
    if method == "lora" and cuda and precision in ("bf16", "fp16"):  # a frozen base needs no fp32 copy on a GPU
        return {"dtype": half, **place}
    # what trains stays in fp32 (bf16/fp16 mixed precision computes in 16 bit, the weights it updates are fp32),
    # and a CPU holds the base in fp32 too
    return {"dtype": torch.float32, **place}


def to_training_rows(rows):
    """Chat rows as trl's prompt/completion pairs: the turns before the assistant's answer are the prompt, the
    answer is the completion, so that the loss counts the answer alone (``completion_only_loss`` below). Plain text
    rows stay text (the loss then covers every token)."""
    converted = []
    for row in rows:
        if "messages" not in row:
            converted.append({"text": row["text"]})
            continue
        *prompt, answer = row["messages"]
        if answer["role"] != "assistant":
            raise ValueError("every chat row must end with the assistant's answer to learn from.")
        converted.append({"prompt": prompt, "completion": [answer]})
    return converted


# The course's scoring helpers: this cell evaluates, and the training cells need nothing from it
from phi3course.evaluate import answer_budget, contains_answer, generate, perplexity
from phi3course.probe import VALIDATION_PROBE, probe_score


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


# The decoder's linear layers by name: Phi-3's fused projections and those of Llama-style models such as SmolLM2
# (the names a model lacks are not looked for). Both lists together are every linear layer but the output head:
# peft's "all-linear", which cannot be combined with layers_to_transform (adapters on the upper layers only).
ATTENTION_TARGETS = ["qkv_proj", "q_proj", "k_proj", "v_proj", "o_proj"]
MLP_TARGETS = ["gate_up_proj", "gate_proj", "up_proj", "down_proj"]
LORA_TARGETS = MLP_TARGETS  # the MLP alone: general knowledge held better (02_fine_tune, section 5)


def lora_config(settings, layers):
    """The adapters on the top ``settings.lora_layers`` of the model's ``layers`` decoder layers."""
    first = min(layers - 1, round((1 - settings.lora_layers) * layers))  # the lowest layer that gets adapters
    return LoraConfig(
        r=settings.lora_r,  # rank of each update: 8–64; more rank, more capacity and memory
        lora_alpha=2 * settings.lora_r,  # the update is scaled by alpha / r: 2 here
        lora_dropout=settings.lora_dropout,  # 0 for short runs; 0.05–0.1 against overfitting on long ones
        target_modules=LORA_TARGETS,  # the MLP projections
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
        optim="adamw_torch_fused",  # AdamW (betas 0.9 and 0.999), one fused kernel per step
        weight_decay=0.0,  # no pull towards zero: a few epochs over a few facts
        max_grad_norm=1.0,  # gradients clipped to this norm: no single batch throws the weights far
        # number format and memory: chosen in section 2; checkpointing trades compute for memory
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=settings.gradient_checkpointing,
        # what the loss sees
        loss_type="nll",  # cross-entropy of the next token
        completion_only_loss=True,  # on the completion (the answer) alone: to_training_rows made the pairs
        padding_free=True,  # a batch's rows end to end in one sequence, no padding computed
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
    )


class AnswerLogitsSFTTrainer(SFTTrainer):
    """trl's ``SFTTrainer``, its loss computed from the answer positions' logits alone: the same number, less work.

    The loss is trl's completion-only loss: each answer token's cross-entropy, summed, over the answer tokens of the
    optimizer step (``num_items_in_batch``). trl computes the output layer's logits (in fp32, with their entropy) at
    every position, the question's too; on a CPU that is a large share of a step. With padding-free batches (one
    flattened sequence) the model can be asked for the answer positions' logits alone (``logits_to_keep``), and the
    same sum taken over them. trl's own ``compute_loss`` is the reference: on a batch the two give the same loss and
    the same gradients (tests/test_train.py). With ``SFTTrainer`` in its place ``make_trainer`` trains the same model,
    only slower on a CPU."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        if labels.shape[0] != 1 or return_outputs:  # not one padding-free sequence, or logits wanted: trl's own path
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        targets = labels[0, 1:]  # the logits at position i predict the token at i + 1
        answer = (targets != -100).nonzero().squeeze(-1)  # positions whose next token is an answer token
        forward = {key: value for key, value in inputs.items() if key != "labels"}
        logits = model(**forward, use_cache=False, logits_to_keep=answer).logits[0].float()
        count = answer.numel() if num_items_in_batch is None else num_items_in_batch  # answer tokens in the step
        loss = torch.nn.functional.cross_entropy(logits, targets[answer], reduction="sum")
        loss = loss / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # the count spans every process, and DDP averages gradients
        return loss


def make_trainer(model, tokenizer, rows, settings, args, peft_config, callbacks=()):
    """The trainer over ``rows`` (prompt/completion pairs); ``peft_config`` None trains every weight."""
    set_seed(settings.seed)  # the adapters' initialisation and the data order: the same run twice
    trainer = AnswerLogitsSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,  # its chat template splits each row into prompt and answer
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    if args.fp16 and getattr(trainer.model, "is_loaded_in_4bit", False):
        # trl turns QLoRA's adapters into bf16, but fp16's loss scaling (a T4 has no bf16) unscales fp32 gradients only
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    if callbacks:  # the callbacks given show the progress (02's: one bar and the loss curve)
        for printer in (PrinterCallback, ProgressCallback):  # transformers' own would add a line per step
            trainer.remove_callback(printer)
    return trainer


def fit_length(rows, tokenizer, max_length):
    """The rows no longer than ``max_length`` tokens with the chat template applied, and how many were left out.

    Padding-free batches without packing are not cut to a length (``max_length=None`` in ``sft_config``): a row too
    long for memory is left out here, and counted, rather than cut off in the middle of its answer."""
    kept = []
    for row in rows:
        if "prompt" in row:
            ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)
            length = len(ids["input_ids"] if hasattr(ids, "keys") else ids)
        else:
            length = len(tokenizer(row["text"])["input_ids"])
        if length <= max_length:
            kept.append(row)
    if not kept:
        raise ValueError(f"every row is longer than max_length={max_length} tokens: raise max_length.")
    return kept, len(rows) - len(kept)


# Model selection on the validation split; it scores with the evaluation cell's helpers (phi3course.evaluate, .probe)
from transformers import TrainerCallback


class ModelSelection(TrainerCallback):
    """Every ``every`` optimizer steps (and after the last), ask the validation questions and the probe's validation
    slice; keep the weights of the best check so far, stop once both targets are met, and hand the trainer back the
    best weights when training ends. The test set is never read here: it judges the chosen model once, at the end."""

    def __init__(self, tokenizer, validation_rows, every, target_facts, target_general):
        self.tokenizer, self.every = tokenizer, every
        self.rows = [row for row in validation_rows if "answer" in row]  # chat rows with an expected value
        self.target_facts = target_facts  # validation facts right, 0–1
        self.target_general = target_general  # the probe slice kept, as a share of the base model's score
        self.checks = []  # one row per check: step, epoch, facts, general, ...
        self.best, self.best_weights = None, None
        self.base = None  # the base model's (facts, general), when known before training: step 0 then asks nothing

    def score(self, model):
        """(validation facts right, probe slice right), both 0–1, greedy as the test is asked."""
        prompts = [row["messages"][:-1] for row in self.rows]
        budget = answer_budget(self.tokenizer, [row["messages"][-1]["content"] for row in self.rows])
        replies = generate(model, self.tokenizer, prompts, budget, desc=None)  # inside the training bar: no bar
        right = [contains_answer(reply, row["answer"]) for reply, row in zip(replies, self.rows, strict=True)]
        general, _ = probe_score(model, self.tokenizer, VALIDATION_PROBE, desc=None)
        return sum(right) / max(len(right), 1), general

    def check(self, model, state):
        if state.global_step == 0 and self.base is not None:
            facts, general = self.base
        else:
            model.eval()
            facts, general = self.score(model)
            model.train()
        base = self.checks[0]["general"] if self.checks else general  # the first check is the base model (step 0)
        row = {
            "step": state.global_step,
            "epoch": round(state.epoch or 0.0, 2),
            "facts": round(facts, 4),
            "general": round(general, 4),
            "general_vs_base": round(general / base, 3) if base else 1.0,
        }
        row["targets met"] = row["facts"] >= self.target_facts and row["general_vs_base"] >= self.target_general
        self.checks.append(row)
        if row["targets met"]:  # the first check that meets both: later steps only risk forgetting
            key = (2, -state.global_step)
        else:  # none yet: the check nearest to meeting both, by the lower of its two shares of their targets, and
            # between checks equal there (a slice of 39 questions moves in steps) by the higher share
            shares = sorted([row["facts"] / self.target_facts, row["general_vs_base"] / self.target_general])
            key = (1, *shares)
        if state.global_step > 0 and (self.best is None or key > self.best[0]):  # a tie keeps the earlier check
            self.best = (key, row["step"])
            self.best_weights = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        return row

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.checks:  # LoRA's B starts at zero, so the model answers as the base model does
            self.check(model, state)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        due = state.global_step % self.every == 0 or state.global_step >= state.max_steps
        if due and self.check(model, state)["targets met"]:
            control.should_training_stop = True  # both targets met: more steps would only risk forgetting

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.checks[-1]["step"] != state.global_step:  # stopped between checks (max_steps reached elsewhere)
            self.check(model, state)
        if self.best_weights is not None:
            named = dict(model.named_parameters())
            with torch.no_grad():
                for name, weight in self.best_weights.items():
                    named[name].copy_(weight)

    @property
    def best_step(self):
        return self.best[1] if self.best else None


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
