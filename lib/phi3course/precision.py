"""Which number format trains fastest on this CPU: a short measured probe, kept in the course cache.

A CPU with native bf16 multiplies large bf16 matrices at two to three times its fp32 rate (AVX512-BF16), or
several times (AMX), yet the course's recipe is not all large matmuls: a 135 M-parameter model's LoRA step spends
much of its time in small shapes, in the casts that mixed precision adds around each layer and in fp32 work (the
adapters, the optimizer). What bf16 buys therefore differs from CPU to CPU: on one with AVX512-BF16 the recipe
trained in bf16 below what the same matmuls give in fp32, on one with AMX faster than in fp32
(docs/measurements.md). So ``precision="auto"`` does not assume: :func:`fastest` times a few of the recipe's
training steps (LoRA on the top layers, a padding-free batch of the recipe's size) in fp32 and in bf16 mixed
precision, once per CPU, torch version and model, and the faster one trains.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from . import hardware
from .paths import cache_dir

PROBE_TOKENS = 320  # one padding-free batch of the recipe: 8 rows of about 40 tokens
PROBE_STEPS = 3  # timed steps per format, after one untimed step (allocations, kernel choice)
CACHE_FILE = "precision-probe.json"


@dataclass(frozen=True)
class Probe:
    """Tokens per second of the recipe's training step in each format on one CPU, and what they were measured with."""

    key: str  # CPU, torch version, model and the recipe's adapters: a change of any of them measures again
    tokens_per_second: dict[str, float]

    @property
    def fastest(self) -> str:
        return max(self.tokens_per_second, key=lambda name: self.tokens_per_second[name])

    def why(self) -> str:
        rates = ", ".join(f"{name} {rate:.0f}" for name, rate in self.tokens_per_second.items())
        return f"measured on this CPU ({rates} tokens/s in the recipe's training step): {self.fastest} trains faster"


def local_adapters() -> Any:
    """The local profile's adapter settings (``lora_r``, ``lora_dropout``, ``lora_layers``): 02's defaults, read
    where the course folder is (a job passes its own settings instead)."""
    from . import profiles

    return SimpleNamespace(**profiles.parameters("local"))


def probe_key(model: str, adapters: Any = None) -> str:
    """What the probe's rates depend on: the CPU, torch, the model and the recipe's adapters (rank, layers, targets);
    ``adapters``: settings with ``lora_r`` and ``lora_layers`` (default: :func:`local_adapters`)."""
    import torch

    from . import recipe

    adapters = adapters or local_adapters()
    lora = f"LoRA r={adapters.lora_r} on {adapters.lora_layers} of the layers: {','.join(recipe.LORA_TARGETS)}"
    return f"{hardware.cpu_name() or 'unknown CPU'} | torch {torch.__version__} | {model} | {lora}"


def time_steps(model: Any, bf16: bool, tokens: int = PROBE_TOKENS, steps: int = PROBE_STEPS) -> float:
    """Tokens per second of ``steps`` forward, backward and AdamW steps of ``model`` (its trainable weights) on one
    sequence of ``tokens`` random tokens, under bf16 autocast (as trl's ``bf16=True`` runs on a CPU) or in fp32."""
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=generator)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    began = 0.0
    for step in range(steps + 1):
        if step == 1:  # the first step is not timed
            began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return tokens * steps / (time.perf_counter() - began)


def measure(model_name: str, adapters: Any = None) -> Probe:
    """Load ``model_name`` (a preset) in fp32, put the recipe's adapters on it (``adapters``: settings with ``lora_r``,
    ``lora_dropout`` and ``lora_layers``, default :func:`local_adapters`) and time its step in both formats."""
    from peft import get_peft_model

    from . import recipe
    from .models import load_model, resolve

    adapters = adapters or local_adapters()
    preset = resolve(model_name)
    model, _ = load_model(preset)
    model = get_peft_model(model, recipe.lora_config(adapters, preset.shape.layers))
    model.train()
    rates = {name: round(time_steps(model, bf16=name == "bf16"), 1) for name in ("fp32", "bf16")}
    return Probe(probe_key(model_name, adapters), rates)


def fastest(
    model_name: str,
    measure_with: Callable[[str, Any], Probe] = measure,
    folder: Path | None = None,
    adapters: Any = None,
) -> Probe:
    """The probe for ``model_name`` with the recipe's ``adapters`` (default: :func:`local_adapters`) on this CPU: read
    from the course cache, measured (and kept) when the cache has none for this CPU, torch version, model and
    adapters."""
    adapters = adapters or local_adapters()  # read once: the key and the measurement use the same settings
    path = (folder or cache_dir()) / CACHE_FILE
    key = probe_key(model_name, adapters)
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    if isinstance(kept.get(key), dict):
        return Probe(key, {name: float(rate) for name, rate in kept[key].items()})
    probe = measure_with(model_name, adapters)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**kept, key: asdict(probe)["tokens_per_second"]}, indent=1))
    return probe
