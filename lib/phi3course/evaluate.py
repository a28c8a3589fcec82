"""Did the fine-tune work? Perplexity on the test split and exact-match on held-out questions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm


@dataclass
class EvalResult:
    label: str
    perplexity: float
    exact_match: float | None  # share of answers that contain the expected value; None for text data
    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, float | None]:
        return {"exact_match": self.exact_match, "perplexity": self.perplexity}


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def contains_answer(reply: str, expected: str) -> bool:
    """The course's exact-match: the expected value appears in the reply (case and spacing ignored)."""
    return " ".join(expected.lower().split()) in " ".join(reply.lower().split())


def generate(
    model: Any, tokenizer: Any, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int = 40, batch_size: int = 16
) -> list[str]:
    """Greedy replies to chat prompts, batched with left padding."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    replies: list[str] = []
    model.eval()
    try:
        for batch in tqdm(_batches(prompts, batch_size), desc="generating", leave=False):
            texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in batch]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                output = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = output[:, inputs["input_ids"].shape[1] :]
            replies.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return [reply.strip() for reply in replies]


def perplexity(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], batch_size: int = 16) -> float:
    """exp(mean negative log-likelihood) of the answers (chat rows) or of the whole text (text rows)."""
    import torch

    examples = []
    for row in rows:
        if "messages" in row:
            full = _chat_ids(tokenizer, row["messages"], generation_prompt=False)
            prompt = _chat_ids(tokenizer, row["messages"][:-1], generation_prompt=True)
            labels = [-100] * len(prompt) + full[len(prompt) :]
        else:
            full = tokenizer(row["text"])["input_ids"]
            labels = list(full)
        examples.append((full, labels))
    total, count = 0.0, 0
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for batch in _batches(examples, batch_size):
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch], device=model.device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch], device=model.device)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch], device=model.device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.reshape(-1),
            reduction="sum",
            ignore_index=-100,
        )
        total += float(losses)
        count += int((shift_labels != -100).sum())
    return round(math.exp(total / max(count, 1)), 3)


def evaluate(
    model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], label: str, max_new_tokens: int = 40
) -> EvalResult:
    """Perplexity, and for rows with an ``answer`` the exact-match of greedy replies to their questions."""
    ppl = perplexity(model, tokenizer, rows)
    graded = [row for row in rows if "messages" in row and "answer" in row]
    if not graded:
        return EvalResult(label, ppl, None)
    replies = generate(model, tokenizer, [row["messages"][:-1] for row in graded], max_new_tokens)
    table = [
        {
            "question": row["messages"][-2]["content"],
            "expected": row["answer"],
            "reply": reply,
            "correct": contains_answer(reply, row["answer"]),
        }
        for row, reply in zip(graded, replies, strict=True)
    ]
    share = sum(item["correct"] for item in table) / len(table)
    return EvalResult(label, ppl, round(share, 4), table)
