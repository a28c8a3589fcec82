"""Did the fine-tune work? Contains-answer accuracy on held-out questions, and perplexity on the test split.

Generation is the slow part on a CPU, so it asks for no more tokens than an answer needs
(:func:`answer_budget`: the longest expected answer plus a margin) and stops at the end of the turn.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# Questions answered by one generate() call. On a 2-core CPU one batch of 64 short greedy replies takes 40 % less
# time than four batches of 16 (SmolLM2, the 53-question probe: 8.7 s vs 14.1 s): each decoding step pays Python's
# per-step overhead once for the whole batch. A few hundred short prompts fit easily in a GPU's memory too.
GENERATION_BATCH = 64


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class Progress:
    """A progress bar in Jupyter or a terminal; one plain line per step in a log (a job, CI, a pipe).

    A headless log gets ``desc: 3/8 batch, 12.4 s`` lines instead of a bar redrawn with carriage returns.
    Use as a context manager and call :meth:`update` after each step, or iterate with :func:`progress`.
    """

    def __init__(self, total: int, desc: str, unit: str = "step") -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.began = time.perf_counter()
        self.bar: Any = None
        if _in_notebook() or sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit)

    def update(self, steps: int = 1) -> None:
        self.done += steps
        if self.bar is not None:
            self.bar.update(steps)
        else:
            seconds = time.perf_counter() - self.began
            print(f"{self.desc}: {self.done}/{self.total} {self.unit}, {seconds:.1f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(items: Sequence[T], desc: str, unit: str = "batch") -> Iterator[T]:
    """Iterate over ``items`` showing :class:`Progress`."""
    with Progress(len(items), desc, unit) as shown:
        for item in items:
            yield item
            shown.update()


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def contains_answer(reply: str, expected: str) -> bool:
    """Contains-answer: the expected value appears in the reply (case and spacing ignored), not an exact match.

    The share of replies for which this holds is what the course calls *contains-answer accuracy*."""
    return " ".join(expected.lower().split()) in " ".join(reply.lower().split())


def answer_budget(tokenizer: Any, answers: Iterable[str], margin: int = 8, floor: int = 16) -> int:
    """``max_new_tokens`` for replies like ``answers``: the longest one's tokens plus ``margin``.

    The end-of-turn token counts too; a model that answers stops there anyway, and one that rambles
    (the base model on questions it cannot know) is cut where a right answer would have ended.
    """
    lengths = [len(tokenizer(answer, add_special_tokens=False)["input_ids"]) for answer in answers]
    return max([floor, *(n + 1 + margin for n in lengths)])


def stop_tokens(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a reply: the model's own end-of-turn/end-of-text ids and the tokenizer's eos."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = list(ids) if isinstance(ids, list | tuple) else ([ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
        stops.append(tokenizer.eos_token_id)
    return stops


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    max_new_tokens: int = 40,
    batch_size: int = GENERATION_BATCH,
    desc: str | None = "generating",
) -> list[str]:
    """Greedy replies to chat prompts, batched with left padding, each stopping at the end of its turn; with a
    progress bar named ``desc`` (None: no bar, for checks inside another step's bar)."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    replies: list[str] = []
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        batches = _batches(prompts, batch_size)
        for batch in progress(batches, desc=desc) if desc else batches:
            texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in batch]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                output = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=stop_tokens(model, tokenizer),
                    pad_token_id=pad,
                )
            new = output[:, inputs["input_ids"].shape[1] :]
            replies.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return [reply.strip() for reply in replies]


def row_losses(
    model: Any, examples: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 16
) -> list[tuple[float, int]]:
    """For each ``(input ids, labels)`` (labels -100 where a token is not scored): the summed cross-entropy of its
    scored tokens, each predicted from those before it, and how many there are. Batched with right padding, which
    changes no row's value."""
    import torch

    scored: list[tuple[float, int]] = []
    for batch in _batches(examples, batch_size):
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [pad_id] * (width - len(i)) for i, _ in batch], device=model.device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch], device=model.device)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch], device=model.device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        targets = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )
        scored += zip(losses.sum(dim=1).tolist(), (targets != -100).sum(dim=1).tolist(), strict=True)
    return scored


def perplexity(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], batch_size: int = 16) -> float:
    """exp(mean negative log-likelihood) of the answers (chat rows) or of the whole text (text rows).

    Batches of 16, not :data:`GENERATION_BATCH`: one forward pass needs no per-step loop to share, and wider
    batches only add padding (60 held-out rows: 6.5 s in batches of 16, 9.7 s in one batch of 64)."""
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
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scored = row_losses(model, examples, pad, batch_size)
    total, count = sum(loss for loss, _ in scored), sum(n for _, n in scored)
    return round(math.exp(total / max(count, 1)), 3)
