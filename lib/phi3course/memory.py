"""How much memory a fine-tune needs, from the model's real shapes and the real token count.

The estimate adds, in bytes:

- **weights**: every parameter in the dtype it is held in — fp32 for a full fine-tune (the optimizer's
  master copy) and for LoRA on a CPU; bf16/fp16 for LoRA on a GPU; NF4 for QLoRA's linear layers
  (~0.53 byte with its scales; embeddings and LM head stay 16-bit);
- **training state**: for each *trained* parameter an fp32 gradient and AdamW's two fp32 moments
  (12 bytes; plus 4 for the fp32 copy of a LoRA adapter, which is trained in fp32);
- **activations** kept for the backward pass, per token and layer: the attention block's inputs,
  q/k/v and output (~7·hidden + 2·kv_dim values), the gated MLP's inputs and three intermediate
  tensors (~2·hidden + 4·intermediate), in the compute precision — with SDPA/flash attention the
  seq×seq score matrix is never stored. Gradient checkpointing keeps one hidden state per layer instead;
- **logits**: tokens × vocabulary, in the compute precision plus their fp32 loss copy and its gradient;
- a fixed **overhead** (CUDA context or the Python process, allocator slack).

Tokens are what one optimizer micro-step holds: with padding-free batches that is
``batch rows × mean row length``, not ``batch_size × max_length``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # models asks memory for a stand-in's parameter count: memory imports models for types only
    from .models import Preset, Shape

GIB = 1024**3
METHODS = ("full", "lora", "qlora")
PRECISIONS = ("bf16", "fp16", "fp32")
BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "nf4": 0.53}
OVERHEAD_GIB = 1.0
HEADROOM = 0.9  # plan to use at most 90 % of the memory


class MemoryBudgetError(ValueError):
    """The fine-tune does not fit the memory where it runs; the message names what would."""


def parameters(shape: Shape) -> dict[str, int]:
    """Parameter counts by kind: ``linear`` (what LoRA adapts and QLoRA quantises), ``embedding``, ``norm``."""
    head_dim = shape.hidden // shape.heads
    q_out, kv_out = shape.heads * head_dim, shape.kv_heads * head_dim
    attention = shape.hidden * q_out + 2 * shape.hidden * kv_out + q_out * shape.hidden
    mlp = 3 * shape.hidden * shape.intermediate  # gate, up, down
    embedding = shape.vocab * shape.hidden * (1 if shape.tied else 2)  # input embedding (+ LM head unless tied)
    return {
        "linear": shape.layers * (attention + mlp),
        "embedding": embedding,
        "norm": shape.layers * 2 * shape.hidden + shape.hidden,
    }


def total_parameters(shape: Shape) -> int:
    return sum(parameters(shape).values())


def lora_parameters(shape: Shape, r: int) -> int:
    """Adapter parameters of LoRA rank ``r`` on every linear layer of every block (``target_modules='all-linear'``):
    an upper bound for the recipe, which adapts the MLP projections of the upper layers only."""
    head_dim = shape.hidden // shape.heads
    q_out, kv_out, h, i = shape.heads * head_dim, shape.kv_heads * head_dim, shape.hidden, shape.intermediate
    per_layer = (h + q_out) + 2 * (h + kv_out) + (q_out + h) + 2 * (h + i) + (i + h)
    return shape.layers * r * per_layer


def batch_tokens(batch_size: int, mean_row_tokens: float, grad_accum: int = 1) -> int:
    """Tokens one micro-step holds with padding-free batches: ``batch_size`` rows of the mean length.

    (Gradient accumulation runs micro-steps one after another, so it does not multiply the memory.)
    """
    return max(1, round(batch_size * mean_row_tokens))


def mean_row_tokens(rows: list[dict[str, Any]], tokenizer: Any = None) -> float:
    """The mean length of training rows in tokens: with ``tokenizer`` exactly (chat rows through its chat
    template), without one from the characters (~3.5 characters a token for English text; errs long)."""
    if not rows:
        return 0.0
    lengths = []
    for row in rows:
        if "messages" in row:
            if tokenizer is not None:
                ids = tokenizer.apply_chat_template(row["messages"], tokenize=True)
                lengths.append(len(ids["input_ids"] if hasattr(ids, "keys") else ids))
            else:
                lengths.append(sum(len(m["content"]) + 8 for m in row["messages"]) / 3.5)
        else:
            text = row.get("text") or (str(row.get("prompt", "")) + str(row.get("completion", "")))
            lengths.append(len(tokenizer(text)["input_ids"]) if tokenizer is not None else len(text) / 3.5)
    return sum(lengths) / len(lengths)


def weight_dtype(method: str, precision: str, device: str) -> str:
    """How the base weights are held (as ``phi3course.train`` loads them)."""
    if method == "qlora":
        return "nf4"
    if device == "cuda" and method == "lora" and precision in {"bf16", "fp16"}:
        return precision
    return "fp32"


@dataclass
class Estimate:
    """A memory budget in GiB, and what is available where the training runs."""

    model: str
    method: str
    precision: str
    tokens: int
    weights_gib: float
    training_state_gib: float
    activations_gib: float
    logits_gib: float
    overhead_gib: float
    available_gib: float
    where: str = "this machine"

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.training_state_gib + self.activations_gib + self.logits_gib + self.overhead_gib

    @property
    def fits(self) -> bool:
        return self.total_gib <= HEADROOM * self.available_gib

    def parts(self) -> dict[str, float]:
        """The budget as rows for a table (GiB, one decimal)."""
        return {
            "weights": round(self.weights_gib, 1),
            "gradients + optimizer": round(self.training_state_gib, 1),
            "activations": round(self.activations_gib, 1),
            "logits": round(self.logits_gib, 1),
            "overhead": round(self.overhead_gib, 1),
            "total": round(self.total_gib, 1),
            f"available ({self.where})": round(self.available_gib, 1),
        }

    def rows(self) -> list[tuple[str, float]]:
        """(part, GiB) rows for a table, as ``train.MemoryEstimate.rows()`` gives them."""
        return list(self.parts().items())

    def __str__(self) -> str:
        verdict = "fits" if self.fits else "does NOT fit"
        return (
            f"{self.model} {self.method} in {self.precision}, {self.tokens} tokens a step: about "
            f"{self.total_gib:.1f} GiB (weights {self.weights_gib:.1f}, gradients+optimizer "
            f"{self.training_state_gib:.1f}, activations {self.activations_gib:.1f}, logits {self.logits_gib:.1f}, "
            f"overhead {self.overhead_gib:.1f}) of {self.available_gib:.1f} GiB on {self.where}: {verdict}"
        )


def _shape(model: Preset | Shape) -> tuple[str, Shape]:
    if not hasattr(model, "shape"):  # a Shape, not a Preset
        return "model", model
    if model.shape is None:
        raise ValueError(f"preset {model.name} has no shapes: add Shape(...) from its config.json to models.PRESETS.")
    return model.name, model.shape


def estimate(
    model: Preset | Shape,
    method: str,
    precision: str,
    tokens: int,
    available_gib: float,
    lora_r: int = 16,
    device: str = "cuda",
    gradient_checkpointing: bool = False,
    where: str = "this machine",
) -> Estimate:
    """The memory a fine-tune needs (see the module's docstring for what is counted)."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose one of {', '.join(METHODS)}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)} (resolve 'auto' first).")
    name, shape = _shape(model)
    counts = parameters(shape)
    held = weight_dtype(method, precision, device)
    if held == "nf4":
        weights = counts["linear"] * BYTES["nf4"] + (counts["embedding"] + counts["norm"]) * 2.0
    else:
        weights = sum(counts.values()) * BYTES[held]
    if method == "full":
        trained, per_trained = sum(counts.values()), 12.0  # fp32 gradient + two AdamW moments (weights counted above)
    else:
        trained, per_trained = lora_parameters(shape, lora_r), 16.0  # adapters in fp32: weight, gradient, two moments
    compute = BYTES[precision]
    head_dim = shape.hidden // shape.heads
    kv_dim = shape.kv_heads * head_dim
    per_token_layer = (7 * shape.hidden + 2 * kv_dim) + (2 * shape.hidden + 4 * shape.intermediate)
    if gradient_checkpointing:
        per_token_layer = shape.hidden  # one hidden state per layer; one layer is recomputed at a time
        extra_layer = (7 * shape.hidden + 2 * kv_dim + 2 * shape.hidden + 4 * shape.intermediate) * compute * tokens
    else:
        extra_layer = 0.0
    activations = per_token_layer * shape.layers * compute * tokens + extra_layer
    logits = tokens * shape.vocab * (compute + 8.0)  # the logits, their fp32 copy for the loss, its gradient
    return Estimate(
        model=name,
        method=method,
        precision=precision,
        tokens=tokens,
        weights_gib=weights / GIB,
        training_state_gib=trained * per_trained / GIB,
        activations_gib=activations / GIB,
        logits_gib=logits / GIB,
        overhead_gib=OVERHEAD_GIB,
        available_gib=available_gib,
        where=where,
    )


def check(
    model: Preset | Shape,
    method: str,
    precision: str,
    tokens: int,
    available_gib: float,
    lora_r: int = 16,
    device: str = "cuda",
    gradient_checkpointing: bool = False,
    where: str = "this machine",
) -> Estimate:
    """:func:`estimate`, raising :class:`MemoryBudgetError` with what would fit when it does not.

    Check where the training runs: inside the Azure ML job (or with the cluster's GPU memory from
    ``azure.VM_SIZES``), and against this machine only for a local run.
    """
    found = estimate(model, method, precision, tokens, available_gib, lora_r, device, gradient_checkpointing, where)
    if found.fits:
        return found
    options = []
    for other in ("lora", "qlora"):
        if other == method or (other == "qlora" and device != "cuda"):
            continue
        alternative = estimate(model, other, precision, tokens, available_gib, lora_r, device, False, where)
        if alternative.fits:
            options.append(f"method='{other}' (about {alternative.total_gib:.1f} GiB)")
    if not gradient_checkpointing:
        checkpointed = estimate(model, method, precision, tokens, available_gib, lora_r, device, True, where)
        if checkpointed.fits:
            options.append(f"gradient_checkpointing=True (about {checkpointed.total_gib:.1f} GiB, ~30 % slower)")
    for fraction in (2, 4, 8):
        smaller = estimate(model, method, precision, max(1, tokens // fraction), available_gib, lora_r, device, False)
        if smaller.fits:
            options.append(f"a batch_size {fraction}× smaller (about {smaller.total_gib:.1f} GiB)")
            break
    options += ["a smaller model preset", "a VM size with more GPU memory (azure.VM_SIZES)"]
    raise MemoryBudgetError(f"{found}. Try {', or '.join(options)}.")
